"""The firmware lab machines' QEMU arguments (pure apart from copying the variable
stores): what docs/real-clients.md measured, and no console the ARM64 guest lacks."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetboot.lab import arm64, firmware
from fleetboot.lab.qemu import NicSpec, VmFiles, VmSpec, qemu_argv


def test_secure_boot_machine_runs_the_secboot_build_with_smm(tmp_path: Path) -> None:
    if firmware.missing_secure_boot_files():
        pytest.skip("needs ovmf, shim-signed and grub-efi-amd64-signed")
    m = firmware.secure_boot_machine("sb", 1, tmp_path)
    argv = " ".join(qemu_argv(m.spec, ["tap0"], VmFiles.inside(tmp_path, "sb")))
    assert "-machine q35,accel=tcg" in argv and "-machine smm=on" in argv
    assert "driver=cfi.pflash01,property=secure,value=on" in argv
    assert f"readonly=on,file={firmware.SECBOOT_CODE}" in argv
    assert (tmp_path / "sb.secvars.fd").read_bytes() == firmware.SECBOOT_VARS.read_bytes()
    assert "romfile=," in argv and "sercon" not in argv  # native PXE, no SeaBIOS console


def test_http_boot_machine_switches_pxe_off(tmp_path: Path) -> None:
    m = firmware.http_boot_machine("hb", 2, tmp_path)
    argv = " ".join(qemu_argv(m.spec, ["tap0"], VmFiles.inside(tmp_path, "hb")))
    assert "name=opt/org.tianocore/IPv4PXESupport,string=n" in argv
    assert "name=opt/org.tianocore/IPv6PXESupport,string=n" in argv


def test_arm64_guest_uses_the_pl011_console(tmp_path: Path) -> None:
    line = arm64.arm64_cmdline()
    assert "console=ttyAMA0" in line and "ttyS0" not in line and "quiet" not in line
    spec = VmSpec("a", nics=(NicSpec("52:54:00:00:00:09", bootindex=1, rom=""),))
    argv = arm64.arm64_argv(spec, "tap9", VmFiles.inside(tmp_path, "a"))
    assert argv[0] == "qemu-system-aarch64" and "virt,accel=tcg" in argv
    assert "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:09,romfile=,bootindex=1" in argv
