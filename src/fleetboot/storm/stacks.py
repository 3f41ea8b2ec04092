"""The server stacks a storm is run against, started inside the server namespace.

* ``ClassicStack``: dnsmasq for DHCP and TFTP (per-MAC ``dhcp-host`` lines,
  ``--no-ping``, lease file on) and nginx serving the iPXE script, kernel,
  initrd and one static configuration file per node; the UP report is a GET
  that nginx answers with 204 and logs. Obvious limits are raised as an
  operator of a thousand nodes would: dnsmasq's ``tftp-max`` and
  ``dhcp-lease-max``, nginx's ``worker_connections`` and listen backlog.
* ``FleetbootStack``: ``fleetboot serve`` with the same nodes in its inventory.

Both serve byte-identical files (``StormFiles``) on the same addresses.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from fleetboot.errors import FleetbootError
from fleetboot.lab.netns import stop_process
from fleetboot.storm.plan import StormPlan
from fleetboot.storm.topology import StormNet

BOOTFILE = "snponly.efi"
KERNEL = "vmlinuz"
INITRD = "initrd.img"


class StackError(FleetbootError):
    pass


@dataclass(frozen=True)
class StormFiles:
    """The boot program, kernel and initrd every node loads (random bytes)."""

    bootfile: Path
    kernel: Path
    initrd: Path

    @classmethod
    def create(cls, directory: Path, plan: StormPlan) -> StormFiles:
        directory.mkdir(parents=True, exist_ok=True)
        rng = random.Random(plan.seed)
        paths = []
        for name, size in ((BOOTFILE, plan.payload.bootfile), (KERNEL, plan.payload.kernel),
                           (INITRD, plan.payload.initrd)):
            path = directory / name
            if not path.exists() or path.stat().st_size != size:
                path.write_bytes(rng.randbytes(size))
            paths.append(path)
        return cls(*paths)


class Stack(Protocol):
    kind: str
    http_port: int

    def start(self, net: StormNet) -> None: ...

    def stop(self) -> None: ...

    def counters(self) -> dict[str, object]: ...


def link_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def listening(net: StormNet, udp: tuple[int, ...] = (), tcp: tuple[int, ...] = ()) -> bool:
    """True when something in the server namespace listens on all these ports."""
    def ports(flag: str) -> set[int]:
        out = net.server.run(["ss", "-Hln" + flag], check=False).stdout
        found = set()
        for line in out.splitlines():
            fields = line.split()
            if len(fields) >= 4 and fields[3].rpartition(":")[2].isdigit():
                found.add(int(fields[3].rpartition(":")[2]))
        return found

    return set(udp) <= ports("u") and set(tcp) <= ports("t")


def wait_listening(net: StormNet, proc: subprocess.Popen[bytes], log: Path, *,
                   udp: tuple[int, ...] = (), tcp: tuple[int, ...] = (),
                   timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"{proc.args!r} exited with {proc.returncode}: {_tail(log)}")
        if listening(net, udp, tcp):
            return
        time.sleep(0.1)
    raise StackError(f"{proc.args!r} did not listen on udp {udp} tcp {tcp} within "
                     f"{timeout_s:g} s: {_tail(log)}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def namespace_counters(net: StormNet) -> dict[str, int]:
    """The server namespace's UDP and TCP drop counters (buffer overflows, listen drops)."""
    return kernel_counters(net.server.run(["cat", "/proc/net/snmp", "/proc/net/netstat"]).stdout)


def kernel_counters(text: str) -> dict[str, int]:
    """The Udp, Tcp and TcpExt counters of /proc/net/snmp + /proc/net/netstat text. Pure."""
    values: dict[str, int] = {}
    lines = text.splitlines()
    for head, data in zip(lines[::2], lines[1::2], strict=False):
        names, nums = head.split(), data.split()
        if not names or not nums or names[0] != nums[0]:
            continue
        group = names[0].rstrip(":")
        if group not in ("Udp", "Tcp", "TcpExt"):
            continue
        for name, num in zip(names[1:], nums[1:], strict=False):
            if num.lstrip("-").isdigit():
                values[f"{group}.{name}"] = int(num)
    return values


# --- the classic stack ------------------------------------------------------------------------


@dataclass
class ClassicStack:
    """dnsmasq (DHCP + TFTP) and nginx, configured per node from the plan."""

    plan: StormPlan
    files: StormFiles
    workdir: Path
    kind: str = "classic"
    http_port: int = 80
    nginx_workers: str = "auto"
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _net: StormNet | None = None

    def start(self, net: StormNet) -> None:
        self._net = net
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_tree()
        self._write_dnsmasq()
        self._write_nginx()
        log = self.workdir / "dnsmasq.log"
        with log.open("wb") as out:
            dnsmasq = net.server.popen(self._dnsmasq_argv(), stdout=out, stderr=subprocess.STDOUT)
        self._procs.append(dnsmasq)
        nlog = self.workdir / "nginx.stderr"
        with nlog.open("wb") as out:
            nginx = net.server.popen(["nginx", "-p", str(self.workdir), "-c",
                                      str(self.workdir / "nginx.conf"), "-g", "daemon off;"],
                                     stdout=out, stderr=subprocess.STDOUT)
        self._procs.append(nginx)
        wait_listening(net, dnsmasq, log, udp=(67, 69))
        wait_listening(net, nginx, nlog, tcp=(self.http_port,))

    def stop(self) -> None:
        for proc in reversed(self._procs):
            stop_process(proc)
        self._procs.clear()

    @property
    def base_url(self) -> str:
        return f"http://{self.plan.network.server_ip}:{self.http_port}"

    def _write_tree(self) -> None:
        www, tftp = self.workdir / "www", self.workdir / "tftp"
        link_file(self.files.bootfile, tftp / BOOTFILE)
        link_file(self.files.kernel, www / "files" / KERNEL)
        link_file(self.files.initrd, www / "files" / INITRD)
        base = self.base_url
        (www / "boot.ipxe").write_text(
            "#!ipxe\n"
            f"kernel {base}/files/{KERNEL} initrd=initrd console=ttyS0 "
            f"storm.config={base}/config/${{mac:hexhyp}}.json "
            f"storm.report={base}/report/${{mac:hexhyp}} || goto failed\n"
            f"initrd --name initrd {base}/files/{INITRD} || goto failed\n"
            "boot || goto failed\n"
            ":failed\necho boot failed\nexit 1\n")
        config = www / "config"
        config.mkdir(parents=True, exist_ok=True)
        for node in self.plan.nodes:
            doc = static_config(node.name, node.address, self.plan)
            (config / f"{node.mac.replace(':', '-')}.json").write_text(json.dumps(doc))

    def _write_dnsmasq(self) -> None:
        lines = [f"{n.mac},{n.address},{n.name}" for n in self.plan.nodes]
        (self.workdir / "dhcp-hosts").write_text("\n".join(lines) + "\n")

    def _dnsmasq_argv(self) -> list[str]:
        nw, base, n = self.plan.network, self.base_url, self.plan.n
        first = min(self.plan.nodes, key=lambda x: x.index).address
        return [
            "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0",
            f"--interface={self._bridge()}", "--bind-interfaces", "--no-ping",
            f"--dhcp-range={first},{_last(nw.node_net)},{nw.netmask},1h",
            f"--dhcp-hostsfile={self.workdir / 'dhcp-hosts'}",
            f"--dhcp-leasefile={self.workdir / 'dnsmasq.leases'}",
            f"--dhcp-lease-max={max(1000, 4 * n)}",
            "--dhcp-match=set:ipxe,175", "--dhcp-userclass=set:ipxe,iPXE",
            f"--dhcp-boot=tag:!ipxe,{BOOTFILE},,{nw.server_ip}",
            f"--dhcp-boot=tag:ipxe,{base}/boot.ipxe",
            "--enable-tftp", f"--tftp-root={self.workdir / 'tftp'}",
            f"--tftp-max={max(50, 2 * n)}", "--log-facility=-", "--quiet-dhcp", "--quiet-tftp",
        ]

    def _bridge(self) -> str:
        assert self._net is not None
        return self._net.bridge

    def _write_nginx(self) -> None:
        nw = self.plan.network
        for sub in ("logs", "tmp"):
            (self.workdir / sub).mkdir(exist_ok=True)
        (self.workdir / "nginx.conf").write_text(f"""
user root;
worker_processes {self.nginx_workers};
pid {self.workdir}/nginx.pid;
error_log {self.workdir}/logs/error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; }}
http {{
  types {{ application/json json; application/octet-stream efi img; }}
  default_type application/octet-stream;
  access_log {self.workdir}/logs/access.log;
  client_body_temp_path {self.workdir}/tmp/body;
  proxy_temp_path {self.workdir}/tmp/proxy;
  fastcgi_temp_path {self.workdir}/tmp/fastcgi;
  uwsgi_temp_path {self.workdir}/tmp/uwsgi;
  scgi_temp_path {self.workdir}/tmp/scgi;
  sendfile on;
  tcp_nopush on;
  keepalive_timeout 65;
  keepalive_requests 10000;
  server {{
    listen {nw.server_ip}:{self.http_port} backlog=4096;
    root {self.workdir}/www;
    location /report/ {{ return 204; }}
  }}
}}
""")

    def counters(self) -> dict[str, object]:
        counts: dict[str, int] = {}
        log = self.workdir / "logs" / "access.log"
        if log.exists():
            for line in log.read_text(errors="replace").splitlines():
                fields = line.split('"')
                if len(fields) >= 3:
                    request = fields[1].split()
                    status = fields[2].split()[0] if fields[2].split() else "?"
                    path = request[1] if len(request) > 1 else "?"
                    kind = path.split("/")[1] if path.count("/") >= 1 else "?"
                    counts[f"http.{kind}.{status}"] = counts.get(f"http.{kind}.{status}", 0) + 1
        result: dict[str, object] = dict(counts)
        if self._net is not None:
            result.update({f"server.{k}": v for k, v in namespace_counters(self._net).items()})
        return result


def _last(cidr: str) -> str:
    return str(ipaddress.ip_network(cidr).broadcast_address - 1)


def static_config(name: str, address: str, plan: StormPlan) -> dict[str, object]:
    """A node's configuration as a classic set-up would pre-render it."""
    nw = plan.network
    return {
        "hostname": name, "domain": "storm.test",
        "interfaces": [{"name": "eth0", "address": f"{address}/{nw.prefix}", "mtu": 1500}],
        "routes": [], "hosts": {name: address}, "accounts": [], "mounts": [],
        "startup": "", "files": [], "attributes": {},
    }
