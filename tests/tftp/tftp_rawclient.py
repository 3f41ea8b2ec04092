"""A small asyncio TFTP client for tests: raw packets, windowsize, rollover, retries.

Real clients (curl, atftp, tftp-hpa) are used wherever they can do the job;
this one covers what they cannot script: probes, duplicates, dropped ACKs.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field

from fleetboot.protocols.tftp.codec import (
    Ack,
    Data,
    Error,
    Opcode,
    OptionAck,
    Request,
    decode,
    encode,
)


class TftpClientError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"TFTP error {code}: {message}")
        self.code = code


@dataclass
class Result:
    data: bytes
    oack: dict[str, str] | None
    server_port: int
    packets: int = 0
    duplicates: int = 0
    timeouts: int = 0
    data_sizes: list[int] = field(default_factory=list)


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind(("127.0.0.1", 0))
    return sock


async def recv(sock: socket.socket, timeout: float) -> tuple[bytes, tuple[str, int]]:
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.sock_recvfrom(sock, 65536), timeout)


def rrq(filename: str, options: dict[str, str] | None = None, mode: str = "octet") -> bytes:
    return encode(Request(Opcode.RRQ, filename, mode, dict(options or {})))


async def fetch(server: tuple[str, int], filename: str, options: dict[str, str] | None = None,
                *, timeout: float = 1.0, retries: int = 8, sock: socket.socket | None = None,
                drop_acks: set[int] | None = None) -> Result:
    """Download ``filename``; ``drop_acks`` lists block numbers whose first ACK is not sent."""
    own = sock is None
    sock = sock or udp_socket()
    loop = asyncio.get_running_loop()
    dropped = set(drop_acks or ())
    try:
        request = rrq(filename, options)
        await loop.sock_sendto(sock, request, server)
        window = int((options or {}).get("windowsize", "1"))
        blksize = 512
        chunks: list[bytes] = []
        expected = 1  # absolute block number we need next
        peer: tuple[str, int] | None = None
        result = Result(b"", None, 0)
        misses = 0
        since_ack = 0
        while True:
            try:
                packet, addr = await recv(sock, timeout)
            except TimeoutError:
                misses += 1
                result.timeouts += 1
                if misses > retries:
                    raise TftpClientError(0, "client timed out") from None
                if peer is None:
                    await loop.sock_sendto(sock, request, server)
                else:
                    await loop.sock_sendto(sock, encode(Ack((expected - 1) & 0xFFFF)), peer)
                continue
            if peer is None:
                peer = addr
                result.server_port = addr[1]
            elif addr != peer:
                continue
            misses = 0
            decoded = decode(packet)
            if isinstance(decoded, Error):
                raise TftpClientError(decoded.code, decoded.message)
            if isinstance(decoded, OptionAck):
                result.oack = decoded.options
                blksize = int(decoded.options.get("blksize", blksize))
                window = int(decoded.options.get("windowsize", "1"))
                await loop.sock_sendto(sock, encode(Ack(0)), peer)
                continue
            if not isinstance(decoded, Data):
                continue
            result.packets += 1
            if decoded.block != expected & 0xFFFF:
                result.duplicates += 1
                # Out of order in a window: ACK what we have so the server resends.
                await loop.sock_sendto(sock, encode(Ack((expected - 1) & 0xFFFF)), peer)
                since_ack = 0
                continue
            chunks.append(decoded.payload)
            result.data_sizes.append(len(decoded.payload))
            last = len(decoded.payload) < blksize
            expected += 1
            since_ack += 1
            if last or since_ack >= window:
                since_ack = 0
                block = expected - 1
                if block in dropped:
                    dropped.discard(block)
                else:
                    await loop.sock_sendto(sock, encode(Ack(block & 0xFFFF)), peer)
            if last:
                result.data = b"".join(chunks)
                return result
    finally:
        if own:
            sock.close()
