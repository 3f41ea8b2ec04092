"""The DHCPv6 engine: the four-message exchange, rapid commit, renew/rebind/release/
decline/confirm/information-request, relays, reservations by DUID and by MAC,
boot URLs by architecture, and malformed input counted and dropped (fuzzed)."""

from __future__ import annotations

from typing import Any

from dhcp6_helpers import (
    DUID,
    LINK_LOCAL,
    MAC,
    SERVER,
    SERVER_DUID,
    addresses,
    ipxe_options,
    message,
    pxe_options,
    view,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetboot.protocols.dhcp6 import codec as c
from fleetboot.protocols.dhcp6 import options as o
from fleetboot.protocols.dhcp6.codec import Dhcp6Message, RelayMessage
from fleetboot.protocols.dhcp6.engine import Dhcp6Engine, Reply6, eui64_mac
from fleetboot.protocols.dhcp6.settings import Dhcp6Settings
from fleetboot.protocols.dhcp6.view import Dhcp6View

NOW = 1_000_000.0
LOCAL = (SERVER,)


def engine(v: Dhcp6View | None = None, **kw: Any) -> Dhcp6Engine:
    return Dhcp6Engine(Dhcp6Settings(**kw), v or view(), SERVER_DUID)


def reply(e: Dhcp6Engine, data: bytes, source: int = LINK_LOCAL, now: float = NOW) -> Reply6:
    out = e.handle(data, LOCAL, source, now)
    assert out is not None, e.counters
    assert out.data is not None
    return out


def decoded(r: Reply6) -> Dhcp6Message:
    assert r.data is not None
    msg = c.decode(r.data)
    assert isinstance(msg, Dhcp6Message)
    return msg


def status_of(msg: Dhcp6Message) -> int | None:
    raw = msg.get(o.STATUS_CODE)
    return o.U16.unpack_from(raw)[0] if raw else None


def test_solicit_advertise_request_reply() -> None:
    e = engine()
    adv = reply(e, message(o.SOLICIT))
    msg = decoded(adv)
    assert msg.msg_type == o.ADVERTISE and msg.xid == 0x123456
    assert msg.get(o.SERVERID) == SERVER_DUID and msg.get(o.CLIENTID) == DUID
    assert msg.get(o.PREFERENCE) == b"\xff"
    offered = addresses(adv.data or b"")
    assert offered == [o.ip6_int("fd00:77::1000")] and adv.records == ()
    assert msg.get(o.DNS_SERVERS) == o.ip6_bytes(o.ip6_int("fd00:77::53"))
    assert msg.get(o.DOMAIN_LIST) == b"\x03lab\x04test\x00"
    rep = reply(e, message(o.REQUEST, server=SERVER_DUID, addrs=tuple(offered)))
    assert decoded(rep).msg_type == o.REPLY
    assert addresses(rep.data or b"") == offered
    (record,) = rep.records
    assert record.op == "bind" and record.addr == offered[0] and record.client_id == MAC
    assert record.expires == NOW + 3600
    # The MAC learnt from the DUID makes the lease visible to HTTP/TFTP lookups.
    assert e.mac_for_address(offered[0], NOW + 1) == MAC


def test_rapid_commit_replies_at_once_with_a_durable_lease() -> None:
    e = engine()
    rep = reply(e, message(o.SOLICIT, extra=[(o.RAPID_COMMIT, b"")]))
    msg = decoded(rep)
    assert msg.msg_type == o.REPLY and msg.has(o.RAPID_COMMIT) and len(rep.records) == 1
    off = engine(rapid_commit=False)
    assert decoded(reply(off, message(o.SOLICIT, extra=[(o.RAPID_COMMIT, b"")]))).msg_type \
        == o.ADVERTISE


def test_two_ias_get_two_addresses_and_clients_never_share() -> None:
    e = engine()
    rep = reply(e, message(o.SOLICIT, iaids=(1, 2), extra=[(o.RAPID_COMMIT, b"")]))
    first = addresses(rep.data or b"")
    assert len(set(first)) == 2
    other = b"\x00\x03\x00\x01" + bytes.fromhex("525400000002")
    second = addresses(reply(e, message(o.SOLICIT, other, extra=[(o.RAPID_COMMIT, b"")])).data
                       or b"")
    assert not set(first) & set(second)


def test_renew_extends_and_unknown_binding_is_reported() -> None:
    e = engine()
    addr = addresses(reply(e, message(o.SOLICIT, extra=[(o.RAPID_COMMIT, b"")])).data or b"")
    rep = reply(e, message(o.RENEW, server=SERVER_DUID, addrs=tuple(addr)), now=NOW + 1000)
    assert addresses(rep.data or b"") == addr and rep.records[0].expires == NOW + 1000 + 3600
    stranger = b"\x00\x03\x00\x01" + bytes.fromhex("525400000009")
    rep = reply(e, message(o.RENEW, stranger, server=SERVER_DUID, addrs=tuple(addr)))
    ia = c.parse_ia_na(decoded(rep).get(o.IA_NA) or b"")
    assert o.U16.unpack_from(dict(ia.options)[o.STATUS_CODE])[0] == o.NO_BINDING
    assert rep.records == ()


def test_rebind_of_an_address_off_link_gets_zero_lifetimes() -> None:
    e = engine()
    rep = reply(e, message(o.REBIND, addrs=(o.ip6_int("2001:db8::5"),)))
    (ia,) = [c.parse_ia_na(v) for code, v in decoded(rep).options if code == o.IA_NA]
    assert ia.addresses[0].valid == 0 and ia.addresses[0].preferred == 0


def test_release_and_decline_free_the_address() -> None:
    e = engine()
    addr = addresses(reply(e, message(o.SOLICIT, extra=[(o.RAPID_COMMIT, b"")])).data or b"")
    rel = reply(e, message(o.RELEASE, server=SERVER_DUID, addrs=tuple(addr)))
    assert status_of(decoded(rel)) == o.SUCCESS
    assert [(r.op, r.addr) for r in rel.records] == [("free", addr[0])]
    assert e.mac_for_address(addr[0], NOW) is None
    addr = addresses(reply(e, message(o.SOLICIT, extra=[(o.RAPID_COMMIT, b"")])).data or b"")
    dec = reply(e, message(o.DECLINE, server=SERVER_DUID, addrs=tuple(addr)))
    assert [r.op for r in dec.records] == ["free"]
    again = addresses(reply(e, message(o.SOLICIT, extra=[(o.RAPID_COMMIT, b"")])).data or b"")
    assert again != addr  # the declined address is parked


def test_confirm_says_whether_addresses_are_on_link() -> None:
    e = engine()
    ok = reply(e, message(o.CONFIRM, addrs=(o.ip6_int("fd00:77::1234"),)))
    assert status_of(decoded(ok)) == o.SUCCESS
    bad = reply(e, message(o.CONFIRM, addrs=(o.ip6_int("2001:db8::1"),)))
    assert status_of(decoded(bad)) == o.NOT_ON_LINK
    assert e.handle(message(o.CONFIRM), LOCAL, LINK_LOCAL, NOW) is None


def test_information_request_gets_dns_and_boot_url_without_address() -> None:
    e = engine()
    rep = reply(e, message(o.INFORMATION_REQUEST, iaids=(), extra=pxe_options()))
    msg = decoded(rep)
    assert not msg.has(o.IA_NA) and msg.get(o.DNS_SERVERS)
    assert msg.get(o.BOOTFILE_URL) == b"tftp://[fd00:77::1]/snponly.efi"


def test_boot_urls_follow_architecture_vendor_class_and_ipxe() -> None:
    e = engine()
    pxe = decoded(reply(e, message(o.SOLICIT, extra=pxe_options(7))))
    assert pxe.get(o.BOOTFILE_URL) == b"tftp://[fd00:77::1]/snponly.efi"
    arm = decoded(reply(e, message(o.SOLICIT, extra=pxe_options(11))))
    # the v4 table: arch 11 gets Debian's signed ARM64 network GRUB
    assert arm.get(o.BOOTFILE_URL) == b"tftp://[fd00:77::1]/arm64/grubnetaa64.efi"
    ipxe = decoded(reply(e, message(o.SOLICIT, extra=ipxe_options())))
    assert ipxe.get(o.BOOTFILE_URL) == b"http://[fd00:77::1]:8080/boot/script.ipxe"
    http_vendor = o.U32.pack(343) + c.opaque_list((b"HTTPClient:Arch:00016",))
    http = decoded(reply(e, message(o.SOLICIT, extra=[(o.VENDOR_CLASS, http_vendor),
                                                       (o.CLIENT_ARCH_TYPE, b"\x00\x10")])))
    assert http.get(o.BOOTFILE_URL) == b"http://[fd00:77::1]:8080/boot/files/ipxe.efi"
    assert c.parse_vendor_class(http.get(o.VENDOR_CLASS) or b"")[1] == [b"HTTPClient"]
    plain = decoded(reply(e, message(o.SOLICIT)))
    assert plain.get(o.BOOTFILE_URL) is None  # an OS client gets no boot file
    with_params = engine(boot_file_params=("console=ttyS0", "ip=dhcp6"))
    pxe = decoded(reply(with_params, message(o.SOLICIT, extra=pxe_options(7))))
    assert c.parse_opaque_list(pxe.get(o.BOOTFILE_PARAM) or b"", 0, "params") == [
        b"console=ttyS0", b"ip=dhcp6"]
    assert decoded(reply(with_params, message(o.SOLICIT))).get(o.BOOTFILE_PARAM) is None


def node_interfaces(boot: bool) -> list[dict[str, Any]]:
    return [{"mac": MAC.hex(":"), "node_id": 1, "node": "n1", "arch": "x86_64",
             "is_boot": boot, "interface": "eth0"}]


def test_the_v4_inventory_entry_identifies_the_node_by_mac() -> None:
    # DUID-UUID carries no MAC (edk2): the EUI-64 link-local source names the NIC.
    uuid_duid = b"\x00\x04" + bytes(range(16))
    e = engine(view(interfaces=node_interfaces(boot=False)), non_boot_interfaces="ignore_boot")
    assert e.handle(message(o.SOLICIT, uuid_duid, extra=pxe_options()), LOCAL, LINK_LOCAL,
                    NOW) is None
    assert e.counters["ignored.non_boot_interface"] == 1
    e = engine(view(interfaces=node_interfaces(boot=True)))
    rep = reply(e, message(o.SOLICIT, uuid_duid, extra=[*pxe_options(), (o.RAPID_COMMIT, b"")]))
    assert decoded(rep).get(o.BOOTFILE_URL)
    assert rep.records[0].client_id == MAC and rep.records[0].hostname == "n1"
    assert eui64_mac(LINK_LOCAL) == MAC


def test_reservations_by_duid_and_by_mac() -> None:
    by_duid = view(reservations=[{"subnet_id": 1, "address": "fd00:77::50",
                                  "duid": DUID.hex(":")}])
    assert addresses(reply(engine(by_duid), message(o.SOLICIT)).data or b"") == [
        o.ip6_int("fd00:77::50")]
    by_mac = view(reservations=[{"subnet_id": 1, "address": "fd00:77::51", "mac": MAC.hex(":"),
                                 "hostname": "n1"}])
    e = engine(by_mac)
    other_duid = b"\x00\x04" + bytes(16)  # no MAC inside: the source address gives it
    rep = reply(e, message(o.SOLICIT, other_duid, extra=[(o.RAPID_COMMIT, b"")]))
    assert addresses(rep.data or b"") == [o.ip6_int("fd00:77::51")]
    # The reserved address is never given to someone else from the pool.
    assert o.ip6_int("fd00:77::51") in e.view.reserved
    # The same NIC under another DUID and IAID (edk2's second client) gets it too,
    # another NIC does not.
    again = reply(e, message(o.SOLICIT, b"\x00\x04" + bytes(range(16)), iaids=(9,),
                             extra=[(o.RAPID_COMMIT, b"")]))
    assert addresses(again.data or b"") == [o.ip6_int("fd00:77::51")]
    stranger = message(o.SOLICIT, b"\x00\x03\x00\x01" + bytes(6), extra=[(o.RAPID_COMMIT, b"")])
    assert addresses(reply(e, stranger).data or b"") != [o.ip6_int("fd00:77::51")]


def relayed(inner: bytes, link: str = "fd00:77::1", lla: bytes | None = None) -> bytes:
    opts = [(o.INTERFACE_ID, b"port7"), (o.RELAY_MSG, inner)]
    if lla is not None:
        opts.insert(0, (o.CLIENT_LINKLAYER_ADDR, b"\x00\x01" + lla))
    return c.encode(RelayMessage(o.RELAY_FORW, 0, o.ip6_bytes(o.ip6_int(link)),
                                 o.ip6_bytes(LINK_LOCAL), opts))


def test_relayed_solicit_gets_relay_reply_with_interface_id() -> None:
    e = engine(view(interfaces=node_interfaces(boot=True)))
    uuid_duid = b"\x00\x04" + bytes(range(16))
    rep = reply(e.__class__(e.settings, e.view, SERVER_DUID),
                relayed(message(o.SOLICIT, uuid_duid), lla=MAC), source=o.ip6_int("fd00:99::1"))
    outer = c.decode(rep.data or b"")
    assert isinstance(outer, RelayMessage) and outer.msg_type == o.RELAY_REPL
    assert outer.get(o.INTERFACE_ID) == b"port7" and rep.dest[1] == o.SERVER_PORT
    assert isinstance(outer.inner, Dhcp6Message) and outer.inner.msg_type == o.ADVERTISE
    # A relayed message selects the subnet by the relay's link address, not ours.
    assert e.handle(relayed(message(o.SOLICIT), link="2001:db8::1"), LOCAL, SERVER,
                    NOW) is None
    assert e.counters["drop.no_subnet"] == 1


def test_messages_for_other_servers_and_missing_ids() -> None:
    e = engine()
    assert e.handle(message(o.REQUEST, server=b"\x00\x03\x00\x01" + bytes(6)), LOCAL,
                    LINK_LOCAL, NOW) is None
    assert e.counters["ignored.other_server"] == 1
    assert e.handle(message(o.REQUEST), LOCAL, LINK_LOCAL, NOW) is None
    assert e.counters["drop.no_server_id"] == 1
    assert e.handle(message(o.SOLICIT, None), LOCAL, LINK_LOCAL, NOW) is None
    assert e.counters["drop.no_client_id"] == 1
    assert e.handle(message(o.SOLICIT, server=SERVER_DUID), LOCAL, LINK_LOCAL, NOW) is None
    assert e.counters["drop.unexpected_server_id"] == 1
    assert e.handle(message(o.ADVERTISE), LOCAL, LINK_LOCAL, NOW) is None
    assert e.counters["drop.not_client_message"] == 1


def test_pool_exhaustion_answers_no_addrs_avail() -> None:
    e = engine(view(pool=("fd00:77::1000", "fd00:77::1000")))
    reply(e, message(o.SOLICIT, extra=[(o.RAPID_COMMIT, b"")]))
    other = b"\x00\x03\x00\x01" + bytes.fromhex("525400000002")
    rep = reply(e, message(o.SOLICIT, other))
    ia = c.parse_ia_na(decoded(rep).get(o.IA_NA) or b"")
    assert o.U16.unpack_from(dict(ia.options)[o.STATUS_CODE])[0] == o.NO_ADDRS_AVAIL


def test_malformed_inner_options_are_counted_and_dropped() -> None:
    e = engine()
    bad_ia = c.encode(Dhcp6Message(o.SOLICIT, 1, [(o.CLIENTID, DUID), (o.IA_NA, b"\x00\x01")]))
    assert e.handle(bad_ia, LOCAL, LINK_LOCAL, NOW) is None
    bad_duid = c.encode(Dhcp6Message(o.SOLICIT, 1, [(o.CLIENTID, b"\x00")]))
    assert e.handle(bad_duid, LOCAL, LINK_LOCAL, NOW) is None
    assert e.handle(b"\x01\x00", LOCAL, LINK_LOCAL, NOW) is None
    assert e.counters["drop.malformed"] == 3


SEEDS = [message(o.SOLICIT, extra=[*ipxe_options(), (o.RAPID_COMMIT, b"")]),
         message(o.REQUEST, server=SERVER_DUID, addrs=(o.ip6_int("fd00:77::1001"),)),
         relayed(message(o.RENEW, server=SERVER_DUID), lla=MAC)]


@settings(max_examples=1500)
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)),
                                        max_size=6), st.integers(0, 400))
def test_mutated_messages_never_raise(seed: bytes, flips: list[tuple[int, int]],
                                      cut: int) -> None:
    data = bytearray(seed)
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    e = engine(view(interfaces=node_interfaces(boot=True)))
    out = e.handle(bytes(data[: max(cut, 4)] if cut < len(data) else data), LOCAL, LINK_LOCAL,
                   NOW)
    assert out is None or out.data is not None
    assert e.counters["rx"] == 1
