"""Request-head limits on uvloop (``fleetboot serve``'s loop): 431 and 408 there too."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
import uvloop
from hostile_helpers import exchange
from httpboot_helpers import build_boot

from fleetboot.inventory.db import Database
from fleetboot.server.http import HttpService
from fleetboot.server.httpguard import HeaderLimits

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")


async def test_heads_are_bounded_on_uvloop(sqlite_db: Database, tmp_path: Path) -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
    boot = build_boot(sqlite_db, tmp_path)
    service = HttpService(boot.app, "127.0.0.1", 0,
                          header_limits=HeaderLimits(max_header_bytes=16 << 10,
                                                     header_timeout_s=0.5))
    await service.start()
    try:
        huge = b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * (8 << 20)
        answer = await asyncio.to_thread(exchange, service.port, huge)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 431 ")
        small = b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * (20 << 10)
        assert (await asyncio.to_thread(exchange, service.port, small)).startswith(
            b"HTTP/1.1 431 ")
        partial = await asyncio.to_thread(exchange, service.port, b"GET /healthz HTTP/1.1\r\n")
        assert partial.startswith(b"HTTP/1.1 408 ")
        proc = await asyncio.create_subprocess_exec(
            "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
            f"http://127.0.0.1:{service.port}/boot/files/images/k1/vmlinuz",
            stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        assert out == b"200"
    finally:
        await service.stop()
