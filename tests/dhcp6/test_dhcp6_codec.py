"""The DHCPv6 codec: round trips, relay nesting, option parsers, and fuzzing."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetboot.protocols.dhcp6 import codec as c
from fleetboot.protocols.dhcp6 import options as o
from fleetboot.protocols.dhcp6.codec import Dhcp6DecodeError, Dhcp6Message, RelayMessage

options = st.lists(st.tuples(st.integers(0, 65535).filter(lambda x: x != o.RELAY_MSG),
                             st.binary(max_size=300)), max_size=8)
messages = st.builds(Dhcp6Message, msg_type=st.integers(1, 11),
                     xid=st.integers(0, 2**24 - 1), options=options)


@given(messages)
def test_round_trip(msg: Dhcp6Message) -> None:
    assert c.decode(c.encode(msg)) == msg


@given(messages, st.integers(1, 8))
def test_relay_chain_round_trip(msg: Dhcp6Message, depth: int) -> None:
    wrapped: Dhcp6Message | RelayMessage = msg
    for hop in range(depth):
        wrapped = RelayMessage(o.RELAY_FORW, hop, bytes(16), bytes(range(16)),
                               [(o.INTERFACE_ID, b"eth%d" % hop)], wrapped)
    back = c.decode(c.encode(wrapped))
    for _ in range(depth):
        assert isinstance(back, RelayMessage)
        back = back.inner
    assert back == msg


def test_relay_nesting_deeper_than_the_hop_limit_is_refused() -> None:
    data = c.encode(Dhcp6Message(o.SOLICIT, 1, []))
    for hop in range(o.HOP_COUNT_LIMIT + 2):
        data = bytes((o.RELAY_FORW, hop)) + bytes(32) + c.option(o.RELAY_MSG, data)
    with pytest.raises(Dhcp6DecodeError, match="nested"):
        c.decode(data)


@pytest.mark.parametrize("data,why", [
    (b"\x01\x00", "truncated message"),
    (b"\x01\x00\x00\x01\x00\x01\x00\x10abc", "says 16 bytes"),
    (b"\x01\x00\x00\x01\x00\x01", "truncated option header"),
    (b"\x63\x00\x00\x01", "unknown message type"),
    (bytes((o.RELAY_FORW, 0)) + bytes(32), "relay-message options, not 1"),
])
def test_malformed_messages_say_what_is_wrong(data: bytes, why: str) -> None:
    with pytest.raises(Dhcp6DecodeError, match=why):
        c.decode(data)


def test_option_parsers() -> None:
    ia = c.parse_ia_na(c.ia_na(7, 100, 200, [(o.IAADDR, c.iaaddr(5, 10, 20))]))
    assert (ia.iaid, ia.t1, ia.t2) == (7, 100, 200)
    assert ia.addresses[0][:3] == (5, 10, 20)
    assert c.parse_u16_list(b"\x00\x17\x00\x3b", "ORO") == (23, 59)
    enterprise, items = c.parse_vendor_class(o.U32.pack(343) + c.opaque_list((b"PXEClient",)))
    assert (enterprise, items) == (343, [b"PXEClient"])
    mac = bytes.fromhex("525400aabbcc")
    assert c.parse_link_layer(b"\x00\x01" + mac) == mac
    assert c.duid_mac(c.duid_ll(mac)) == mac
    assert c.duid_mac(b"\x00\x01\x00\x01\x11\x22\x33\x44" + mac) == mac
    assert c.duid_mac(b"\x00\x04" + bytes(16)) is None
    for bad, parse in ((b"\x00" * 11, c.parse_ia_na), (b"\x00" * 23, c.parse_iaaddr),
                       (b"\x00" * 3, c.parse_vendor_class), (b"\x01", c.parse_link_layer)):
        with pytest.raises(Dhcp6DecodeError):
            parse(bad)
    with pytest.raises(Dhcp6DecodeError):
        c.parse_u16_list(b"\x00", "ORO")
    with pytest.raises(Dhcp6DecodeError):
        c.parse_opaque_list(b"\x00\x05ab", 0, "user class")


@settings(max_examples=1000)
@given(st.binary(max_size=1500))
def test_random_bytes_raise_only_the_codec_error(data: bytes) -> None:
    with contextlib.suppress(Dhcp6DecodeError):
        c.decode(data)


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_random_option_values_raise_only_the_codec_error(value: bytes) -> None:
    for parse in (c.parse_ia_na, c.parse_iaaddr, c.parse_vendor_class, c.parse_link_layer):
        with contextlib.suppress(Dhcp6DecodeError):
            parse(value)
    with contextlib.suppress(Dhcp6DecodeError):
        c.parse_u16_list(value, "x")
    with contextlib.suppress(Dhcp6DecodeError):
        c.parse_opaque_list(value, 0, "x")
