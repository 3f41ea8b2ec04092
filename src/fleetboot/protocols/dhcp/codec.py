"""DHCPv4 wire format: decode and encode BOOTP/DHCP messages. Pure, no I/O.

Options are kept as opaque bytes keyed by code. Decoding follows RFC 3396: an
option that appears several times (in the options field, then ``file``, then
``sname`` when option 52 says they are overloaded) is the concatenation of its
parts. Encoding splits values longer than 255 bytes into several instances and,
when the message would exceed the client's maximum size, moves options into
the free ``file``/``sname`` fields and says so with option 52.

Every problem with a received message raises :class:`DhcpDecodeError`, never
anything else, so the server can count and drop it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from fleetboot.errors import FleetbootError
from fleetboot.protocols.dhcp import options as o

# op htype hlen hops xid secs flags ciaddr yiaddr siaddr giaddr chaddr sname file cookie
HEADER = struct.Struct("!BBBBIHHIIII16s64s128sI")
HEADER_SIZE = HEADER.size  # 240, cookie included
SNAME_OFFSET = 44
FILE_OFFSET = 108
MAX_PACKET = 4096  # larger datagrams are refused: no DHCP client needs them


class DhcpDecodeError(FleetbootError, ValueError):
    """A received message is not valid DHCP; the server drops and counts it."""


class DhcpEncodeError(FleetbootError, ValueError):
    """A message cannot be encoded within the size the client accepts."""


@dataclass(slots=True)
class DhcpPacket:
    op: int = o.BOOTREQUEST
    htype: int = 1
    hlen: int = 6
    hops: int = 0
    xid: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: int = 0
    yiaddr: int = 0
    siaddr: int = 0
    giaddr: int = 0
    chaddr: bytes = b"\0" * 16
    sname: bytes = b""  # without trailing NULs; empty when the field held options
    file: bytes = b""
    options: dict[int, bytes] = field(default_factory=dict)

    @property
    def mac(self) -> bytes:
        return self.chaddr[: self.hlen]

    @property
    def message_type(self) -> int | None:
        value = self.options.get(o.MESSAGE_TYPE)
        return value[0] if value is not None and len(value) == 1 else None


def decode(data: bytes) -> DhcpPacket:
    """Parse one message; raise :class:`DhcpDecodeError` for anything malformed."""
    size = len(data)
    if size < HEADER_SIZE:
        raise DhcpDecodeError(f"truncated message: {size} bytes, need at least {HEADER_SIZE}")
    if size > MAX_PACKET:
        raise DhcpDecodeError(f"oversized message: {size} bytes, limit {MAX_PACKET}")
    (op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr, sname,
     file, cookie) = HEADER.unpack_from(data)
    if cookie != o.MAGIC_COOKIE:
        raise DhcpDecodeError(f"bad magic cookie {cookie:#010x}: not a DHCP message")
    if hlen > 16:
        raise DhcpDecodeError(f"hardware address length {hlen} is over 16")
    opts: dict[int, bytes] = {}
    _parse_area(data, HEADER_SIZE, size, opts, "options")
    overload = opts.pop(o.OVERLOAD, None)
    if overload is not None:
        if len(overload) != 1 or not 1 <= overload[0] <= 3:
            raise DhcpDecodeError(f"bad option overload value {overload.hex() or 'empty'}")
        # RFC 2131 4.1: the file field is read before sname.
        if overload[0] & o.OVERLOAD_FILE:
            _parse_area(data, FILE_OFFSET, FILE_OFFSET + 128, opts, "file")
            file = b""
        if overload[0] & o.OVERLOAD_SNAME:
            _parse_area(data, SNAME_OFFSET, SNAME_OFFSET + 64, opts, "sname")
            sname = b""
        if o.OVERLOAD in opts:
            raise DhcpDecodeError("option overload inside an overloaded field (overload loop)")
    return DhcpPacket(op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr,
                      chaddr, sname.rstrip(b"\0"), file.rstrip(b"\0"), opts)


def _parse_area(buf: bytes, pos: int, end: int, out: dict[int, bytes], area: str) -> None:
    while pos < end:
        code = buf[pos]
        if code == o.END:
            return
        if code == o.PAD:
            pos += 1
            continue
        if pos + 1 >= end:
            raise DhcpDecodeError(f"option {code} in {area} is cut off before its length")
        nxt = pos + 2 + buf[pos + 1]
        if nxt > end:
            raise DhcpDecodeError(
                f"option {code} in {area} claims {buf[pos + 1]} bytes, {end - pos - 2} remain")
        value = buf[pos + 2 : nxt]
        prev = out.get(code)
        out[code] = value if prev is None else prev + value  # RFC 3396 concatenation
        pos = nxt
    # A missing END is tolerated: many relays and clients truncate after the last option.


def option_items(items: Iterable[tuple[int, bytes]]) -> bytes:
    """Encode options (no END), splitting values over 255 bytes per RFC 3396."""
    out = bytearray()
    for code, value in items:
        if code in (o.PAD, o.END, o.OVERLOAD):
            continue
        if not value:
            out += bytes((code, 0))
        for start in range(0, len(value), 255):
            chunk = value[start : start + 255]
            out += bytes((code, len(chunk)))
            out += chunk
    return bytes(out)


def max_payload(requested: bytes | None) -> int:
    """The largest DHCP message (BOOTP part) the client accepts, from its option 57."""
    size = o.MIN_MAX_MESSAGE_SIZE
    if requested is not None and len(requested) == 2:
        size = max(size, o.U16.unpack(requested)[0])
    return min(size, 1500) - o.IP_UDP_HEADERS


def header(pkt: DhcpPacket, sname: bytes, file: bytes) -> bytes:
    return HEADER.pack(pkt.op, pkt.htype, pkt.hlen, pkt.hops, pkt.xid, pkt.secs, pkt.flags,
                       pkt.ciaddr, pkt.yiaddr, pkt.siaddr, pkt.giaddr, pkt.chaddr, sname, file,
                       o.MAGIC_COOKIE)


def encode(pkt: DhcpPacket, max_size: int = MAX_PACKET) -> bytes:
    """Encode a message of at most ``max_size`` bytes, overloading file/sname if needed."""
    if len(pkt.sname) > 64 or len(pkt.file) > 128 or len(pkt.chaddr) > 16:
        raise DhcpEncodeError("sname, file or chaddr is longer than its BOOTP field")
    stream = option_items(pkt.options.items())
    if HEADER_SIZE + len(stream) + 1 <= max_size:
        return _pad(header(pkt, pkt.sname, pkt.file) + stream + b"\xff")
    return _encode_overloaded(pkt, _chunks(pkt.options.items()), max_size)


def _pad(message: bytes) -> bytes:
    short = o.MIN_PACKET - len(message)
    return message + b"\0" * short if short > 0 else message


def _chunks(items: Iterable[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    for code, value in items:
        if code in (o.PAD, o.END, o.OVERLOAD):
            continue
        out.extend((code, value[i : i + 255]) for i in range(0, max(len(value), 1), 255))
    return out


def _fill(chunks: list[tuple[int, bytes]], room: int) -> bytearray:
    """Move whole or split options from the front of ``chunks`` into ``room`` bytes."""
    area = bytearray()
    while chunks:
        code, value = chunks[0]
        free = room - len(area)
        if 2 + len(value) <= free:
            area += bytes((code, len(value))) + value
            chunks.pop(0)
        elif free >= 3 and value:
            # RFC 3396 lets one option be split into several instances anywhere.
            take = free - 2
            area += bytes((code, take)) + value[:take]
            chunks[0] = (code, value[take:])
        else:
            break
    return area


def _encode_overloaded(pkt: DhcpPacket, chunks: list[tuple[int, bytes]], max_size: int) -> bytes:
    main_room = max_size - HEADER_SIZE - 3 - 1  # option 52 and END
    if main_room < 0:
        raise DhcpEncodeError(f"max message size {max_size} leaves no room for options")
    main = _fill(chunks, main_room)
    flag, file, sname = 0, pkt.file, pkt.sname
    if chunks and not pkt.file:
        area = _fill(chunks, 127)
        file, flag = bytes(area + b"\xff"), flag | o.OVERLOAD_FILE
    if chunks and not pkt.sname:
        area = _fill(chunks, 63)
        sname, flag = bytes(area + b"\xff"), flag | o.OVERLOAD_SNAME
    if chunks:
        raise DhcpEncodeError(f"options do not fit in {max_size} bytes even with overload")
    overload = bytes((o.OVERLOAD, 1, flag)) if flag else b""
    body = overload + main + b"\xff"
    return _pad(header(pkt, sname, file) + body)
