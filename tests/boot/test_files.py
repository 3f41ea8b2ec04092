"""The boot-file source: path safety, static files and the chunk cache, generated files."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetboot.boot.files import (
    BootFileError,
    BootFileNotFound,
    BootFileSource,
    BootPathRefused,
    DiskBootFile,
    MemoryBootFile,
    RequestContext,
    normalize_boot_path,
)

CTX = RequestContext("10.0.0.5", "52:54:00:00:00:05")
SECRET = b"secret outside the root"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_bytes(SECRET)
    (root / "a.txt").write_bytes(b"alpha")
    (root / "sub" / "b.bin").write_bytes(bytes(range(256)) * 40)  # 10,240 bytes
    (root / "inside-link").symlink_to("sub/b.bin")
    (root / "outside-link").symlink_to(tmp_path / "outside" / "secret")
    (root / "outside-dir").symlink_to(tmp_path / "outside")
    (root / "dangling").symlink_to(root / "nothing")
    os.mkfifo(root / "fifo")
    return root


# --- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [
    ("a.txt", "a.txt"),
    ("/a.txt", "a.txt"),
    ("//sub/./b.bin", "sub/b.bin"),
    ("sub//b.bin/", "sub/b.bin"),
    ("ünïcode/file", "ünïcode/file"),
])
def test_normalize_accepts(raw: str, expected: str) -> None:
    assert normalize_boot_path(raw) == expected


@pytest.mark.parametrize("raw", [
    "..", "../x", "a/../b", "a/..", "/../etc/passwd", "x\0y", "x\ny", "x\x7f", "", "/", "./.",
    "a" * 1025, "a/" + "b" * 256,
])
def test_normalize_refuses(raw: str) -> None:
    with pytest.raises(BootPathRefused):
        normalize_boot_path(raw)


@given(st.text(max_size=300))
def test_normalize_never_escapes(raw: str) -> None:
    try:
        name = normalize_boot_path(raw)
    except BootPathRefused:
        return
    parts = name.split("/")
    assert ".." not in parts and "" not in parts and "." not in parts
    assert not name.startswith("/") and "\0" not in name


# --- static files ---------------------------------------------------------------------------


async def test_static_read(root: Path) -> None:
    source = BootFileSource(root)
    f = await source.open("/sub/b.bin", CTX)
    assert isinstance(f, DiskBootFile) and f.size == 10_240 and f.path == root / "sub/b.bin"
    assert await f.read(0, 100_000) == (root / "sub/b.bin").read_bytes()
    assert await f.read(10_000, 1000) == (root / "sub/b.bin").read_bytes()[10_000:]
    assert b"".join([p async for p in f.iter_bytes(5, 300, chunk=7)]) == \
        (root / "sub/b.bin").read_bytes()[5:300]
    assert f.etag.startswith('"') and f.mtime > 0


@pytest.mark.parametrize(("name", "error"), [
    ("outside-link", BootPathRefused),
    ("outside-dir/secret", BootPathRefused),
    ("../outside/secret", BootPathRefused),
    ("sub", BootFileNotFound),
    ("fifo", BootFileNotFound),
    ("dangling", BootFileNotFound),
    ("nope", BootFileNotFound),
    ("a.txt/x", BootFileNotFound),
])
async def test_static_refusals(root: Path, name: str, error: type[Exception]) -> None:
    source = BootFileSource(root)
    with pytest.raises(error):
        await asyncio.wait_for(source.open(name, CTX), 5)  # a FIFO must not block the open


async def test_symlink_inside_root_and_root_prefix(root: Path) -> None:
    source = BootFileSource(root)
    assert await (await source.open("inside-link", CTX)).read(0, 4) == bytes(range(4))
    # An absolute name that spells out the root is taken relative to it.
    assert await (await source.open(f"{root}/a.txt", CTX)).read(0, 5) == b"alpha"


async def test_unreadable_file_is_refused(root: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads everything")
    (root / "private").write_bytes(b"x")
    (root / "private").chmod(0)
    with pytest.raises(BootPathRefused):
        await BootFileSource(root).open("private", CTX)


async def test_open_cache_and_revalidation(root: Path) -> None:
    source = BootFileSource(root, stat_ttl=0.05)
    first = await source.open("a.txt", CTX)
    assert await source.open("a.txt", CTX) is first  # within the TTL: no syscalls
    assert source.stats.static_cache_hits == 1
    await asyncio.sleep(0.06)
    assert await source.open("a.txt", CTX) is first  # revalidated, unchanged: same object
    replacement = root / "a.txt.new"
    replacement.write_bytes(b"new version")
    replacement.rename(root / "a.txt")  # publish a new version as a new file
    await asyncio.sleep(0.06)
    second = await source.open("a.txt", CTX)
    assert second is not first
    assert await second.read(0, 100) == b"new version"
    assert await first.read(0, 100) == b"alpha"  # a session holding the old one still reads it


async def test_chunk_cache_shares_and_evicts(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    (tmp_path / "f").write_bytes(data)
    source = BootFileSource(tmp_path, chunk_size=1000, cache_bytes=3000)
    f = await source.open("f", CTX)
    assert f.view(0, 10) is None  # nothing read yet: the fast path never blocks
    assert await f.read(995, 10) == data[995:1005]  # straddles two chunks
    view = f.view(995, 10)
    assert view is not None and bytes(view) == data[995:1005]
    reads = await asyncio.gather(*(f.read(i * 500, 700) for i in range(20)))
    assert b"".join(r[:500] for r in reads) == data
    assert source.cache.bytes <= 3000


async def test_prefetch_loads_ahead(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(os.urandom(5000))
    source = BootFileSource(tmp_path, chunk_size=1000)
    f = await source.open("f", CTX)
    f.prefetch(2500)
    f.prefetch(2500)  # once is enough
    f.prefetch(99_999)  # past the end: ignored
    for _ in range(100):
        if f.view(2000, 1000) is not None:
            break
        await asyncio.sleep(0.01)
    assert f.view(2000, 1000) is not None
    assert source.cache.misses == 1


async def test_file_shrinking_under_us_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 5000)
    source = BootFileSource(tmp_path, chunk_size=1000)
    f = await source.open("f", CTX)
    os.truncate(tmp_path / "f", 100)
    with pytest.raises(BootFileError):
        await f.read(2000, 10)


# --- generated files ------------------------------------------------------------------------


async def test_single_flight_render(root: Path) -> None:
    source = BootFileSource(root)
    calls: list[tuple[str, str]] = []

    async def render(name: str, ctx: RequestContext) -> str:
        calls.append((name, ctx.client_key))
        await asyncio.sleep(0.05)
        return f"#!ipxe\necho {ctx.client_key}\n"

    source.add_provider("boot.ipxe", render, ttl=0)
    files = await asyncio.gather(*(source.open("boot.ipxe", CTX) for _ in range(50)))
    assert calls == [("boot.ipxe", CTX.client_key)]
    assert all(isinstance(f, MemoryBootFile) and f.generated for f in files)
    assert {await f.read(0, 100) for f in files} == {b"#!ipxe\necho 52:54:00:00:00:05\n"}
    other = RequestContext("10.0.0.6")
    assert await (await source.open("boot.ipxe", other)).read(0, 100) == b"#!ipxe\necho 10.0.0.6\n"
    await source.open("boot.ipxe", CTX)  # ttl=0: rendered again once the first finished
    assert len(calls) == 3
    assert source.stats.render_shared == 49


async def test_ttl_serves_probe_then_fetch_with_one_render(root: Path) -> None:
    source = BootFileSource(root)
    calls = 0

    async def render(name: str, ctx: RequestContext) -> bytes:
        nonlocal calls
        calls += 1
        return b"config"

    source.add_provider("grub/*.cfg", render, ttl=5)
    await source.open("grub/x.cfg", CTX)
    await source.open("/grub/x.cfg", CTX)
    assert calls == 1
    await source.open("grub/y.cfg", CTX)
    assert calls == 2


async def test_cancelled_waiter_does_not_cancel_the_render(root: Path) -> None:
    source = BootFileSource(root)
    gate = asyncio.Event()

    async def render(name: str, ctx: RequestContext) -> bytes:
        await gate.wait()
        return b"done"

    source.add_provider("slow", render)
    impatient = asyncio.create_task(source.open("slow", CTX))
    patient = asyncio.create_task(source.open("slow", CTX))
    await asyncio.sleep(0.01)
    impatient.cancel()
    gate.set()
    assert await (await patient).read(0, 10) == b"done"


async def test_provider_fallthrough_and_failures(root: Path) -> None:
    source = BootFileSource(root)

    async def none(name: str, ctx: RequestContext) -> None:
        return None

    async def broken(name: str, ctx: RequestContext) -> bytes:
        raise RuntimeError("database down")

    source.add_provider("a.txt", none)
    source.add_provider("broken.cfg", broken)
    assert await (await source.open("a.txt", CTX)).read(0, 10) == b"alpha"  # fell through
    with pytest.raises(BootFileError, match="generating it failed"):
        await source.open("broken.cfg", CTX)
    with pytest.raises(BootFileError):  # the failure is not cached: it fails again, cleanly
        await source.open("broken.cfg", CTX)
    with pytest.raises(BootPathRefused):  # names are checked before any provider runs
        await source.open("../broken.cfg", CTX)


async def test_source_without_root(tmp_path: Path) -> None:
    source = BootFileSource(None)

    async def render(name: str, ctx: RequestContext) -> str:
        return "x"

    source.add_provider("only", render)
    assert (await source.open("only", CTX)).size == 1
    with pytest.raises(BootFileNotFound):
        await source.open("other", CTX)


async def test_slow_provider_does_not_block_the_loop(root: Path) -> None:
    source = BootFileSource(root)

    async def render(name: str, ctx: RequestContext) -> str:
        await asyncio.sleep(0.3)
        return "late"

    source.add_provider("slow", render)
    task = asyncio.create_task(source.open("slow", CTX))
    await asyncio.sleep(0)
    fast = await source.open("a.txt", CTX)  # served while the render is running
    assert await fast.read(0, 5) == b"alpha"
    assert not task.done()
    assert (await task).size == 4
