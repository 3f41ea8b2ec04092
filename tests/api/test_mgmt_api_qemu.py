"""VMs driven through the management API with a real QEMU (TCG): create, start, hot-plug
a NIC, unplug it, stop. Each call runs the same VmService the CLI runs."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_helpers import running

from fleetboot.inventory.db import Database

pytestmark = [pytest.mark.qemu, pytest.mark.timeout(240),
              pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None
                                 or shutil.which("qemu-img") is None,
                                 reason="needs qemu-system-x86 and qemu-utils")]


@pytest.fixture
def run_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="fbapi", dir="/tmp"))  # short: QMP socket paths
    yield path
    marker = str(path).encode()
    for entry in Path("/proc").iterdir():  # kill the QEMUs of this test only
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker in (entry / "cmdline").read_bytes():
                    os.kill(int(entry.name), signal.SIGKILL)
    shutil.rmtree(path, ignore_errors=True)


async def test_start_hotplug_unplug_stop_through_the_api(
        sqlite_db: Database, tmp_path: Path, run_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETBOOT_VM_RUN_DIR", str(run_dir))
    monkeypatch.setenv("FLEETBOOT_VM_IMAGE_DIR", str(tmp_path / "images"))
    async with running(sqlite_db, tmp_path) as server, server.client() as c:
        r = await c.post("/vms", json={"name": "q1", "memory_mib": 128,
                                       "nics": ["boot"], "disks": ["size=16M"]})
        assert r.status_code == 201, r.text
        r = await c.post("/vms/q1/start")
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "running"
        r = await c.post("/vms/q1/hotplug", json={"nic": "model=e1000"})
        assert r.status_code == 200, r.text
        plugged = r.json()
        assert plugged["hotplugged"] is True and plugged["latency_s"] is not None
        assert plugged["address"] == "rp-nic1:00.0"
        r = await c.post("/vms/q1/unplug/net1")
        assert r.status_code == 200, r.text
        held = [s["device"] for s in (await c.get("/vms/q1")).json()["slots"] if s["device"]]
        assert "net1" not in held and "net0" in held
        r = await c.post("/vms/q1/stop")
        assert r.status_code == 200 and r.json()["status"] == "stopped", r.text
