"""Power that reaches real QEMU VMs: ipmi_sim as the BMC of a QEMU (ipmi-bmc-extern), and
the qmp driver on a Fleetboot VM through the CLI. One QEMU at a time."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from power_helpers import require

from fleetboot.inventory.db import Database
from fleetboot.lab.bmc import IpmiSim
from fleetboot.power.bulk import BulkRunner, BulkSettings
from fleetboot.power.core import Credentials, DriverName, Operation, PowerState, Target
from fleetboot.vm.models import VmStatus
from fleetboot.vm.runtime import Qmp
from fleetboot.vm.service import VmService, VmSettings
from fleetboot.vm.specs import CreateSpec, Family, parse_nic

pytestmark = [pytest.mark.qemu, pytest.mark.slow]


def _qemus_under(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline and b"qemu-system" in cmdline:
            found.append(int(entry.name))
    return found


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short unique directory (unix socket paths); every QEMU under it dies with the test."""
    path = Path(tempfile.mkdtemp(prefix="fbpw", dir="/tmp"))
    yield path
    for pid in _qemus_under(str(path)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(path, ignore_errors=True)


async def _query_status(socket_path: Path) -> str:
    async with Qmp(str(socket_path)) as qmp:
        return str((await qmp.cmd("query-status"))["status"])


async def _wait(predicate: Any, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.2)


async def test_ipmi_sim_as_the_bmc_of_a_qemu_vm(short_dir: Path) -> None:
    require("ipmi_sim", "ipmitool", "qemu-system-x86_64")
    qmp_sock = short_dir / "qmp.sock"
    argv = ["qemu-system-x86_64", "-machine", "pc,accel=tcg", "-m", "64", "-nodefaults",
            "-display", "none", "-qmp", f"unix:{qmp_sock},server=on,wait=off"]
    sim = IpmiSim.start(short_dir / "bmc", qemu_argv=argv)
    try:
        target = Target("vm1", 1, DriverName.IPMI, "127.0.0.1", sim.port,
                        Credentials("admin", "secret"))
        runner = BulkRunner(BulkSettings(timeout_s=40, soft_timeout_s=2, poll_s=0.3))
        assert _qemus_under(str(short_dir)) == []

        [on] = await runner.run([target], Operation.ON)
        assert on.ok and on.state is PowerState.ON, on.error
        await _wait(lambda: qmp_sock.exists())
        [pid] = _qemus_under(str(short_dir))
        assert await _query_status(qmp_sock) == "running"
        assert sim.ipmitool("power", "status").stdout.strip() == "Chassis Power is on"

        # The BIOS-only guest ignores the ACPI button: soft for 2 s, then hard.
        [off] = await runner.run([target], Operation.OFF)
        assert off.ok and off.state is PowerState.OFF, off.error
        await _wait(lambda: not _qemus_under(str(short_dir)))
        assert sim.ipmitool("power", "status").stdout.strip() == "Chassis Power is off"

        [again] = await runner.run([target], Operation.ON)
        assert again.ok
        await _wait(lambda: bool(_qemus_under(str(short_dir))))
        assert _qemus_under(str(short_dir)) != [pid]  # a new QEMU process
    finally:
        sim.stop()


def test_qmp_driver_on_a_fleetboot_vm(short_dir: Path, tmp_path: Path, run: Any,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    require("qemu-system-x86_64", "qemu-img")
    monkeypatch.setenv("FLEETBOOT_VM_RUN_DIR", str(short_dir))
    monkeypatch.setenv("FLEETBOOT_VM_IMAGE_DIR", str(tmp_path / "images"))
    db = Database(f"sqlite:///{tmp_path}/cli.db")
    db.create_schema()
    vms = VmService(db, VmSettings(run_dir=short_dir, image_dir=tmp_path / "images"))
    view = asyncio.run(vms.create(CreateSpec("pv1", Family.PC, memory_mib=64,
                                             nics=(parse_nic("boot"),))))
    mac = view.nics[0].mac
    assert run("node", "add", "pv1", "--nic", mac).exit_code == 0
    assert run("power", "set", "pv1", "--driver", "qmp").exit_code == 0

    res = run("power", "status", "pv1")
    assert res.exit_code == 0 and "(1 off)" in res.output, res.output
    res = run("power", "on", "pv1", "--timeout", 90)
    assert res.exit_code == 0, res.output
    running = vms.read("pv1")
    assert running.status is VmStatus.RUNNING and running.pid is not None
    assert asyncio.run(_query_status(Path(str(running.qmp_socket)))) == "running"

    res = run("power", "cycle", "pv1", "--timeout", 90)
    assert res.exit_code == 0, res.output
    cycled = vms.read("pv1")
    assert cycled.status is VmStatus.RUNNING and cycled.pid != running.pid

    res = run("node", "boot", "pv1", "local", "--level", "next", "--reboot")
    assert res.exit_code == 0, res.output
    rebooted = vms.read("pv1")
    assert rebooted.status is VmStatus.RUNNING and rebooted.pid != cycled.pid

    res = run("power", "off", "pv1", "--timeout", 30, "--soft-timeout", 2)
    assert res.exit_code == 0, res.output
    assert vms.read("pv1").status is VmStatus.STOPPED
    assert not _qemus_under(str(short_dir))
    db.dispose()
