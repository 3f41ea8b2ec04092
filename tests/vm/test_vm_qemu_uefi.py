"""Real QEMU (TCG): UEFI VMs with OVMF as pflash and a per-VM variable store.

QEMU 7.2 has no ``query-pflash``; ``query-block`` lists the two flash drives
with ``qdev`` ``/machine/system.flash0`` (code) and ``system.flash1`` (vars).
OVMF writes its boot entries into the variable store on the first boot, so the
store differs from the template afterwards, and a restart must use that same
file (not a fresh copy).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any

import pytest

from fleetboot.vm import runtime
from fleetboot.vm.firmware import OVMF_CODE, OVMF_VARS, Firmware, FirmwareError
from fleetboot.vm.models import VmStatus
from fleetboot.vm.planner import Family
from fleetboot.vm.service import InstanceView, VmService
from fleetboot.vm.specs import CreateSpec, parse_nic

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture(autouse=True)
def need_ovmf() -> None:
    if not (OVMF_CODE.is_file() and OVMF_VARS.is_file()):
        pytest.skip("needs the ovmf package (run scripts/install-system-deps.sh)")


def digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


async def pflash(view: InstanceView) -> dict[str, dict[str, Any]]:
    """The flash drives QEMU has, by qdev path: {"system.flash0": {"file":.., "ro":..}}."""
    assert view.process is not None
    async with runtime.connected(view.process) as qmp:
        blocks = await qmp.cmd("query-block")
        status = (await qmp.cmd("query-status"))["status"]
    assert status == "running"
    return {b["qdev"].rsplit("/", 1)[-1]: b["inserted"] for b in blocks
            if "flash" in b.get("qdev", "") and "inserted" in b}


async def wait_for_text(path: Path, text: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{text!r} not in {path} after {timeout:.0f} s")


def check_flash(drives: dict[str, dict[str, Any]], store: str) -> None:
    assert drives["system.flash0"]["file"] == str(OVMF_CODE)
    assert drives["system.flash0"]["ro"] is True
    assert drives["system.flash1"]["file"] == store
    assert drives["system.flash1"]["ro"] is False


async def test_q35_uefi_lifecycle_keeps_its_variable_store(vms: VmService,
                                                           tmp_path: Path) -> None:
    serial = tmp_path / "u1.serial.log"
    view = await vms.create(CreateSpec("u1", Family.Q35, memory_mib=128,
                                       nics=(parse_nic("boot"),), serial_log=str(serial),
                                       firmware=Firmware.UEFI))
    store = view.uefi_vars
    assert view.firmware is Firmware.UEFI and store is not None
    assert Path(store).parent == vms.settings.image_dir
    assert digest(store) == digest(OVMF_VARS)  # a fresh copy of the template

    view = await vms.start("u1")
    assert view.status is VmStatus.RUNNING and view.drift is not None and view.drift.ok
    check_flash(await pflash(view), store)
    # OVMF's boot manager ran (and wrote its boot entries to the store).
    await wait_for_text(serial, "BdsDxe")

    # A migration destination gets the same firmware and the same store.
    moved = await vms.migrate("u1")
    assert moved.drift.ok
    view = vms.read("u1")
    assert view.pid == moved.pid
    check_flash(await pflash(view), store)

    await vms.stop("u1")
    written = digest(store)
    assert written != digest(OVMF_VARS), "OVMF wrote nothing to the variable store"

    serial.unlink()
    view = await vms.start("u1")  # the same store, not a fresh copy
    check_flash(await pflash(view), store)
    await wait_for_text(serial, "BdsDxe")
    await vms.stop("u1")
    assert Path(store).exists()

    await vms.delete("u1")
    assert not Path(store).exists()


async def test_pc_uefi_runs_too(vms: VmService) -> None:
    """OVMF (the non-Secure-Boot build) also runs on i440fx, so pc + uefi is allowed."""
    view = await vms.create(CreateSpec("u2", Family.PC, memory_mib=64, firmware=Firmware.UEFI))
    assert view.uefi_vars is not None
    view = await vms.start("u2")
    assert view.drift is not None and view.drift.ok
    check_flash(await pflash(view), view.uefi_vars)
    await vms.stop("u2")
    await vms.delete("u2")
    assert not Path(view.uefi_vars).exists()


async def test_a_missing_variable_store_is_a_clear_error(vms: VmService) -> None:
    view = await vms.create(CreateSpec("u3", Family.PC, firmware=Firmware.UEFI))
    assert view.uefi_vars is not None
    Path(view.uefi_vars).unlink()
    with pytest.raises(FirmwareError, match=r"variable store .* is missing; copy .*OVMF_VARS"):
        await vms.start("u3")
    assert vms.read("u3").status is VmStatus.STOPPED
    await vms.delete("u3")  # deleting with the store already gone is fine
