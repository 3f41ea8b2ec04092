"""The lab's "site" DHCP server for proxy-mode tests: dnsmasq giving addresses only.

Runs as the issue's reproducer does (``dnsmasq -k --port=0 --dhcp-range=...
--bind-interfaces --interface=br0 --no-ping --dhcp-authoritative``) inside a lab
namespace, with its lease file and log in a work directory, and is always
stopped by ``close()``. Also the lab's machines on a shared link: extra
namespaces whose veth joins the lab bridge, each with a MAC of its own.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fleetboot.lab.netns import Lab, Namespace, run, stop_process, unique_name

DNSMASQ = "dnsmasq"


def have_dnsmasq() -> bool:
    return shutil.which(DNSMASQ) is not None


@dataclass
class SiteDhcp:
    process: subprocess.Popen[bytes]
    log_path: Path
    leases_path: Path

    @classmethod
    def start(cls, ns: Namespace, interface: str, first: str, last: str, workdir: Path,
              *, hosts: Sequence[tuple[str, str]] = (), lease: str = "1h") -> SiteDhcp:
        """dnsmasq on ``interface`` handing out ``first``-``last``; ``hosts`` are
        (MAC, address) pairs it gives fixed addresses."""
        workdir.mkdir(parents=True, exist_ok=True)
        log_path, leases = workdir / "dnsmasq.log", workdir / "dnsmasq.leases"
        argv = [DNSMASQ, "-k", "--port=0", f"--dhcp-range={first},{last},255.255.255.0,{lease}",
                "--bind-interfaces", f"--interface={interface}", "--no-ping",
                "--dhcp-authoritative", "--conf-file=/dev/null", "--user=root",
                f"--dhcp-leasefile={leases}", "--pid-file", "--log-dhcp",
                f"--log-facility={log_path}",
                *(f"--dhcp-host={mac},{addr}" for mac, addr in hosts)]
        process = ns.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        site = cls(process, log_path, leases)
        deadline = time.monotonic() + 10
        while "DHCP, IP range" not in site.log():
            if process.poll() is not None or time.monotonic() > deadline:
                site.close()
                raise RuntimeError(f"dnsmasq did not start: {site.log()[-2000:]}")
            time.sleep(0.05)
        return site

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def acked(self, mac: str) -> list[str]:
        """Addresses dnsmasq ACKed to ``mac`` (from its log)."""
        return re.findall(rf"DHCPACK\(\S+\) (\d+\.\d+\.\d+\.\d+) {re.escape(mac)}", self.log())

    def close(self) -> None:
        stop_process(self.process, timeout_s=5)


def bridged_namespace(server: Namespace, bridge: str, prefix: str,
                      mac: str | None = None) -> tuple[Namespace, str]:
    """A new namespace whose veth (its name returned, ``mac`` if given) is a port of
    ``bridge`` in ``server``: one more host on that link."""
    ns = Namespace.create(prefix)
    outer, inner = unique_name("mo"), unique_name("mi")
    try:
        run(["ip", "link", "add", outer, "type", "veth", "peer", "name", inner])
        run(["ip", "link", "set", outer, "netns", server.name])
        run(["ip", "link", "set", inner, "netns", ns.name])
        server.ip("link", "set", outer, "master", bridge)
        server.ip("link", "set", outer, "up")
        if mac is not None:
            ns.ip("link", "set", inner, "address", mac)
        ns.ip("link", "set", inner, "up")
    except Exception:
        ns.delete()
        raise
    return ns, inner


@dataclass
class Machine:
    """A namespace on the lab bridge with its own MAC: one machine on the shared link."""

    ns: Namespace
    dev: str
    mac: str

    @classmethod
    def attach(cls, lab: Lab, mac: str, prefix: str = "fbm") -> Machine:
        assert lab.bridge, "create the lab with with_bridge=True"
        ns, dev = bridged_namespace(lab.server, lab.bridge, prefix, mac)
        return cls(ns, dev, mac)

    def dhcp(self, workdir: Path, timeout_s: float = 20.0) -> str:
        """A real DHCP exchange (busybox udhcpc); the address is configured; returns it."""
        workdir.mkdir(parents=True, exist_ok=True)
        script = workdir / f"udhcpc-{self.dev}.sh"
        script.write_text('#!/bin/sh\ncase "$1" in bound|renew) '
                          'ip addr replace "$ip/${mask:-24}" dev "$interface";; esac\n'
                          'echo "$1 $ip" >> "$0.log"\n')
        script.chmod(0o755)
        self.ns.run(["busybox", "udhcpc", "-i", self.dev, "-n", "-q", "-f", "-t", "8", "-T", "2",
                     "-s", str(script)])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", self.ns.ip("-4", "addr", "show",
                                                                       "dev", self.dev))
            if found:
                return found.group(1)
            time.sleep(0.1)
        raise RuntimeError(f"udhcpc on {self.dev} configured no address")

    def announce(self, address: str) -> None:
        """Gratuitous ARP for ``address`` (as a machine taking an address over does)."""
        self.ns.run(["busybox", "arping", "-U", "-c", "2", "-w", "2", "-I", self.dev,
                     "-s", address, address], check=False)

    def curl(self, url: str, source: str | None = None,
             headers: Sequence[str] = ()) -> tuple[int, str]:
        """(HTTP status, body) of a GET from this machine (from ``source`` if given)."""
        argv = ["curl", "-sS", "-m", "20", "-w", "\n%{http_code}"]
        if source:
            argv += ["--interface", source]
        for header in headers:
            argv += ["-H", header]
        done = self.ns.run([*argv, url], check=False)
        body, _, status = done.stdout.rpartition("\n")
        return int(status or 0), body

    def close(self) -> None:
        self.ns.delete()


def stale_lease_database(workdir: Path, address: str, mac: str) -> str:
    """A new database (its URL) holding Fleetboot's lease of ``address`` to ``mac``, as
    left by a run without proxy mode: what a switch to proxy mode must ignore."""
    from fleetboot.inventory.db import Database
    from fleetboot.inventory.models import Lease

    workdir.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{workdir}/fleetboot.db"
    db = Database(url)
    db.create_schema()
    now = datetime.now(UTC)
    with db.session() as s:
        s.add(Lease(address=address, mac=mac, starts=now, expires=now + timedelta(hours=1)))
    db.dispose()
    return url


def neighbour_mac(ns: Namespace, address: str) -> str | None:
    """The link-layer address ``ns``'s kernel holds for ``address`` (``ip neigh``)."""
    found = re.search(r"lladdr ([0-9a-f:]{17})", ns.ip("neigh", "show", address))
    return found.group(1) if found else None
