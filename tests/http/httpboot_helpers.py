"""Shared pieces of the HTTP boot tests: an inventory, a boot root and the app."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from starlette.applications import Starlette

from fleetboot.boot.files import BootFileSource
from fleetboot.config import HttpConfig, Settings
from fleetboot.inventory import service
from fleetboot.inventory.db import Database
from fleetboot.inventory.models import BootAction
from fleetboot.server.directory import StaticDirectory
from fleetboot.server.events import BootEvent
from fleetboot.server.http import CmdlineHook, create_app

A_MAC, A_IP = "52:54:00:00:0a:01", "10.9.0.11"
A_NIC2 = "52:54:00:00:0a:02"  # node A's second, non-boot NIC
A_NIC2_IP = "10.9.0.12"
B_MAC, B_IP = "52:54:00:00:0b:01", "10.9.0.21"
UNKNOWN_MAC, UNKNOWN_IP = "52:54:00:00:ff:01", "10.9.0.99"
KERNEL_BYTES = os.urandom(300_000)


@dataclass
class Boot:
    """The app plus the things a test pokes at."""

    app: Starlette
    db: Database
    root: Path
    events: list[BootEvent] = field(default_factory=list)

    def client(self, address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, client=(address, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://10.9.0.1:8080")

    def kinds(self, kind: str) -> list[BootEvent]:
        return [e for e in self.events if e.kind == kind]


def make_root(root: Path) -> Path:
    (root / "images" / "k1").mkdir(parents=True)
    (root / "images" / "k1" / "vmlinuz").write_bytes(KERNEL_BYTES)
    (root / "images" / "k1" / "initrd.img").write_bytes(b"initrd" * 1000)
    (root / "empty").write_bytes(b"")
    (root / "sub").mkdir()
    (root / "sub" / "inside.txt").write_text("inside\n")
    (root / "link-inside").symlink_to(root / "sub" / "inside.txt")
    (root / "link-outside").symlink_to("/etc/passwd")
    (root / "dir-outside").symlink_to("/etc")
    return root


def seed_inventory(db: Database) -> None:
    with db.session() as s:
        service.add_profile(s, "deb", kernel="images/k1/vmlinuz", initrd="images/k1/initrd.img",
                            cmdline="console=ttyS0")
        service.add_profile(s, "rescue", kernel="images/k1/vmlinuz", cmdline="rescue")
        service.add_node(s, "a", [service.NicSpec(A_MAC, boot=True), service.NicSpec(A_NIC2)])
        service.add_node(s, "b", [service.NicSpec(B_MAC, boot=True)])
        service.set_boot(s, "a", "default", BootAction.PROFILE, "deb")
        service.set_boot(s, "b", "default", BootAction.LOCAL)


def build_boot(db: Database, tmp_path: Path, hook: CmdlineHook | None = None,
               **http: object) -> Boot:
    root = make_root(tmp_path / "root")
    seed_inventory(db)
    settings = Settings(server_address="10.9.0.1", boot_root=str(root),
                        http=HttpConfig(**http))  # type: ignore[arg-type]
    directory = StaticDirectory({A_IP: A_MAC, A_NIC2_IP: A_NIC2, B_IP: B_MAC,
                                 UNKNOWN_IP: UNKNOWN_MAC})
    boot = Boot(app=Starlette(), db=db, root=root)
    boot.app = create_app(settings, db, directory, boot.events.append,
                          source=BootFileSource(root), cmdline_hook=hook)
    return boot


async def raw_request(app: Starlette, method: str, raw_path: str,
                      client: tuple[str, int] = (A_IP, 40000)) -> tuple[int, bytes]:
    """Call the app with a URL path exactly as a client sent it (no ``..`` clean-up,
    which httpx does), decoded the way uvicorn decodes it."""
    from urllib.parse import unquote

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
             "http_version": "1.1", "method": method, "scheme": "http",
             "path": unquote(raw_path), "raw_path": raw_path.encode(), "query_string": b"",
             "root_path": "", "headers": [(b"host", b"10.9.0.1")], "client": client,
             "server": ("10.9.0.1", 8080)}
    sent: list[dict[str, object]] = []
    requested = False

    async def receive() -> dict[str, object]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    await app(scope, receive, send)  # type: ignore[arg-type]
    status = int(sent[0]["status"])  # type: ignore[call-overload]
    body = b"".join(m.get("body", b"") for m in sent[1:])  # type: ignore[misc]
    return status, body
