"""Fixtures for the VM tests: a VmService on a fresh SQLite inventory with a short run
directory (QMP socket paths must fit a unix socket), and a cleanup that kills every QEMU
this test started, found by that unique run directory."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from fleetboot.inventory.db import Database
from fleetboot.vm.service import VmService, VmSettings


def require_qemu() -> None:
    if shutil.which("qemu-system-x86_64") is None or shutil.which("qemu-img") is None:
        pytest.skip("needs qemu-system-x86 and qemu-utils (run scripts/install-system-deps.sh)")


def kill_qemus_under(directory: Path) -> None:
    """SIGKILL every process whose command line names ``directory`` (ours alone: it is unique)."""
    marker = str(directory).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in cmdline and b"qemu-system" in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)


@pytest.fixture
def need_qemu() -> None:
    require_qemu()


@pytest.fixture
def run_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="fbvm", dir="/tmp"))
    yield path
    kill_qemus_under(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def vm_settings(run_dir: Path, tmp_path: Path) -> VmSettings:
    return VmSettings(run_dir=run_dir, image_dir=tmp_path / "images", unplug_timeout=2.0)


@pytest.fixture
async def vms(sqlite_db: Database, vm_settings: VmSettings) -> AsyncIterator[VmService]:
    require_qemu()
    yield VmService(sqlite_db, vm_settings)
