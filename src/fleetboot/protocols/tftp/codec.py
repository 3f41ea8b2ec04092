"""TFTP wire format (RFC 1350, RFC 2347 OACK): bytes in, values out, no I/O.

``decode`` raises only :class:`TftpDecodeError`, whatever the input; it
carries the TFTP error code the server should answer with. The hot path of a
transfer does not go through the dataclasses: ``data_header`` and ``ack_block``
are the per-packet helpers.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum

from fleetboot.errors import FleetbootError


class Opcode(IntEnum):
    RRQ = 1
    WRQ = 2
    DATA = 3
    ACK = 4
    ERROR = 5
    OACK = 6


class ErrorCode(IntEnum):
    NOT_DEFINED = 0
    FILE_NOT_FOUND = 1
    ACCESS_VIOLATION = 2
    DISK_FULL = 3
    ILLEGAL_OPERATION = 4
    UNKNOWN_TID = 5
    FILE_EXISTS = 6
    NO_SUCH_USER = 7
    OPTION_NEGOTIATION = 8  # RFC 2347


MODES = ("netascii", "octet", "mail")
MAX_BLOCK = 0xFFFF
MIN_BLKSIZE = 8
MAX_BLKSIZE = 65464  # RFC 2348


class TftpError(FleetbootError):
    """Something a TFTP peer sent or asked for cannot be served.

    ``code`` is the TFTP error code to put in the ERROR packet sent back.
    """

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class TftpDecodeError(TftpError):
    """The bytes are not a well-formed TFTP packet."""


@dataclass(frozen=True)
class Request:
    """RRQ or WRQ. ``options`` keeps the client's order; names are lowercased."""

    opcode: Opcode
    filename: str
    mode: str
    options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Data:
    block: int
    payload: bytes


@dataclass(frozen=True)
class Ack:
    block: int


@dataclass(frozen=True)
class Error:
    code: int
    message: str


@dataclass(frozen=True)
class OptionAck:
    options: dict[str, str]


Packet = Request | Data | Ack | Error | OptionAck

_HDR = struct.Struct("!HH")
_DATA_HEADERS: tuple[bytes, ...] = ()


def data_header(block: int) -> bytes:
    """The 4-byte DATA header for wire block ``block & 0xFFFF`` (from a table)."""
    global _DATA_HEADERS
    if not _DATA_HEADERS:
        # Built once: a table lookup is cheaper than struct.pack per packet.
        _DATA_HEADERS = tuple(_HDR.pack(Opcode.DATA, b) for b in range(MAX_BLOCK + 1))
    return _DATA_HEADERS[block & MAX_BLOCK]


def ack_block(packet: bytes) -> int:
    """The block number of an ACK packet, or -1 if ``packet`` is not an ACK.

    The per-packet fast path: no object is built. Trailing bytes after the
    4-byte ACK are tolerated, as several firmware stacks pad short frames.
    """
    if len(packet) >= 4 and packet[0] == 0 and packet[1] == Opcode.ACK:
        return (packet[2] << 8) | packet[3]
    return -1


def _split_strings(body: bytes, what: str) -> list[str]:
    if not body.endswith(b"\0"):
        raise TftpDecodeError(ErrorCode.ILLEGAL_OPERATION, f"{what}: last field not NUL-terminated")
    try:
        return body[:-1].decode("utf-8").split("\0")
    except UnicodeDecodeError:
        raise TftpDecodeError(
            ErrorCode.ILLEGAL_OPERATION, f"{what}: fields are not valid UTF-8"
        ) from None


def _pairs_to_options(fields: list[str], what: str) -> dict[str, str]:
    if len(fields) % 2:
        raise TftpDecodeError(ErrorCode.OPTION_NEGOTIATION, f"{what}: option without a value")
    options: dict[str, str] = {}
    for name, value in zip(fields[::2], fields[1::2], strict=True):
        key = name.lower()
        if not key:
            raise TftpDecodeError(ErrorCode.OPTION_NEGOTIATION, f"{what}: empty option name")
        if key in options:
            raise TftpDecodeError(ErrorCode.OPTION_NEGOTIATION, f"{what}: option {key!r} twice")
        options[key] = value
    return options


def _decode_request(opcode: Opcode, body: bytes) -> Request:
    fields = _split_strings(body, opcode.name)
    if len(fields) < 2:
        raise TftpDecodeError(ErrorCode.ILLEGAL_OPERATION, f"{opcode.name}: no transfer mode")
    filename, mode = fields[0], fields[1].lower()
    if not filename:
        raise TftpDecodeError(ErrorCode.ILLEGAL_OPERATION, f"{opcode.name}: empty file name")
    if mode not in MODES:
        raise TftpDecodeError(ErrorCode.ILLEGAL_OPERATION, f"{opcode.name}: unknown mode {mode!r}")
    return Request(opcode, filename, mode, _pairs_to_options(fields[2:], opcode.name))


def decode(packet: bytes) -> Packet:
    """Parse one datagram. Raises :class:`TftpDecodeError` and nothing else."""
    if len(packet) < 2:
        raise TftpDecodeError(ErrorCode.ILLEGAL_OPERATION, "packet shorter than an opcode")
    raw_opcode = (packet[0] << 8) | packet[1]
    body = bytes(packet[2:])
    if raw_opcode in (Opcode.RRQ, Opcode.WRQ):
        return _decode_request(Opcode(raw_opcode), body)
    if raw_opcode in (Opcode.DATA, Opcode.ACK, Opcode.ERROR) and len(body) < 2:
        raise TftpDecodeError(ErrorCode.ILLEGAL_OPERATION, "packet shorter than its header")
    if raw_opcode == Opcode.DATA:
        return Data((body[0] << 8) | body[1], body[2:])
    if raw_opcode == Opcode.ACK:
        return Ack((body[0] << 8) | body[1])
    if raw_opcode == Opcode.ERROR:
        # Be lenient about the message: peers send latin-1 or forget the NUL.
        message = body[2:].split(b"\0", 1)[0].decode("utf-8", "replace")
        return Error((body[0] << 8) | body[1], message)
    if raw_opcode == Opcode.OACK:
        return OptionAck(_pairs_to_options(_split_strings(body, "OACK"), "OACK") if body else {})
    raise TftpDecodeError(ErrorCode.ILLEGAL_OPERATION, f"unknown opcode {raw_opcode}")


def _strings(*values: str) -> bytes:
    return b"".join(v.encode("utf-8") + b"\0" for v in values)


def encode(packet: Packet) -> bytes:
    if isinstance(packet, Request):
        flat = [s for kv in packet.options.items() for s in kv]
        return _HDR.pack(packet.opcode, 0)[:2] + _strings(packet.filename, packet.mode, *flat)
    if isinstance(packet, Data):
        return data_header(packet.block) + packet.payload
    if isinstance(packet, Ack):
        return _HDR.pack(Opcode.ACK, packet.block & MAX_BLOCK)
    if isinstance(packet, Error):
        return _HDR.pack(Opcode.ERROR, packet.code) + _strings(packet.message)
    flat = [s for kv in packet.options.items() for s in kv]
    return _HDR.pack(Opcode.OACK, 0)[:2] + _strings(*flat)


def error_packet(code: int, message: str) -> bytes:
    return encode(Error(code, message))


def to_netascii(data: bytes) -> bytes:
    """RFC 764 netascii for a read: LF -> CR LF, bare CR -> CR NUL."""
    return data.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")


def from_netascii(data: bytes) -> bytes:
    """Inverse of :func:`to_netascii` (used by clients and tests)."""
    return data.replace(b"\r\n", b"\n").replace(b"\r\0", b"\r")
