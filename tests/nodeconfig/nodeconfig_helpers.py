"""Helpers for the node-configuration tests: a small fleet, and a real uvicorn server."""

from __future__ import annotations

import asyncio
import io
import socket
import subprocess
import tarfile
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import uvicorn

from fleetboot.inventory import service as inventory
from fleetboot.inventory.db import Database
from fleetboot.nodeconfig import store
from fleetboot.nodeconfig.service import NodeConfigService, NodeConfigSettings
from fleetboot.server.directory import StaticDirectory

T = TypeVar("T")

SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOx4 {name}@fleet"


@dataclass
class FleetNode:
    name: str
    id: int
    mac: str
    address: str


@dataclass
class Fleet:
    db: Database
    nodes: dict[str, FleetNode] = field(default_factory=dict)

    def directory(self) -> StaticDirectory:
        return StaticDirectory({n.address: n.mac for n in self.nodes.values()})

    def __getitem__(self, name: str) -> FleetNode:
        return self.nodes[name]


def make_fleet(db: Database, names: tuple[str, ...] = ("a", "b"), base: int = 10) -> Fleet:
    """Nodes with a secret account each and a file; addresses 127.0.0.<base+i> (loopback)."""
    fleet = Fleet(db)
    with db.session() as s:
        for i, name in enumerate(names):
            mac = f"52:54:00:00:01:{base + i:02x}"
            node = inventory.add_node(s, name, [inventory.NicSpec(mac, "eth0")])
            fleet.nodes[name] = FleetNode(name, node.id, mac, f"127.0.0.{base + i}")
            store.set_section(s, name, "accounts", [
                {"name": f"user-{name}", "groups": ["wheel"],
                 "ssh_keys": [SSH_KEY.format(name=name)]}])
            store.set_section(s, name, "hostname", f"host-{name}")
        store.set_section(s, None, "files", [
            {"path": "/etc/motd", "content_b64": "d2VsY29tZSB0byB0aGUgZmxlZXQK"}])
    return fleet


def node_ref(fleet_node: FleetNode) -> Any:
    class _Ref:
        id = fleet_node.id

    return _Ref()


def token_of(cmdline: str) -> str:
    return next(a.split("=", 1)[1] for a in cmdline.split() if a.startswith("fleetboot.token="))


@dataclass
class Served:
    service: NodeConfigService
    base_url: str
    loop: asyncio.AbstractEventLoop

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def settle(self) -> None:
        self.call(self.service.settle())

    def token(self, node: FleetNode) -> str:
        return token_of(self.service.cmdline_hook(node_ref(node), node.mac, node.address))


@contextmanager
def serve(db: Database, directory: StaticDirectory, settings: NodeConfigSettings | None = None,
          admin_token: str | None = "admin-secret", fast: bool = True,
          keep_alive_s: int = 5) -> Iterator[Served]:
    """The service behind a real uvicorn on 127.0.0.1 (port chosen by the kernel), in a thread."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    settings = settings or NodeConfigSettings(base_url=f"http://127.0.0.1:{port}")
    service = NodeConfigService(db, directory, settings, admin_token=admin_token)
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def main() -> None:
        await service.start()
        config = uvicorn.Config(
            service.asgi_app(), http=service.http_protocol() if fast else "httptools",
            loop="asyncio", log_level="warning", access_log=False, proxy_headers=False,
            lifespan="off", timeout_keep_alive=keep_alive_s)
        server = uvicorn.Server(config)
        state["server"], state["loop"] = server, asyncio.get_running_loop()
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        ready.set()
        await task
        await service.stop()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    if not ready.wait(20):
        raise RuntimeError("the test server did not start")
    try:
        yield Served(service, f"http://127.0.0.1:{port}", state["loop"])
    finally:
        state["server"].should_exit = True
        thread.join(20)
        sock.close()


def make_tarball(files: dict[str, bytes]) -> bytes:
    """A .tar.gz of the files, each 0644."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, body in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(body), 0o644
            tar.addfile(info, io.BytesIO(body))
    return raw.getvalue()


def build_deb(tmp: Path) -> Path:
    """fleetboot-test_1.0_all.deb, built by dpkg-deb: /usr/share/fleetboot-test/package.txt."""
    root = tmp / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        "Package: fleetboot-test\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: lab <lab@example.org>\nDescription: a package the agent installs\n")
    (root / "usr/share/fleetboot-test").mkdir(parents=True)
    (root / "usr/share/fleetboot-test/package.txt").write_text("installed by the agent\n")
    out = tmp / "fleetboot-test_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root),
                    str(out)], check=True, capture_output=True)
    return out
