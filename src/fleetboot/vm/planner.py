"""The PCI layout planner: which guest PCI slot every device of a VM sits in, for life.

Pure and deterministic: values in, values out, no I/O.

Why it exists (seed 001): when a manager places NICs and disks at explicit
slots while QEMU places everything else, the one slot pool has two owners and
any device QEMU or the user adds can collide; hot-removal leaves holes that the
next device of *another* kind falls into. Here the guest's PCI space is split
into pools, each with one owner:

* ``qemu``: root-bus slots QEMU may auto-assign (machine devices, ``-vga``...).
  Fleetboot's own non-hotplug devices (balloon, rng, user ``-device``) take
  slots here from the *top* down, so QEMU's bottom-up auto-assignment meets
  them only when the range is full.
* ``nic``, ``disk``, ``passthrough``: hot-pluggable slots owned by Fleetboot.
  On ``pc`` (i440fx) these are slots of ``pci.0``; on ``q35`` they are
  pre-created ``pcie-root-port``\\s (q35 cannot hot-plug into its root bus),
  packed eight to a root-bus slot, each with a unique chassis/slot number.

A placement never moves: adding and removing other devices, restarts and
migrations all keep it; the geometry (addresses, root ports) is stored with
the layout rather than recomputed, so a future planner change cannot move
devices of existing instances either.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from fleetboot.vm.errors import LayoutError, PoolFullError

LAYOUT_VERSION = 1
MAX_SLOT = 31
ROOT_PORTS_PER_SLOT = 8
SCSI_CONTROLLER_ID = "scsi0"
SCSI_TARGETS = 256  # virtio-scsi: targets 0..255 on channel 0, LUN 0 each

_DEVICE_ID = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,31}")


class Family(enum.StrEnum):
    PC = "pc"  # i440fx + PIIX3: one conventional PCI root bus, ACPI hotplug
    Q35 = "q35"  # Q35 + ICH9: PCIe root complex, devices behind root ports


class PoolName(enum.StrEnum):
    QEMU = "qemu"
    NIC = "nic"
    DISK = "disk"
    PASSTHROUGH = "passthrough"


class Kind(enum.StrEnum):
    NIC = "nic"
    DISK = "disk"  # virtio-blk-pci: one PCI slot per disk
    SCSI_DISK = "scsi-disk"  # scsi-hd behind the one virtio-scsi controller: no slot
    SCSI_CONTROLLER = "scsi-controller"
    BALLOON = "balloon"
    RNG = "rng"
    PASSTHROUGH = "passthrough"  # vfio-pci,host=... (the passthrough concern)
    EXTRA = "extra"  # a user-supplied -device


class State(enum.StrEnum):
    ACTIVE = "active"
    PLUGGING = "plugging"  # intent recorded, QEMU not yet confirmed
    UNPLUGGING = "unplugging"  # device_del sent, DEVICE_DELETED not yet seen


KIND_POOL: Mapping[Kind, PoolName | None] = {
    Kind.NIC: PoolName.NIC,
    Kind.DISK: PoolName.DISK,
    Kind.SCSI_CONTROLLER: PoolName.DISK,  # the HBA replaces per-disk slots (seed 001)
    Kind.SCSI_DISK: None,
    Kind.BALLOON: PoolName.QEMU,
    Kind.RNG: PoolName.QEMU,
    Kind.EXTRA: PoolName.QEMU,
    Kind.PASSTHROUGH: PoolName.PASSTHROUGH,
}

ROOT_BUS: Mapping[Family, str] = {Family.PC: "pci.0", Family.Q35: "pcie.0"}
# Root-bus slots the machine fills itself: host bridge and PIIX3 / host bridge and ICH9.
INTERNAL_SLOTS: Mapping[Family, tuple[int, ...]] = {Family.PC: (0, 1), Family.Q35: (0, 0x1F)}
HOTPLUG_MODE: Mapping[Family, str] = {Family.PC: "acpi", Family.Q35: "pcie-native"}
POOL_ORDER = (PoolName.QEMU, PoolName.NIC, PoolName.DISK, PoolName.PASSTHROUGH)


@dataclass(frozen=True)
class PoolSizes:
    """How many slots (pc) or root ports (q35) each pool gets."""

    qemu: int
    nic: int
    disk: int
    passthrough: int

    def size(self, pool: PoolName) -> int:
        return int(getattr(self, pool.value))

    def as_dict(self) -> dict[str, int]:
        return {p.value: self.size(p) for p in POOL_ORDER}


DEFAULT_POOLS: Mapping[Family, PoolSizes] = {
    # pc: 2 internal + 6 + 8 + 12 + 4 = all 32 slots of pci.0.
    Family.PC: PoolSizes(qemu=6, nic=8, disk=12, passthrough=4),
    # q35: 8 root-bus slots for QEMU, 32 root ports in 4 slots, 18 root-bus slots spare.
    Family.Q35: PoolSizes(qemu=8, nic=8, disk=16, passthrough=8),
}


@dataclass(frozen=True, order=True)
class PciAddr:
    bus: str
    slot: int
    function: int = 0

    @property
    def qemu(self) -> str:
        """The ``addr=`` property value."""
        return f"0x{self.slot:x}" if self.function == 0 else f"0x{self.slot:x}.0x{self.function:x}"

    def __str__(self) -> str:
        return f"{self.bus}:{self.slot:02x}.{self.function}"


@dataclass(frozen=True)
class RootPort:
    """A ``pcie-root-port`` on the root bus; its secondary bus is named like its id."""

    id: str
    addr: PciAddr
    chassis: int  # also used as the port's physical slot number: unique per VM
    multifunction: bool


@dataclass(frozen=True)
class Slot:
    """One place a device can sit: a root-bus slot (pc, q35 QEMU range) or a root port."""

    pool: PoolName
    index: int
    addr: PciAddr
    root_port: RootPort | None = None

    @property
    def hotpluggable(self) -> bool:
        # q35's root bus takes no hotplug; pc's pci.0 takes ACPI hotplug everywhere.
        return self.root_port is not None or self.addr.bus == ROOT_BUS[Family.PC]


@dataclass(frozen=True)
class Placement:
    """Where one device sits. ``romfile``: None = QEMU's default ROM, "" = none."""

    device: str
    kind: Kind
    pool: PoolName | None
    index: int | None
    state: State = State.ACTIVE
    scsi_target: int | None = None
    bootindex: int | None = None
    romfile: str | None = None


@dataclass(frozen=True)
class DeviceRequest:
    """A device to place. ``at_slot`` pins a user ``-device`` to a root-bus slot."""

    device: str
    kind: Kind
    at_slot: int | None = None
    state: State = State.ACTIVE
    bootindex: int | None = None
    romfile: str | None = None


@dataclass(frozen=True)
class Layout:
    family: Family
    pools: PoolSizes
    slots: tuple[Slot, ...]
    placements: tuple[Placement, ...] = ()
    hotplug: str = "acpi"

    @property
    def root_bus(self) -> str:
        return ROOT_BUS[self.family]

    @property
    def root_ports(self) -> tuple[RootPort, ...]:
        return tuple(s.root_port for s in self.slots if s.root_port is not None)

    def slot(self, pool: PoolName, index: int) -> Slot:
        for s in self.slots:
            if s.pool is pool and s.index == index:
                return s
        raise LayoutError(f"the layout has no {pool} slot number {index}")

    def find(self, device: str) -> Placement | None:
        return next((p for p in self.placements if p.device == device), None)

    def get(self, device: str) -> Placement:
        found = self.find(device)
        if found is None:
            raise LayoutError(f"no device {device!r} in this VM's layout")
        return found

    def slot_of(self, placement: Placement) -> Slot | None:
        if placement.pool is None or placement.index is None:
            return None
        return self.slot(placement.pool, placement.index)

    def address_of(self, device: str) -> PciAddr | None:
        """Where QEMU should show ``device`` (None: not a PCI function, e.g. a SCSI disk)."""
        slot = self.slot_of(self.get(device))
        return None if slot is None else slot.addr


@dataclass(frozen=True)
class LayoutDiff:
    added: tuple[Placement, ...] = ()
    removed: tuple[Placement, ...] = ()
    changed: tuple[Placement, ...] = ()


# ---------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------


def _check_sizes(family: Family, pools: PoolSizes) -> None:
    for pool in POOL_ORDER:
        if pools.size(pool) < 0:
            raise LayoutError(f"the {pool} pool size must be 0 or more, not {pools.size(pool)}")
    usable = MAX_SLOT + 1 - len(INTERNAL_SLOTS[family])
    if family is Family.PC:
        need = sum(pools.size(p) for p in POOL_ORDER)
        if need > usable:
            raise LayoutError(
                f"pc pools need {need} slots but pci.0 has {usable} free "
                f"({pools.as_dict()}); shrink a pool or use q35"
            )
        return
    ports = pools.nic + pools.disk + pools.passthrough
    need = pools.qemu + -(-ports // ROOT_PORTS_PER_SLOT)
    if need > usable:
        raise LayoutError(
            f"q35 pools need {need} root-bus slots ({pools.qemu} for QEMU and {ports} root ports "
            f"at {ROOT_PORTS_PER_SLOT} per slot) but pcie.0 has {usable}; shrink a pool"
        )


def _free_root_slots(family: Family) -> list[int]:
    return [s for s in range(MAX_SLOT + 1) if s not in INTERNAL_SLOTS[family]]


def _pc_geometry(pools: PoolSizes) -> tuple[Slot, ...]:
    numbers = iter(_free_root_slots(Family.PC))
    bus = ROOT_BUS[Family.PC]
    return tuple(
        Slot(pool, i, PciAddr(bus, next(numbers)))
        for pool in POOL_ORDER
        for i in range(pools.size(pool))
    )


def _q35_geometry(pools: PoolSizes) -> tuple[Slot, ...]:
    numbers = _free_root_slots(Family.Q35)
    bus = ROOT_BUS[Family.Q35]
    slots = [Slot(PoolName.QEMU, i, PciAddr(bus, numbers[i])) for i in range(pools.qemu)]
    first_port_slot = pools.qemu
    hot_pools = [p for p in POOL_ORDER if p is not PoolName.QEMU]
    total = sum(pools.size(p) for p in hot_pools)
    k = 0
    for pool in hot_pools:
        for i in range(pools.size(pool)):
            root_slot = numbers[first_port_slot + k // ROOT_PORTS_PER_SLOT]
            function = k % ROOT_PORTS_PER_SLOT
            # Function 0 must announce the others, or the guest never scans them.
            multi = function == 0 and k + 1 < total
            port = RootPort(f"rp-{pool.value}{i}", PciAddr(bus, root_slot, function), k + 1, multi)
            slots.append(Slot(pool, i, PciAddr(port.id, 0), port))
            k += 1
    return tuple(slots)


def new_layout(family: Family | str, pools: PoolSizes | None = None) -> Layout:
    """An empty layout with its geometry fixed for the instance's life."""
    fam = parse_family(family)
    sizes = pools or DEFAULT_POOLS[fam]
    _check_sizes(fam, sizes)
    geometry = _pc_geometry(sizes) if fam is Family.PC else _q35_geometry(sizes)
    return Layout(fam, sizes, geometry, (), HOTPLUG_MODE[fam])


def parse_family(value: Family | str) -> Family:
    try:
        return Family(value)
    except ValueError:
        raise LayoutError(f"machine family {value!r}: use 'pc' (i440fx) or 'q35'") from None


# ---------------------------------------------------------------------------
# Placing and releasing
# ---------------------------------------------------------------------------


def reserved_ids(layout: Layout) -> frozenset[str]:
    """Ids Fleetboot gives to buses and root ports: devices cannot take them."""
    return frozenset({layout.root_bus, *(p.id for p in layout.root_ports)})


def held(layout: Layout, pool: PoolName) -> dict[int, Placement]:
    """Slot index -> placement for every held slot of ``pool`` (pending unplugs count)."""
    return {p.index: p for p in layout.placements if p.pool is pool and p.index is not None}


def free_slots(layout: Layout, pool: PoolName) -> list[Slot]:
    taken = held(layout, pool)
    return [s for s in layout.slots if s.pool is pool and s.index not in taken]


def _check_id(layout: Layout, request: DeviceRequest) -> None:
    if not _DEVICE_ID.fullmatch(request.device):
        raise LayoutError(
            f"device id {request.device!r}: start with a letter, then up to 31 letters, "
            "digits, '_', '.' or '-'"
        )
    if request.device in reserved_ids(layout):
        raise LayoutError(f"device id {request.device!r} names one of Fleetboot's buses")
    if layout.find(request.device) is not None:
        raise LayoutError(f"device id {request.device!r} is already in this VM's layout")
    if (request.device == SCSI_CONTROLLER_ID) != (request.kind is Kind.SCSI_CONTROLLER):
        raise LayoutError(f"device id {SCSI_CONTROLLER_ID!r} is kept for the SCSI controller")


def _pool_full(layout: Layout, pool: PoolName, kind: Kind) -> PoolFullError:
    taken = held(layout, pool)
    pending = sum(1 for p in taken.values() if p.state is State.UNPLUGGING)
    size = layout.pools.size(pool)
    waiting = f", {pending} of them waiting for the guest to finish an unplug" if pending else ""
    return PoolFullError(
        f"cannot place a {kind}: the {pool} pool is full ({len(taken)} of {size} slots held"
        f"{waiting}); unplug a device or create the VM with a larger --{pool}-pool"
    )


def _pick_slot(layout: Layout, pool: PoolName, kind: Kind) -> Slot:
    free = free_slots(layout, pool)
    if not free:
        raise _pool_full(layout, pool, kind)
    # Fleetboot's devices in QEMU's range fill it from the top: QEMU's own
    # auto-assignment goes bottom-up, so the two meet only when the range is full.
    return free[-1] if pool is PoolName.QEMU else free[0]


def _pinned_slot(layout: Layout, request: DeviceRequest) -> Slot:
    number = request.at_slot
    qemu = [s for s in layout.slots if s.pool is PoolName.QEMU]
    span = (
        f"0x{qemu[0].addr.slot:02x}-0x{qemu[-1].addr.slot:02x}" if qemu else "empty"
    )
    for s in layout.slots:
        if s.root_port is None and s.addr.slot == number and s.addr.function == 0:
            if s.pool is not PoolName.QEMU:
                raise LayoutError(
                    f"{request.device}: slot 0x{number:02x} belongs to Fleetboot's {s.pool} pool; "
                    f"extra devices may only use QEMU's range ({span}) or leave addr= out"
                )
            if s.index in held(layout, PoolName.QEMU):
                other = held(layout, PoolName.QEMU)[s.index].device
                raise LayoutError(
                    f"{request.device}: slot 0x{number:02x} is already held by {other}"
                )
            return s
    ports = {rp.addr.slot for rp in layout.root_ports}
    where = (
        "the machine's own devices" if number in INTERNAL_SLOTS[layout.family]
        else "Fleetboot's root ports" if number in ports else "outside QEMU's range"
    )
    raise LayoutError(
        f"{request.device}: slot {number!r} is {where}; extra devices may only use QEMU's "
        f"range ({span}) or leave addr= out"
    )


def _new_placement(layout: Layout, request: DeviceRequest) -> Placement:
    pool = KIND_POOL[request.kind]
    index: int | None = None
    target: int | None = None
    if pool is None:
        target = _pick_target(layout)
    elif request.at_slot is not None:
        if request.kind is not Kind.EXTRA:
            raise LayoutError(f"{request.device}: only extra devices can ask for a slot")
        index = _pinned_slot(layout, request).index
    else:
        index = _pick_slot(layout, pool, request.kind).index
    return Placement(request.device, request.kind, pool, index, request.state, target,
                     request.bootindex, request.romfile)


def _pick_target(layout: Layout) -> int:
    used = {p.scsi_target for p in layout.placements if p.scsi_target is not None}
    for target in range(SCSI_TARGETS):
        if target not in used:
            return target
    raise PoolFullError(f"the SCSI controller holds {SCSI_TARGETS} disks already; unplug one")


def add(layout: Layout, request: DeviceRequest) -> Layout:
    """Place one device (and the SCSI controller with the first SCSI disk)."""
    _check_id(layout, request)
    if request.kind is Kind.SCSI_DISK and layout.find(SCSI_CONTROLLER_ID) is None:
        layout = add(layout, DeviceRequest(SCSI_CONTROLLER_ID, Kind.SCSI_CONTROLLER,
                                           state=request.state))
    placement = _new_placement(layout, request)
    return replace(layout, placements=(*layout.placements, placement))


def add_all(layout: Layout, requests: Iterable[DeviceRequest]) -> Layout:
    for request in requests:
        layout = add(layout, request)
    return layout


def remove(layout: Layout, device: str) -> Layout:
    """Release a device's slot (call only once QEMU no longer has the device)."""
    target = layout.get(device)
    if target.kind is Kind.SCSI_CONTROLLER:
        disks = [p.device for p in layout.placements if p.kind is Kind.SCSI_DISK]
        if disks:
            raise LayoutError(
                f"the SCSI controller still holds {', '.join(disks)}; remove those first"
            )
    return replace(layout, placements=tuple(p for p in layout.placements if p.device != device))


def set_state(layout: Layout, device: str, state: State) -> Layout:
    layout.get(device)
    return replace(layout, placements=tuple(
        replace(p, state=state) if p.device == device else p for p in layout.placements
    ))


def set_boot(
    layout: Layout, boot: Mapping[str, int | None], roms: Mapping[str, str | None]
) -> Layout:
    """Replace bootindex/romfile of the named devices (ABI: only while stopped)."""
    for device in (*boot, *roms):
        layout.get(device)
    return replace(layout, placements=tuple(
        replace(p, bootindex=boot.get(p.device, p.bootindex), romfile=roms.get(p.device, p.romfile))
        for p in layout.placements
    ))


def nic_boot_attrs(is_boot: bool, custom_rom: str | None = None) -> tuple[int | None, str | None]:
    """(bootindex, romfile) of a NIC: per-NIC PXE control (seed 000).

    The designated boot NIC gets ``bootindex=1`` and its ROM (``custom_rom``,
    or None: QEMU's default for the model); every other NIC gets ``romfile=""``
    whatever its model, so no option ROM is loaded that could PXE-boot it.
    """
    if is_boot:
        return 1, custom_rom or None
    return None, ""


def pending(layout: Layout, state: State) -> list[Placement]:
    return [p for p in layout.placements if p.state is state]


def diff(old: Layout, new: Layout) -> LayoutDiff:
    before = {p.device: p for p in old.placements}
    after = {p.device: p for p in new.placements}
    return LayoutDiff(
        added=tuple(p for p in new.placements if p.device not in before),
        removed=tuple(p for p in old.placements if p.device not in after),
        changed=tuple(p for d, p in after.items() if d in before and before[d] != p),
    )


def check(layout: Layout) -> None:
    """Raise LayoutError unless every invariant holds (used after loading JSON)."""
    _check_sizes(layout.family, layout.pools)
    seen_slots: dict[tuple[PoolName, int], str] = {}
    seen_ids: set[str] = set()
    targets: set[int] = set()
    for p in layout.placements:
        if p.device in seen_ids:
            raise LayoutError(f"layout lists device {p.device!r} twice")
        seen_ids.add(p.device)
        if KIND_POOL[p.kind] is not p.pool:
            raise LayoutError(f"{p.device}: a {p.kind} cannot sit in the {p.pool} pool")
        if p.pool is not None and p.index is not None:
            layout.slot(p.pool, p.index)
            key = (p.pool, p.index)
            if key in seen_slots:
                raise LayoutError(f"{p.device} and {seen_slots[key]} share {p.pool} slot {p.index}")
            seen_slots[key] = p.device
        elif p.kind is not Kind.SCSI_DISK:
            raise LayoutError(f"{p.device}: a {p.kind} needs a slot")
        if p.scsi_target is not None:
            if p.scsi_target in targets:
                raise LayoutError(f"two SCSI disks share target {p.scsi_target}")
            targets.add(p.scsi_target)
    if targets and SCSI_CONTROLLER_ID not in seen_ids:
        raise LayoutError("layout has SCSI disks but no SCSI controller")


# ---------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------


def to_dict(layout: Layout) -> dict[str, Any]:
    return {
        "version": LAYOUT_VERSION,
        "family": layout.family.value,
        "hotplug": layout.hotplug,
        "pools": layout.pools.as_dict(),
        "slots": [_slot_dict(s) for s in layout.slots],
        "placements": [_placement_dict(p) for p in layout.placements],
    }


def _addr_dict(a: PciAddr) -> dict[str, Any]:
    return {"bus": a.bus, "slot": a.slot, "function": a.function}


def _slot_dict(s: Slot) -> dict[str, Any]:
    out: dict[str, Any] = {"pool": s.pool.value, "index": s.index, "addr": _addr_dict(s.addr)}
    if s.root_port is not None:
        rp = s.root_port
        out["root_port"] = {"id": rp.id, "addr": _addr_dict(rp.addr), "chassis": rp.chassis,
                            "multifunction": rp.multifunction}
    return out


def _placement_dict(p: Placement) -> dict[str, Any]:
    return {"device": p.device, "kind": p.kind.value,
            "pool": None if p.pool is None else p.pool.value, "index": p.index,
            "state": p.state.value, "scsi_target": p.scsi_target,
            "bootindex": p.bootindex, "romfile": p.romfile}


def to_json(layout: Layout) -> str:
    return json.dumps(to_dict(layout), sort_keys=True)


def from_json(text: str) -> Layout:
    try:
        data = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise LayoutError(f"stored layout is not JSON: {exc}") from None
    return from_dict(data)


def from_dict(data: Any) -> Layout:
    """Rebuild a stored layout; malformed data is a LayoutError, never a crash."""
    try:
        if data.get("version") != LAYOUT_VERSION:
            raise LayoutError(f"stored layout version {data.get('version')!r} is not "
                              f"{LAYOUT_VERSION}; this Fleetboot cannot read it")
        layout = Layout(
            family=Family(data["family"]),
            pools=PoolSizes(**{p.value: int(data["pools"][p.value]) for p in POOL_ORDER}),
            slots=tuple(_slot_from(s) for s in data["slots"]),
            placements=tuple(_placement_from(p) for p in data["placements"]),
            hotplug=str(data["hotplug"]),
        )
    except LayoutError:
        raise
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise LayoutError(f"stored layout is malformed ({type(exc).__name__}: {exc})") from None
    check(layout)
    return layout


def _addr_from(d: Mapping[str, Any]) -> PciAddr:
    return PciAddr(str(d["bus"]), int(d["slot"]), int(d["function"]))


def _slot_from(d: Mapping[str, Any]) -> Slot:
    rp = d.get("root_port")
    port = None if rp is None else RootPort(
        str(rp["id"]), _addr_from(rp["addr"]), int(rp["chassis"]), bool(rp["multifunction"])
    )
    return Slot(PoolName(d["pool"]), int(d["index"]), _addr_from(d["addr"]), port)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _placement_from(d: Mapping[str, Any]) -> Placement:
    return Placement(
        device=str(d["device"]), kind=Kind(d["kind"]),
        pool=None if d["pool"] is None else PoolName(d["pool"]), index=_opt_int(d["index"]),
        state=State(d["state"]), scsi_target=_opt_int(d.get("scsi_target")),
        bootindex=_opt_int(d.get("bootindex")),
        romfile=None if d.get("romfile") is None else str(d["romfile"]),
    )


# ---------------------------------------------------------------------------
# The slot map (seed 001's diagrams)
# ---------------------------------------------------------------------------

KIND_CHAR: Mapping[Kind, str] = {
    Kind.NIC: "N", Kind.DISK: "D", Kind.SCSI_CONTROLLER: "S", Kind.BALLOON: "B",
    Kind.RNG: "R", Kind.PASSTHROUGH: "P", Kind.EXTRA: "X", Kind.SCSI_DISK: "d",
}
FREE_CHAR: Mapping[PoolName, str] = {
    PoolName.QEMU: ".", PoolName.NIC: "_", PoolName.DISK: "_", PoolName.PASSTHROUGH: "_",
}
LEGEND = ("I machine, . QEMU's, N NIC, D disk, S SCSI controller, B balloon, R rng, "
          "X extra, P passthrough, _ free, ~ unplug pending, + plug pending; "
          "lower case: changed by the last operation")


def _char(p: Placement, changed: frozenset[str]) -> str:
    if p.state is State.UNPLUGGING:
        return "~"
    if p.state is State.PLUGGING:
        return "+"
    c = KIND_CHAR[p.kind]
    return c.lower() if p.device in changed else c


def pool_map(layout: Layout, pool: PoolName, changed: Iterable[str] = ()) -> str:
    marks = frozenset(changed)
    taken = held(layout, pool)
    return "".join(
        _char(taken[s.index], marks) if s.index in taken else FREE_CHAR[pool]
        for s in layout.slots if s.pool is pool
    )


def render(layout: Layout, changed: Iterable[str] = ()) -> str:
    """One character per slot, pools separated by spaces, like ``II ....RB NNn_____ DD__``."""
    marks = frozenset(changed)
    low = "I" * (1 if layout.family is Family.Q35 else len(INTERNAL_SLOTS[layout.family]))
    groups = [low, *(pool_map(layout, p, marks) for p in POOL_ORDER)]
    if layout.family is Family.Q35:
        groups.append("I")  # ICH9 at slot 0x1f, after the root ports
    return " ".join(g for g in groups if g)


@dataclass(frozen=True)
class SlotRow:
    """One line of ``fleetboot vm show``'s slot table."""

    pool: PoolName
    index: int
    address: str
    root_port: str
    device: str
    kind: str
    state: str
    hotpluggable: bool = field(default=True)


def slot_rows(layout: Layout) -> list[SlotRow]:
    rows = []
    for s in layout.slots:
        p = held(layout, s.pool).get(s.index)
        port = s.root_port
        rows.append(SlotRow(
            s.pool, s.index,
            str(port.addr) if port else str(s.addr),
            f"{port.id} (chassis {port.chassis})" if port else "",
            p.device if p else "", p.kind.value if p else "", p.state.value if p else "free",
            s.hotpluggable,
        ))
    return rows
