"""The firmware part of the QEMU command line (pure): SeaBIOS, or OVMF as two pflash drives."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetboot.vm import planner as P
from fleetboot.vm.errors import ArgvError
from fleetboot.vm.firmware import (
    MIN_UEFI_MEMORY_MIB,
    Firmware,
    FirmwareError,
    check_memory,
    parse_firmware,
    vars_path,
)
from fleetboot.vm.planner import DeviceRequest, Family, Kind
from fleetboot.vm.qemu_argv import (
    FW_CODE_NODE,
    FW_VARS_NODE,
    MachineDef,
    NicDef,
    RunFiles,
    UefiDef,
    parse_extra_args,
    qemu_argv,
)
from fleetboot.vm.specs import CreateSpec

FILES = RunFiles("/run/fb/x.qmp", "/run/fb/x.pid")
CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
UEFI = UefiDef(CODE, "/var/lib/fleetboot/vm-images/vm1-0000aaaa.OVMF_VARS.fd")


def machine(family: Family, uefi: UefiDef | None) -> MachineDef:
    layout = P.add(P.new_layout(family), DeviceRequest("net0", Kind.NIC, bootindex=1))
    nic = NicDef("net0", "virtio-net-pci", "52:54:00:00:00:01", "user")
    machine_type = "pc-q35-7.2" if family is Family.Q35 else "pc-i440fx-7.2"
    return MachineDef("vm1", "00000000-0000-0000-0000-000000000001", machine_type, layout,
                      nics=(nic,), uefi=uefi)


def option(argv: list[str], flag: str) -> list[str]:
    return [value for f, value in itertools.pairwise(argv) if f == flag]


def blockdevs(argv: list[str]) -> dict[str, dict[str, Any]]:
    found = (json.loads(v) for v in option(argv, "-blockdev"))
    return {b["node-name"]: b for b in found}


@pytest.mark.parametrize("family", [Family.Q35, Family.PC])
def test_bios_has_no_flash(family: Family) -> None:
    argv = qemu_argv(machine(family, None), FILES)
    assert option(argv, "-machine") == [f"{machine(family, None).machine_type},accel=tcg"]
    assert option(argv, "-blockdev") == [] and "-drive" not in argv and "-bios" not in argv


@pytest.mark.parametrize("family", [Family.Q35, Family.PC])
def test_uefi_is_ovmf_code_read_only_and_the_vms_own_store(family: Family) -> None:
    m = machine(family, UEFI)
    argv = qemu_argv(m, FILES)
    assert option(argv, "-machine") == [
        f"{m.machine_type},accel=tcg,pflash0={FW_CODE_NODE},pflash1={FW_VARS_NODE}"]
    nodes = blockdevs(argv)
    code, store = nodes[FW_CODE_NODE], nodes[FW_VARS_NODE]
    assert code["read-only"] is True and code["file"]["read-only"] is True
    assert code["driver"] == "raw" and code["file"]["filename"] == CODE
    assert store["driver"] == "raw" and store["file"]["filename"] == UEFI.vars
    assert "read-only" not in store and "read-only" not in store["file"]  # OVMF writes it
    # Everything else is the SeaBIOS command line.
    suffix = f",pflash0={FW_CODE_NODE},pflash1={FW_VARS_NODE}"
    rest = [a.replace(suffix, "") for a in argv if a != "-blockdev" and '"fw-' not in a]
    assert rest == qemu_argv(replace(m, uefi=None), FILES)


@pytest.mark.parametrize("uefi", [None, UEFI])
def test_a_migration_destination_gets_the_same_firmware(uefi: UefiDef | None) -> None:
    m = machine(Family.Q35, uefi)
    start = qemu_argv(m, FILES)
    incoming = qemu_argv(m, FILES, incoming="unix:/run/fb/x.mig")
    assert incoming == [*start, "-incoming", "unix:/run/fb/x.mig"]


@given(st.text(min_size=1, max_size=40).filter(lambda t: "\x00" not in t))
def test_any_store_path_stays_inside_its_json(name: str) -> None:
    """Commas or quotes in the path never leak into -machine or split an option."""
    path = f"/images/{name}.fd"
    argv = qemu_argv(machine(Family.Q35, UefiDef(CODE, path)), FILES)
    assert blockdevs(argv)[FW_VARS_NODE]["file"]["filename"] == path
    assert option(argv, "-machine")[0].endswith(f"pflash1={FW_VARS_NODE}")


@pytest.mark.parametrize("extra", [
    ("-bios", "/tmp/OVMF.fd"),
    ("-pflash", "/tmp/OVMF.fd"),
    ("-drive", "if=pflash,format=raw,file=/tmp/OVMF_CODE.fd,readonly=on"),
    ("--drive", "file=/tmp/v.fd, if=pflash"),
])
def test_firmware_in_extra_args_is_refused_with_the_fix(extra: tuple[str, str]) -> None:
    with pytest.raises(ArgvError, match=r"--firmware bios\|uefi"):
        parse_extra_args(extra, Family.Q35)


def test_other_drives_pass_through() -> None:
    parsed = parse_extra_args(("-drive", "if=none,id=x,file=/tmp/pflash.img"), Family.PC)
    assert parsed.passthrough == ("-drive", "if=none,id=x,file=/tmp/pflash.img")


def test_parse_firmware() -> None:
    assert parse_firmware(" UEFI ") is Firmware.UEFI and parse_firmware("bios") is Firmware.BIOS
    with pytest.raises(FirmwareError, match=r"use bios \(SeaBIOS\) or uefi \(OVMF\)"):
        parse_firmware("efi")


def test_ovmf_needs_64_mib() -> None:
    check_memory(Firmware.BIOS, 16)
    check_memory(Firmware.UEFI, MIN_UEFI_MEMORY_MIB)
    with pytest.raises(FirmwareError, match="at least 64 MiB; give --memory 64 or more"):
        check_memory(Firmware.UEFI, 32)
    with pytest.raises(FirmwareError, match="--firmware bios"):
        CreateSpec("small", memory_mib=32, firmware=Firmware.UEFI)
    CreateSpec("small", memory_mib=32)  # the firmware setting decides later


def test_store_names_are_per_vm(tmp_path: Any) -> None:
    a = vars_path(tmp_path, "web1", "0123abcd-0000-0000-0000-000000000000")
    b = vars_path(tmp_path, "web1", "4567abcd-0000-0000-0000-000000000000")
    assert a != b and a.parent == tmp_path and a.name.startswith("web1-0123abcd")
