"""The simulated firmware's TFTP client, on the project's TFTP codec.

It behaves like edk2's: an RRQ with ``tsize`` only, which it ends with
ERROR 8 once it knows the size, then a second RRQ (from a new port, so a new
session) with ``blksize``; then lock-step ACKs. Each packet it sends is
retransmitted on the firmware's schedule when no answer comes; every
retransmission is a retry, and a schedule running out fails the boot.
Everything runs in protocol callbacks: no task switch per block.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import cast

from fleetboot.errors import FleetbootError
from fleetboot.protocols.tftp.codec import (
    Ack,
    Data,
    Error,
    ErrorCode,
    Opcode,
    OptionAck,
    Request,
    TftpDecodeError,
    decode,
    encode,
)

Address = tuple[str, int]


class TftpClientError(FleetbootError):
    def __init__(self, message: str, retries: int = 0) -> None:
        super().__init__(message)
        self.retries = retries  # retransmissions made before giving up


@dataclass
class TftpResult:
    size: int
    tsize: int | None
    blksize: int
    retries: int  # our retransmissions (RRQs and ACKs)
    duplicates: int  # DATA packets the server sent twice


class _Session(asyncio.DatagramProtocol):
    """One TFTP session (one client port). Subclasses say what a packet means."""

    def __init__(self, server: Address, schedule: tuple[float, ...]) -> None:
        self.loop = asyncio.get_running_loop()
        self.server = server
        self.schedule = schedule
        self.peer: Address | None = None  # the server's transfer port (TID)
        self.transport: asyncio.DatagramTransport | None = None
        self.future: asyncio.Future[None] = self.loop.create_future()
        self.retries = 0
        self._last = b""
        self._last_addr: Address = server
        self._attempt = 0
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport does not derive from asyncio.DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def send(self, packet: bytes, addr: Address) -> None:
        """Send a new packet and wait for its answer on a fresh schedule."""
        self._last, self._last_addr, self._attempt = packet, addr, 0
        self._raw(packet, addr)
        self._arm()

    def _raw(self, packet: bytes, addr: Address) -> None:
        if self.transport is not None:
            self.transport.sendto(packet, addr)

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(self.schedule[self._attempt], self._expired)

    def _expired(self) -> None:
        self._attempt += 1
        if self._attempt >= len(self.schedule):
            self.fail(f"no answer after {len(self.schedule)} tries")
            return
        self.retries += 1
        self._raw(self._last, self._last_addr)
        self._arm()

    def fail(self, message: str) -> None:
        if not self.future.done():
            self.future.set_exception(TftpClientError(message))
        self._stop()

    def finish(self) -> None:
        if not self.future.done():
            self.future.set_result(None)
        self._stop()

    def _stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        peer = (str(addr[0]), int(addr[1]))
        if self.peer is None and peer[0] == self.server[0]:
            self.peer = peer
        if peer != self.peer:  # RFC 1350: a packet from another TID gets ERROR 5
            self._raw(encode(Error(ErrorCode.UNKNOWN_TID, "unknown transfer ID")), peer)
            return
        try:
            packet = decode(data)
        except TftpDecodeError as exc:
            self.fail(f"bad packet from the server: {exc.message}")
            return
        if isinstance(packet, Error):
            self.fail(f"server error {packet.code}: {packet.message}")
        else:
            self.handle(packet, peer)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP errors: firmware ignores them and retransmits on its schedule

    def handle(self, packet: object, peer: Address) -> None:
        raise NotImplementedError


class _Probe(_Session):
    """RRQ with tsize only; ends the session with ERROR 8 when the OACK comes."""

    tsize: int | None = None

    def handle(self, packet: object, peer: Address) -> None:
        if isinstance(packet, OptionAck):
            with contextlib.suppress(ValueError):
                self.tsize = int(packet.options.get("tsize", ""))
        elif not isinstance(packet, Data):
            return
        # An OACK (or DATA from a server without options): abort like edk2 does.
        self._raw(encode(Error(ErrorCode.OPTION_NEGOTIATION, "tsize probe done")), peer)
        self.finish()


class _Transfer(_Session):
    """RRQ with blksize, then lock-step: ACK every DATA, done at a short block."""

    def __init__(self, server: Address, schedule: tuple[float, ...], blksize: int) -> None:
        super().__init__(server, schedule)
        self.blksize = 512  # until an OACK says otherwise
        self.asked_blksize = blksize
        self.expected = 1  # absolute block number of the next DATA
        self.size = 0
        self.duplicates = 0

    def handle(self, packet: object, peer: Address) -> None:
        if isinstance(packet, OptionAck) and self.expected == 1:
            try:
                self.blksize = int(packet.options.get("blksize", "512"))
            except ValueError:
                self.fail(f"bad blksize in OACK: {packet.options}")
                return
            self.send(encode(Ack(0)), peer)
        elif isinstance(packet, Data):
            self._data(packet, peer)

    def _data(self, packet: Data, peer: Address) -> None:
        if packet.block == self.expected & 0xFFFF:
            self.size += len(packet.payload)
            self.expected += 1
            if len(packet.payload) < self.blksize:
                self._raw(encode(Ack(packet.block)), peer)
                self.finish()
            else:
                self.send(encode(Ack(packet.block)), peer)
        elif packet.block == (self.expected - 1) & 0xFFFF:
            # The server retransmitted (our ACK was late or lost): acknowledge again.
            self.duplicates += 1
            self._raw(encode(Ack(packet.block)), peer)


async def _run(session: _Session, source_ip: str, request: bytes) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: session,
                                                       local_addr=(source_ip, 0))
    try:
        session.send(request, session.server)
        await session.future
    finally:
        session._stop()
        transport.close()


async def fetch(
    server_ip: str,
    filename: str,
    source_ip: str,
    *,
    blksize: int = 1456,
    tsize_probe: bool = True,
    schedule: tuple[float, ...] = (4.0,) * 6,
    port: int = 69,
) -> TftpResult:
    """Download ``filename`` the way UEFI PXE firmware does; the bytes are counted."""
    server = (server_ip, port)
    retries, tsize = 0, None
    try:
        if tsize_probe:
            probe = _Probe(server, schedule)
            try:
                await _run(probe, source_ip,
                           encode(Request(Opcode.RRQ, filename, "octet", {"tsize": "0"})))
            finally:
                retries += probe.retries
            tsize = probe.tsize
        transfer = _Transfer(server, schedule, blksize)
        try:
            await _run(transfer, source_ip,
                       encode(Request(Opcode.RRQ, filename, "octet", {"blksize": str(blksize)})))
        finally:
            retries += transfer.retries
    except TftpClientError as exc:
        raise TftpClientError(str(exc), retries) from None
    if tsize is not None and tsize != transfer.size:
        raise TftpClientError(f"tsize said {tsize} bytes, the transfer gave {transfer.size}",
                              retries)
    return TftpResult(transfer.size, tsize, transfer.blksize, retries, transfer.duplicates)
