"""Private test networks made of Linux network namespaces, veth pairs and bridges.

Every object is created with a unique name prefix and removed by ``close()``
(also when a test fails), so parallel test workers never collide.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

_counter = itertools.count()


def unique_name(prefix: str) -> str:
    """A short interface/namespace name unique to this process (IFNAMSIZ is 15)."""
    return f"{prefix}{os.getpid() % 10000}x{next(_counter)}"[:15]


def stop_process(proc: subprocess.Popen[Any] | None, timeout_s: float = 10.0) -> None:
    """SIGTERM, wait up to ``timeout_s``, then SIGKILL; safe on a process that ended."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout_s)


def run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True)


@dataclass
class Namespace:
    """One network namespace; ``exec`` prefixes commands with ``ip netns exec``."""

    name: str

    @classmethod
    def create(cls, prefix: str = "fb") -> Namespace:
        ns = cls(unique_name(prefix))
        run(["ip", "netns", "add", ns.name])
        ns.ip("link", "set", "lo", "up")
        return ns

    def ip(self, *args: str) -> str:
        return run(["ip", "-n", self.name, *args]).stdout

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(self.exec_argv(argv), check=check)

    def popen(self, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.exec_argv(argv), **kwargs)  # type: ignore[call-overload]

    def delete(self) -> None:
        # Kill anything still running inside so the namespace really goes away.
        pids = run(["ip", "netns", "pids", self.name], check=False).stdout.split()
        for pid in pids:
            run(["kill", "-9", pid], check=False)
        run(["ip", "netns", "del", self.name], check=False)


@dataclass
class Lab:
    """A server namespace and a client namespace joined by a veth pair.

    ``server_ip``/``client_ip`` sit on one /24. Optional ``bridge`` mode puts a
    bridge in the server namespace so tap devices (QEMU NICs) can join it.
    """

    server: Namespace
    client: Namespace
    server_if: str
    client_if: str
    server_ip: str
    client_ip: str
    prefix: int = 24
    bridge: str | None = None
    taps: list[str] = field(default_factory=list)

    @classmethod
    def create(
        cls,
        subnet: str = "10.77.0",
        with_bridge: bool = False,
        mtu: int = 1500,
    ) -> Lab:
        server, client = Namespace.create("fbs"), Namespace.create("fbc")
        s_if, c_if = unique_name("vs"), unique_name("vc")
        try:
            run(["ip", "link", "add", s_if, "type", "veth", "peer", "name", c_if])
            run(["ip", "link", "set", s_if, "netns", server.name])
            run(["ip", "link", "set", c_if, "netns", client.name])
            lab = cls(server, client, s_if, c_if, f"{subnet}.1", f"{subnet}.2")
            server_addr_dev = s_if
            if with_bridge:
                lab.bridge = "br0"
                server.ip("link", "add", "br0", "type", "bridge", "forward_delay", "0")
                server.ip("link", "set", "br0", "type", "bridge", "stp_state", "0")
                server.ip("link", "set", s_if, "master", "br0")
                server.ip("link", "set", "br0", "up")
                server_addr_dev = "br0"
            for ns, dev in ((server, s_if), (client, c_if)):
                ns.ip("link", "set", dev, "mtu", str(mtu))
                ns.ip("link", "set", dev, "up")
            server.ip("addr", "add", f"{lab.server_ip}/24", "dev", server_addr_dev)
            client.ip("addr", "add", f"{lab.client_ip}/24", "dev", c_if)
            return lab
        except Exception:
            server.delete()
            client.delete()
            raise

    @property
    def server_dev(self) -> str:
        return self.bridge or self.server_if

    def add_tap(self) -> str:
        """A tap device on the server bridge, for a QEMU NIC run inside the server ns."""
        assert self.bridge, "create the lab with with_bridge=True"
        tap = f"tap{len(self.taps)}"
        self.server.ip("tuntap", "add", tap, "mode", "tap")
        self.server.ip("link", "set", tap, "master", self.bridge)
        self.server.ip("link", "set", tap, "up")
        self.taps.append(tap)
        return tap

    def netem(self, delay_ms: float) -> None:
        """Delay every packet each way (a LAN-like link) with tc netem."""
        for ns, dev in ((self.server, self.server_if), (self.client, self.client_if)):
            ns.run(["tc", "qdisc", "replace", "dev", dev, "root", "netem", "delay",
                    f"{delay_ms}ms", "limit", "100000"])

    def close(self) -> None:
        self.client.delete()
        self.server.delete()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def have_netns() -> bool:
    """True when we may create namespaces (root with iproute2)."""
    return os.geteuid() == 0 and run(["ip", "-V"], check=False).returncode == 0
