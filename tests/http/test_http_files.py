"""Boot files through the app (httpx's ASGI transport): Range, HEAD, lengths, bad names."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from httpboot_helpers import A_IP, A_MAC, KERNEL_BYTES, Boot, raw_request

KERNEL = "/boot/files/images/k1/vmlinuz"


async def test_get_and_head_have_exact_lengths(make_files_boot: Callable[..., Boot]) -> None:
    boot = make_files_boot()
    async with boot.client(A_IP) as client:
        resp = await client.get(KERNEL)
        assert resp.status_code == 200 and resp.content == KERNEL_BYTES
        assert resp.headers["content-length"] == str(len(KERNEL_BYTES))
        assert resp.headers["accept-ranges"] == "bytes" and resp.headers["etag"]
        head = await client.head(KERNEL)
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(len(KERNEL_BYTES))
        assert head.headers["etag"] == resp.headers["etag"]
        empty = await client.get("/boot/files/empty")
        assert empty.status_code == 200 and empty.headers["content-length"] == "0"
    event = boot.kinds("file")[0]
    assert event.mac == A_MAC and event.detail["path"] == "images/k1/vmlinuz"
    assert event.detail["bytes"] == len(KERNEL_BYTES) and event.detail["complete"]
    assert event.detail["duration_s"] >= 0 and event.detail["status"] == 200


@pytest.mark.parametrize(("header", "start", "end"), [
    ("bytes=0-0", 0, 1), ("bytes=1000-1999", 1000, 2000), ("bytes=299990-", 299990, 300000),
    ("bytes=-7", 299993, 300000), ("bytes=299000-999999", 299000, 300000),
])
async def test_single_ranges(make_files_boot: Callable[..., Boot], header: str, start: int,
                             end: int) -> None:
    boot = make_files_boot()
    async with boot.client(A_IP) as client:
        resp = await client.get(KERNEL, headers={"Range": header})
    assert resp.status_code == 206
    assert resp.content == KERNEL_BYTES[start:end]
    assert resp.headers["content-length"] == str(end - start)
    assert resp.headers["content-range"] == f"bytes {start}-{end - 1}/{len(KERNEL_BYTES)}"
    assert boot.kinds("file")[-1].detail["range"] == f"{start}-{end - 1}"


async def test_unsatisfiable_and_ignored_ranges(make_files_boot: Callable[..., Boot]) -> None:
    boot = make_files_boot()
    async with boot.client(A_IP) as client:
        resp = await client.get(KERNEL, headers={"Range": "bytes=300000-"})
        assert resp.status_code == 416 and resp.content == b""
        assert resp.headers["content-range"] == "bytes */300000"
        resp = await client.get("/boot/files/empty", headers={"Range": "bytes=0-"})
        assert resp.status_code == 416
        for ignored in ("bytes=0-1,5-6", "bytes=9-1", "lines=1-2"):
            resp = await client.get(KERNEL, headers={"Range": ignored})
            assert resp.status_code == 200 and resp.content == KERNEL_BYTES
        etag = resp.headers["etag"]
        resp = await client.get(KERNEL, headers={"Range": "bytes=0-9", "If-Range": etag})
        assert resp.status_code == 206
        resp = await client.get(KERNEL, headers={"Range": "bytes=0-9", "If-Range": '"old"'})
        assert resp.status_code == 200 and len(resp.content) == len(KERNEL_BYTES)
        resp = await client.get(KERNEL, headers={"If-None-Match": etag})
        assert resp.status_code == 304 and resp.content == b""


async def test_head_with_range(make_files_boot: Callable[..., Boot]) -> None:
    boot = make_files_boot()
    async with boot.client(A_IP) as client:
        resp = await client.head(KERNEL, headers={"Range": "bytes=10-19"})
    assert resp.status_code == 206 and resp.content == b""
    assert resp.headers["content-length"] == "10"


# Every way out of the boot root, sent as written (no client-side ".." clean-up).
BAD = [
    ("/boot/files/../../../etc/passwd", 403),
    ("/boot/files/%2e%2e/%2e%2e/etc/passwd", 403),
    ("/boot/files/sub/../../etc/passwd", 403),
    ("/boot/files/..%2f..%2fetc%2fpasswd", 403),
    ("/boot/files//etc/passwd", 400),
    ("/boot/files/%2fetc%2fpasswd", 400),
    ("/boot/files/link-outside", 403),
    ("/boot/files/dir-outside/passwd", 403),
    ("/boot/files/sub/inside.txt%00.png", 403),
    ("/boot/files/%00", 403),
    ("/boot/files/sub%01/x", 403),
    ("/boot/files/" + "a" * 300, 403),
    ("/boot/files/" + "/".join(["abcdefgh"] * 200), 403),
    ("/boot/files/nonexistent", 404),
    ("/boot/files/sub", 404),
]


@pytest.mark.parametrize(("path", "status"), BAD)
async def test_nothing_outside_the_root(make_files_boot: Callable[..., Boot], path: str,
                                        status: int) -> None:
    boot = make_files_boot()
    for method in ("GET", "HEAD"):
        got, body = await raw_request(boot.app, method, path)
        assert got == status, (method, path, body)
        assert b"root:" not in body
    assert boot.kinds("file")[-1].detail["status"] == status


async def test_symlinks_inside_the_root_are_served(make_files_boot: Callable[..., Boot]) -> None:
    boot = make_files_boot()
    async with boot.client(A_IP) as client:
        resp = await client.get("/boot/files/link-inside")
        assert resp.status_code == 200 and resp.text == "inside\n"
        resp = await client.get("/boot/files/./sub//inside.txt")
        assert resp.status_code == 200


async def test_new_image_versions_do_not_disturb_a_download(
        make_files_boot: Callable[..., Boot]) -> None:
    """An open download keeps its bytes even if the path is removed meanwhile."""
    boot = make_files_boot()
    source = boot.app.state.fleetboot.source
    from fleetboot.boot.files import RequestContext

    opened = await source.open("images/k1/vmlinuz", RequestContext(A_IP, A_MAC, "http"))
    (boot.root / "images" / "k1" / "vmlinuz").unlink()
    assert await opened.read(0, len(KERNEL_BYTES)) == KERNEL_BYTES
