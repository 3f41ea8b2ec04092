"""Copying a running VM's disks to another host during a live migration (QMP steps).

The same choreography as libvirt's ``--copy-storage-all``: the destination QEMU
(started ``-incoming``, its disks fresh images of the same size) exports them
over NBD; the source mirrors each disk into that export until the copy is
ready, and keeps mirroring every write while memory migrates. The migration
pauses before the switch-over (``pause-before-switchover``), the mirrors are
completed without a pivot (so the source keeps its own images), and only then
does the destination take over.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fleetboot.vm.errors import QemuError
from fleetboot.vm.runtime import Qmp

EXPORT_PORTS = (20000, 60000)


@dataclass(frozen=True)
class Export:
    """The destination's NBD server: where the source mirrors ``nodes`` to."""

    host: str
    port: int
    nodes: tuple[str, ...]


def mirror_node(node: str) -> str:
    return f"mirror-{node}"


async def export_disks(dst: Qmp, host: str, nodes: Sequence[str], tries: int = 5) -> Export:
    """Start an NBD server on the destination exporting its (empty) disks, writable."""
    for attempt in range(tries):
        port = random.randint(*EXPORT_PORTS)
        try:
            await dst.cmd("nbd-server-start", {"addr": {"type": "inet", "data": {
                "host": host, "port": str(port)}}})
            break
        except QemuError:
            if attempt == tries - 1:
                raise
    for node in nodes:
        await dst.cmd("block-export-add", {"type": "nbd", "id": f"export-{node}",
                                           "node-name": node, "name": node, "writable": True})
    return Export(host, port, tuple(nodes))


async def start_mirrors(src: Qmp, export: Export) -> list[str]:
    """Open each export on the source and mirror the disk into it; the job ids."""
    jobs: list[str] = []
    try:
        for node in export.nodes:
            await src.cmd("blockdev-add", {
                "driver": "nbd", "node-name": mirror_node(node), "export": node,
                "server": {"type": "inet", "host": export.host, "port": str(export.port)}})
            await src.cmd("blockdev-mirror", {"job-id": mirror_node(node), "device": node,
                                              "target": mirror_node(node), "sync": "full",
                                              "auto-dismiss": False})
            jobs.append(mirror_node(node))
    except QemuError:
        await abort_mirrors(src, export.nodes)
        raise
    return jobs


async def _jobs(src: Qmp) -> dict[str, dict[str, Any]]:
    return {j["device"]: j for j in await src.cmd("query-block-jobs")}


async def wait_ready(src: Qmp, jobs: Sequence[str], timeout: float) -> None:
    """Until every mirror has copied the whole disk once (and now only follows writes)."""
    deadline = time.monotonic() + timeout
    while True:
        running = await _jobs(src)
        missing = [j for j in jobs if j not in running]
        if missing:
            raise QemuError(f"disk copy {', '.join(missing)} stopped before it was ready")
        if all(running[j].get("ready") for j in jobs):
            return
        if time.monotonic() > deadline:
            raise QemuError(f"the disk copy was not ready within {timeout:.0f} s")
        await asyncio.sleep(0.05)


async def complete_mirrors(src: Qmp, jobs: Sequence[str], timeout: float) -> None:
    """Finish ready mirrors without a pivot: the target holds a consistent copy."""
    for job in jobs:
        await src.cmd("block-job-cancel", {"device": job})
    deadline = time.monotonic() + timeout
    while True:
        running = await _jobs(src)
        pending = [j for j in jobs if running.get(j, {}).get("status") not in
                   ("concluded", None)]
        if not pending:
            break
        if time.monotonic() > deadline:
            raise QemuError(f"the disk copy did not finish within {timeout:.0f} s")
        await asyncio.sleep(0.02)
    for job in jobs:
        with contextlib.suppress(QemuError):
            await src.cmd("job-dismiss", {"id": job})


async def migrate_with_switchover(src: Qmp, uri: str, jobs: Sequence[str],
                                  timeout: float) -> dict[str, Any]:
    """Migrate memory; at the switch-over, complete the disk mirrors first."""
    await src.cmd("migrate-set-capabilities", {"capabilities": [
        {"capability": "pause-before-switchover", "state": True}]})
    await src.cmd("migrate", {"uri": uri})
    deadline = time.monotonic() + timeout
    continued = False
    while True:
        info: dict[str, Any] = await src.cmd("query-migrate")
        status = info.get("status")
        if status == "pre-switchover" and not continued:
            await complete_mirrors(src, jobs, max(1.0, deadline - time.monotonic()))
            await src.cmd("migrate-continue", {"state": "pre-switchover"})
            continued = True
        elif status == "completed":
            return info
        elif status in ("failed", "cancelled"):
            raise QemuError(f"migration {status}: {info.get('error-desc', 'no reason given')}")
        if time.monotonic() > deadline:
            with contextlib.suppress(QemuError):
                await src.cmd("migrate_cancel")
            raise QemuError(f"migration did not complete within {timeout:.0f} s; cancelled")
        await asyncio.sleep(0.02)


async def abort_mirrors(src: Qmp, nodes: Sequence[str]) -> None:
    """Undo :func:`start_mirrors` on the source (best effort: it keeps running)."""
    for node in nodes:
        job = mirror_node(node)
        with contextlib.suppress(QemuError):
            await src.cmd("block-job-cancel", {"device": job, "force": True})
        for _ in range(100):
            if job not in await _jobs(src) or (await _jobs(src))[job]["status"] == "concluded":
                break
            await asyncio.sleep(0.02)
        with contextlib.suppress(QemuError):
            await src.cmd("job-dismiss", {"id": job})
        with contextlib.suppress(QemuError):
            await src.cmd("blockdev-del", {"node-name": job})


async def drop_mirror_nodes(src: Qmp, nodes: Sequence[str]) -> None:
    for node in nodes:
        with contextlib.suppress(QemuError):
            await src.cmd("blockdev-del", {"node-name": mirror_node(node)})


async def stop_exports(dst: Qmp, nodes: Sequence[str]) -> None:
    for node in nodes:
        with contextlib.suppress(QemuError):
            await dst.cmd("block-export-del", {"id": f"export-{node}"})
    with contextlib.suppress(QemuError):
        await dst.cmd("nbd-server-stop")
