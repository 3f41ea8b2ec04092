"""Helpers for the DHCP tests: crafted client packets, sockets inside a namespace,
the inventory, and the DHCP service run as its own process in a lab namespace."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetboot.inventory.db import Database
from fleetboot.inventory.models import Interface, Node, Pool, Reservation, Subnet
from fleetboot.lab.netns import Lab, Namespace
from fleetboot.protocols.dhcp import options as o
from fleetboot.protocols.dhcp.codec import DhcpPacket, decode, encode

CLONE_NEWNET = 0x40000000
PRL = bytes([1, 3, 6, 12, 15, 28, 43, 60, 66, 67])


HEADER_FIELDS = ("flags", "ciaddr", "giaddr", "secs")


def packet(mt: int, mac: bytes | str, xid: int = 0x1234, /, **kw: Any) -> bytes:
    """A client message. Keywords: header fields ``flags``, ``ciaddr``, ``giaddr``,
    ``secs``, and options as ``o<code>=bytes`` (e.g. ``o60=b"PXEClient"``)."""
    raw = mac if isinstance(mac, bytes) else bytes.fromhex(mac.replace(":", ""))
    head = {k: int(kw.pop(k, 0)) for k in HEADER_FIELDS}
    options = {o.MESSAGE_TYPE: bytes([mt]), o.PARAMETER_REQUEST_LIST: PRL}
    options.update({int(k[1:]): bytes(v) for k, v in kw.items()})
    return encode(DhcpPacket(xid=xid, secs=head["secs"], flags=head["flags"],
                             ciaddr=head["ciaddr"], giaddr=head["giaddr"],
                             chaddr=raw.ljust(16, b"\0"), options=options))


def arch(code: int) -> bytes:
    return code.to_bytes(2, "big")


def ns_socket(ns: Namespace, port: int, device: str | None = None) -> socket.socket:
    """A UDP socket created inside ``ns`` (a helper thread enters the namespace: setns
    changes only the calling thread, and a socket keeps its namespace for life)."""
    result: dict[str, Any] = {}

    def make() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/var/run/netns/{ns.name}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns failed")
            finally:
                os.close(fd)
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            if device:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
            sock.bind(("0.0.0.0", port))
            result["sock"] = sock
        except Exception as exc:
            result["error"] = exc

    thread = threading.Thread(target=make)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    sock = result["sock"]
    sock.settimeout(3.0)
    return sock


def exchange(sock: socket.socket, data: bytes, dest: tuple[str, int], xid: int,
             timeout: float = 3.0) -> DhcpPacket | None:
    """Send one message and return the reply with the same xid (None on timeout)."""
    sock.sendto(data, dest)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            raw, _ = sock.recvfrom(4096)
        except TimeoutError:
            return None
        reply = decode(raw)
        if reply.xid == xid:
            return reply
    return None


# --- inventory ------------------------------------------------------------------------------------

@dataclass
class NodeSpec:
    name: str
    macs: list[str]
    boot_index: int = 0
    arch: str = "x86_64"


@dataclass
class Inventory:
    cidr: str = "10.77.0.0/24"
    pools: list[tuple[str, str]] = field(default_factory=lambda: [("10.77.0.100",
                                                                   "10.77.0.199")])
    router: str | None = "10.77.0.1"
    next_server: str | None = "10.77.0.1"
    lease_seconds: int = 3600
    reservations: list[tuple[str, str, str | None]] = field(default_factory=list)
    nodes: list[NodeSpec] = field(default_factory=list)

    def write(self, db: Database) -> None:
        with db.session() as s:
            subnet = Subnet(name="lab", cidr=self.cidr, router=self.router,
                            dns_servers=["10.77.0.1"], domain="lab.test",
                            lease_seconds=self.lease_seconds, next_server=self.next_server)
            subnet.pools = [Pool(start=a, end=b) for a, b in self.pools]
            subnet.reservations = [Reservation(mac=m, address=a, hostname=h)
                                   for m, a, h in self.reservations]
            s.add(subnet)
            for spec in self.nodes:
                node = Node(name=spec.name, arch=spec.arch)
                node.interfaces = [Interface(name=f"eth{i}", mac=m, is_boot=i == spec.boot_index)
                                   for i, m in enumerate(spec.macs)]
                s.add(node)


def lease_rows(db_path: Path) -> dict[str, str]:
    """address -> mac of every lease row (read with plain sqlite3: no engine to dispose)."""
    import sqlite3

    with sqlite3.connect(db_path) as conn:
        return dict(conn.execute("SELECT address, mac FROM leases").fetchall())


def mac_of(ns: Namespace, dev: str) -> str:
    return ns.run(["cat", f"/sys/class/net/{dev}/address"]).stdout.strip()


# --- the server process ------------------------------------------------------------------

@dataclass
class ServerProcess:
    """``python -m fleetboot.server.dhcp`` inside the lab's server namespace."""

    lab: Lab
    workdir: Path
    settings: dict[str, Any]
    db_path: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def events_path(self) -> Path:
        return self.workdir / "events.jsonl"

    @property
    def stats_path(self) -> Path:
        return self.workdir / "stats.json"

    def start(self, timeout: float = 20.0) -> ServerProcess:
        ready = self.workdir / f"ready{self.starts}"
        self.starts += 1
        argv = [sys.executable, "-m", "fleetboot.server.dhcp", "--db",
                f"sqlite:///{self.db_path}", "--settings", json.dumps(self.settings),
                "--ready", str(ready), "--events", str(self.events_path),
                "--stats", str(self.stats_path), "--log-level", "INFO"]
        log = open(self.workdir / "server.log", "ab")  # noqa: SIM115 - owned by the process
        self.process = self.lab.server.popen(argv, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("DHCP server did not start:\n" + self.log())
            time.sleep(0.05)
        return self

    def log(self) -> str:
        path = self.workdir / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> dict[str, int]:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=15)
        self.process = None
        return json.loads(self.stats_path.read_text()) if self.stats_path.exists() else {}

    def kill9(self) -> None:
        assert self.process is not None
        self.process.kill()  # SIGKILL: no cleanup, no flush
        self.process.wait()
        self.process = None

    def events(self) -> list[dict[str, Any]]:
        if not self.events_path.exists():
            return []
        return [json.loads(line) for line in self.events_path.read_text().splitlines()
                if line.endswith("}")]

    def wait_event(self, match: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events():
                if all(event.get(k) == v for k, v in match.items()):
                    return event
            time.sleep(0.1)
        raise AssertionError(f"no DHCP event like {match}; saw {self.events()[-10:]}\n"
                             + self.log()[-2000:])

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def wait_until(check: Any, timeout: float = 10.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)

