"""Reading QEMU's ``query-pci`` and comparing it with the stored layout (pure).

``query-pci`` lists the functions of each bus by bus *number*; the devices
behind a root port appear under that port's ``pci_bridge.devices``. The
secondary bus numbers come from the firmware: before it has run (``-S``),
every root port still says bus 0 and shows no devices. Such ports are
reported as unenumerated so the runtime can ask QOM where their devices sit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fleetboot.vm.errors import QemuError
from fleetboot.vm.planner import INTERNAL_SLOTS, Kind, Layout, PciAddr, PoolName, State


@dataclass(frozen=True)
class PciFunction:
    """One function seen on a guest PCI bus. ``bus`` is a QEMU bus name (pci.0, rp-nic0)."""

    bus: str
    slot: int
    function: int
    qdev_id: str
    vendor: int = 0
    device: int = 0
    desc: str = ""
    source: str = "query-pci"  # or "qom" for a device behind an unenumerated port

    @property
    def addr(self) -> PciAddr:
        return PciAddr(self.bus, self.slot, self.function)


@dataclass(frozen=True)
class PciView:
    functions: tuple[PciFunction, ...]
    unenumerated: frozenset[str] = frozenset()  # root ports whose secondary bus is still 0
    secondary: tuple[tuple[str, int], ...] = ()  # (bridge, secondary bus number)

    @property
    def settled(self) -> bool:
        """Every bridge has a bus number of its own (the firmware has finished numbering)."""
        numbers = [n for _, n in self.secondary]
        return not self.unenumerated and len(set(numbers)) == len(numbers)

    def by_id(self) -> dict[str, PciFunction]:
        return {f.qdev_id: f for f in self.functions if f.qdev_id}


def parse_query_pci(result: Any, root_bus: str) -> PciView:
    """Flatten ``query-pci``'s tree; a bridge's secondary bus is named after the bridge."""
    try:
        buses = list(result)
        functions: list[PciFunction] = []
        unenumerated: set[str] = set()
        secondary: list[tuple[str, int]] = []
        for bus in buses:
            _walk(bus["devices"], root_bus, functions, unenumerated, secondary)
    except (KeyError, TypeError) as exc:
        raise QemuError(f"query-pci returned an unexpected structure ({exc})") from None
    return PciView(tuple(functions), frozenset(unenumerated), tuple(secondary))


def _walk(devices: Sequence[Mapping[str, Any]], bus_name: str, out: list[PciFunction],
          unenumerated: set[str], secondary: list[tuple[str, int]]) -> None:
    for d in devices:
        qdev_id = str(d.get("qdev_id") or "")
        ids = d.get("id", {})
        out.append(PciFunction(bus_name, int(d["slot"]), int(d["function"]), qdev_id,
                               int(ids.get("vendor", 0)), int(ids.get("device", 0)),
                               str(d.get("class_info", {}).get("desc", ""))))
        bridge = d.get("pci_bridge")
        if bridge is None:
            continue
        number = int(bridge["bus"]["secondary"])
        child = qdev_id or f"bus{number}"
        secondary.append((child, number))
        if number == 0:
            unenumerated.add(child)
        _walk(bridge.get("devices", []), child, out, unenumerated, secondary)


@dataclass(frozen=True)
class DriftReport:
    missing: tuple[str, ...] = ()  # planned, active, and not on any bus
    moved: tuple[str, ...] = ()  # on a bus, at another address
    unexpected: tuple[str, ...] = ()  # named devices the plan does not know
    intruders: tuple[str, ...] = ()  # unnamed (QEMU-placed) functions in Fleetboot's slots
    notes: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not (self.missing or self.moved or self.unexpected or self.intruders)

    def lines(self) -> list[str]:
        return [*self.missing, *self.moved, *self.unexpected, *self.intruders]

    def __str__(self) -> str:
        return "matches the layout" if self.ok else "; ".join(self.lines())


def expected(layout: Layout) -> dict[str, tuple[PciAddr, State]]:
    """Every PCI function the layout puts on a bus: root ports and placed devices."""
    out: dict[str, tuple[PciAddr, State]] = {
        rp.id: (rp.addr, State.ACTIVE) for rp in layout.root_ports
    }
    for p in layout.placements:
        slot = layout.slot_of(p)
        if slot is not None:
            out[p.device] = (slot.addr, p.state)
    return out


def _owned_addresses(layout: Layout) -> dict[PciAddr, str]:
    """Addresses in Fleetboot's pools, for naming an intruder's position."""
    owned: dict[PciAddr, str] = {}
    for s in layout.slots:
        if s.pool is not PoolName.QEMU:
            owned[s.addr] = f"{s.pool} slot {s.index}"
        if s.root_port is not None:
            owned[s.root_port.addr] = f"root port {s.root_port.id}"
    return owned


def compare(layout: Layout, view: PciView, ignore: Iterable[str] = ()) -> DriftReport:
    """Drift between the plan and what QEMU shows (pending plugs/unplugs may go either way)."""
    want = expected(layout)
    seen = view.by_id()
    skip = set(ignore)
    missing, moved = [], []
    for device, (addr, state) in sorted(want.items()):
        got = seen.get(device)
        if got is None:
            if state is State.ACTIVE and device not in skip:
                missing.append(f"{device} should be at {addr} but QEMU does not show it")
        elif got.addr != addr:
            moved.append(f"{device} should be at {addr} but QEMU shows it at {got.addr}")
    known = set(want) | {p.device for p in layout.placements if p.kind is Kind.SCSI_DISK}
    unexpected = [f"{f.qdev_id} at {f.addr} is not in the layout"
                  for f in view.functions if f.qdev_id and f.qdev_id not in known | skip]
    owned = _owned_addresses(layout)
    internal = set(INTERNAL_SLOTS[layout.family])
    intruders = [
        f"QEMU put an unnamed {f.desc or 'device'} at {f.addr}, in {owned[f.addr]}"
        for f in view.functions
        if not f.qdev_id and f.addr in owned and f.slot not in internal
    ]
    notes = tuple(f"{port} not enumerated by the firmware yet"
                  for port in sorted(view.unenumerated))
    return DriftReport(tuple(missing), tuple(moved), tuple(unexpected), tuple(intruders), notes)
