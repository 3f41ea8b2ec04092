"""The QEMU command line (pure): per-NIC PXE control, explicit addresses, user extras."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import pytest

from fleetboot.vm import planner as P
from fleetboot.vm.errors import ArgvError, LayoutError
from fleetboot.vm.planner import DeviceRequest, Family, Kind
from fleetboot.vm.qemu_argv import (
    DeviceDef,
    DiskDef,
    DriverCatalog,
    MachineDef,
    NicDef,
    RunFiles,
    parse_device_help,
    parse_extra_args,
    qemu_argv,
    split_props,
)
from fleetboot.vm.runtime import parse_machine_help

FILES = RunFiles("/run/fb/x.qmp", "/run/fb/x.pid")
MODELS = ("virtio-net-pci", "e1000", "rtl8139")


def _machine(family: str, nics: list[tuple[str, bool]], **kw: object) -> MachineDef:
    layout = P.new_layout(family)
    defs = []
    for i, (model, boot) in enumerate(nics):
        bootindex, romfile = P.nic_boot_attrs(boot)
        layout = P.add(layout, DeviceRequest(f"net{i}", Kind.NIC, bootindex=bootindex,
                                             romfile=romfile))
        defs.append(NicDef(f"net{i}", model, f"52:54:00:00:00:0{i}", "tap", f"tap{i}"))
    return MachineDef("vm1", "00000000-0000-0000-0000-000000000001", f"pc-{family}-7.2",
                      layout, nics=tuple(defs), **kw)  # type: ignore[arg-type]


def _devices(argv: list[str]) -> dict[str, dict[str, object]]:
    out = {}
    for flag, value in itertools.pairwise(argv):
        if flag == "-device" and value.startswith("{"):
            props = json.loads(value)
            out[props["id"]] = props
    return out


@pytest.mark.parametrize("models", [MODELS, ("e1000", "e1000")])
@pytest.mark.parametrize("boot", [0, 1])
def test_only_the_boot_nic_has_bootindex_and_a_rom(models: tuple[str, ...], boot: int) -> None:
    argv = qemu_argv(_machine("q35", [(m, i == boot) for i, m in enumerate(models)]), FILES)
    assert argv[argv.index("-boot") + 1] == "strict=on"
    devices = _devices(argv)
    for i in range(len(models)):
        nic = devices[f"net{i}"]
        if i == boot:
            assert nic["bootindex"] == 1 and "romfile" not in nic  # QEMU's ROM for the model
        else:
            assert nic["romfile"] == "" and "bootindex" not in nic


def test_every_device_has_an_explicit_address_from_the_layout() -> None:
    machine = _machine("q35", [("virtio-net-pci", True), ("e1000", False)])
    layout = P.add(P.add(machine.layout, DeviceRequest("disk0", Kind.SCSI_DISK)),
                   DeviceRequest("balloon0", Kind.BALLOON))
    machine = replace(machine, layout=layout, disks=(DiskDef("disk0", "/img/a,b.qcow2"),),
                      devices=(DeviceDef("balloon0", "balloon"),
                               DeviceDef("serial0", "serial", {"path": "/x,y.log"})))
    argv = qemu_argv(machine, FILES, paused=True)
    devices = _devices(argv)
    assert devices["net0"]["bus"] == "rp-nic0" and devices["net0"]["addr"] == "0x0"
    assert devices["rp-nic0"]["multifunction"] is True
    assert devices["scsi0"]["bus"] == "rp-disk0"
    assert devices["disk0"]["bus"] == "scsi0.0" and devices["disk0"]["scsi-id"] == 0
    assert devices["balloon0"]["bus"] == "pcie.0"
    blockdev = json.loads(argv[argv.index("-blockdev") + 1])
    assert blockdev["file"]["filename"] == "/img/a,b.qcow2"  # JSON: commas are safe
    assert "file,id=chr-serial0,path=/x,,y.log" in argv  # key=value: commas doubled
    assert "-S" in argv and argv[argv.index("-machine") + 1] == "pc-q35-7.2,accel=tcg"
    assert "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off" in argv


def test_pc_devices_sit_on_pci0_without_root_ports() -> None:
    argv = qemu_argv(_machine("pc", [("e1000", True)]), FILES, incoming="unix:/x.mig")
    devices = _devices(argv)
    assert devices["net0"]["bus"] == "pci.0" and devices["net0"]["addr"] == "0x8"
    assert not [d for d in devices.values() if d["driver"] == "pcie-root-port"]
    assert argv[-2:] == ["-incoming", "unix:/x.mig"]
    assert "-global" not in argv


def test_layout_and_definition_must_agree() -> None:
    machine = _machine("pc", [("e1000", True)])
    orphan = P.add(machine.layout, DeviceRequest("net9", Kind.NIC))
    with pytest.raises(LayoutError, match=r"placed without definition: \['net9'\]"):
        qemu_argv(replace(machine, layout=orphan), FILES)


HELP = """Network devices:
name "e1000", bus PCI, alias "e1000-82540em", desc "Intel Gigabit Ethernet"
name "virtio-net-pci", bus PCI, alias "virtio-net"
name "usb-net", bus usb-bus

Misc devices:
name "virtio-rng-pci", bus PCI, alias "virtio-rng"
name "isa-debugcon", bus ISA
"""


def test_device_help_parsing() -> None:
    catalog = parse_device_help(HELP)
    assert catalog.is_pci("virtio-rng") and catalog.is_pci("e1000-82540em")
    assert not catalog.is_pci("isa-debugcon") and not catalog.is_pci("usb-net")
    assert catalog.is_nic("usb-net") and catalog.is_nic("virtio-net")
    assert parse_machine_help("pc   Standard PC (alias of pc-i440fx-7.2)\n"
                              "pc-i440fx-7.2  Standard PC (default)\n")["pc"] == "pc-i440fx-7.2"


def test_extra_args_pci_devices_are_planned_the_rest_passes_through() -> None:
    catalog = parse_device_help(HELP)
    extras = parse_extra_args(
        ["-device", "virtio-rng-pci,id=r1,addr=0x3", "-device", "isa-debugcon,iobase=0x402",
         "-device", '{"driver": "virtio-rng", "max-bytes": 1024}', "-rtc", "base=utc"],
        Family.PC, catalog)
    assert [(d.device, d.driver, d.at_slot) for d in extras.devices] == [
        ("r1", "virtio-rng-pci", 3), ("extra1", "virtio-rng", None)]
    assert extras.devices[1].props == {"max-bytes": 1024}
    assert extras.passthrough == ("-device", "isa-debugcon,iobase=0x402", "-rtc", "base=utc")


@pytest.mark.parametrize(("args", "message"), [
    (["-machine", "q35"], "pinned machine type"),
    (["--enable-kvm"], "--accel kvm"),
    (["-nic", "user"], "declare NICs"),
    (["-device", "e1000"], "declare NICs"),
    (["-device", "virtio-rng-pci,bus=rp-nic0"], "root bus"),
    (["-device", "virtio-rng-pci,addr=0x3.0x1"], "function 0"),
    (["-device", "virtio-rng-pci,addr=zz"], "not a PCI slot"),
    (["-device", "virtio-rng-pci,id=a", "-device", "virtio-rng-pci,id=a"], "used twice"),
    (["-device", "virtio-rng-pci,nokey"], "key=value"),
    (["-device", "{nojson"], "not valid JSON"),
    (["-device"], "needs a value"),
    (["-qmp", "stdio"], "QMP"),
])
def test_bad_extra_args_are_clear_errors(args: list[str], message: str) -> None:
    with pytest.raises(ArgvError, match=message):
        parse_extra_args(args, Family.Q35, DriverCatalog())


def test_split_props_handles_doubled_commas() -> None:
    assert split_props("isa-serial,chardev=a,,b,x=1") == (
        "isa-serial", {"chardev": "a,b", "x": "1"})
