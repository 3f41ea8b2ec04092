"""A small BIOS-bootable disk image, built without root or loop mounts.

An MBR (syslinux's ``mbr.bin`` and one active FAT16 partition from 1 MiB) and
a FAT file system made with ``mkfs.fat`` on a plain file, filled with mtools
(``mcopy``) and made bootable with ``syslinux --install`` (which also works on
a file through mtools). The partition table is written by Python, the rest of
the disk stays a hole: what a reload skips.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

SECTOR = 512
PART_START = 2048  # 1 MiB
MBR_BIN = Path("/usr/lib/syslinux/mbr/mbr.bin")
LDLINUX_C32 = Path("/usr/lib/syslinux/modules/bios/ldlinux.c32")


def partition_table(start_lba: int, sectors: int, type_id: int = 0x06) -> bytes:
    """The 66 bytes at offset 446: one active partition (CHS unused), then 0x55AA. Pure."""
    chs = b"\xfe\xff\xff"  # "use LBA"
    entry = struct.pack("<B3sB3sII", 0x80, chs, type_id, chs, start_lba, sectors)
    return entry + bytes(48) + b"\x55\xaa"


def syslinux_cfg(append: str) -> str:
    return ("SERIAL 0 115200\nDEFAULT system\nTIMEOUT 0\nPROMPT 0\nLABEL system\n"
            f"  KERNEL vmlinuz\n  APPEND initrd=initrd.img {append}\n")


def build_boot_disk(out: Path, kernel: Path, initrd: Path, append: str,
                    size_mib: int = 64, part_mib: int = 32) -> Path:
    """Write ``out``: a disk that boots ``kernel``/``initrd`` with ``append`` via syslinux."""
    for tool in ("mkfs.fat", "mcopy", "syslinux"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is missing: run scripts/install-system-deps.sh")
    part = out.with_suffix(".fat")
    sectors = part_mib * 2048
    with open(part, "wb") as f:
        f.truncate(sectors * SECTOR)
    subprocess.run(["mkfs.fat", "-F", "16", "-n", "FLEETBOOT", str(part)], check=True,
                   capture_output=True)
    cfg = out.with_suffix(".cfg")
    cfg.write_text(syslinux_cfg(append))
    for src, name in ((kernel, "vmlinuz"), (initrd, "initrd.img"), (cfg, "syslinux.cfg")):
        subprocess.run(["mcopy", "-o", "-i", str(part), str(src), f"::{name}"], check=True)
    subprocess.run(["syslinux", "--install", str(part)], check=True, capture_output=True)
    listing = subprocess.run(["mdir", "-b", "-i", str(part), "::"], check=True,
                             capture_output=True, text=True).stdout
    if "ldlinux.c32" not in listing.lower():
        subprocess.run(["mcopy", "-o", "-i", str(part), str(LDLINUX_C32), "::ldlinux.c32"],
                       check=True)
    with open(out, "wb") as f:
        f.truncate(size_mib << 20)
        f.write(MBR_BIN.read_bytes()[:440])
        f.seek(446)
        f.write(partition_table(PART_START, sectors))
        f.seek(PART_START * SECTOR)
        with open(part, "rb") as p:
            shutil.copyfileobj(p, f, 1 << 20)
    part.unlink()
    cfg.unlink()
    return out
