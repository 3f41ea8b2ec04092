"""The app under real uvicorn on 127.0.0.1 (a free port), fetched with real curl."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from httpboot_helpers import A_MAC, Boot, build_boot

from fleetboot.inventory.db import Database
from fleetboot.server.directory import StaticDirectory
from fleetboot.server.http import HttpError, HttpService
from fleetboot.server.httpfiles import zero_copy_stats

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")

BIG = 6 << 20


class Served:
    def __init__(self, boot: Boot, service: HttpService) -> None:
        self.boot, self.service = boot, service
        self.base = f"http://127.0.0.1:{service.port}"

    async def curl(self, *args: str) -> tuple[int, bytes, bytes]:
        proc = await asyncio.create_subprocess_exec(
            "curl", "-sS", "--max-time", "30", *args, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, out, err

    async def status(self, path: str, *args: str) -> int:
        _rc, out, _ = await self.curl("--path-as-is", "-o", "/dev/null", "-w", "%{http_code}",
                                     *args, self.base + path)
        return int(out)


async def _serve(db: Database, tmp_path: Path, zero_copy: bool) -> AsyncIterator[Served]:
    boot = build_boot(db, tmp_path)
    (boot.root / "big.bin").write_bytes(os.urandom(BIG))
    ctx = boot.app.state.fleetboot
    ctx.directory = StaticDirectory({"127.0.0.1": A_MAC})  # this test's client is node a
    service = HttpService(boot.app, "127.0.0.1", 0, zero_copy=zero_copy)
    await service.start()
    ctx.settings.server_address, ctx.settings.http.port = "127.0.0.1", service.port
    try:
        yield Served(boot, service)
    finally:
        await service.stop()


@pytest.fixture(params=[True, False], ids=["sendfile", "stream"])
async def served(request: pytest.FixtureRequest, sqlite_db: Database,
                 tmp_path: Path) -> AsyncIterator[Served]:
    async for s in _serve(sqlite_db, tmp_path, request.param):
        yield s


@pytest.fixture
async def served_db(db: Database, tmp_path: Path) -> AsyncIterator[Served]:
    async for s in _serve(db, tmp_path, True):
        yield s


async def test_whole_file_exact_length(served: Served) -> None:
    before = zero_copy_stats.bytes
    rc, out, err = await served.curl("-D", "-", served.base + "/boot/files/big.bin")
    assert rc == 0, err
    head, _, body = out.partition(b"\r\n\r\n")
    expected = (served.boot.root / "big.bin").read_bytes()
    assert hashlib.sha256(body).digest() == hashlib.sha256(expected).digest()
    assert f"content-length: {BIG}".encode() in head.lower()
    assert b"transfer-encoding" not in head.lower()
    used_sendfile = zero_copy_stats.bytes - before >= BIG
    assert used_sendfile == served.service.zero_copy
    event = served.boot.kinds("file")[-1]
    assert event.detail["bytes"] == BIG and event.detail["complete"]
    assert event.detail["zero_copy"] == served.service.zero_copy


async def test_range_and_head(served: Served) -> None:
    data = (served.boot.root / "big.bin").read_bytes()
    url = served.base + "/boot/files/big.bin"
    rc, out, _ = await served.curl("-r", "1000-1999", url)
    assert rc == 0 and out == data[1000:2000]
    rc, out, _ = await served.curl("-r", f"{BIG - 10}-", "-D", "-", url)
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"206" in head.split(b"\r\n")[0] and body == data[-10:]
    assert f"content-range: bytes {BIG - 10}-{BIG - 1}/{BIG}".encode() in head.lower()
    assert await served.status("/boot/files/big.bin", "-r", f"{BIG}-") == 416
    rc, out, _ = await served.curl("-I", url)
    assert rc == 0 and f"content-length: {BIG}".encode() in out.lower()
    assert out.split(b"\r\n")[0].endswith(b"200 OK")


async def test_keep_alive_reuses_the_connection(served: Served) -> None:
    url = served.base + "/boot/files/images/k1/vmlinuz"
    rc, out, err = await served.curl("-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null",
                                     "-w", "%{http_code}:%{num_connects} ", url,
                                     served.base + "/boot/files/big.bin", url)
    assert rc == 0, err
    assert out.decode().split() == ["200:1", "200:0", "200:0"]


@pytest.mark.parametrize("path", [
    "/boot/files/../../../../etc/passwd", "/boot/files/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/boot/files/images/../../../etc/passwd", "/boot/files//etc/passwd",
    "/boot/files/link-outside", "/boot/files/dir-outside/passwd", "/boot/files/x%00y",
    "/boot/files/" + "n" * 2000, "/boot/files/%0a", "/boot/../etc/passwd",
])
async def test_traversal_over_real_http(served: Served, path: str) -> None:
    _rc, out, _ = await served.curl("--path-as-is", "-w", "\n%{http_code}", served.base + path)
    body, _, code = out.rpartition(b"\n")
    assert 400 <= int(code) < 500 and b"root:" not in body


async def test_script_over_real_http(served_db: Served) -> None:
    rc, out, _ = await served_db.curl(served_db.base + "/boot/script.ipxe")
    assert rc == 0 and b"node a" in out
    assert f"http://127.0.0.1:{served_db.service.port}/boot/files/images/k1/vmlinuz".encode() \
        in out


async def test_client_vanishing_mid_transfer(served: Served) -> None:
    big = served.boot.root / "huge.bin"
    with big.open("wb") as f:
        f.truncate(64 << 20)
    reader, writer = await asyncio.open_connection("127.0.0.1", served.service.port)
    writer.write(b"GET /boot/files/huge.bin HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await reader.readexactly(4096)
    writer.transport.abort()  # RST: the server is mid-body
    for _ in range(200):
        events = [e for e in served.boot.kinds("file") if e.detail["path"] == "huge.bin"]
        if events:
            break
        await asyncio.sleep(0.05)
    assert events and not events[0].detail["complete"]
    # and the server goes on serving
    assert await served.status("/boot/files/images/k1/vmlinuz") == 200


async def test_busy_port_is_a_clear_error(sqlite_db: Database, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        boot = build_boot(sqlite_db, tmp_path)
        with pytest.raises(HttpError, match="cannot listen for HTTP"):
            await HttpService(boot.app, "127.0.0.1", port).start()


async def test_protocol_composes_with_another_httptools_protocol(sqlite_db: Database,
                                                                 tmp_path: Path) -> None:
    """node-config answers its hottest route below ASGI with its own protocol class;
    combined with ours, both that and sendfile keep working."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class Fast(HttpToolsProtocol):
        def on_headers_complete(self) -> None:
            if self.url == b"/fast" and (self.cycle is None or self.cycle.response_complete):
                self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nfast")
                return
            super().on_headers_complete()

    boot = build_boot(sqlite_db, tmp_path)
    (boot.root / "big.bin").write_bytes(os.urandom(BIG))
    service = HttpService(boot.app, "127.0.0.1", 0, protocol=Fast)
    assert issubclass(service.protocol, Fast)  # type: ignore[arg-type]
    await service.start()
    try:
        s = Served(boot, service)
        before = zero_copy_stats.bytes
        rc, out, _ = await s.curl(s.base + "/fast")
        assert rc == 0 and out == b"fast"
        assert await s.status("/boot/files/big.bin") == 200
        assert zero_copy_stats.bytes - before == BIG
    finally:
        await service.stop()
