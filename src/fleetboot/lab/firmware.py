"""Lab machines with the firmware users run: OVMF with Secure Boot, OVMF HTTP boot.

Built on :mod:`fleetboot.lab.boots` (same lab, same server, same UP criterion); the
firmware is set with QEMU arguments measured on this machine (docs/real-clients.md):

* **Secure Boot**: q35 with SMM, Debian's ``OVMF_CODE_4M.secboot.fd`` and a copy of
  ``OVMF_VARS_4M.ms.fd`` (Microsoft's keys enrolled, Secure Boot enforced). The
  chain is Debian's signed one: ``shimx64.efi`` (shim-signed) loads ``grubx64.efi``
  (grub-efi-amd64-signed's network image) over TFTP, GRUB reads Fleetboot's
  ``grub/grub.cfg`` and boots Debian's signed kernel.
* **HTTP boot**: OVMF's own HTTP boot client (vendor class ``HTTPClient``), PXE
  switched off through fw_cfg so the firmware does not spend a minute per PXE try.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetboot.boot.images import ImageStore
from fleetboot.boot.programs import SHIPPED
from fleetboot.lab import guest
from fleetboot.lab.boots import (
    BOOT_ROOT,
    GuestFiles,
    Machine,
    lab_inventory,
    machine_mac,
    profile_name,
)
from fleetboot.lab.qemu import NicSpec, VmSpec
from fleetboot.vm.firmware import OVMF_CODE, OVMF_VARS

SECBOOT_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")
SECBOOT_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")  # Microsoft keys enrolled
SIGNED_CHAIN = ("shimx64.efi", "grubx64.efi")  # the NBP, and what shim loads next
MEMORY_MB = 768  # OVMF + the generic-size signed kernel and the lab initramfs


@dataclass(frozen=True)
class FirmwareMachine(Machine):
    """A lab machine whose firmware is given as QEMU arguments (pflash, fw_cfg)."""

    qemu_args: tuple[str, ...] = ()

    @property
    def spec(self) -> VmSpec:
        # firmware "bios" with no SeaBIOS console: the pflash drives below replace it.
        return VmSpec(self.name, nics=self.nics, firmware="bios", memory_mb=MEMORY_MB,
                      bios_serial_console=False, extra_args=self.qemu_args)


def _pflash(code: Path, vars_copy: Path) -> tuple[str, ...]:
    return ("-drive", f"if=pflash,format=raw,readonly=on,file={code}",
            "-drive", f"if=pflash,format=raw,file={vars_copy}")


def secure_boot_machine(name: str, index: int, workdir: Path) -> FirmwareMachine:
    """OVMF with Secure Boot enforced, native PXE on a virtio NIC (no iPXE ROM)."""
    workdir.mkdir(parents=True, exist_ok=True)
    vars_copy = workdir / f"{name}.secvars.fd"
    shutil.copyfile(SECBOOT_VARS, vars_copy)
    args = ("-machine", "smm=on",  # merged with the lab's -machine q35,accel=tcg
            "-global", "driver=cfi.pflash01,property=secure,value=on",
            "-global", "ICH9-LPC.disable_s3=1", *_pflash(SECBOOT_CODE, vars_copy))
    nic = NicSpec(machine_mac(index), "virtio-net-pci", bootindex=1, rom="")
    return FirmwareMachine(name, "secboot", "bios", (nic,), "OVMF Secure Boot, shim+grub",
                           qemu_args=args)


def http_boot_machine(name: str, index: int, workdir: Path) -> FirmwareMachine:
    """OVMF's native HTTP boot (IPv4): PXE off, so HTTPv4 is the first option tried."""
    workdir.mkdir(parents=True, exist_ok=True)
    vars_copy = workdir / f"{name}.vars.fd"
    shutil.copyfile(OVMF_VARS, vars_copy)
    args = ("-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=n",
            "-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=n",
            *_pflash(OVMF_CODE, vars_copy))
    nic = NicSpec(machine_mac(index), "virtio-net-pci", bootindex=1, rom="")
    return FirmwareMachine(name, "httpboot", "bios", (nic,), "OVMF HTTP boot", qemu_args=args)


def missing_secure_boot_files() -> list[str]:
    """What the Secure Boot lab needs and this host lacks (for a clear skip)."""
    needed = [SECBOOT_CODE, SECBOOT_VARS] + [Path(SHIPPED[n].source) for n in SIGNED_CHAIN]
    return [str(p) for p in needed if not p.is_file()]


def install_signed_chain(boot_root: Path) -> None:
    """Copy Debian's signed shim and network GRUB into the boot root (TFTP)."""
    boot_root.mkdir(parents=True, exist_ok=True)
    for name in SIGNED_CHAIN:
        shutil.copyfile(SHIPPED[name].source, boot_root / name)


def grub_inventory(workdir: Path, machines: list[Machine],
                   guests: list[GuestFiles]) -> dict[str, Any]:
    """The lab inventory with profiles GRUB can boot: no iPXE-only ``${mac:hexhyp}``
    (a one-NIC machine's initramfs takes the first NIC) and no ``quiet``, so the
    kernel's EFI stub says whether Secure Boot is on."""
    store = ImageStore(workdir / BOOT_ROOT)
    profiles = []
    for g in guests:
        kernel, _ = store.add(g.kernel, f"vmlinuz-{g.flavor}")
        initrd, _ = store.add(g.initrd, f"initrd-{g.flavor}.img")
        profiles.append({"name": profile_name(g.flavor), "kernel": kernel.path,
                         "initrd": initrd.path,
                         "cmdline": guest.kernel_cmdline(end="poweroff", quiet=False)})
    return lab_inventory(machines, profiles)
