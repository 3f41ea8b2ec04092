"""Unplug with a real guest OS: Debian's kernel with the lab's busybox initramfs.

Without an OS no one acknowledges an unplug (see test_vm_qemu_hotplug); with
Linux running, the guest's hotplug driver does: ACPI eject on pc (acpiphp,
well under a second here) and the PCIe attention-button sequence on q35
(pciehp, which waits 5 s for a cancel before powering the slot off). Either
way the slot is freed only once QEMU reports DEVICE_DELETED.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from fleetboot.lab import guest
from fleetboot.vm import planner as P
from fleetboot.vm.planner import Family
from fleetboot.vm.service import VmService, VmSettings
from fleetboot.vm.specs import CreateSpec, parse_disk, parse_nic

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.timeout(240)]

STAY = b"#!/bin/sh\necho FLEETBOOT-STAY ready\nwhile :; do sleep 3600; done\n"


@pytest.fixture(scope="module")
def linux() -> tuple[Path, Path]:
    try:
        kernel = guest.fetch_guest_kernel("cloud")
        initrd = guest.build_initramfs(kernel, extra_files=[guest.ExtraFile("/bin/stay", STAY)],
                                       hook="/bin/stay")
    except guest.GuestError as exc:
        pytest.skip(f"no guest kernel: {exc}")
    return kernel.vmlinuz, initrd


async def _wait_guest(log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while "FLEETBOOT-STAY" not in (log.read_text(errors="replace") if log.exists() else ""):
        assert time.monotonic() < deadline, f"guest did not come up:\n{log.read_text()[-2000:]}"
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("family", [Family.PC, Family.Q35])
async def test_guest_acknowledges_unplug_and_the_slot_is_freed(
    vms: VmService, vm_settings: VmSettings, linux: tuple[Path, Path], tmp_path: Path,
    family: Family,
) -> None:
    vmlinuz, initrd = linux
    vms.settings = VmSettings(run_dir=vm_settings.run_dir, image_dir=vm_settings.image_dir,
                              unplug_timeout=30.0)
    serial = tmp_path / "serial.log"
    await vms.create(CreateSpec(
        "g1", family, memory_mib=256, nics=(parse_nic("boot"),), serial_log=str(serial),
        extra_args=("-kernel", str(vmlinuz), "-initrd", str(initrd),
                    "-append", guest.kernel_cmdline())))
    await vms.start("g1")
    await _wait_guest(serial)

    nic = await vms.hotplug_nic("g1", parse_nic("model=virtio-net-pci"))
    disk = await vms.hotplug_disk("g1", parse_disk("size=8M"))
    await asyncio.sleep(1.0)  # let the guest finish probing before asking for them back
    for device in (nic.device, disk.device, "net0"):  # net0 was there at boot
        result = await vms.unplug("g1", device)
        assert result.outcome == "deleted"
    view = await vms.show("g1")
    assert view.drift is not None and view.drift.ok, str(view.drift)
    assert not view.nics and not view.disks
    assert not P.held(view.layout, P.PoolName.NIC) and not P.held(view.layout, P.PoolName.DISK)
