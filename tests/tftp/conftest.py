"""Fixtures for the TFTP tests: a boot root with files, and a server on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from tftp_helpers import Served, make_root

from fleetboot.boot.files import BootFileSource
from fleetboot.server.tftp import TftpServer, TftpSettings

MakeTftp = Callable[..., Awaitable[Served]]


@pytest.fixture
def boot_root(tmp_path: Path) -> tuple[Path, Path]:
    return make_root(tmp_path)


@pytest.fixture
async def make_tftp(boot_root: tuple[Path, Path]) -> AsyncIterator[MakeTftp]:
    servers: list[TftpServer] = []

    async def make(source: BootFileSource | None = None, **settings: object) -> Served:
        root, outside = boot_root
        options: dict[str, object] = {"root": root, "host": "127.0.0.1", "port": 0}
        options.update(settings)
        served = Served(None, root, outside)  # type: ignore[arg-type]
        server = TftpServer(TftpSettings(**options), source,  # type: ignore[arg-type]
                            events=served.events.append)
        served.server = server
        await server.start()
        servers.append(server)
        return served

    yield make
    for server in servers:
        await server.stop()


@pytest.fixture
async def tftp(make_tftp: MakeTftp) -> Served:
    return await make_tftp()
