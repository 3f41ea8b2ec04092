"""Router advertisements as built (RFC 4861 4.2 and 4.6.2), byte by byte."""

from __future__ import annotations

from fleetboot.protocols.dhcp6.options import ip6_int
from fleetboot.protocols.dhcp6.ra import (
    HEADER,
    PREFIX,
    is_router_solicitation,
    router_advertisement,
)

MAC = bytes.fromhex("525400123456")


def test_managed_ra_with_prefix_and_source_link_layer_address() -> None:
    data = router_advertisement([(ip6_int("fd00:77::"), 64)], MAC, router_lifetime=0)
    kind, code, _sum, hops, flags, lifetime, _reach, _retrans = HEADER.unpack_from(data)
    assert (kind, code, hops, lifetime) == (134, 0, 64, 0)
    assert flags == 0x80 | 0x40  # managed and other configuration
    assert data[HEADER.size:HEADER.size + 8] == b"\x01\x01" + MAC
    (opt, length, plen, pflags, valid, preferred, _r, prefix) = PREFIX.unpack_from(
        data, HEADER.size + 8)
    assert (opt, length, plen) == (3, 4, 64)
    assert pflags == 0x80  # on-link, no SLAAC unless asked
    assert preferred <= valid and prefix == ip6_int("fd00:77::").to_bytes(16, "big")
    assert len(data) == HEADER.size + 8 + 32


def test_autonomous_flag_and_no_mac() -> None:
    data = router_advertisement([(ip6_int("2001:db8::"), 64)], None, autonomous=True,
                                router_lifetime=1800)
    assert HEADER.unpack_from(data)[5] == 1800
    assert PREFIX.unpack_from(data, HEADER.size)[3] == 0x80 | 0x40


def test_router_solicitation_is_recognised() -> None:
    assert is_router_solicitation(bytes((133, 0)) + bytes(6))
    assert not is_router_solicitation(bytes((134, 0)) + bytes(14))
    assert not is_router_solicitation(b"\x85")
