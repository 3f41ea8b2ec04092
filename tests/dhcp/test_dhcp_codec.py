"""The DHCP codec: round trips, RFC 3396 long options and overload, and fuzzing."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetboot.protocols.dhcp import options as o
from fleetboot.protocols.dhcp.codec import (
    FILE_OFFSET,
    HEADER_SIZE,
    SNAME_OFFSET,
    DhcpDecodeError,
    DhcpEncodeError,
    DhcpPacket,
    decode,
    encode,
)

codes = st.integers(1, 254).filter(lambda c: c != o.OVERLOAD)
u32 = st.integers(0, 2**32 - 1)
packets = st.builds(
    DhcpPacket,
    op=st.sampled_from([1, 2]), htype=st.just(1), hlen=st.just(6), hops=st.integers(0, 255),
    xid=u32, secs=st.integers(0, 65535), flags=st.sampled_from([0, 0x8000]),
    ciaddr=u32, yiaddr=u32, siaddr=u32, giaddr=u32,
    chaddr=st.binary(min_size=16, max_size=16),
    sname=st.binary(max_size=64).map(lambda b: b.rstrip(b"\0")),
    file=st.binary(max_size=128).map(lambda b: b.rstrip(b"\0")),
    options=st.dictionaries(codes, st.binary(max_size=700), max_size=8),
)


@given(packets)
def test_round_trip_without_size_limit(pkt: DhcpPacket) -> None:
    assert decode(encode(pkt)) == pkt


@settings(max_examples=300)
@given(packets, st.integers(300, 1500))
def test_round_trip_with_overload_or_a_clear_error(pkt: DhcpPacket, limit: int) -> None:
    try:
        data = encode(pkt, limit)
    except DhcpEncodeError:
        return  # too big even with file and sname: the encoder says so
    assert len(data) <= max(limit, o.MIN_PACKET)
    back = decode(data)
    assert back.options == pkt.options
    assert (back.xid, back.chaddr, back.yiaddr) == (pkt.xid, pkt.chaddr, pkt.yiaddr)


@settings(max_examples=1000)
@given(st.binary(max_size=1500))
def test_random_bytes_raise_only_the_codec_error(data: bytes) -> None:
    with contextlib.suppress(DhcpDecodeError):
        decode(data)


@settings(max_examples=1000)
@given(st.binary(min_size=0, max_size=600))
def test_random_options_after_a_valid_header_raise_only_the_codec_error(tail: bytes) -> None:
    head = encode(DhcpPacket())[:HEADER_SIZE]
    with contextlib.suppress(DhcpDecodeError):
        decode(head + tail)


def test_long_option_is_split_and_concatenated() -> None:
    value = bytes(range(256)) * 3  # 768 bytes: three instances on the wire
    data = encode(DhcpPacket(options={77: value}))
    assert data[HEADER_SIZE : HEADER_SIZE + 2] == bytes([77, 255])
    assert decode(data).options[77] == value


def test_overload_uses_file_then_sname() -> None:
    pkt = DhcpPacket(options={n: bytes([n]) * 40 for n in range(100, 111)})  # 462 bytes
    data = encode(pkt, 548)
    assert len(data) <= 548
    assert data[HEADER_SIZE : HEADER_SIZE + 3] == bytes([o.OVERLOAD, 1, o.OVERLOAD_BOTH])
    assert decode(data).options == pkt.options


def test_overload_keeps_a_boot_file_in_the_file_field() -> None:
    pkt = DhcpPacket(file=b"undionly.kpxe", options={n: b"x" * 60 for n in range(100, 105)})
    data = encode(pkt, 548)
    back = decode(data)
    assert back.file == b"undionly.kpxe" and back.options == pkt.options
    assert data[HEADER_SIZE + 2] == o.OVERLOAD_SNAME


def test_too_big_even_with_overload_is_an_encode_error() -> None:
    with pytest.raises(DhcpEncodeError):
        encode(DhcpPacket(sname=b"s", file=b"f", options={100: b"x" * 2000}), 548)


def _raw(options: bytes, sname: bytes = b"", file: bytes = b"") -> bytes:
    head = bytearray(encode(DhcpPacket())[:HEADER_SIZE])
    head[SNAME_OFFSET : SNAME_OFFSET + len(sname)] = sname
    head[FILE_OFFSET : FILE_OFFSET + len(file)] = file
    return bytes(head) + options


@pytest.mark.parametrize(("data", "message"), [
    (b"\x01" * 100, "truncated"),
    (b"\x01" * 5000, "oversized"),
    (_raw(b"\x35\x05\x01"), "claims 5 bytes"),
    (_raw(b"\x35"), "cut off"),
    (_raw(b"\x34\x01\x01\xff", file=b"\x34\x01\x02\xff"), "overload loop"),
    (_raw(b"\x34\x01\x07\xff"), "bad option overload"),
    (_raw(b"\x34\x00\xff"), "bad option overload"),
    (encode(DhcpPacket())[:236] + b"\x00\x00\x00\x00", "magic cookie"),
])
def test_malformed_messages_are_refused_with_a_reason(data: bytes, message: str) -> None:
    with pytest.raises(DhcpDecodeError, match=message):
        decode(data)


def test_options_in_overloaded_fields_are_read_file_before_sname() -> None:
    data = _raw(b"\x34\x01\x03\x0c\x01a\xff", sname=b"\x0c\x01c\xff", file=b"\x0c\x01b\xff")
    pkt = decode(data)
    assert pkt.options[o.HOSTNAME] == b"abc" and pkt.file == b"" and pkt.sname == b""


def test_missing_end_and_padding_are_tolerated() -> None:
    pkt = decode(_raw(b"\x00\x00\x35\x01\x01\x00"))
    assert pkt.message_type == o.DISCOVER
