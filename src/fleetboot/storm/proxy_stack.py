"""The proxy-mode stack: the site's classic DHCP server plus Fleetboot as proxyDHCP.

The site server hands out the addresses (a reservation per MAC, as the classic
stack's ``dhcp-host`` lines, and nothing about booting), as a DHCP server that
belongs to another team would: ISC Kea (``site="kea"``, the default where it is
installed; memfile leases, persisted) or dnsmasq (``site="dnsmasq"``, the
classic stack's server, which cannot answer 1,000 machines at once by itself:
see docs/benchmarks.md). ``fleetboot serve`` with ``dhcp.proxy: true`` answers
the boot clients' DISCOVERs with boot information only and serves TFTP, HTTP
and the node configuration. The simulated firmware waits for both offers
(``dhcpc.obtain_lease(proxy=True)``); every node is identified by what
Fleetboot saw of it on the link (``fleetboot.identity``).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field, replace
from typing import Any

from fleetboot.lab.netns import Namespace, stop_process
from fleetboot.lab.sitedhcp import bridged_namespace
from fleetboot.storm.fleetboot_stack import FleetbootStack
from fleetboot.storm.stacks import _last, wait_listening
from fleetboot.storm.topology import StormNet

KEA = "kea-dhcp4"
SITE_IF = "site0"


def site_host(net: StormNet, address: str) -> Namespace:
    """A namespace for the site's DHCP server on the storm bridge, its port ``site0``."""
    ns, dev = bridged_namespace(net.server, net.bridge, "fbsk")
    try:
        ns.ip("link", "set", dev, "down")
        ns.ip("link", "set", dev, "name", SITE_IF)
        ns.ip("link", "set", SITE_IF, "up")
        ns.ip("addr", "add", f"{address}/{net.network.prefix}", "dev", SITE_IF)
    except Exception:
        ns.delete()
        raise
    return ns


@dataclass
class ProxyStack(FleetbootStack):
    kind: str = "proxy"
    site: str = field(default_factory=lambda: "kea" if shutil.which(KEA) else "dnsmasq")
    _site: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _site_ns: Namespace | None = field(default=None, repr=False)

    def start(self, net: StormNet) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._start_site(net)
            super().start(net)
        except BaseException:
            self.stop()
            raise

    def _start_site(self, net: StormNet) -> None:
        log = self.workdir / f"site-{self.site}.log"
        where = net
        if self.site == "kea":
            # Kea cannot share port 67 of one host with another server, and a site's
            # server is another host anyway: its own namespace on the boot network.
            self._site_ns = site_host(net, self._site_address())
            where = replace(net, server=self._site_ns)
            argv = self._kea_argv(net)
        else:
            argv = self._site_argv(net)
        env = {**os.environ, "KEA_LOCKFILE_DIR": str(self.workdir),
               "KEA_PIDFILE_DIR": str(self.workdir)}
        with log.open("wb") as out:
            self._site = where.server.popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                            env=env)
        wait_listening(where, self._site, log, udp=(67,))

    def _site_address(self) -> str:
        return str(ipaddress.ip_address(self.plan.network.client_ip) + 1)

    def stop(self) -> None:
        super().stop()
        stop_process(self._site)
        self._site = None
        if self._site_ns is not None:
            self._site_ns.delete()
            self._site_ns = None

    def settings(self, net: StormNet) -> dict[str, Any]:
        settings = super().settings(net)
        settings.setdefault("dhcp", {})["proxy"] = True
        return settings

    def _kea_argv(self, net: StormNet) -> list[str]:
        nw = self.plan.network
        first = min(self.plan.nodes, key=lambda x: x.index).address
        config = {"Dhcp4": {
            "interfaces-config": {"interfaces": [SITE_IF], "dhcp-socket-type": "raw"},
            "lease-database": {"type": "memfile", "persist": True, "lfc-interval": 0,
                               "name": str(self.workdir / "site-kea-leases.csv")},
            "valid-lifetime": 3600, "authoritative": True,
            "subnet4": [{
                "id": 1, "subnet": nw.cidr,
                "pools": [{"pool": f"{first} - {_last(nw.node_net)}"}],
                "reservations": [{"hw-address": x.mac, "ip-address": x.address}
                                 for x in self.plan.nodes],
            }],
            "loggers": [{"name": "kea-dhcp4", "severity": "WARN", "output_options": [
                {"output": str(self.workdir / "site-kea.out")}]}],
        }}
        path = self.workdir / "site-kea.json"
        path.write_text(json.dumps(config, indent=1))
        return [KEA, "-c", str(path)]

    def _site_argv(self, net: StormNet) -> list[str]:
        nw, n = self.plan.network, self.plan.n
        hosts = self.workdir / "site-dhcp-hosts"
        hosts.write_text("".join(f"{x.mac},{x.address},{x.name}\n" for x in self.plan.nodes))
        first = min(self.plan.nodes, key=lambda x: x.index).address
        return [
            "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0",
            f"--interface={net.bridge}", "--bind-interfaces", "--no-ping",
            "--dhcp-authoritative",
            f"--dhcp-range={first},{_last(nw.node_net)},{nw.netmask},1h",
            f"--dhcp-hostsfile={hosts}",
            f"--dhcp-leasefile={self.workdir / 'site-dnsmasq.leases'}",
            f"--dhcp-lease-max={max(1000, 4 * n)}",
            "--log-facility=-", "--quiet-dhcp",
        ]
