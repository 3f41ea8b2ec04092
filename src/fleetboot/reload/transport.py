"""asyncio adapters for the multicast state machines: sockets, pacing, the disk writer.

The sender owns one unicast control socket (JOIN/REQ/DONE in, INFO out) that
also sends the DATA to the group with TTL 1 from the boot interface. A
receiver joins the group on its interface with one socket for everything.
Sockets are read in bursts until they would block; no packet waits on disk:
a record is verified and written only when its last block arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import mmap
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from fleetboot.reload.mcast import Info, Receiver, Sender, WireError
from fleetboot.reload.store import StoredDisk
from fleetboot.reload.writer import DiskWriter

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
_BUF = 32 << 20  # a receiver descheduled on a loaded host must not overflow


def _big_buffers(sock: socket.socket) -> None:
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, _BUF)
        except OSError:  # not root: as large as the system allows
            sock.setsockopt(socket.SOL_SOCKET, plain, _BUF)


def sender_socket(iface_ip: str, port: int, ttl: int = 1) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(iface_ip))
    _big_buffers(sock)
    sock.bind((iface_ip, port))
    sock.setblocking(False)
    return sock


def receiver_socket(group: str, port: int, iface_ip: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    _big_buffers(sock)
    sock.bind(("", port))
    mreq = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(iface_ip))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    sock.setblocking(False)
    return sock


def load_records(disk: StoredDisk) -> tuple[list[memoryview], mmap.mmap]:
    """Every record as a slice of one read-only mapping of ``chunks.bin``."""
    with open(disk.records_path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    view = memoryview(mapped)
    return [view[c.stored_offset:c.stored_offset + c.stored_length]
            for c in disk.manifest.chunks], mapped


def image_info(disk: StoredDisk, block_size: int) -> Info:
    m = disk.manifest
    return Info(len(m.chunks), block_size, m.virtual_size, bytes.fromhex(m.disk_sha256))


async def run_sender(sender: Sender, sock: socket.socket, group: tuple[str, int],
                     timeout_s: float | None = None,
                     on_tick: Callable[[Sender], bool | None] | None = None) -> None:
    """Serve until every expected receiver has ended, or ``timeout_s``."""
    loop = asyncio.get_running_loop()

    def readable(limit: int = 256) -> None:
        for _ in range(limit):
            try:
                data, addr = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            for reply, to in sender.receive(data, addr, time.monotonic()):
                with contextlib.suppress(OSError):
                    sock.sendto(reply, to)

    loop.add_reader(sock.fileno(), readable)
    start = time.monotonic()
    last_tick = 0.0
    try:
        while not sender.finished:
            now = time.monotonic()
            if timeout_s is not None and now - start > timeout_s:
                break
            # Read what the receivers said before ``poll`` judges who fell silent: after
            # this process was descheduled, their requests wait unread in the socket.
            readable(100_000)  # all of it: an unread request is not silence
            now = time.monotonic()
            for pkt in sender.poll(now):
                try:
                    sock.sendto(pkt, group)
                except (BlockingIOError, OSError):
                    await asyncio.sleep(0.001)  # queue full: the bucket refills meanwhile
            if on_tick is not None and now - last_tick > 0.5:
                last_tick = now
                if on_tick(sender):  # the operator cancelled
                    break
            await asyncio.sleep(max(0.0, min(0.01, sender.next_wake(time.monotonic())
                                             - time.monotonic())))
    finally:
        loop.remove_reader(sock.fileno())


@dataclass
class ReceiveResult:
    status: str  # verified | failed | timeout
    seconds: float
    chunks: int
    written: int
    corrupt: int
    reasked_chunks: int
    duplicates: int
    blocks_received: int
    disk_sha256: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))


async def run_receiver(receiver: Receiver, sock: socket.socket, sender_addr: tuple[str, int],
                       out: str, verify_disk: bool = False, zero_gaps: bool = False,
                       timeout_s: float = 600.0,
                       on_progress: Callable[[Receiver, DiskWriter], None] | None = None
                       ) -> ReceiveResult:
    loop = asyncio.get_running_loop()
    start = time.monotonic()
    writer: DiskWriter | None = None
    wake = asyncio.Event()

    def readable() -> None:
        nonlocal writer
        for _ in range(512):
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            try:
                arrived = receiver.receive(data, time.monotonic())
            except WireError:
                continue
            if receiver.info is not None and writer is None:
                writer = DiskWriter(out, receiver.info.virtual_size).open()
                wake.set()
            if arrived is not None and writer is not None:
                if writer.write_record(arrived.record) is None:
                    receiver.chunk_failed(arrived.index)
                elif receiver.complete:
                    wake.set()

    loop.add_reader(sock.fileno(), readable)
    disk_sha: str | None = None
    try:
        while not receiver.finished_reporting:
            now = time.monotonic()
            if now - start > timeout_s:
                break
            if receiver.complete and receiver.done_sent == 0:
                disk_sha = _finish(receiver, writer, verify_disk, zero_gaps)
            for pkt in receiver.poll(now):
                with contextlib.suppress(OSError):
                    sock.sendto(pkt, sender_addr)
            wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), 0.05)
            if on_progress is not None and writer is not None:
                on_progress(receiver, writer)
    finally:
        loop.remove_reader(sock.fileno())
    status = "failed" if receiver.failed else "verified" if receiver.complete else "timeout"
    result = ReceiveResult(status, time.monotonic() - start, receiver.chunks_done,
                           writer.written if writer else 0, writer.corrupt if writer else 0,
                           receiver.reasked_chunks, receiver.duplicates,
                           receiver.blocks_received, disk_sha)
    if writer is not None:
        writer.close()
    return result


def _finish(receiver: Receiver, writer: DiskWriter | None, verify_disk: bool,
            zero_gaps: bool) -> str | None:
    """Every chunk verified: optionally zero the gaps and check the whole disk."""
    assert writer is not None and receiver.info is not None
    if zero_gaps:
        writer.zero_gaps()
    if not verify_disk:
        return None
    sha = writer.disk_sha256()
    receiver.failed = sha != receiver.info.disk_sha256.hex()
    return sha


def parse_hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def stored_disk_at(directory: Path) -> StoredDisk:
    from fleetboot.reload.image import Manifest
    from fleetboot.reload.store import MANIFEST

    return StoredDisk(Manifest.from_json((directory / MANIFEST).read_text()), directory)


def records_total(records: Sequence[memoryview]) -> int:
    return sum(len(r) for r in records)
