"""The DHCP state machine, driven directly with crafted packets (no sockets)."""

from __future__ import annotations

from typing import Any

import pytest
from dhcp_helpers import arch, packet

from fleetboot.identity.core import LinkBook
from fleetboot.protocols.dhcp import options as o
from fleetboot.protocols.dhcp.codec import DhcpPacket, decode
from fleetboot.protocols.dhcp.engine import DhcpEngine, Reply
from fleetboot.protocols.dhcp.leases import LeaseTable
from fleetboot.protocols.dhcp.settings import DhcpConfigError, DhcpSettings
from fleetboot.protocols.dhcp.view import DhcpView, build_view
from fleetboot.server.events import BootEvent

SERVER = o.ip_int("10.77.0.1")
RELAY = o.ip_int("10.88.0.1")
NOW = 1_000_000.0
MAC_A = bytes.fromhex("525400000001")
MAC_B = bytes.fromhex("525400000002")
NODE_MACS = [bytes.fromhex(f"5254000000a{i}") for i in range(3)]
RESERVED_MAC = bytes.fromhex("5254000000ee")


def make_view(pool: tuple[str, str] = ("10.77.0.100", "10.77.0.199")) -> DhcpView:
    return build_view(
        subnets=[{"id": 1, "name": "lab", "cidr": "10.77.0.0/24", "router": "10.77.0.1",
                  "dns_servers": ["10.77.0.1", "10.77.0.2"], "domain": "lab.test",
                  "lease_seconds": 600, "next_server": "10.77.0.1", "mtu": 1400},
                 {"id": 2, "name": "relayed", "cidr": "10.88.0.0/16", "router": "10.88.0.1",
                  "lease_seconds": 3600}],
        pools=[{"subnet_id": 1, "start": pool[0], "end": pool[1]},
               {"subnet_id": 2, "start": "10.88.1.0", "end": "10.88.1.255"}],
        reservations=[{"subnet_id": 1, "mac": RESERVED_MAC.hex(":"), "address": "10.77.0.50",
                       "hostname": "printer"}],
        interfaces=[{"mac": m.hex(":"), "is_boot": i == 1, "interface": f"eth{i}",
                     "node_id": 7, "node": "n7", "arch": "x86_64"}
                    for i, m in enumerate(NODE_MACS)],
    )


def make_engine(events: list[BootEvent] | None = None, **kw: Any) -> DhcpEngine:
    view = kw.pop("view", None) or make_view()
    sink = events.append if events is not None else None
    return DhcpEngine(DhcpSettings(**kw), view, LeaseTable(), events=sink,
                      server_addresses=(SERVER,))


def reply_of(r: Reply | None) -> DhcpPacket:
    assert r is not None and r.data is not None
    return decode(r.data)


def dora(engine: DhcpEngine, mac: bytes, now: float = NOW, **opts: bytes
         ) -> tuple[DhcpPacket, Reply]:
    offer = reply_of(engine.handle(packet(o.DISCOVER, mac, 1, **opts), SERVER, now))
    assert offer.message_type == o.OFFER
    ack = engine.handle(packet(o.REQUEST, mac, 1, o54=o.ip_bytes(SERVER),
                               o50=o.ip_bytes(offer.yiaddr), **opts), SERVER, now)
    assert ack is not None and ack.record is not None
    return reply_of(ack), ack


def test_discover_request_ack_with_subnet_options_in_requested_order() -> None:
    engine = make_engine()
    offer = reply_of(engine.handle(packet(o.DISCOVER, MAC_A, o55=bytes([6, 3, 1, 26, 15])),
                                   SERVER, NOW))
    assert offer.op == o.BOOTREPLY and offer.xid == 0x1234
    assert o.ip_text(offer.yiaddr) == "10.77.0.100"
    assert list(offer.options)[:7] == [53, 54, 6, 3, 1, 26, 15]
    assert offer.options[o.SERVER_ID] == o.ip_bytes(SERVER)
    assert offer.options[o.LEASE_TIME] == o.u32(600)
    assert offer.options[o.DNS_SERVERS] == o.ip_bytes(SERVER) + o.ip_bytes(SERVER + 1)
    assert offer.options[o.DOMAIN_NAME] == b"lab.test"
    ack, reply = dora(engine, MAC_A)
    assert ack.message_type == o.ACK and ack.yiaddr == offer.yiaddr
    assert reply.record is not None and reply.record.op == "bind"
    assert reply.record.expires == NOW + 600
    assert engine.lease_by_address("10.77.0.100") is not None


def test_reply_addressing_follows_rfc2131_4_1() -> None:
    engine = make_engine()
    unicast = engine.handle(packet(o.DISCOVER, MAC_A), SERVER, NOW)
    assert unicast is not None and unicast.dest == ("10.77.0.100", 68)
    assert unicast.arp == (o.ip_int("10.77.0.100"), MAC_A)  # client has no address: ARP
    broadcast = engine.handle(packet(o.DISCOVER, MAC_B, flags=o.BROADCAST_FLAG), SERVER, NOW)
    assert broadcast is not None and broadcast.dest == ("255.255.255.255", 68)
    assert broadcast.arp is None
    relayed = engine.handle(packet(o.DISCOVER, MAC_A, 9, giaddr=RELAY), SERVER, NOW)
    assert relayed is not None and relayed.dest == ("10.88.0.1", 67)
    renew = engine.handle(packet(o.REQUEST, MAC_A, 2, ciaddr=o.ip_int("10.77.0.100")),
                          SERVER, NOW)
    assert renew is not None and renew.dest == ("10.77.0.100", 68)


def test_relayed_request_uses_the_relay_subnet_and_echoes_option_82() -> None:
    engine = make_engine()
    agent = b"\x01\x04port\x02\x03sw1"
    offer = engine.handle(packet(o.DISCOVER, MAC_A, giaddr=RELAY, o82=agent), SERVER, NOW)
    pkt = reply_of(offer)
    assert o.ip_text(pkt.yiaddr) == "10.88.1.0"
    assert pkt.giaddr == RELAY and pkt.options[o.RELAY_AGENT_INFO] == agent
    assert list(pkt.options)[-1] == o.RELAY_AGENT_INFO  # last before END (RFC 3046)


def test_renew_rebind_and_init_reboot_ack_the_same_address() -> None:
    engine = make_engine()
    ack, _ = dora(engine, MAC_A)
    addr = ack.yiaddr
    renew = reply_of(engine.handle(packet(o.REQUEST, MAC_A, 5, ciaddr=addr), SERVER, NOW + 300))
    assert renew.message_type == o.ACK and renew.ciaddr == addr and renew.yiaddr == addr
    reboot = reply_of(engine.handle(packet(o.REQUEST, MAC_A, 6, o50=o.ip_bytes(addr)),
                                    SERVER, NOW + 400))
    assert reboot.message_type == o.ACK and reboot.yiaddr == addr


def test_request_for_an_address_held_by_another_client_is_naked() -> None:
    engine = make_engine()
    ack, _ = dora(engine, MAC_A)
    nak = engine.handle(packet(o.REQUEST, MAC_B, 7, o50=o.ip_bytes(ack.yiaddr)), SERVER, NOW)
    pkt = reply_of(nak)
    assert pkt.message_type == o.NAK and pkt.yiaddr == 0
    assert nak is not None and nak.dest == ("255.255.255.255", 68) and nak.record is None
    wrong_net = reply_of(engine.handle(packet(o.REQUEST, MAC_B, 8, o50=o.ip_bytes(RELAY + 5)),
                                       SERVER, NOW))
    assert wrong_net.message_type == o.NAK


def test_request_to_another_server_withdraws_our_offer() -> None:
    engine = make_engine()
    offer = reply_of(engine.handle(packet(o.DISCOVER, MAC_A), SERVER, NOW))
    other = engine.handle(packet(o.REQUEST, MAC_A, o54=o.ip_bytes(SERVER + 9),
                                 o50=o.ip_bytes(offer.yiaddr)), SERVER, NOW)
    assert other is None
    assert offer.yiaddr not in engine.leases.by_addr  # the withdrawn address is free again
    assert engine.leases.usable(offer.yiaddr, MAC_B, NOW)


def test_release_and_decline() -> None:
    engine = make_engine()
    ack, _ = dora(engine, MAC_A)
    released = engine.handle(packet(o.RELEASE, MAC_A, ciaddr=ack.yiaddr,
                                    o54=o.ip_bytes(SERVER)), SERVER, NOW)
    assert released is not None and released.data is None
    assert released.record is not None and released.record.op == "free"
    assert engine.lease_by_address(ack.yiaddr) is None
    ack2, _ = dora(engine, MAC_B)
    declined = engine.handle(packet(o.DECLINE, MAC_B, o50=o.ip_bytes(ack2.yiaddr),
                                    o54=o.ip_bytes(SERVER)), SERVER, NOW)
    assert declined is not None and declined.record is not None
    nxt = reply_of(engine.handle(packet(o.DISCOVER, MAC_B, 3), SERVER, NOW + 1))
    assert nxt.yiaddr != ack2.yiaddr  # parked after DECLINE


def test_inform_gets_options_without_an_address() -> None:
    engine = make_engine()
    r = engine.handle(packet(o.INFORM, MAC_A, ciaddr=o.ip_int("10.77.0.9")), SERVER, NOW)
    pkt = reply_of(r)
    assert pkt.message_type == o.ACK and pkt.yiaddr == 0 and o.LEASE_TIME not in pkt.options
    assert r is not None and r.dest == ("10.77.0.9", 68) and r.record is None


def test_static_reservation_is_honoured_and_never_given_to_others() -> None:
    engine = make_engine(view=make_view(pool=("10.77.0.40", "10.77.0.60")))
    ack, _ = dora(engine, RESERVED_MAC)
    assert o.ip_text(ack.yiaddr) == "10.77.0.50" and ack.options[o.HOSTNAME] == b"printer"
    given = set()
    for i in range(25):
        r = engine.handle(packet(o.DISCOVER, bytes([2, 0, 0, 0, 0, i])), SERVER, NOW)
        if r is not None:
            given.add(o.ip_text(reply_of(r).yiaddr))
    assert "10.77.0.50" not in given and len(given) == 20  # 21 in the pool, one reserved


def test_unknown_client_policy_ignore() -> None:
    engine = make_engine(unknown_clients="ignore")
    assert engine.handle(packet(o.DISCOVER, MAC_A), SERVER, NOW) is None
    assert engine.counters["ignored.unknown_client"] == 1
    assert engine.handle(packet(o.DISCOVER, RESERVED_MAC), SERVER, NOW) is not None
    assert engine.handle(packet(o.DISCOVER, NODE_MACS[0]), SERVER, NOW) is not None


def test_exhausted_pool_gives_no_offer_a_counter_and_a_log_line() -> None:
    drops: list[tuple[str, str]] = []
    engine = DhcpEngine(DhcpSettings(), make_view(pool=("10.77.0.100", "10.77.0.101")),
                        on_drop=lambda reason, detail: drops.append((reason, detail)))
    for i in range(2):
        assert engine.handle(packet(o.DISCOVER, bytes([2, 0, 0, 0, 1, i])), SERVER, NOW)
    assert engine.handle(packet(o.DISCOVER, MAC_A), SERVER, NOW) is None
    assert engine.counters["drop.pool_exhausted"] == 1
    assert drops[-1][0] == "pool_exhausted" and "pool exhausted" in drops[-1][1]
    # Offers are held only briefly: once they lapse the pool has room again.
    assert engine.handle(packet(o.DISCOVER, MAC_A, 2), SERVER, NOW + 31) is not None


# --- PXE -----------------------------------------------------------------------------------

PXE_CASES = [
    # (vendor class, user class, arch option, expected option 67, expected option 60)
    (b"PXEClient:Arch:00000:UNDI:002001", None, arch(0), b"undionly.kpxe", b"PXEClient"),
    (b"PXEClient:Arch:00007:UNDI:003000", None, arch(7), b"snponly.efi", b"PXEClient"),
    (b"PXEClient:Arch:00009:UNDI:003000", None, arch(9), b"snponly.efi", b"PXEClient"),
    (b"PXEClient:Arch:00011:UNDI:003000", None, arch(11), b"arm64/grubnetaa64.efi", b"PXEClient"),
    (b"PXEClient:Arch:00007:UNDI:003000", None, None, b"snponly.efi", b"PXEClient"),
    (b"PXEClient:Arch:00000:UNDI:002001", b"iPXE", arch(0),
     b"http://10.77.0.1:8080/boot/script.ipxe", None),
    (b"PXEClient:Arch:00007:UNDI:003016", b"iPXE", arch(7),
     b"http://10.77.0.1:8080/boot/script.ipxe", None),
    (b"HTTPClient:Arch:00016:UNDI:003001", None, arch(16),
     b"http://10.77.0.1:8080/boot/files/ipxe.efi", b"HTTPClient"),
    (b"HTTPClient:Arch:00019:UNDI:003001", None, arch(19),
     b"http://10.77.0.1:8080/boot/files/arm64/grubnetaa64.efi", b"HTTPClient"),
]


@pytest.mark.parametrize(("vendor", "user", "arch_opt", "bootfile", "echo60"), PXE_CASES)
def test_pxe_offer_carries_the_boot_answer(vendor: bytes, user: bytes | None,
                                           arch_opt: bytes | None, bootfile: bytes,
                                           echo60: bytes | None) -> None:
    opts = {"o60": vendor}
    if user:
        opts["o77"] = user
    if arch_opt:
        opts["o93"] = arch_opt
    engine = make_engine()
    for mt in (o.DISCOVER, o.REQUEST):
        extra = {"o54": o.ip_bytes(SERVER), "o50": o.ip_bytes(o.ip_int("10.77.0.101"))} \
            if mt == o.REQUEST else {}
        pkt = reply_of(engine.handle(packet(mt, NODE_MACS[1], **opts, **extra), SERVER, NOW))
        assert pkt.options[o.BOOTFILE_NAME] == bootfile
        assert pkt.file == bootfile and o.ip_text(pkt.siaddr) == "10.77.0.1"
        assert pkt.options.get(o.VENDOR_CLASS) == echo60
        if echo60 == b"PXEClient":
            assert pkt.options[o.VENDOR_SPECIFIC] == o.PXE_VENDOR_OPTIONS
            assert pkt.options[o.TFTP_SERVER_NAME] == b"10.77.0.1"
        assert pkt.options[o.HOSTNAME] == b"n7"


def test_ipxe_detected_by_option_175_too() -> None:
    engine = make_engine()
    pkt = reply_of(engine.handle(packet(o.DISCOVER, NODE_MACS[1], o60=b"PXEClient",
                                        o175=b"\x13\x01\x01"), SERVER, NOW))
    assert pkt.options[o.BOOTFILE_NAME].endswith(b"/boot/script.ipxe")


def test_arch_table_comes_from_settings() -> None:
    from fleetboot.protocols.dhcp.settings import ArchBoot

    engine = make_engine(architectures={0: ArchBoot("bios", tftp_file="custom.kpxe")},
                         http_host="boot.example", http_port=81)
    pkt = reply_of(engine.handle(packet(o.DISCOVER, NODE_MACS[1], o60=b"PXEClient",
                                        o93=arch(0)), SERVER, NOW))
    assert pkt.options[o.BOOTFILE_NAME] == b"custom.kpxe"
    unknown = engine.handle(packet(o.DISCOVER, NODE_MACS[1], 2, o60=b"PXEClient",
                                   o93=arch(7)), SERVER, NOW)
    assert o.BOOTFILE_NAME not in reply_of(unknown).options  # address, no boot file
    assert engine.counters["drop.unknown_arch"] == 1
    ipxe = reply_of(engine.handle(packet(o.DISCOVER, NODE_MACS[1], 3, o60=b"PXEClient",
                                         o77=b"iPXE"), SERVER, NOW))
    assert ipxe.options[o.BOOTFILE_NAME] == b"http://boot.example:81/boot/script.ipxe"


def test_os_dhcp_client_gets_no_boot_file() -> None:
    engine = make_engine()
    pkt = reply_of(engine.handle(packet(o.DISCOVER, NODE_MACS[1], o60=b"udhcp 1.36"),
                                 SERVER, NOW))
    assert o.BOOTFILE_NAME not in pkt.options and pkt.file == b"" and pkt.siaddr == 0


@pytest.mark.parametrize(("policy", "pxe_answered", "os_answered"), [
    ("address", True, True), ("ignore_boot", False, True), ("ignore", False, False)])
def test_only_the_boot_nic_gets_a_boot_file(policy: str, pxe_answered: bool,
                                            os_answered: bool) -> None:
    engine = make_engine(non_boot_interfaces=policy)
    pxe = {"o60": b"PXEClient:Arch:00000:UNDI:002001", "o93": arch(0)}
    boot = reply_of(engine.handle(packet(o.DISCOVER, NODE_MACS[1], **pxe), SERVER, NOW))
    assert boot.options[o.BOOTFILE_NAME] == b"undionly.kpxe"
    for mac in (NODE_MACS[0], NODE_MACS[2]):
        r = engine.handle(packet(o.DISCOVER, mac, **pxe), SERVER, NOW)
        assert (r is not None) == pxe_answered
        if r is not None:
            pkt = reply_of(r)
            assert pkt.yiaddr and o.BOOTFILE_NAME not in pkt.options and pkt.file == b""
        os_reply = engine.handle(packet(o.DISCOVER, mac, 99), SERVER, NOW)
        assert (os_reply is not None) == os_answered


def test_proxy_mode_answers_pxe_without_addresses() -> None:
    engine = make_engine(proxy=True)
    pxe = {"o60": b"PXEClient:Arch:00007:UNDI:003000", "o93": arch(7)}
    offer = engine.handle(packet(o.DISCOVER, MAC_A, **pxe), SERVER, NOW)
    pkt = reply_of(offer)
    assert pkt.message_type == o.OFFER and pkt.yiaddr == 0
    assert pkt.options[o.VENDOR_CLASS] == b"PXEClient" and pkt.file == b"snponly.efi"
    assert o.LEASE_TIME not in pkt.options and o.SUBNET_MASK not in pkt.options
    assert offer is not None and offer.dest == ("255.255.255.255", 68)
    assert engine.handle(packet(o.DISCOVER, MAC_B), SERVER, NOW) is None  # not PXE
    assert engine.handle(packet(o.REQUEST, MAC_A, o50=o.ip_bytes(SERVER + 5), **pxe),
                         SERVER, NOW) is None  # the other server's business
    boot = engine.handle(packet(o.REQUEST, MAC_A, 4, ciaddr=o.ip_int("10.77.0.33"), **pxe),
                         SERVER, NOW, proxy_port=True, source=("10.77.0.33", 68))
    ack = reply_of(boot)
    assert ack.message_type == o.ACK and ack.file == b"snponly.efi"
    assert boot is not None and boot.dest == ("10.77.0.33", 68) and boot.record is None


def test_proxy_mode_records_what_clients_ask_the_site_server_for() -> None:
    """Issue 21: the REQUESTs a proxy sees on port 67 tie addresses to MACs (identity)."""
    book = LinkBook()
    engine = DhcpEngine(DhcpSettings(proxy=True), make_view(), LeaseTable(),
                        server_addresses=(SERVER,), book=book)
    site = o.ip_bytes(o.ip_int("10.77.0.254"))
    mac_a = MAC_A.hex(":")
    assert engine.handle(packet(o.REQUEST, MAC_A, 3, o50=o.ip_bytes(SERVER + 40), o54=site),
                         SERVER, NOW, source=("0.0.0.0", 68)) is None
    held = book.holder("10.77.0.41", NOW)
    assert held is not None and (held.mac, held.how, held.server, held.from_link) == (
        mac_a, "requested", "10.77.0.254", True)
    # Relayed: the machine's own broadcast did not reach this link.
    engine.handle(packet(o.REQUEST, MAC_B, 4, o50=o.ip_bytes(SERVER + 41), giaddr=RELAY),
                  SERVER, NOW, source=("10.88.0.1", 67))
    relayed = book.holder("10.77.0.42", NOW)
    assert relayed is not None and not relayed.from_link
    engine.handle(packet(o.RELEASE, MAC_A, 5, ciaddr=SERVER + 40), SERVER, NOW,
                  source=("10.77.0.41", 68))
    assert book.holder("10.77.0.41", NOW) is None
    # Port 4011 from the address it names: the client itself says which one it holds.
    pxe = {"o60": b"PXEClient:Arch:00007:UNDI:003000", "o93": arch(7)}
    engine.handle(packet(o.REQUEST, MAC_A, 6, ciaddr=o.ip_int("10.77.0.33"), **pxe), SERVER,
                  NOW, proxy_port=True, source=("10.77.0.33", 68))
    assert book.holder("10.77.0.33", NOW).how == "boot-server"  # type: ignore[union-attr]
    engine.handle(packet(o.REQUEST, MAC_B, 7, ciaddr=o.ip_int("10.77.0.34"), **pxe), SERVER,
                  NOW, proxy_port=True, source=("10.77.0.99", 68))
    assert book.holder("10.77.0.34", NOW) is None  # asked from another address: not believed


def test_proxy_mode_leaves_unknown_machines_alone_when_told_to() -> None:
    """Issue 21: "left waiting or alone as configured": with ``unknown_clients: ignore``
    a machine not in the inventory gets no boot offer (the site server still gives it an
    address); a node's boot NIC still does."""
    engine = make_engine(proxy=True, unknown_clients="ignore")
    pxe = {"o60": b"PXEClient:Arch:00000:UNDI:002001", "o93": arch(0)}
    assert engine.handle(packet(o.DISCOVER, MAC_A, **pxe), SERVER, NOW) is None
    assert engine.counters["ignored.unknown_client"] == 1
    offer = reply_of(engine.handle(packet(o.DISCOVER, NODE_MACS[1], **pxe), SERVER, NOW))
    assert offer.yiaddr == 0 and offer.file


def test_proxy_mode_script_url_carries_the_mac_claim() -> None:
    engine = make_engine(proxy=True)
    ipxe = {"o60": b"PXEClient:Arch:00000:UNDI:002001", "o77": b"iPXE"}
    pkt = reply_of(engine.handle(packet(o.DISCOVER, MAC_A, **ipxe), SERVER, NOW))
    assert pkt.options[o.BOOTFILE_NAME].endswith(b"/boot/script.ipxe?mac=${netX/mac}")
    normal = reply_of(make_engine().handle(packet(o.DISCOVER, MAC_A, **ipxe), SERVER, NOW))
    assert normal.options[o.BOOTFILE_NAME].endswith(b"/boot/script.ipxe")


# --- bad input, events ---------------------------------------------------------------------------

@pytest.mark.parametrize(("data", "counter"), [
    (b"\x01" * 50, "drop.malformed"),
    (packet(o.DISCOVER, MAC_A)[:245], "drop.malformed"),
    (packet(o.OFFER, MAC_A).replace(b"\x01\x01\x06", b"\x02\x01\x06", 1), "drop.not_dhcp_request"),
    (packet(o.DISCOVER, MAC_A, o53=b""), "drop.not_dhcp_request"),
    (packet(13, MAC_A), "drop.message_type"),
    (packet(o.DISCOVER, MAC_A).replace(b"\x01\x01\x06", b"\x01\x06\x06", 1), "drop.hardware"),
])
def test_bad_input_is_dropped_and_counted(data: bytes, counter: str) -> None:
    drops: list[tuple[str, str]] = []
    engine = DhcpEngine(DhcpSettings(), make_view(), on_drop=lambda r, d: drops.append((r, d)))
    assert engine.handle(data, SERVER, NOW) is None
    assert engine.counters[counter] == 1 and drops


def test_events_reveal_firmware_retransmissions() -> None:
    events: list[BootEvent] = []
    engine = make_engine(events)
    for secs in (0, 4, 12):
        engine.handle(packet(o.DISCOVER, MAC_A, 0xABC, secs=secs, o60=b"PXEClient"),
                      SERVER, NOW + secs)
    received = [e for e in events if e.detail["dir"] == "rx"]
    assert [e.detail["retransmit"] for e in received] == [False, True, True]
    assert [e.detail["secs"] for e in received] == [0, 4, 12]
    assert all(e.kind == "DISCOVER" and e.mac == "52:54:00:00:00:01" for e in received)
    assert engine.counters["rx.retransmission"] == 2
    r = engine.handle(packet(o.REQUEST, MAC_A, 0xABC, o54=o.ip_bytes(SERVER),
                             o50=o.ip_bytes(o.ip_int("10.77.0.100"))), SERVER, NOW)
    assert r is not None and r.event is not None and r.event.kind == "ACK"
    assert r.event.address == "10.77.0.100"


def test_settings_are_validated() -> None:
    with pytest.raises(DhcpConfigError, match="unknown_clients"):
        DhcpSettings(unknown_clients="maybe")  # type: ignore[arg-type]
    with pytest.raises(DhcpConfigError, match="server_id"):
        DhcpSettings(server_id="10.0.0")


def test_view_skips_bad_rows_and_says_why() -> None:
    view = build_view(
        subnets=[{"id": 1, "name": "ok", "cidr": "10.1.0.0/24"},
                 {"id": 2, "name": "bad", "cidr": "10.1.0.5/24"}],
        pools=[{"subnet_id": 1, "start": "10.2.0.1", "end": "10.2.0.9"},
               {"subnet_id": 1, "start": "10.1.0.0", "end": "10.1.0.255"}],
        reservations=[{"subnet_id": 1, "mac": "zz", "address": "10.1.0.9"}],
        interfaces=[])
    assert [s.name for s in view.subnets] == ["ok"]
    assert view.subnets[0].pools == ((o.ip_int("10.1.0.1"), o.ip_int("10.1.0.254")),)
    assert len(view.problems) == 3
