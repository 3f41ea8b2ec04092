"""A real Fleetboot process core (runtime, node-config, HTTP with the API) on loopback."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from fleetboot.config import Settings
from fleetboot.inventory.db import Database
from fleetboot.server.assemble import Assembly, assemble

ADMIN = "test-admin-token-0123456789"


def settings_for(db: Database, tmp_path: Path, port: int = 0) -> Settings:
    return Settings.model_validate({
        "boot_root": str(tmp_path / "boot"), "state_dir": str(tmp_path),
        "database": {"url": db.url},
        "dhcp": {"enabled": False}, "tftp": {"enabled": False},
        "http": {"host": "127.0.0.1", "port": port},
        "security": {"admin_token": ADMIN},
    })


@dataclass
class Server:
    assembly: Assembly
    url: str

    def client(self, token: str | None = ADMIN) -> httpx.AsyncClient:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.url + "/api/v1", headers=headers, timeout=30)

    async def follow_inventory(self) -> None:
        """What the runtime does once a second: pick up inventory changes now."""
        await self.assembly.runtime.check_inventory()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def running(db: Database, tmp_path: Path) -> AsyncIterator[Server]:
    assembly = assemble(settings_for(db, tmp_path, free_port()), db)
    await assembly.runtime.start()
    try:
        assert assembly.http is not None
        yield Server(assembly, f"http://127.0.0.1:{assembly.http.port}")
    finally:
        await assembly.runtime.stop()
