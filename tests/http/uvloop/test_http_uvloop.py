"""Zero-copy on uvloop (``fleetboot serve``'s loop), with real curl on 127.0.0.1.

uvloop has no ``loop.sendfile``; large bodies go out through the sendfile pump
(one non-blocking sendfile on the loop, the rest on its helper thread).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvloop
from httpboot_helpers import A_MAC, build_boot

from fleetboot.inventory.db import Database
from fleetboot.server.directory import StaticDirectory
from fleetboot.server.http import HttpService
from fleetboot.server.httpfiles import sendfile_pump, zero_copy_stats

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")

BIG = 24 << 20  # well past any socket buffer: the helper thread must take over


@pytest.fixture
async def server(sqlite_db: Database, tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
    boot = build_boot(sqlite_db, tmp_path)
    (boot.root / "big.bin").write_bytes(os.urandom(BIG))
    boot.app.state.fleetboot.directory = StaticDirectory({"127.0.0.1": A_MAC})
    service = HttpService(boot.app, "127.0.0.1", 0)
    await service.start()
    try:
        yield f"http://127.0.0.1:{service.port}", boot.root
    finally:
        await service.stop()


async def _curl(*args: str) -> tuple[int, bytes]:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "30", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL)
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out


async def test_big_file_goes_through_the_pump(server: tuple[str, Path]) -> None:
    base, root = server
    before, handoffs = zero_copy_stats.bytes, sendfile_pump().handoffs
    rc, out = await _curl("--limit-rate", "50M", base + "/boot/files/big.bin")
    assert rc == 0
    assert hashlib.sha256(out).digest() == hashlib.sha256((root / "big.bin").read_bytes()).digest()
    assert zero_copy_stats.bytes - before == BIG
    assert sendfile_pump().handoffs > handoffs


async def test_ranges_and_keep_alive(server: tuple[str, Path]) -> None:
    base, root = server
    data = (root / "big.bin").read_bytes()
    url = base + "/boot/files/big.bin"
    rc, out = await _curl("-r", f"{BIG - 3_000_000}-", url)
    assert rc == 0 and out == data[-3_000_000:]
    rc, out = await _curl("-o", "/dev/null", "-o", "/dev/null", "-w", "%{http_code}:"
                          "%{num_connects}:%{size_download} ", url,
                          base + "/boot/files/images/k1/vmlinuz")
    assert rc == 0
    assert out.decode().split() == [f"200:1:{BIG}", "200:0:300000"]


async def test_client_gone_mid_transfer(server: tuple[str, Path]) -> None:
    """A client that hangs up mid-file costs the server nothing lasting."""
    base, root = server
    url = base + "/boot/files/big.bin"
    rc, _ = await _curl("--limit-rate", "2M", "--max-time", "1", "-o", "/dev/null", url)
    assert rc != 0  # curl gave up (timeout)
    for _ in range(100):
        if not sendfile_pump()._jobs:
            break
        await asyncio.sleep(0.05)
    assert not sendfile_pump()._jobs
    rc, out = await _curl(url)
    assert rc == 0 and len(out) == BIG
    assert hashlib.sha256(out).digest() == hashlib.sha256((root / "big.bin").read_bytes()).digest()
