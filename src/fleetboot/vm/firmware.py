"""Guest firmware: SeaBIOS (QEMU's default) or UEFI (OVMF, Debian package ``ovmf``).

The one place that knows where OVMF lives; the lab (``fleetboot.lab.qemu``)
imports the paths from here. A UEFI VM gets OVMF as two pflash drives: the code,
read-only and shared, and its *own* copy of the variable store (boot entries,
``BootOrder``...), made from the ``OVMF_VARS`` template when the VM is created,
kept across stop/start and migration, and deleted with the VM.
"""

from __future__ import annotations

import enum
import shutil
from pathlib import Path

from fleetboot.vm.errors import VmError

# The 4 MiB builds without Secure Boot: they run on q35 and on pc (i440fx) alike.
# The Secure Boot builds need SMM, which only q35 has; Fleetboot does not offer them.
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")

# Measured with QEMU 7.2 (TCG): OVMF reaches its boot manager with 64 MiB and
# faults (#GP) with 32 MiB.
MIN_UEFI_MEMORY_MIB = 64


class Firmware(enum.StrEnum):
    BIOS = "bios"  # SeaBIOS; NIC option ROMs (iPXE) do PXE
    UEFI = "uefi"  # OVMF; the boot NIC's ROM is the EFI iPXE build QEMU ships


class FirmwareError(VmError, ValueError):
    pass


def parse_firmware(text: str) -> Firmware:
    try:
        return Firmware(text.strip().lower())
    except ValueError:
        raise FirmwareError(f"firmware {text!r}: use bios (SeaBIOS) or uefi (OVMF)") from None


def check_memory(firmware: Firmware, memory_mib: int) -> None:
    """Refuse a UEFI VM too small for OVMF (it would fault before any boot)."""
    if firmware is Firmware.UEFI and memory_mib < MIN_UEFI_MEMORY_MIB:
        raise FirmwareError(f"OVMF (UEFI) needs at least {MIN_UEFI_MEMORY_MIB} MiB; "
                            f"give --memory {MIN_UEFI_MEMORY_MIB} or more, or --firmware bios")


def require_ovmf(*files: Path) -> None:
    """Fail with the fix when OVMF is not installed where we look for it."""
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FirmwareError(f"UEFI firmware file(s) {', '.join(missing)} missing: install the "
                            "ovmf package (scripts/install-system-deps.sh) or use --firmware bios")


def vars_path(image_dir: Path, name: str, uuid: str) -> Path:
    """Where a VM's own variable store lives; the uuid means a leftover is never adopted."""
    return image_dir / f"{name}-{uuid[:8]}.OVMF_VARS.fd"


def copy_vars(template: Path, target: Path) -> None:
    """A fresh variable store (no boot entries yet) for a new VM."""
    require_ovmf(template)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        raise FirmwareError(f"{target} exists already; delete it or choose another VM name")
    shutil.copyfile(template, target)
