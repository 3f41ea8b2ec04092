"""Helpers for the DHCPv6 tests: crafted client messages and a small inventory."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetboot.inventory.db import Database
from fleetboot.inventory.models import Interface, Node, Pool6, Reservation6, Subnet6
from fleetboot.lab.netns import Lab
from fleetboot.protocols.dhcp6 import codec as c
from fleetboot.protocols.dhcp6 import options as o
from fleetboot.protocols.dhcp6.codec import Dhcp6Message, encode
from fleetboot.protocols.dhcp6.view import Dhcp6View, build_view6

PREFIX = "fd00:77::/64"
SERVER = o.ip6_int("fd00:77::1")
SERVER_DUID = c.duid_ll(bytes.fromhex("020000000001"))
MAC = bytes.fromhex("525400123456")
DUID = b"\x00\x01\x00\x01" + b"\x2a\x2b\x2c\x2d" + MAC  # DUID-LLT of MAC
LINK_LOCAL = o.ip6_int("fe80::5054:ff:fe12:3456")  # EUI-64 of MAC


def view(reservations: list[dict[str, Any]] | None = None,
         interfaces: list[dict[str, Any]] | None = None, pool: tuple[str, str] = (
             "fd00:77::1000", "fd00:77::1fff")) -> Dhcp6View:
    return build_view6(
        [{"id": 1, "name": "lab6", "prefix": PREFIX, "dns_servers": ["fd00:77::53"],
          "domains": ["lab.test"], "valid_seconds": 3600, "preferred_seconds": 1800}],
        [{"subnet_id": 1, "start": pool[0], "end": pool[1]}],
        reservations or [], interfaces or [])


def message(mt: int, duid: bytes | None = DUID, xid: int = 0x123456, *,
            iaids: tuple[int, ...] = (1,), addrs: tuple[int, ...] = (),
            server: bytes | None = None, extra: list[tuple[int, bytes]] | None = None) -> bytes:
    opts: list[tuple[int, bytes]] = []
    if duid is not None:
        opts.append((o.CLIENTID, duid))
    if server is not None:
        opts.append((o.SERVERID, server))
    for iaid in iaids:
        inner = [(o.IAADDR, c.iaaddr(a, 0, 0)) for a in addrs]
        opts.append((o.IA_NA, c.ia_na(iaid, 0, 0, inner)))
    opts.append((o.ORO, b"\x00\x17\x00\x18\x00\x3b"))
    opts.extend(extra or [])
    return encode(Dhcp6Message(mt, xid, opts))


def pxe_options(arch: int = 7) -> list[tuple[int, bytes]]:
    vendor = o.U32.pack(343) + c.opaque_list((b"PXEClient:Arch:00007:UNDI:003016",))
    return [(o.VENDOR_CLASS, vendor), (o.CLIENT_ARCH_TYPE, o.U16.pack(arch))]


def ipxe_options() -> list[tuple[int, bytes]]:
    return [(o.USER_CLASS, c.opaque_list((b"iPXE",))), *pxe_options()]


def addresses(data: bytes) -> list[int]:
    msg = c.decode(data)
    assert isinstance(msg, Dhcp6Message)
    return [a.addr for code, v in msg.options if code == o.IA_NA
            for a in c.parse_ia_na(v).addresses if a.valid]


# --- namespaces, inventory and the server process ------------------------------------------------



SERVER_ADDR = "fd00:77::1"


def wait_dad(lab: Lab, timeout: float = 10.0) -> None:
    """Wait until no address in either namespace is tentative (DAD done)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = [ns.ip("-6", "addr", "show", "tentative") for ns in (lab.server, lab.client)]
        if not any(text.strip() for text in busy):
            return
        time.sleep(0.1)
    raise RuntimeError("IPv6 duplicate address detection did not finish")


def add_ipv6(lab: Lab) -> None:
    lab.server.ip("-6", "addr", "add", f"{SERVER_ADDR}/64", "dev", lab.server_dev, "nodad")
    wait_dad(lab)


@dataclass
class Inventory6:
    prefix: str = "fd00:77::/64"
    pools: list[tuple[str, str]] = field(
        default_factory=lambda: [("fd00:77::1000", "fd00:77::ffff")])
    valid_seconds: int = 3600
    reservations: list[dict[str, str]] = field(default_factory=list)
    nodes: list[tuple[str, str]] = field(default_factory=list)  # (name, boot MAC)

    def write(self, db: Database) -> None:
        with db.session() as s:
            subnet = Subnet6(name="lab6", prefix=self.prefix, dns_servers=["fd00:77::53"],
                             domains=["lab.test"], valid_seconds=self.valid_seconds,
                             preferred_seconds=self.valid_seconds * 5 // 6)
            subnet.pools = [Pool6(start=a, end=b) for a, b in self.pools]
            subnet.reservations = [Reservation6(**r) for r in self.reservations]
            s.add(subnet)
            for name, mac in self.nodes:
                node = Node(name=name)
                node.interfaces = [Interface(name="eth0", mac=mac, is_boot=True)]
                s.add(node)


@dataclass
class Server6:
    """``python -m fleetboot.server.dhcp6`` inside the lab's server namespace."""

    lab: Lab
    workdir: Path
    settings: dict[str, Any]
    db_path: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def stats_path(self) -> Path:
        return self.workdir / "stats6.json"

    @property
    def events_path(self) -> Path:
        return self.workdir / "events6.jsonl"

    def start(self, timeout: float = 20.0) -> Server6:
        ready = self.workdir / f"ready6-{self.starts}"
        self.starts += 1
        argv = [sys.executable, "-m", "fleetboot.server.dhcp6", "--db",
                f"sqlite:///{self.db_path}", "--settings", json.dumps(self.settings),
                "--ready", str(ready), "--stats", str(self.stats_path),
                "--events", str(self.events_path), "--log-level", "INFO"]
        log = open(self.workdir / "server6.log", "ab")  # noqa: SIM115 - owned by the process
        self.process = self.lab.server.popen(argv, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("DHCPv6 server did not start:\n" + self.log())
            time.sleep(0.05)
        return self

    def log(self) -> str:
        path = self.workdir / "server6.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> dict[str, int]:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=15)
        self.process = None
        return json.loads(self.stats_path.read_text()) if self.stats_path.exists() else {}

    def kill9(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        self.process = None

    def events(self) -> list[dict[str, Any]]:
        if not self.events_path.exists():
            return []
        return [json.loads(line) for line in self.events_path.read_text().splitlines()
                if line.endswith("}")]

    def __enter__(self) -> Server6:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def start_server6(lab: Lab, tmp_path: Path, inventory: Inventory6 | None = None,
                  **settings: Any) -> Server6:
    add_ipv6(lab)
    db_path = tmp_path / "fleetboot.db"
    db = Database(f"sqlite:///{db_path}")
    db.create_schema()
    (inventory or Inventory6()).write(db)
    db.dispose()
    return Server6(lab, tmp_path, {"interfaces": [lab.server_dev], **settings}, db_path).start()


def lease6_rows(db_path: Path) -> dict[str, tuple[str, int, str | None]]:
    """address -> (duid, iaid, mac) of every ``leases6`` row."""
    import sqlite3

    with sqlite3.connect(db_path) as conn:
        return {a: (d, i, m) for a, d, i, m in
                conn.execute("SELECT address, duid, iaid, mac FROM leases6").fetchall()}


DHCLIENT6_SCRIPT = """#!/bin/sh
# Configures the address only: Debian's dhclient-script would also rewrite the host's
# /etc/resolv.conf (ip netns exec does not isolate /etc). Logs what it was given.
echo "$reason ${new_ip6_address:-} ${new_dhcp6_name_servers:-}" >> "%(log)s"
case "$reason" in
  BOUND6|RENEW6|REBIND6|REBOOT6)
    if [ -n "$new_ip6_address" ]; then
      ip -6 addr replace "$new_ip6_address/$new_ip6_prefixlen" dev "$interface" \\
        valid_lft "$new_max_life" preferred_lft "$new_preferred_life"
    fi ;;
  RELEASE6|EXPIRE6|STOP6)
    if [ -n "$old_ip6_address" ]; then
      ip -6 addr del "$old_ip6_address/$old_ip6_prefixlen" dev "$interface"
    fi ;;
esac
exit 0
"""


def dhclient6_files(tmp_path: Path) -> tuple[list[str], Path]:
    """dhclient's -lf/-pf/-sf arguments (our own script) and the script's log file."""
    log = tmp_path / "dhclient6.log"
    script = tmp_path / "dhclient6.sh"
    script.write_text(DHCLIENT6_SCRIPT % {"log": log})
    script.chmod(0o755)
    return ["-lf", str(tmp_path / "dhclient6.leases"), "-pf", str(tmp_path / "dhclient6.pid"),
            "-sf", str(script)], log
