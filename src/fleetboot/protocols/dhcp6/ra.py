"""Router advertisements (RFC 4861 4.2) that send hosts to DHCPv6. Pure: bytes out.

Fleetboot is usually not the link's router: the default RA says "managed"
(M flag: get addresses by DHCPv6), "other configuration" (O flag), carries the
served prefixes as on-link (L flag, and A only when SLAAC is wanted too) and a
router lifetime of 0, which tells hosts not to use us as a default router.
The kernel fills in the ICMPv6 checksum of a raw ICMPv6 socket.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

ROUTER_SOLICITATION = 133
ROUTER_ADVERTISEMENT = 134
MANAGED = 0x80
OTHER = 0x40
ON_LINK = 0x80
AUTONOMOUS = 0x40
OPT_SOURCE_LINK_LAYER = 1
OPT_PREFIX_INFO = 3

HEADER = struct.Struct("!BBHBBHII")
PREFIX = struct.Struct("!BBBBIII16s")


def router_advertisement(prefixes: Iterable[tuple[int, int]], mac: bytes | None, *,
                         router_lifetime: int = 0, autonomous: bool = False,
                         valid: int = 86400, preferred: int = 14400) -> bytes:
    """An RA with M and O set and one prefix-information option per ``(network, length)``."""
    out = HEADER.pack(ROUTER_ADVERTISEMENT, 0, 0, 64, MANAGED | OTHER, router_lifetime, 0, 0)
    if mac is not None and len(mac) == 6:
        out += bytes((OPT_SOURCE_LINK_LAYER, 1)) + mac
    flags = ON_LINK | (AUTONOMOUS if autonomous else 0)
    for network, length in prefixes:
        out += PREFIX.pack(OPT_PREFIX_INFO, 4, length, flags, valid, preferred, 0,
                           network.to_bytes(16, "big"))
    return out


def is_router_solicitation(data: bytes) -> bool:
    return len(data) >= 8 and data[0] == ROUTER_SOLICITATION and data[1] == 0
