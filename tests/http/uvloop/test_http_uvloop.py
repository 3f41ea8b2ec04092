"""Zero-copy on uvloop (``fleetboot serve``'s loop), with real curl on 127.0.0.1.

uvloop has no ``loop.sendfile``; large bodies go out through the sendfile pump
(one non-blocking sendfile on the loop, the rest on its helper thread).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvloop
from httpboot_helpers import A_MAC, build_boot
from starlette.applications import Starlette

from fleetboot.inventory.db import Database
from fleetboot.server.admission import TransferGate
from fleetboot.server.directory import StaticDirectory
from fleetboot.server.http import HttpService
from fleetboot.server.httpfiles import sendfile_pump, zero_copy_stats

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")

BIG = 24 << 20  # well past any socket buffer: the helper thread must take over


@dataclass
class Served:
    base: str
    root: Path
    app: Starlette
    port: int

    @property
    def gate(self) -> TransferGate:
        return self.app.state.fleetboot.gate


@pytest.fixture
async def server(sqlite_db: Database, tmp_path: Path) -> AsyncIterator[Served]:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
    boot = build_boot(sqlite_db, tmp_path)
    (boot.root / "big.bin").write_bytes(os.urandom(BIG))
    boot.app.state.fleetboot.directory = StaticDirectory({"127.0.0.1": A_MAC})
    service = HttpService(boot.app, "127.0.0.1", 0)
    await service.start()
    try:
        yield Served(f"http://127.0.0.1:{service.port}", boot.root, boot.app, service.port)
    finally:
        await service.stop()


async def _curl(*args: str) -> tuple[int, bytes]:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "30", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL)
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


async def test_big_file_goes_through_the_pump(server: Served) -> None:
    before, handoffs = zero_copy_stats.bytes, sendfile_pump().handoffs
    rc, out = await _curl("--limit-rate", "50M", server.base + "/boot/files/big.bin")
    assert rc == 0
    assert _digest(out) == _digest((server.root / "big.bin").read_bytes())
    assert zero_copy_stats.bytes - before == BIG
    assert sendfile_pump().handoffs > handoffs
    assert server.gate.counters["started"] >= 1 and server.gate.counters["active"] == 0


async def test_ranges_and_keep_alive(server: Served) -> None:
    data = (server.root / "big.bin").read_bytes()
    url = server.base + "/boot/files/big.bin"
    rc, out = await _curl("-r", f"{BIG - 3_000_000}-", url)
    assert rc == 0 and out == data[-3_000_000:]
    rc, out = await _curl("-o", "/dev/null", "-o", "/dev/null", "-w", "%{http_code}:"
                          "%{num_connects}:%{size_download} ", url,
                          server.base + "/boot/files/images/k1/vmlinuz")
    assert rc == 0
    assert out.decode().split() == [f"200:1:{BIG}", "200:0:300000"]


async def _wait_idle(served: Served) -> bool:
    for _ in range(100):
        if not sendfile_pump()._jobs and served.gate.counters["active"] == 0:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_client_gone_mid_transfer(server: Served) -> None:
    """A client that hangs up mid-file costs the server nothing lasting."""
    url = server.base + "/boot/files/big.bin"
    rc, _ = await _curl("--limit-rate", "2M", "--max-time", "1", "-o", "/dev/null", url)
    assert rc != 0  # curl gave up (timeout)
    assert await _wait_idle(server)
    rc, out = await _curl(url)
    assert rc == 0 and _digest(out) == _digest((server.root / "big.bin").read_bytes())


async def test_stalled_client_frees_its_transfer_slot(server: Served) -> None:
    """A node that stops reading (powered off mid-download) is given up after the
    idle timeout, and its transfer slot goes back to the gate."""
    pump = sendfile_pump()
    pump.idle_timeout_s = 0.5
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills at once
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", server.port))
        await loop.sock_sendall(sock, b"GET /boot/files/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        for _ in range(40):  # the transfer starts, then stalls: nobody reads
            await asyncio.sleep(0.05)
            if pump._jobs:
                break
        assert pump._jobs and server.gate.counters["active"] == 1
        assert await _wait_idle(server)  # given up after the idle timeout
    finally:
        pump.idle_timeout_s = 60.0
        sock.close()
    rc, out = await _curl(server.base + "/boot/files/images/k1/vmlinuz")
    assert rc == 0 and len(out) == 300_000
