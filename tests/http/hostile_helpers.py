"""Misbehaving HTTP clients for the hardening tests (issue 11): real sockets; the
blocking calls are meant for ``asyncio.to_thread``, slow readers run on their own threads."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from httpboot_helpers import build_boot

from fleetboot.inventory.db import Database
from fleetboot.server.admission import RateFloor, TransferGate, TransferLimits
from fleetboot.server.http import HttpService
from fleetboot.server.httpguard import HeaderLimits


def exchange(port: int, payload: bytes, wait_s: float = 15.0) -> bytes:
    """Send ``payload`` (as far as the server takes it) and read until the server closes."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(wait_s)
        with contextlib.suppress(OSError):  # the server stopped reading: it may have answered
            sock.sendall(payload)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
        return answer


class SlowReader:
    """A client that asks for ``path`` and then reads ``rate`` bytes a second, on its
    own thread (the default executor has too few threads for a crowd of these)."""

    def __init__(self, port: int, path: str, rate: int = 2048, source: str = "127.0.0.1",
                 host: str = "127.0.0.1") -> None:
        self.port, self.path, self.rate, self.source, self.host = port, path, rate, source, host
        self.head = b""  # the first bytes of the answer (its status line)
        self.received = 0
        self.closed_by_server = False
        self.done = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> SlowReader:
        self._thread.start()
        return self

    @property
    def status(self) -> int | None:
        parts = self.head.split(b" ", 2)
        return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None

    def _run(self) -> None:
        piece = 512
        try:
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # no big buffer
                sock.bind((self.source, 0))
                sock.connect((self.host, self.port))
                sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % self.path.encode())
                sock.settimeout(0.5)
                while not self._stop.is_set():
                    try:
                        data = sock.recv(piece)
                    except TimeoutError:
                        continue
                    if not data:
                        self.closed_by_server = True
                        break
                    if len(self.head) < 64:
                        self.head = (self.head + data)[:64]
                    self.received += len(data)
                    time.sleep(piece / self.rate)
        except ConnectionResetError:
            self.closed_by_server = True
        finally:
            self.done.set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


# --- slow readers against a real server (run on asyncio and on uvloop) --------------------

BIG_PATH = "/boot/files/big.bin"
BIG = 24 << 20  # well past the socket buffers of a reader with a 4 KiB receive buffer


async def curl_status(url: str, *args: str) -> tuple[int, int]:
    """(HTTP status, body bytes) of a curl download; status 0 if curl failed."""
    proc = await asyncio.create_subprocess_exec(
        "curl", "-s", "--max-time", "40", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
        *args, url, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    code, size = out.decode().split()
    return int(code), int(size)


@contextlib.asynccontextmanager
async def serving(db: Database, tmp_path: Path, limits: TransferLimits, *,
                  zero_copy: bool = True, big: int = BIG,
                  header_limits: HeaderLimits | None = None) -> AsyncIterator[HttpService]:
    """The boot app on 127.0.0.1 with a ``big`` file and the given transfer limits."""
    boot = build_boot(db, tmp_path)
    (boot.root / "big.bin").write_bytes(os.urandom(big))
    ctx = boot.app.state.fleetboot
    ctx.gate = TransferGate(limits)
    service = HttpService(boot.app, "127.0.0.1", 0, zero_copy=zero_copy,
                          header_limits=header_limits)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


async def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {condition.__doc__}"
        await asyncio.sleep(0.05)


async def slow_readers_are_cut_off(db: Database, tmp_path: Path, zero_copy: bool) -> None:
    """Six slow readers at 2 KiB/s (from 127.0.0.1) against four slots: past the rate
    floor they are cut off, and a normal client's download (from 127.0.0.2) still gets a
    slot and completes; the slow host is refused for a while after."""
    limits = TransferLimits(max_transfers=4, max_per_client=0, queue_timeout_s=15,
                            floor=RateFloor(64 << 10, 1.0))
    async with serving(db, tmp_path, limits, zero_copy=zero_copy) as service:
        gate = service.app.state.fleetboot.gate
        readers = [SlowReader(service.port, BIG_PATH).start() for _ in range(6)]
        try:
            await wait_for(lambda: gate.counters["active"] == 4 and gate.counters["queued"] == 2)
            status, size = await curl_status(f"http://127.0.0.1:{service.port}{BIG_PATH}",
                                             "--interface", "127.0.0.2")
            assert (status, size) == (200, BIG)
            assert gate.counters["aborted_too_slow"] >= 4
            if zero_copy:  # cut off with a reset: what the kernel held for them is dropped
                await wait_for(lambda: sum(r.closed_by_server for r in readers) >= 4)
            assert all(r.received < BIG for r in readers)
            again = SlowReader(service.port, BIG_PATH).start()
            readers.append(again)
            await wait_for(lambda: again.status is not None)
            assert again.status == 503 and gate.counters["rejected_penalized"] >= 1
        finally:
            for reader in readers:
                reader.stop()
        await wait_for(lambda: gate.counters["active"] == 0)
