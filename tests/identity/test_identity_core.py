"""The pure identity core: the link book, the decision, the neighbour codec and the
site-reply parser, tested directly and fuzzed (issue 21 item 1, issue 11 item 1)."""

from __future__ import annotations

import contextlib
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetboot.identity.core import (
    ACKNOWLEDGED,
    BOOT_SERVER,
    REQUESTED,
    Evidence,
    LinkBook,
    decide,
)
from fleetboot.identity.neighbours import (
    NDMSG,
    NLMSGHDR,
    RTATTR,
    RTM_NEWNEIGH,
    RTMSG,
    NeighbourDecodeError,
    get_request,
    parse_events,
    parse_proc_arp,
    parse_reply,
    parse_route,
    route_request,
)
from fleetboot.protocols.dhcp import options as o
from fleetboot.protocols.dhcp.codec import DhcpPacket, encode
from fleetboot.server.dhcpwatch import apply_reply, parse_frame

A, B = "52:54:00:00:00:0a", "52:54:00:00:00:0b"
X = "10.0.0.50"
macs = st.sampled_from([A, B, "52:54:00:00:00:0c"])
addresses = st.sampled_from([X, "10.0.0.51", "10.0.0.52"])


# --- the link book ------------------------------------------------------------------


def test_a_sighting_with_another_mac_replaces_the_binding() -> None:
    book = LinkBook()
    book.saw(ACKNOWLEDGED, B, X, 100.0, "10.0.0.1", 3600)
    book.saw(REQUESTED, A, X, 200.0, "10.0.0.1")
    held = book.holder(X, 201.0)
    assert held is not None and held.mac == A and held.how == REQUESTED
    assert book.counters["moved"] == 1


def test_a_renewal_keeps_what_was_proven_and_drops_end_it() -> None:
    book = LinkBook(hold_s=10.0)
    book.saw(ACKNOWLEDGED, B, X, 100.0, "10.0.0.1", 5)
    again = book.saw(REQUESTED, B, X, 105.0)
    assert again.how == ACKNOWLEDGED and again.server == "10.0.0.1" and again.until == 115.0
    assert book.holder(X, 116.0) is None  # held hold_s after the last sighting
    book.saw(BOOT_SERVER, B, X, 120.0)
    assert book.drop(A, X) == 0 and book.holder(X, 121.0) is not None  # not A's to drop
    assert book.drop(B) == 1 and book.holder(X, 121.0) is None


def test_the_book_is_bounded() -> None:
    book = LinkBook(limit=3)
    for i in range(10):
        book.saw(REQUESTED, A, f"10.0.0.{i}", float(i))
    assert len(book) == 3 and book.holder("10.0.0.9", 10.0) is not None
    assert book.holder("10.0.0.0", 10.0) is None


@given(st.lists(st.tuples(st.sampled_from([REQUESTED, ACKNOWLEDGED, BOOT_SERVER, "drop"]),
                          macs, addresses), max_size=40))
def test_the_holder_is_always_the_last_mac_seen_with_the_address(
        steps: list[tuple[str, str, str]]) -> None:
    book = LinkBook()
    last: dict[str, str | None] = {}
    for i, (how, mac, addr) in enumerate(steps):
        if how == "drop":
            book.drop(mac, addr)
            if last.get(addr) == mac:
                last[addr] = None
        else:
            book.saw(how, mac, addr, float(i))
            last[addr] = mac
    for addr, mac in last.items():
        held = book.holder(addr, float(len(steps)))
        assert (held.mac if held else None) == mac


# --- the decision -------------------------------------------------------------------


def test_normal_mode_a_taken_over_address_is_refused() -> None:
    """Issue 11 item 1: A answers for B's leased address at the link layer."""
    v = decide(Evidence(X, proxy=False, link_mac=A, lease_mac=B))
    assert v.mac is None and v.reason == "link_mismatch" and A in v.detail and B in v.detail
    ok = decide(Evidence(X, proxy=False, link_mac=B, lease_mac=B))
    assert ok.mac == B and ok.reason == "link"


def test_normal_mode_without_a_lease_or_a_link_entry_nobody_is_named() -> None:
    assert decide(Evidence(X, proxy=False, link_mac=A)).reason == "no_lease"
    assert decide(Evidence(X, proxy=False, lease_mac=B)).reason == "no_link_address"
    routed = decide(Evidence(X, proxy=False, on_link=False, lease_mac=B))
    assert routed.mac == B and routed.reason == "routed_lease"  # a relay's client


def test_proxy_mode_never_uses_leases() -> None:
    """Issue 21: a lease from before proxy mode gives no identity."""
    v = decide(Evidence(X, proxy=True, link_mac=A, lease_mac=A))
    assert v.mac is None and v.reason == "not_seen"


def test_proxy_mode_binds_the_link_mac_the_dhcp_traffic_tied_to_the_address() -> None:
    book = LinkBook()
    seen = book.saw(ACKNOWLEDGED, B, X, 1.0, "10.0.0.1", 3600)
    assert decide(Evidence(X, proxy=True, link_mac=B, seen=seen)).mac == B
    stolen = decide(Evidence(X, proxy=True, link_mac=A, seen=seen))
    assert stolen.mac is None and stolen.reason == "link_mismatch"
    routed = decide(Evidence(X, proxy=True, on_link=False, seen=seen))
    assert routed.mac is None and routed.reason == "routed"  # an ACK can be forged from afar
    # The machine's own broadcast from 0.0.0.0 can only come from the link.
    own = LinkBook().saw(REQUESTED, B, X, 1.0, from_link=True)
    assert decide(Evidence(X, proxy=True, on_link=False, seen=own)).mac == B
    again = LinkBook()
    again.saw(REQUESTED, B, X, 1.0, from_link=True)
    assert again.saw(ACKNOWLEDGED, B, X, 2.0).from_link  # kept for the same MAC
    assert not again.saw(REQUESTED, A, X, 3.0).from_link  # not for another one


def test_the_url_claim_must_agree() -> None:
    seen = LinkBook().saw(REQUESTED, B, X, 1.0)
    assert decide(Evidence(X, proxy=True, link_mac=B, seen=seen, claimed_mac=B)).mac == B
    v = decide(Evidence(X, proxy=True, link_mac=B, seen=seen, claimed_mac=A))
    assert v.mac is None and v.reason == "claim_mismatch"
    local = decide(Evidence("127.0.0.1", proxy=False, local=True, lease_mac=B, claimed_mac=A))
    assert local.mac is None


@given(st.booleans(), st.booleans(), st.booleans(), st.one_of(st.none(), macs),
       st.one_of(st.none(), macs), st.one_of(st.none(), macs), st.one_of(st.none(), macs),
       st.booleans())
def test_a_verdict_never_names_a_mac_the_evidence_contradicts(
        proxy: bool, local: bool, on_link: bool, link: str | None, lease: str | None,
        seen_mac: str | None, claim: str | None, from_link: bool) -> None:
    seen = LinkBook().saw(REQUESTED, seen_mac, X, 0.0, from_link=from_link) \
        if seen_mac else None
    v = decide(Evidence(X, proxy, local, on_link, link, lease, seen, claim))
    if v.mac is None:
        return
    expected = seen_mac if proxy else lease
    assert v.mac == expected  # only Fleetboot's own lease / the link's DHCP names a node
    if not local and on_link:
        assert link == v.mac
    if claim is not None:
        assert claim == v.mac
    if proxy and not local and not on_link:
        assert seen is not None and seen.from_link


# --- the neighbour table codec -------------------------------------------------------


def _reply(seq: int, address: str, mac: bytes | None, state: int = 0x02) -> bytes:
    attrs = RTATTR.pack(8, 1) + socket.inet_aton(address)
    if mac is not None:
        attrs += RTATTR.pack(10, 2) + mac + b"\0\0"
    body = NDMSG.pack(socket.AF_INET, 0, 0, 3, state, 0, 1) + attrs
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), RTM_NEWNEIGH, 0, seq, 0) + body


def test_neighbour_get_round_trip() -> None:
    req = get_request(7, 3, X)
    length, kind, flags, seq, _ = NLMSGHDR.unpack_from(req)
    assert (length, kind, flags, seq) == (len(req), 30, 1, 7)
    entry = parse_reply(_reply(7, X, bytes.fromhex("52540000000b")), 7)
    assert entry is not None and entry.address == X and entry.mac == B
    with pytest.raises(NeighbourDecodeError):  # only an answer to another request
        parse_reply(_reply(8, X, bytes.fromhex("52540000000b")), 7)
    failed = parse_reply(_reply(7, X, bytes.fromhex("525400000001"), state=0x20), 7)
    assert failed is not None and failed.mac is None  # FAILED: no usable address
    enoent = NLMSGHDR.pack(NLMSGHDR.size + 4, 2, 0, 7, 0) + struct.pack("=i", -2)
    assert parse_reply(enoent, 7) is None


def _route(seq: int, oif: int, gateway: str | None, kind: int = 1) -> bytes:
    attrs = RTATTR.pack(8, 4) + struct.pack("=I", oif)
    if gateway:
        attrs += RTATTR.pack(8, 5) + socket.inet_aton(gateway)
    body = RTMSG.pack(socket.AF_INET, 32, 0, 0, 254, 0, 0, kind, 0) + attrs
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), 24, 0, seq, 0) + body


def test_a_peer_behind_a_gateway_is_not_on_the_link() -> None:
    """The storm's nodes (and a relay's clients) are reached through a router: their
    neighbour entry would be the router's, so they are not checked against it."""
    assert NLMSGHDR.unpack_from(route_request(4, X))[1] == 26
    direct = parse_route(_route(4, 3, None), 4)
    assert direct is not None and direct.direct_on([3]) and not direct.direct_on([5])
    routed = parse_route(_route(4, 3, "10.0.0.2"), 4)
    assert routed is not None and not routed.direct_on([3])
    local = parse_route(_route(4, 1, None, kind=2), 4)
    assert local is not None and not local.direct_on([1])
    unreachable = NLMSGHDR.pack(NLMSGHDR.size + 4, 2, 0, 4, 0) + struct.pack("=i", -101)
    assert parse_route(unreachable, 4) is None


def test_change_notifications_update_neighbours_and_flag_route_changes() -> None:
    new = _reply(0, X, bytes.fromhex("52540000000a"))
    gone = bytearray(_reply(0, X, bytes.fromhex("52540000000a")))
    gone[4:6] = struct.pack("=H", 29)  # RTM_DELNEIGH
    route = _route(0, 3, None)
    events = parse_events(new + bytes(gone) + route + b"\x01\x02")  # a torn tail is ignored
    assert [(w, i, e.mac if e else None) for w, i, e in events] == [
        ("neigh", 3, A), ("neigh", 3, None), ("route", 0, None)]


@given(st.binary(max_size=200), st.integers(0, 10))
def test_neighbour_replies_never_raise_anything_but_decode_errors(data: bytes, seq: int) -> None:
    with contextlib.suppress(NeighbourDecodeError, OSError):
        parse_reply(data, seq)
    with contextlib.suppress(NeighbourDecodeError, OSError):
        parse_route(data, seq)
    parse_events(data)


def test_proc_arp_keeps_complete_entries_of_the_serving_interfaces() -> None:
    text = ("IP address HW type Flags HW address Mask Device\n"
            f"{X} 0x1 0x2 52:54:00:00:00:0B * br0\n"
            "10.0.0.51 0x1 0x0 00:00:00:00:00:00 * br0\n"
            "10.0.0.52 0x1 0x2 52:54:00:00:00:0c * eth9\n")
    assert parse_proc_arp(text, ["br0"]) == {X: B}


# --- the site server's replies ---------------------------------------------------------


def _frame(mt: int, yiaddr: int, server: str = "10.0.0.1", sport: int = 67) -> bytes:
    payload = encode(DhcpPacket(op=o.BOOTREPLY, xid=9, yiaddr=yiaddr,
                                chaddr=bytes.fromhex(B.replace(":", "")).ljust(16, b"\0"),
                                options={o.MESSAGE_TYPE: bytes([mt]),
                                         o.SERVER_ID: socket.inet_aton(server),
                                         o.LEASE_TIME: struct.pack("!I", 3600)}))
    udp = struct.pack("!HHHH", sport, 68, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     socket.inet_aton(server), b"\xff" * 4)
    return b"\xff" * 6 + bytes(6) + b"\x08\x00" + ip + udp


def test_an_ack_seen_binds_and_a_nak_drops() -> None:
    book = LinkBook()
    ack = parse_frame(_frame(o.ACK, o.ip_int(X)))
    assert ack is not None and (ack.kind, ack.mac, ack.address, ack.server, ack.lease_s) == (
        "ACK", B, X, "10.0.0.1", 3600)
    assert apply_reply(book, ack, 1.0)
    held = book.holder(X, 2.0)
    assert held is not None and held.how == ACKNOWLEDGED and held.server == "10.0.0.1"
    nak = parse_frame(_frame(o.NAK, 0))
    assert nak is not None and apply_reply(book, nak, 3.0) and book.holder(X, 3.0) is None


@given(st.binary(max_size=400))
def test_frames_never_raise(frame: bytes) -> None:
    parse_frame(frame)
    parse_frame(b"\0" * 12 + b"\x08\x00" + frame)


# --- the resolver (evidence gathering) ---------------------------------------------------


class _Neighbours:
    def __init__(self, table: dict[str, str], routed: frozenset[str] = frozenset()) -> None:
        self.table, self.routed = table, routed

    def lookup(self, address: str) -> str | None:
        return self.table.get(address)

    def on_link(self, address: str) -> bool:
        return address not in self.routed


class _Leases:
    def __init__(self, table: dict[str, str]) -> None:
        self.table = table

    def mac_for_address(self, address: str) -> str | None:
        return self.table.get(address)


def test_the_resolver_gathers_the_evidence_and_counts_verdicts() -> None:
    from fleetboot.identity.resolver import IdentityResolver

    leases = _Leases({X: B, "127.0.0.1": B, "10.9.0.5": A})
    neigh = _Neighbours({X: A}, routed={"10.9.0.5"})
    normal = IdentityResolver(proxy=False, leases=leases, book=LinkBook(), neighbours=neigh,
                              clock=lambda: 5.0)
    assert normal.mac_for_address(X) is None and "link_mismatch" in str(normal.counters)
    assert normal.mac_for_address("::ffff:127.0.0.1") == B  # loopback: the lease alone
    assert normal.mac_for_address("10.9.0.5") == A  # routed: the lease alone
    assert normal.identify("127.0.0.1", "not-a-mac").reason == "claim_mismatch"
    neigh.table[X] = B
    assert normal.identify(X, B.upper()).mac == B
    book = LinkBook()
    proxy = IdentityResolver(proxy=True, leases=leases, book=book, neighbours=neigh,
                             clock=lambda: 5.0)
    assert proxy.mac_for_address(X) is None and "no DHCP exchange" in proxy.explain(X)
    book.saw(REQUESTED, B, X, 4.0)
    assert proxy.mac_for_address(X) == B
    assert proxy.counters == {"refused.not_seen": 1, "ok.link_seen": 1}  # explain: uncounted
