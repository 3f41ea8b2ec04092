"""Helpers for the TFTP tests: a served boot root, and running real clients."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path

from fleetboot.server.events import BootEvent
from fleetboot.server.tftp import TftpServer

SECRET = b"outside the boot root: never served\n"


@dataclass
class Served:
    server: TftpServer
    root: Path
    outside: Path
    events: list[BootEvent] = field(default_factory=list)

    @property
    def addr(self) -> tuple[str, int]:
        return ("127.0.0.1", self.server.address[1])

    @property
    def port(self) -> int:
        return self.server.address[1]

    async def idle(self, timeout: float = 10.0) -> None:
        """Wait until the server has seen every session end (the last ACK is async)."""
        for _ in range(int(timeout / 0.01)):
            if not self.server.sessions and not self.server._starting:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"sessions still open: {list(self.server.sessions)}")

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


def make_root(base: Path) -> tuple[Path, Path]:
    root, outside = base / "root", base / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_bytes(SECRET)
    (root / "small.txt").write_bytes(b"hello from fleetboot\nline two\r\nend\n")
    (root / "empty").write_bytes(b"")
    (root / "exact512").write_bytes(bytes(range(256)) * 2)
    (root / "sub" / "ipxe.efi").write_bytes(os.urandom(300_000))
    (root / "one.bin").write_bytes(os.urandom(1 << 20))
    (root / "link-inside").symlink_to("sub/ipxe.efi")
    (root / "link-outside").symlink_to(outside / "secret")
    (root / "dir-outside").symlink_to(outside)
    os.mkfifo(root / "fifo")
    return root, outside


async def run(*argv: str, cwd: Path | None = None, timeout: float = 60) -> tuple[int, str]:
    """Run a real client without blocking the loop the server runs in."""
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(errors="replace")
