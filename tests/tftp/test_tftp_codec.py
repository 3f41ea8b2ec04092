"""The pure TFTP codec and option negotiation: examples and hypothesis properties."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetboot.protocols.tftp.codec import (
    MAX_BLKSIZE,
    Ack,
    Data,
    Error,
    ErrorCode,
    Opcode,
    OptionAck,
    Request,
    TftpDecodeError,
    TftpError,
    ack_block,
    data_header,
    decode,
    encode,
    from_netascii,
    to_netascii,
)
from fleetboot.protocols.tftp.options import (
    OptionPolicy,
    TftpQuirk,
    blksize_for_mtu,
    negotiate,
    policy_for,
)

text = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
               min_size=1, max_size=40)
option_names = text.map(str.lower).filter(lambda s: s != "")
blocks = st.integers(0, 0xFFFF)

requests = st.builds(
    Request,
    st.sampled_from([Opcode.RRQ, Opcode.WRQ]),
    text,
    st.sampled_from(["netascii", "octet", "mail"]),
    st.dictionaries(option_names, text, max_size=5),
)
packets = st.one_of(
    requests,
    st.builds(Data, blocks, st.binary(max_size=600)),
    st.builds(Ack, blocks),
    st.builds(Error, st.integers(0, 0xFFFF), text),
    st.builds(OptionAck, st.dictionaries(option_names, text, min_size=1, max_size=5)),
)


@given(packets)
def test_round_trip(packet: Request | Data | Ack | Error | OptionAck) -> None:
    assert decode(encode(packet)) == packet


@given(st.binary(max_size=700))
def test_random_bytes_raise_only_the_codec_error(raw: bytes) -> None:
    try:
        decode(raw)
    except TftpDecodeError as exc:
        assert 0 <= exc.code <= 8 and exc.message


@given(st.binary(max_size=300), st.sampled_from([b"\0\1", b"\0\2", b"\0\6"]))
def test_random_request_bodies(body: bytes, opcode: bytes) -> None:
    with contextlib.suppress(TftpDecodeError):
        decode(opcode + body)


@given(blocks)
def test_fast_path_helpers(block: int) -> None:
    assert ack_block(encode(Ack(block))) == block
    assert data_header(block) + b"x" == encode(Data(block, b"x"))
    assert data_header(block + 0x10000) == data_header(block)  # rollover wraps to 0


@pytest.mark.parametrize("raw", [b"", b"\0", b"\0\3\0\1", b"\0\5\0\1", b"\0\4\0"])
def test_ack_block_rejects_non_acks(raw: bytes) -> None:
    assert ack_block(raw) == -1


def test_decode_examples() -> None:
    assert decode(b"\0\1pxelinux.0\0OCTET\0TSIZE\0" + b"0\0blksize\0" + b"1468\0") == Request(
        Opcode.RRQ, "pxelinux.0", "octet", {"tsize": "0", "blksize": "1468"})
    assert decode(b"\0\5\0\1no terminator") == Error(1, "no terminator")
    assert decode(b"\0\6") == OptionAck({})
    with pytest.raises(TftpDecodeError) as info:
        decode(b"\0\1file\0octet\0blksize\0")
    assert info.value.code == ErrorCode.OPTION_NEGOTIATION


@given(st.binary(max_size=2000))
def test_netascii_round_trip(data: bytes) -> None:
    wire = to_netascii(data)
    assert from_netascii(wire) == data
    assert b"\n" not in wire.replace(b"\r\n", b"")  # every LF travels as CR LF


# --- options --------------------------------------------------------------------------

policies = st.builds(OptionPolicy, st.booleans(), st.integers(8, MAX_BLKSIZE),
                     st.integers(0, 128), st.booleans(), st.booleans())
option_values = st.one_of(st.integers(-5, 70000).map(str), text)
requested = st.dictionaries(
    st.sampled_from(["blksize", "tsize", "timeout", "windowsize", "utimeout", "x"]),
    option_values, max_size=5)


@given(requested, st.integers(0, 1 << 40), policies)
def test_negotiate_stays_in_bounds(options: dict[str, str], size: int,
                                   policy: OptionPolicy) -> None:
    try:
        result = negotiate(options, size, policy)
    except TftpError as exc:
        assert exc.code == ErrorCode.OPTION_NEGOTIATION
        return
    assert result.blksize == 512 or 8 <= result.blksize <= policy.max_blksize
    assert 1 <= result.windowsize <= max(1, policy.max_windowsize)
    if result.oack is not None:
        assert set(result.oack) <= set(options)
        assert policy.options_enabled
        if "tsize" in result.oack:
            assert result.oack["tsize"] == str(size)
    if not policy.options_enabled:
        assert result.oack is None and result.blksize == 512


def test_negotiate_examples() -> None:
    policy = OptionPolicy(max_blksize=1468, max_windowsize=16)
    got = negotiate({"blksize": "9000", "tsize": "0", "windowsize": "64", "foo": "1"}, 42,
                    policy)
    assert (got.blksize, got.windowsize) == (1468, 16)
    assert got.oack == {"blksize": "1468", "tsize": "42", "windowsize": "16"}
    assert negotiate({"foo": "bar"}, 1, policy).oack is None  # unknown only: plain RFC 1350
    assert negotiate({"timeout": "3"}, 1, policy).timeout == 3.0


def test_mtu_and_quirks() -> None:
    assert blksize_for_mtu(1500) == 1468
    assert blksize_for_mtu(9000) == 8968
    assert blksize_for_mtu(65536) == MAX_BLKSIZE
    assert blksize_for_mtu(1500, ipv6=True) == 1448
    base = OptionPolicy()
    quirks = [TftpQuirk(network="10.0.5.0/24", disable_options=True),
              TftpQuirk(mac_prefix="00-11-22", max_blksize=512, max_windowsize=1),
              TftpQuirk(network="10.0.6.0/24", mac_prefix="aa:bb", max_blksize=1024),
              TftpQuirk()]
    assert not policy_for(base, quirks, "10.0.5.9", None).options_enabled
    assert policy_for(base, quirks, "10.0.9.9", "00:11:22:33:44:55").max_blksize == 512
    assert policy_for(base, quirks, "10.0.6.1", "aa:bb:00:00:00:01").max_blksize == 1024
    assert policy_for(base, quirks, "10.0.6.1", "cc:bb:00:00:00:01") == base
    assert policy_for(base, quirks, "not-an-ip", None) == base


def test_a_non_ascii_digit_is_refused_not_a_crash() -> None:
    """str.isdigit() accepts "¹", which int() refuses: found by hypothesis above."""
    with pytest.raises(TftpError, match="not a number"):
        negotiate({"blksize": "¹"}, 0, OptionPolicy())
