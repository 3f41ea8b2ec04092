"""ARM64 through Fleetboot (issue 17, item 3): AAVMF under TCG PXE-boots (arch 11)
Debian's signed network GRUB from the default table's ``arm64/grubnetaa64.efi``,
GRUB reads its per-node ``grub/grub.cfg`` and boots Debian's arm64 cloud kernel with
an arm64 busybox initramfs, whose node client reports UP."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from fleetboot.boot.images import ImageStore
from fleetboot.lab import arm64, boots, guest, netns
from fleetboot.lab.qemu import NicSpec

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.netns]


def _require() -> arm64.Arm64Guest:
    if not netns.have_netns():
        pytest.skip("needs root and iproute2 to create network namespaces")
    if shutil.which(arm64.QEMU_AARCH64) is None or not arm64.AAVMF_CODE.is_file():
        pytest.skip("needs qemu-system-arm and qemu-efi-aarch64")
    try:
        files = arm64.fetch_arm64_guest()
    except guest.GuestError as exc:
        pytest.skip(f"no arm64 guest (dpkg --add-architecture arm64; apt-get update): {exc}")
    return files


Timeline = list[dict[str, Any]]


def _boot(tmp_path: Path, files: arm64.Arm64Guest, *, http_boot: bool = False,
          config: dict[str, object] | None = None,
          timeout_s: float = 600) -> tuple[boots.BootReport, Timeline]:
    machine = boots.Machine("a64", "arm64", "uefi",
                            (NicSpec(boots.machine_mac(1), bootindex=1, rom=""),))
    work = tmp_path / "fleet"
    root = work / boots.BOOT_ROOT
    (root / "arm64").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(files.grub, root / arm64.BOOT_PROGRAM)
    store = ImageStore(root)
    kernel, _ = store.add(files.kernel, "vmlinuz-arm64")
    initrd, _ = store.add(files.initrd, "initrd-arm64.img")
    profile = {"name": boots.profile_name(machine.flavor), "kernel": kernel.path,
               "initrd": initrd.path, "cmdline": arm64.arm64_cmdline()}
    inventory = boots.lab_inventory([machine], [profile])
    with boots.FleetLab.start(work, [], inventory=inventory, config=config) as fleet:
        run = boots.BootRun.begin([machine])
        vm = arm64.start_arm64_vm("a64", machine.boot_nic.mac, work / "vms", fleet.lab,
                                  http_boot=http_boot)
        fleet.vms.append(vm)
        run.started("a64", vm)
        run.follow(fleet, timeout_s, None)
        report = run.report()
        timeline = fleet.server.timeline("a64")
        log = fleet.server.log_tail(40)
    assert report.ok, f"{report.errors()}\n--- server log:\n{log}\n--- timeline:\n{timeline}"
    return report, timeline


def test_aavmf_pxe_boots_grub_to_up(tmp_path: Path) -> None:
    report, timeline = _boot(tmp_path, _require())
    print(f"AAVMF PXE + GRUB: UP after {report.up_times()[0]:.1f} s")
    files_seen = [e.get("detail", {}).get("file") for e in timeline if e.get("source") == "tftp"]
    assert arm64.BOOT_PROGRAM in files_seen and "grub/grub.cfg" in files_seen, timeline
    assert timeline[-1]["state"] == "UP"


def test_aavmf_http_boot_reaches_up(tmp_path: Path) -> None:
    """Arch 19: the firmware fetches the program over HTTP; that GRUB (built from
    Debian's modules: Debian's signed one stops at grub> after HTTP boot) asks DHCP
    itself and reads the same per-node grub.cfg (over TFTP: GRUB 2.06's HTTP waits
    ~34 s per file on a keep-alive server)."""
    files = _require()
    root = tmp_path / "fleet" / boots.BOOT_ROOT
    try:
        arm64.build_http_grub(root / arm64.HTTP_BOOT_PROGRAM)
    except guest.GuestError as exc:
        pytest.skip(f"cannot build the HTTP-boot GRUB: {exc}")
    config = {"architectures": {19: {"name": "ARM64 UEFI HTTP",
                                     "http_file": arm64.HTTP_BOOT_PROGRAM}}}
    report, timeline = _boot(tmp_path, files, http_boot=True, config=config, timeout_s=150)
    print(f"AAVMF HTTP boot + GRUB: UP after {report.up_times()[0]:.1f} s")
    # GRUB's own DHCP carries no vendor class, so the server takes it for the OS's and
    # its grub.cfg download for a new boot: the latest boot starts there (known).
    files = [e.get("detail", {}).get("file") for e in timeline if e.get("source") == "tftp"]
    assert "grub/grub.cfg" in files, timeline
    assert timeline[-1]["state"] == "UP"
