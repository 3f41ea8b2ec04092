"""Helpers for the DHCPv6 tests: crafted client messages and a small inventory."""

from __future__ import annotations

from typing import Any

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
