"""Secure Boot through Fleetboot (issue 17, item 2), real firmware and Debian's binaries.

OVMF with Secure Boot enforced and Microsoft's keys enrolled PXE-boots Debian's
signed shim over Fleetboot's TFTP, shim loads Debian's signed network GRUB, GRUB
reads its per-node ``grub/grub.cfg`` from Fleetboot and boots Debian's signed
kernel with the lab initramfs, whose node client reports UP. The negative case: an
unsigned boot program (iPXE's snponly.efi) is refused by the firmware and the
node's timeline never gets past the firmware's own download.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fleetboot.lab import boots, firmware, guest, netns
from fleetboot.lab.qemu import start_vm

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.netns]

SHIM_ARCH = {"architectures": {7: {"name": "x86-64 UEFI", "tftp_file": "shimx64.efi"}}}


@pytest.fixture
def guests() -> list[boots.GuestFiles]:
    if not netns.have_netns():
        pytest.skip("needs root and iproute2 to create network namespaces")
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("needs qemu-system-x86 (run scripts/install-system-deps.sh)")
    if missing := firmware.missing_secure_boot_files():
        pytest.skip(f"missing {', '.join(missing)} (ovmf, shim-signed, grub-efi-amd64-signed)")
    try:
        return boots.prepare_guests(["cloud"])
    except guest.GuestError as exc:
        pytest.skip(f"no guest kernel: {exc}")


def _start(tmp_path: Path, machine: boots.Machine, guests: list[boots.GuestFiles],
           config: dict[str, object]) -> boots.FleetLab:
    work = tmp_path / "fleet"
    firmware.install_signed_chain(work / boots.BOOT_ROOT)
    inventory = firmware.grub_inventory(work, [machine], guests)
    return boots.FleetLab.start(work, [machine], config=config, inventory=inventory)


def test_signed_chain_boots_to_up(guests: list[boots.GuestFiles], tmp_path: Path) -> None:
    machine = firmware.secure_boot_machine("sb1", 1, tmp_path / "fw")
    with _start(tmp_path, machine, guests, SHIM_ARCH) as fleet:
        report = fleet.boot([machine], timeout_s=420)
        serial = fleet.vms[0].serial_text()
        timeline = fleet.server.timeline("sb1")
        log = fleet.server.log_tail(40)
    assert report.ok, f"{report.errors()}\n--- server log:\n{log}"
    print(f"secure boot: UP after {report.up_times()[0]:.1f} s")
    assert "UEFI Secure Boot is enabled" in serial, serial[-3000:]
    files = [e.get("detail", {}).get("file") for e in timeline if e.get("source") == "tftp"]
    assert "shimx64.efi" in files and "grubx64.efi" in files and "grub/grub.cfg" in files, \
        timeline
    assert timeline[-1]["state"] == "UP"


def test_an_unsigned_boot_program_is_refused(guests: list[boots.GuestFiles],
                                             tmp_path: Path) -> None:
    machine = firmware.secure_boot_machine("sb2", 2, tmp_path / "fw")
    unsigned = {"architectures": {7: {"name": "x86-64 UEFI", "tftp_file": "snponly.efi"}}}
    with _start(tmp_path, machine, guests, unsigned) as fleet:
        vm = start_vm(machine.spec, fleet.workdir / "vms", fleet.lab)
        fleet.vms.append(vm)
        vm.wait_for(r"Access Denied", timeout=240)
        timeline = fleet.server.timeline("sb2")
    states = [e.get("state") for e in timeline]
    assert "BOOTING" not in states and "UP" not in states, timeline
    files = [e.get("detail", {}).get("file") for e in timeline if e.get("source") == "tftp"]
    assert "snponly.efi" in files, timeline  # the firmware fetched it, then refused it
    assert not any(e.get("source") == "http" for e in timeline), timeline
