"""ARM64 through Fleetboot (issue 17, item 3): AAVMF under TCG PXE-boots (arch 11)
Debian's signed network GRUB from the default table's ``arm64/grubnetaa64.efi``,
GRUB reads its per-node ``grub/grub.cfg`` and boots Debian's arm64 cloud kernel with
an arm64 busybox initramfs, whose node client reports UP."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fleetboot.boot.images import ImageStore
from fleetboot.lab import arm64, boots, guest, netns
from fleetboot.lab.qemu import NicSpec

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.netns]


def test_aavmf_pxe_boots_grub_to_up(tmp_path: Path) -> None:
    if not netns.have_netns():
        pytest.skip("needs root and iproute2 to create network namespaces")
    if shutil.which(arm64.QEMU_AARCH64) is None or not arm64.AAVMF_CODE.is_file():
        pytest.skip("needs qemu-system-arm and qemu-efi-aarch64")
    try:
        files = arm64.fetch_arm64_guest()
    except guest.GuestError as exc:
        pytest.skip(f"no arm64 guest (dpkg --add-architecture arm64; apt-get update): {exc}")
    machine = boots.Machine("a64", "arm64", "uefi",
                            (NicSpec(boots.machine_mac(1), bootindex=1, rom=""),))
    work = tmp_path / "fleet"
    root = work / boots.BOOT_ROOT
    (root / "arm64").mkdir(parents=True)
    shutil.copyfile(files.grub, root / arm64.BOOT_PROGRAM)
    store = ImageStore(root)
    kernel, _ = store.add(files.kernel, "vmlinuz-arm64")
    initrd, _ = store.add(files.initrd, "initrd-arm64.img")
    profile = {"name": boots.profile_name(machine.flavor), "kernel": kernel.path,
               "initrd": initrd.path, "cmdline": arm64.arm64_cmdline()}
    inventory = boots.lab_inventory([machine], [profile])
    with boots.FleetLab.start(work, [], inventory=inventory) as fleet:
        run = boots.BootRun.begin([machine])
        vm = arm64.start_arm64_vm("a64", machine.boot_nic.mac, work / "vms", fleet.lab)
        fleet.vms.append(vm)
        run.started("a64", vm)
        run.follow(fleet, 600, None)
        report = run.report()
        timeline = fleet.server.timeline("a64")
        log = fleet.server.log_tail(40)
    assert report.ok, f"{report.errors()}\n--- server log:\n{log}"
    print(f"AAVMF PXE + GRUB: UP after {report.up_times()[0]:.1f} s")
    files_seen = [e.get("detail", {}).get("file") for e in timeline if e.get("source") == "tftp"]
    assert arm64.BOOT_PROGRAM in files_seen and "grub/grub.cfg" in files_seen, timeline
    assert timeline[-1]["state"] == "UP"
