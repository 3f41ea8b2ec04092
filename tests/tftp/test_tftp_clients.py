"""Real TFTP clients (curl, atftp, tftp-hpa) against the Fleetboot server."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from tftp_helpers import Served, run
from tftp_rawclient import fetch, rrq, udp_socket

from fleetboot.boot.files import BootFileSource, RequestContext
from fleetboot.protocols.tftp.codec import from_netascii, to_netascii

pytestmark = pytest.mark.skipif(
    not all(shutil.which(c) for c in ("curl", "atftp", "tftp")),
    reason="needs curl, atftp and tftp-hpa (scripts/install-system-deps.sh)")


def _done(served: Served) -> list[dict[str, object]]:
    return [e.detail for e in served.events if e.kind == "done"]


@pytest.mark.parametrize("args", [
    ["--tftp-no-options"],
    [],
    ["--tftp-blksize", "1468"],
    ["--tftp-blksize", "8"],
])
async def test_curl(tftp: Served, tmp_path: Path, args: list[str]) -> None:
    out = tmp_path / "out"
    rc, log = await run("curl", "-sS", *args, "-o", str(out),
                        f"tftp://127.0.0.1:{tftp.port}/sub/ipxe.efi")
    assert rc == 0, log
    assert out.read_bytes() == (tftp.root / "sub/ipxe.efi").read_bytes()
    await tftp.idle()
    assert _done(tftp)[0]["bytes"] == 300_000


@pytest.mark.parametrize("options", [
    [],
    ["--option", "blksize 1468", "--option", "tsize"],
    ["--option", "blksize 1024", "--option", "windowsize 8"],
    ["--option", "timeout 2"],
])
async def test_atftp(tftp: Served, tmp_path: Path, options: list[str]) -> None:
    out = tmp_path / "out"
    rc, log = await run("atftp", *options, "-g", "-r", "one.bin", "-l", str(out),
                        "127.0.0.1", str(tftp.port))
    assert rc == 0, log
    assert out.read_bytes() == (tftp.root / "one.bin").read_bytes()
    await tftp.idle()
    if "windowsize 8" in options:
        assert _done(tftp)[0]["windowsize"] == 8


@pytest.mark.parametrize("name", ["one.bin", "empty", "exact512", "link-inside"])
async def test_tftp_hpa_binary(tftp: Served, tmp_path: Path, name: str) -> None:
    rc, log = await run("tftp", "127.0.0.1", str(tftp.port), "-m", "binary", "-c", "get", name,
                        "out", cwd=tmp_path)
    assert rc == 0 and "Error" not in log, log
    assert (tmp_path / "out").read_bytes() == (tftp.root / name).read_bytes()


async def test_tftp_hpa_netascii(tftp: Served, tmp_path: Path) -> None:
    original = (tftp.root / "small.txt").read_bytes()
    rc, log = await run("tftp", "127.0.0.1", str(tftp.port), "-m", "netascii", "-c", "get",
                        "small.txt", "out", cwd=tmp_path)
    assert rc == 0 and "Error" not in log, log
    assert (tmp_path / "out").read_bytes() == original


async def test_netascii_on_the_wire(tftp: Served) -> None:
    sock = udp_socket()
    loop = asyncio.get_running_loop()
    await loop.sock_sendto(sock, rrq("small.txt", mode="netascii"), tftp.addr)
    packet, _ = await asyncio.wait_for(loop.sock_recvfrom(sock, 4096), 5)
    sock.close()
    original = (tftp.root / "small.txt").read_bytes()
    assert packet[4:] == to_netascii(original) != original
    assert from_netascii(packet[4:]) == original


@pytest.mark.slow
async def test_rollover_40mib_blksize_512(tftp: Served, tmp_path: Path) -> None:
    big = tftp.root / "big.img"
    with big.open("wb") as f:
        for _ in range(40):
            f.write(os.urandom(1 << 20))
    out = tmp_path / "out"
    rc, log = await run("curl", "-sS", "--tftp-blksize", "512", "-o", str(out),
                        f"tftp://127.0.0.1:{tftp.port}/big.img", timeout=240)
    assert rc == 0, log
    assert out.stat().st_size == 40 << 20
    assert out.read_bytes() == big.read_bytes()  # blocks past 65535 wrapped to 0 and went on


@pytest.mark.slow
async def test_rollover_with_window(tftp: Served, tmp_path: Path) -> None:
    big = tftp.root / "big.img"
    big.write_bytes(os.urandom(34 << 20))  # 69,632 blocks of 512
    out = tmp_path / "out"
    rc, log = await run("atftp", "--option", "blksize 512", "--option", "windowsize 16",
                        "-g", "-r", "big.img", "-l", str(out), "127.0.0.1", str(tftp.port),
                        timeout=240)
    assert rc == 0, log
    assert out.read_bytes() == big.read_bytes()


async def test_generated_file_over_tftp(make_tftp: Callable[..., Awaitable[Served]],
                                        boot_root: tuple[Path, Path], tmp_path: Path) -> None:
    source = BootFileSource(boot_root[0])
    calls: list[str] = []

    async def render(name: str, ctx: RequestContext) -> str:
        calls.append(name)
        await asyncio.sleep(0.05)  # a slow provider must not stall other transfers
        return f"#!ipxe\necho {name} for {ctx.client_ip}\n"

    source.add_provider("pxelinux.cfg/*", render)
    served = await make_tftp(source)
    out = tmp_path / "cfg"
    curl = run("curl", "-sS", "-o", str(out), f"tftp://127.0.0.1:{served.port}/pxelinux.cfg/x")
    other = fetch(served.addr, "one.bin", {"blksize": "1468"})
    (rc, log), result = await asyncio.gather(curl, other)
    assert rc == 0, log
    assert out.read_text() == "#!ipxe\necho pxelinux.cfg/x for 127.0.0.1\n"
    assert result.data == (boot_root[0] / "one.bin").read_bytes()
    assert calls == ["pxelinux.cfg/x"]


async def test_wrq_refused_by_tftp_hpa_put(tftp: Served, tmp_path: Path) -> None:
    (tmp_path / "upload").write_bytes(b"data")
    _rc, log = await run("tftp", "127.0.0.1", str(tftp.port), "-m", "binary", "-c", "put",
                        "upload", cwd=tmp_path)
    assert "Error code 2" in log, log
    assert not (tftp.root / "upload").exists()
    assert tftp.server.stats.wrq_refused == 1


async def test_missing_file_curl(tftp: Served, tmp_path: Path) -> None:
    rc, _ = await run("curl", "-sS", "-o", str(tmp_path / "x"),
                      f"tftp://127.0.0.1:{tftp.port}/nope")
    assert rc != 0
    assert tftp.server.stats.not_found == 1
    assert tftp.kinds() == ["error"]
