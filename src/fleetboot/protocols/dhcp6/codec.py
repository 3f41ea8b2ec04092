"""DHCPv6 wire format (RFC 8415 section 8, 9, 21): decode and encode. Pure, no I/O.

A client/server message is one byte of type, three of transaction id and a
list of options (code, length, value); options may repeat (several IA_NA), so
they are kept as an ordered list of ``(code, value)``. Relay messages carry a
hop count, link and peer address and the relayed message in option 9, decoded
here recursively (at most ``HOP_COUNT_LIMIT`` + 1 levels).

The parsers of option values (IA_NA, IAADDR, ORO, vendor class, ...) raise
:class:`Dhcp6DecodeError` and nothing else on malformed input, like ``decode``,
so the engine can count and drop such a message whatever part of it is broken.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from fleetboot.errors import FleetbootError
from fleetboot.protocols.dhcp6 import options as o

MAX_PACKET = 8192  # nothing a client or a chain of relays sends needs more
RELAY_HEADER = 34  # type, hop count, link-address, peer-address

Options = list[tuple[int, bytes]]


class Dhcp6DecodeError(FleetbootError, ValueError):
    """A received message (or one of its options) is not valid DHCPv6."""


@dataclass(slots=True)
class Dhcp6Message:
    msg_type: int
    xid: int
    options: Options = field(default_factory=list)

    def get(self, code: int) -> bytes | None:
        return first(self.options, code)

    def all(self, code: int) -> list[bytes]:
        return [value for c, value in self.options if c == code]

    def has(self, code: int) -> bool:
        return any(c == code for c, _ in self.options)


@dataclass(slots=True)
class RelayMessage:
    msg_type: int  # RELAY_FORW or RELAY_REPL
    hop_count: int
    link_address: bytes  # 16 bytes
    peer_address: bytes  # 16 bytes
    options: Options = field(default_factory=list)
    inner: Dhcp6Message | RelayMessage | None = None  # the decoded option 9

    def get(self, code: int) -> bytes | None:
        return first(self.options, code)


class IaAddr(NamedTuple):
    addr: int
    preferred: int
    valid: int
    options: Options


class IaNa(NamedTuple):
    iaid: int
    t1: int
    t2: int
    options: Options

    @property
    def addresses(self) -> list[IaAddr]:
        return [parse_iaaddr(value) for code, value in self.options if code == o.IAADDR]


def first(options: Options, code: int) -> bytes | None:
    for c, value in options:  # a loop: no generator per lookup
        if c == code:
            return value
    return None


# --- decoding ---------------------------------------------------------------------------------

def decode_options(data: bytes, start: int = 0) -> Options:
    """The options in ``data[start:]``; every byte must belong to a whole option."""
    out: Options = []
    pos, size = start, len(data)
    while pos < size:
        if pos + 4 > size:
            raise Dhcp6DecodeError(f"truncated option header at byte {pos}")
        code, length = o.OPTION.unpack_from(data, pos)
        pos += 4
        if pos + length > size:
            raise Dhcp6DecodeError(f"option {code} says {length} bytes, only {size - pos} left")
        out.append((code, data[pos : pos + length]))
        pos += length
    return out


def decode(data: bytes, depth: int = 0) -> Dhcp6Message | RelayMessage:
    """Parse one message; raise :class:`Dhcp6DecodeError` for anything malformed."""
    size = len(data)
    if size > MAX_PACKET:
        raise Dhcp6DecodeError(f"oversized message: {size} bytes, limit {MAX_PACKET}")
    if size < 4:
        raise Dhcp6DecodeError(f"truncated message: {size} bytes, need at least 4")
    msg_type = data[0]
    if msg_type in (o.RELAY_FORW, o.RELAY_REPL):
        return _decode_relay(data, depth)
    if not 1 <= msg_type <= o.INFORMATION_REQUEST:
        raise Dhcp6DecodeError(f"unknown message type {msg_type}")
    return Dhcp6Message(msg_type, o.HEADER.unpack_from(data)[0] & 0xFFFFFF,
                        decode_options(data, 4))


def _decode_relay(data: bytes, depth: int) -> RelayMessage:
    if depth > o.HOP_COUNT_LIMIT:
        raise Dhcp6DecodeError(f"relay messages nested more than {o.HOP_COUNT_LIMIT} deep")
    if len(data) < RELAY_HEADER:
        raise Dhcp6DecodeError(f"truncated relay message: {len(data)} bytes")
    options = decode_options(data, RELAY_HEADER)
    inner = [value for code, value in options if code == o.RELAY_MSG]
    if len(inner) != 1:
        raise Dhcp6DecodeError(f"relay message with {len(inner)} relay-message options, not 1")
    return RelayMessage(data[0], data[1], data[2:18], data[18:34], options,
                        decode(inner[0], depth + 1))


def parse_ia_na(value: bytes) -> IaNa:
    if len(value) < 12:
        raise Dhcp6DecodeError(f"IA_NA of {len(value)} bytes, need at least 12")
    iaid, t1, t2 = o.U32.unpack_from(value)[0], o.U32.unpack_from(value, 4)[0], \
        o.U32.unpack_from(value, 8)[0]
    return IaNa(iaid, t1, t2, decode_options(value, 12))


def parse_iaaddr(value: bytes) -> IaAddr:
    if len(value) < 24:
        raise Dhcp6DecodeError(f"IAADDR of {len(value)} bytes, need at least 24")
    return IaAddr(int.from_bytes(value[:16], "big"), o.U32.unpack_from(value, 16)[0],
                  o.U32.unpack_from(value, 20)[0], decode_options(value, 24))


def parse_u16_list(value: bytes, what: str) -> tuple[int, ...]:
    """ORO (6) and client architecture types (61): a list of 16-bit codes."""
    if len(value) % 2:
        raise Dhcp6DecodeError(f"{what} of odd length {len(value)}")
    return tuple(o.U16.unpack_from(value, i)[0] for i in range(0, len(value), 2))


def parse_opaque_list(value: bytes, start: int, what: str) -> list[bytes]:
    """User class (15) and the data of a vendor class (16): 16-bit length-prefixed items."""
    out: list[bytes] = []
    pos, size = start, len(value)
    while pos < size:
        if pos + 2 > size:
            raise Dhcp6DecodeError(f"{what}: truncated item length")
        length = o.U16.unpack_from(value, pos)[0]
        pos += 2
        if pos + length > size:
            raise Dhcp6DecodeError(f"{what}: item of {length} bytes overruns the option")
        out.append(value[pos : pos + length])
        pos += length
    return out


def parse_vendor_class(value: bytes) -> tuple[int, list[bytes]]:
    if len(value) < 4:
        raise Dhcp6DecodeError(f"vendor class of {len(value)} bytes, need at least 4")
    return o.U32.unpack_from(value)[0], parse_opaque_list(value, 4, "vendor class")


def parse_link_layer(value: bytes) -> bytes | None:
    """Option 79 (RFC 6939): the client's MAC when it is Ethernet, else None."""
    if len(value) < 2:
        raise Dhcp6DecodeError("client link-layer address option shorter than 2 bytes")
    if o.U16.unpack_from(value)[0] == o.HW_ETHERNET and len(value) == 8:
        return value[2:]
    return None


def duid_mac(duid: bytes) -> bytes | None:
    """The Ethernet MAC inside a DUID-LLT or DUID-LL, else None (DUID-EN, DUID-UUID)."""
    if len(duid) == 14 and duid[:4] == b"\x00\x01\x00\x01":
        return duid[8:]
    if len(duid) == 10 and duid[:4] == b"\x00\x03\x00\x01":
        return duid[4:]
    return None


def check_duid(value: bytes, what: str) -> bytes:
    """RFC 8415 11.1: a DUID is 2 bytes of type and at most 128 bytes more."""
    if not 3 <= len(value) <= 130:
        raise Dhcp6DecodeError(f"{what} DUID of {len(value)} bytes (3-130 allowed)")
    return value


# --- encoding ---------------------------------------------------------------------------------

def option(code: int, value: bytes) -> bytes:
    return o.OPTION.pack(code, len(value)) + value


def encode_options(items: Iterable[tuple[int, bytes]]) -> bytes:
    return b"".join(o.OPTION.pack(code, len(value)) + value for code, value in items)


def encode(msg: Dhcp6Message | RelayMessage) -> bytes:
    if isinstance(msg, RelayMessage):
        opts = list(msg.options)
        if msg.inner is not None and not any(code == o.RELAY_MSG for code, _ in opts):
            opts.append((o.RELAY_MSG, encode(msg.inner)))
        return (bytes((msg.msg_type, msg.hop_count)) + msg.link_address + msg.peer_address
                + encode_options(opts))
    return o.HEADER.pack((msg.msg_type << 24) | (msg.xid & 0xFFFFFF)) + encode_options(
        msg.options)


def ia_na(iaid: int, t1: int, t2: int, options: Iterable[tuple[int, bytes]] = ()) -> bytes:
    return o.U32.pack(iaid) + o.U32.pack(t1) + o.U32.pack(t2) + encode_options(options)


def iaaddr(addr: int, preferred: int, valid: int,
           options: Iterable[tuple[int, bytes]] = ()) -> bytes:
    return (addr.to_bytes(16, "big") + o.U32.pack(preferred) + o.U32.pack(valid)
            + encode_options(options))


def status(code: int, message: str = "") -> bytes:
    return o.U16.pack(code) + message.encode("utf-8")


def opaque_list(items: Iterable[bytes]) -> bytes:
    return b"".join(o.U16.pack(len(item)) + item for item in items)


def duid_ll(mac: bytes) -> bytes:
    return b"\x00\x03\x00\x01" + mac
