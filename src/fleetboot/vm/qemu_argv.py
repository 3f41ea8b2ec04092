"""The QEMU command line of an instance, built from its definition and stored layout (pure).

The argv is a list handed to ``exec`` (never a shell string). Every device
Fleetboot owns is written in QEMU's JSON syntax with an explicit ``bus`` and
``addr`` from the layout, so QEMU has nothing to auto-assign but the machine's
own devices and whatever the user passes through without an address. The very
same property dicts feed ``device_add``/``netdev_add``/``blockdev-add`` over
QMP, so a hot-plugged device and the same device on the next command line
(restart, migration destination) cannot differ.

Per-NIC PXE (seed 000): ``-boot strict=on``; the designated boot NIC carries
``bootindex`` and its option ROM, every other NIC ``romfile=""`` whatever its
model, so the firmware has exactly one NIC it can PXE-boot from.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fleetboot.vm.errors import ArgvError, LayoutError
from fleetboot.vm.planner import (
    SCSI_CONTROLLER_ID,
    DeviceRequest,
    Family,
    Kind,
    Layout,
    Placement,
    PoolName,
    RootPort,
)

FIRMWARE_FIX = "choose the firmware with fleetboot vm create --firmware bios|uefi"
# Options Fleetboot sets itself; a user copy would fight the layout or the runtime.
OWNED_OPTIONS: Mapping[str, str] = {
    "-machine": "use the instance's pinned machine type (fleetboot vm create --machine)",
    "-M": "use the instance's pinned machine type (fleetboot vm create --machine)",
    "-accel": "use --accel",
    "-enable-kvm": "use --accel kvm",
    "-boot": "the boot order follows the designated boot NIC/disk",
    "-qmp": "Fleetboot owns the QMP socket",
    "-monitor": "Fleetboot owns the monitor",
    "-daemonize": "Fleetboot starts QEMU itself",
    "-pidfile": "Fleetboot starts QEMU itself",
    "-incoming": "use fleetboot vm migrate",
    "-S": "use fleetboot vm start --paused",
    "-name": "the instance name is used",
    "-uuid": "the instance UUID is used",
    "-smp": "use --vcpus",
    "-m": "use --memory",
    "-nic": "declare NICs with --nic so Fleetboot controls their slot and PXE ROM",
    "-net": "declare NICs with --nic so Fleetboot controls their slot and PXE ROM",
    "-nodefaults": "Fleetboot always passes it",
    "-bios": FIRMWARE_FIX,
    "-pflash": FIRMWARE_FIX,
}
# Node names of the two OVMF pflash drives (-machine pflash0=/pflash1=).
FW_CODE_NODE = "fw-code"
FW_VARS_NODE = "fw-vars"

# Fallback when QEMU's own driver list is not at hand.
KNOWN_NIC_MODELS = frozenset({
    "virtio-net-pci", "virtio-net", "e1000", "e1000e", "rtl8139", "vmxnet3", "pcnet",
    "ne2k_pci", "i82550", "i82551", "i82557a", "i82557b", "i82557c", "i82558a", "i82558b",
    "i82559a", "i82559b", "i82559c", "i82559er", "i82562", "i82801", "tulip",
    "virtio-net-pci-non-transitional", "virtio-net-pci-transitional",
})

_ID = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,31}")
_HELP_LINE = re.compile(r'^name "([^"]+)"(?:, bus ([^,]+))?(?:, alias "([^"]+)")?')


@dataclass(frozen=True)
class DriverCatalog:
    """Which ``-device`` drivers are PCI functions and which are NICs (from ``-device help``)."""

    pci: frozenset[str] = frozenset()
    network: frozenset[str] = KNOWN_NIC_MODELS

    def is_pci(self, driver: str) -> bool:
        if self.pci:
            return driver in self.pci
        return driver.endswith("-pci") or driver in KNOWN_NIC_MODELS

    def is_nic(self, driver: str) -> bool:
        return driver in self.network or driver in KNOWN_NIC_MODELS


def parse_device_help(text: str) -> DriverCatalog:
    """Read ``qemu-system-x86_64 -device help``: sections of ``name "x", bus PCI`` lines."""
    pci: set[str] = set()
    network: set[str] = set()
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.endswith(":") and not line.startswith("name"):
            section = line[:-1]
            continue
        found = _HELP_LINE.match(line)
        if not found:
            continue
        names = {found.group(1)} | ({found.group(3)} if found.group(3) else set())
        if found.group(2) == "PCI":
            pci |= names
        if section == "Network devices":
            network |= names
    return DriverCatalog(frozenset(pci), frozenset(network) or KNOWN_NIC_MODELS)


# ---------------------------------------------------------------------------
# The definition of an instance, as plain values
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NicDef:
    device: str
    model: str
    mac: str
    backend: str  # user | tap (bridge backends arrive here as a tap Fleetboot made)
    ifname: str | None = None

    @property
    def netdev_id(self) -> str:
        return f"hn-{self.device}"


@dataclass(frozen=True)
class DiskDef:
    device: str
    path: str
    format: str = "qcow2"

    @property
    def node_name(self) -> str:
        return f"drive-{self.device}"


@dataclass(frozen=True)
class DeviceDef:
    device: str
    kind: str  # balloon | rng | serial | passthrough
    props: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExtraDevice:
    """A user ``-device`` that is a PCI function: Fleetboot gives it a QEMU-range slot."""

    device: str
    driver: str
    props: Mapping[str, Any]
    at_slot: int | None


@dataclass(frozen=True)
class ParsedExtras:
    devices: tuple[ExtraDevice, ...] = ()
    passthrough: tuple[str, ...] = ()  # everything else, verbatim and in order


@dataclass(frozen=True)
class UefiDef:
    """OVMF as pflash: the shared code (read-only) and this VM's own variable store."""

    code: str
    vars: str


@dataclass(frozen=True)
class MachineDef:
    name: str
    uuid: str
    machine_type: str
    layout: Layout
    accel: str = "tcg"
    vcpus: int = 1
    memory_mib: int = 256
    nics: tuple[NicDef, ...] = ()
    disks: tuple[DiskDef, ...] = ()
    devices: tuple[DeviceDef, ...] = ()
    extras: ParsedExtras = ParsedExtras()
    uefi: UefiDef | None = None  # None: SeaBIOS, QEMU's built-in default


@dataclass(frozen=True)
class RunFiles:
    qmp_socket: str
    pidfile: str


# ---------------------------------------------------------------------------
# User extra arguments
# ---------------------------------------------------------------------------


def split_props(text: str) -> tuple[str, dict[str, str]]:
    """``driver,k=v,k=v`` with QEMU's ``,,`` escape -> (driver, props)."""
    parts: list[str] = []
    current = ""
    i = 0
    while i < len(text):
        if text[i] == ",":
            if text[i + 1 : i + 2] == ",":
                current += ","
                i += 2
                continue
            parts.append(current)
            current = ""
        else:
            current += text[i]
        i += 1
    parts.append(current)
    driver, rest = parts[0], parts[1:]
    props: dict[str, str] = {}
    for item in rest:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ArgvError(f"-device {text!r}: {item!r} is not key=value")
        props[key] = value
    return driver, props


def _parse_device_value(value: str) -> tuple[str, dict[str, Any]]:
    if value.lstrip().startswith("{"):
        try:
            data = json.loads(value)
        except ValueError as exc:
            raise ArgvError(f"-device {value!r} is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("driver"), str):
            raise ArgvError(f"-device {value!r}: JSON form needs a \"driver\" string")
        props = {k: v for k, v in data.items() if k != "driver"}
        return data["driver"], props
    driver, props = split_props(value)
    if not driver or driver.startswith("driver="):
        raise ArgvError(f"-device {value!r}: write the driver name first, like virtio-rng-pci,...")
    return driver, props


def parse_slot(value: Any, where: str) -> int:
    """QEMU ``addr=``: ``slot[.function]`` in hex; only function 0 is accepted."""
    text = str(value).strip().lower()
    slot_text, _, fn_text = text.partition(".")
    try:
        slot = int(slot_text, 16)
        fn = int(fn_text, 16) if fn_text else 0
    except ValueError:
        raise ArgvError(f"{where}: addr={value!r} is not a PCI slot like 0x5 or 05.0") from None
    if fn != 0 or not 0 <= slot <= 31:
        raise ArgvError(f"{where}: addr={value!r} must be slot 0x00-0x1f, function 0")
    return slot


def _extra_device(
    value: str, index: int, catalog: DriverCatalog, family: Family, taken_ids: set[str]
) -> ExtraDevice | None:
    """The planned form of one user ``-device``, or None to pass it through as is."""
    driver, props = _parse_device_value(value)
    if catalog.is_nic(driver):
        raise ArgvError(f"-device {driver}: {OWNED_OPTIONS['-nic']}")
    if not catalog.is_pci(driver):
        return None  # ISA, USB, SCSI... devices take no PCI slot of ours
    root = "pci.0" if family is Family.PC else "pcie.0"
    bus = props.pop("bus", root)
    if bus != root:
        raise ArgvError(
            f"-device {driver}: bus={bus} is not the root bus {root}; Fleetboot's root ports "
            "are its own, and extra PCI devices sit in QEMU's range of the root bus"
        )
    device = str(props.pop("id", f"extra{index}"))
    if not _ID.fullmatch(device) or device in taken_ids:
        raise ArgvError(f"-device {driver}: id {device!r} is invalid or used twice")
    taken_ids.add(device)
    addr = props.pop("addr", None)
    slot = None if addr is None else parse_slot(addr, f"-device {driver}")
    if props.pop("multifunction", None) not in (None, "off", False):
        raise ArgvError(f"-device {driver}: multifunction extra devices are not supported")
    return ExtraDevice(device, driver, props, slot)


def parse_extra_args(
    args: Sequence[str], family: Family, catalog: DriverCatalog | None = None
) -> ParsedExtras:
    """Check user arguments; pull out the PCI ``-device``\\s the planner must place."""
    catalog = catalog or DriverCatalog()
    devices: list[ExtraDevice] = []
    rest: list[str] = []
    ids: set[str] = set()
    items = list(args)
    i = 0
    while i < len(items):
        token = items[i]
        option = "-" + token.lstrip("-") if token.startswith("-") else token
        if option in OWNED_OPTIONS:
            raise ArgvError(f"extra argument {token}: {OWNED_OPTIONS[option]}")
        if option == "-drive" and _is_pflash(items[i + 1] if i + 1 < len(items) else ""):
            raise ArgvError(f"extra argument -drive {items[i + 1]}: {FIRMWARE_FIX}")
        if option == "-device":
            if i + 1 >= len(items):
                raise ArgvError("extra argument -device needs a value")
            extra = _extra_device(items[i + 1], len(devices), catalog, family, ids)
            if extra is None:
                rest += [token, items[i + 1]]
            else:
                devices.append(extra)
            i += 2
            continue
        rest.append(token)
        i += 1
    return ParsedExtras(tuple(devices), tuple(rest))


def _is_pflash(drive: str) -> bool:
    return "if=pflash" in (part.strip() for part in drive.split(","))


def extra_requests(extras: ParsedExtras) -> list[DeviceRequest]:
    return [DeviceRequest(d.device, Kind.EXTRA, at_slot=d.at_slot) for d in extras.devices]


# ---------------------------------------------------------------------------
# Property dicts: shared by the command line and QMP
# ---------------------------------------------------------------------------


def _at(layout: Layout, device: str) -> dict[str, Any]:
    addr = layout.address_of(device)
    if addr is None:
        raise LayoutError(f"{device} has no PCI address in the layout")
    return {"bus": addr.bus, "addr": addr.qemu}


def _boot(p: Placement) -> dict[str, Any]:
    return {} if p.bootindex is None else {"bootindex": p.bootindex}


def root_port_props(port: RootPort) -> dict[str, Any]:
    props: dict[str, Any] = {
        "driver": "pcie-root-port", "id": port.id, "bus": port.addr.bus,
        "addr": port.addr.qemu, "chassis": port.chassis, "slot": port.chassis,
    }
    if port.multifunction:
        props["multifunction"] = True
    return props


def netdev_props(nic: NicDef) -> dict[str, Any]:
    if nic.backend == "user":
        return {"type": "user", "id": nic.netdev_id}
    if nic.backend == "tap":
        if not nic.ifname:
            raise ArgvError(f"{nic.device}: a tap backend needs a tap device name")
        return {"type": "tap", "id": nic.netdev_id, "ifname": nic.ifname,
                "script": "no", "downscript": "no"}
    raise ArgvError(f"{nic.device}: unknown NIC backend {nic.backend!r} (user, tap or bridge)")


def nic_device_props(layout: Layout, nic: NicDef) -> dict[str, Any]:
    p = layout.get(nic.device)
    props: dict[str, Any] = {"driver": nic.model, "id": nic.device, "netdev": nic.netdev_id,
                             "mac": nic.mac, **_at(layout, nic.device), **_boot(p)}
    if p.romfile is not None:
        props["romfile"] = p.romfile  # "" = no option ROM: this NIC cannot PXE-boot
    return props


def blockdev_props(disk: DiskDef) -> dict[str, Any]:
    # The protocol node is inline, so blockdev-del of the format node removes both.
    return {"driver": disk.format, "node-name": disk.node_name,
            "file": {"driver": "file", "filename": disk.path}}


def disk_device_props(layout: Layout, disk: DiskDef) -> dict[str, Any]:
    p = layout.get(disk.device)
    if p.kind is Kind.SCSI_DISK:
        return {"driver": "scsi-hd", "id": disk.device, "drive": disk.node_name,
                "bus": f"{SCSI_CONTROLLER_ID}.0", "channel": 0, "scsi-id": p.scsi_target,
                "lun": 0, **_boot(p)}
    return {"driver": "virtio-blk-pci", "id": disk.device, "drive": disk.node_name,
            **_at(layout, disk.device), **_boot(p)}


def controller_props(layout: Layout) -> dict[str, Any]:
    return {"driver": "virtio-scsi-pci", "id": SCSI_CONTROLLER_ID,
            **_at(layout, SCSI_CONTROLLER_ID)}


def device_args(layout: Layout, dev: DeviceDef) -> list[str]:
    """Command-line arguments of a balloon, rng, serial or passthrough device."""
    if dev.kind == "balloon":
        return ["-device", _json({"driver": "virtio-balloon-pci", "id": dev.device,
                                  **_at(layout, dev.device)})]
    if dev.kind == "rng":
        backend = {"qom-type": "rng-random", "id": f"rng-{dev.device}",
                   "filename": str(dev.props.get("source", "/dev/urandom"))}
        return ["-object", _json(backend),
                "-device", _json({"driver": "virtio-rng-pci", "id": dev.device,
                                  "rng": backend["id"], **_at(layout, dev.device)})]
    if dev.kind == "serial":
        path = str(dev.props.get("path", ""))
        if not path:
            raise ArgvError(f"{dev.device}: a serial console needs a log file path")
        return ["-chardev", f"file,id=chr-{dev.device},path={escape_value(path)}",
                "-device", _json({"driver": "isa-serial", "id": dev.device,
                                  "chardev": f"chr-{dev.device}"})]
    if dev.kind == "passthrough":
        host = str(dev.props.get("host", ""))
        if not host:
            raise ArgvError(f"{dev.device}: a passthrough device needs host=DDDD:BB:SS.F")
        return ["-device", _json({"driver": "vfio-pci", "id": dev.device, "host": host,
                                  **_at(layout, dev.device)})]
    raise ArgvError(f"{dev.device}: unknown device kind {dev.kind!r}")


def extra_device_props(layout: Layout, extra: ExtraDevice) -> dict[str, Any]:
    return {"driver": extra.driver, "id": extra.device, **extra.props,
            **_at(layout, extra.device)}


def escape_value(value: str) -> str:
    """A value for QEMU's key=value syntax: a comma is written twice."""
    return value.replace(",", ",,")


def _json(props: Mapping[str, Any]) -> str:
    return json.dumps(props, separators=(",", ":"))


# ---------------------------------------------------------------------------
# The whole command line
# ---------------------------------------------------------------------------


def firmware_args(uefi: UefiDef | None) -> tuple[str, list[str]]:
    """The ``-machine`` suffix and the ``-blockdev`` options of the firmware (none for SeaBIOS).

    OVMF goes in as pflash via ``-machine pflash0=,pflash1=`` and JSON
    ``-blockdev``s, like the disks: the code read-only (a write would fail, not
    corrupt the shared file), the variable store writable.
    """
    if uefi is None:
        return "", []
    code = {"driver": "raw", "node-name": FW_CODE_NODE, "read-only": True,
            "file": {"driver": "file", "filename": uefi.code, "read-only": True}}
    store = {"driver": "raw", "node-name": FW_VARS_NODE,
             "file": {"driver": "file", "filename": uefi.vars}}
    return (f",pflash0={FW_CODE_NODE},pflash1={FW_VARS_NODE}",
            ["-blockdev", _json(code), "-blockdev", _json(store)])


def _base_args(m: MachineDef, files: RunFiles) -> list[str]:
    if "," in m.machine_type or "," in m.accel:
        raise ArgvError(f"machine type {m.machine_type!r} / accel {m.accel!r} contain a comma")
    pflash, firmware = firmware_args(m.uefi)
    argv = [
        "-name", f"guest={escape_value(m.name)}", "-uuid", m.uuid,
        "-machine", f"{m.machine_type},accel={m.accel}{pflash}", *firmware,
        "-smp", str(m.vcpus), "-m", str(m.memory_mib),
        "-nodefaults", "-no-user-config", "-display", "none",
        "-boot", "strict=on",
        "-qmp", f"unix:{escape_value(files.qmp_socket)},server=on,wait=off",
        "-pidfile", files.pidfile, "-daemonize",
    ]
    if m.layout.family is Family.Q35 and m.layout.hotplug == "pcie-native":
        # Native PCIe hotplug on the root ports instead of ACPI: a slot the guest
        # never powered on can be emptied without a guest round trip.
        argv += ["-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off"]
    return argv


def _placed(layout: Layout, device: str) -> bool:
    return layout.find(device) is not None


def _nic_args(m: MachineDef) -> list[str]:
    argv: list[str] = []
    for nic in m.nics:
        argv += ["-netdev", _json(netdev_props(nic)),
                 "-device", _json(nic_device_props(m.layout, nic))]
    return argv


def _disk_args(m: MachineDef) -> list[str]:
    argv: list[str] = []
    if _placed(m.layout, SCSI_CONTROLLER_ID):
        argv += ["-device", _json(controller_props(m.layout))]
    for disk in m.disks:
        argv += ["-blockdev", _json(blockdev_props(disk)),
                 "-device", _json(disk_device_props(m.layout, disk))]
    return argv


def check_complete(m: MachineDef) -> None:
    """Every placement has a definition and every definition a placement."""
    defined = {n.device for n in m.nics} | {d.device for d in m.disks} | {
        d.device for d in m.devices if d.kind != "serial"} | {e.device for e in m.extras.devices}
    placed = {p.device for p in m.layout.placements if p.kind is not Kind.SCSI_CONTROLLER}
    if defined != placed:
        missing = sorted(placed - defined)
        unplaced = sorted(defined - placed)
        raise LayoutError(
            f"instance {m.name}: layout and definition disagree (placed without definition: "
            f"{missing or 'none'}; defined without a slot: {unplaced or 'none'})"
        )


def qemu_argv(
    m: MachineDef,
    files: RunFiles,
    *,
    qemu: str = "qemu-system-x86_64",
    paused: bool = False,
    incoming: str | None = None,
) -> list[str]:
    """The full argv; ``incoming`` makes it a migration destination."""
    check_complete(m)
    argv = [qemu, *_base_args(m, files)]
    for port in m.layout.root_ports:
        argv += ["-device", _json(root_port_props(port))]
    for dev in _in_slot_order(m.layout, m.devices):
        argv += device_args(m.layout, dev)
    for extra in m.extras.devices:
        argv += ["-device", _json(extra_device_props(m.layout, extra))]
    argv += _nic_args(m) + _disk_args(m)
    argv += list(m.extras.passthrough)
    if paused:
        argv.append("-S")
    if incoming is not None:
        argv += ["-incoming", incoming]
    return argv


def _in_slot_order(layout: Layout, devices: Iterable[DeviceDef]) -> list[DeviceDef]:
    def key(dev: DeviceDef) -> tuple[int, str]:
        p = layout.find(dev.device)
        return (-1 if p is None or p.index is None else p.index, dev.device)

    return sorted(devices, key=key)


def hotpluggable(layout: Layout, device: str) -> bool:
    slot = layout.slot_of(layout.get(device))
    return slot is None or slot.hotpluggable


def pool_of(layout: Layout, device: str) -> PoolName | None:
    return layout.get(device).pool
