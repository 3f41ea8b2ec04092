"""Choosing devices for an instance's requests (pure: candidates in, a placement out).

The problem per host is a bipartite matching (request slots x usable devices,
an edge where a device matches every flavor of the slot) with one extra rule:
an SR-IOV PF and its own VFs exclude each other. Groups where both the PF and
some of its VFs could serve are "contested"; we enumerate which side each
contested group gives (VFs first, so whole PFs are spent last) and run an
augmenting-path matching for each choice. Overlapping flavors need no special
case: a device is one vertex however many flavors it matches.

NUMA affinity is a preference: every single NUMA node is tried before mixing.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from fleetboot.passthrough.flavors import DeviceRequest

HOSTDEV = "hostdev"  # <hostdev> in the domain; vfio-pci
NETWORK_HOSTDEV = "network-hostdev"  # SR-IOV VF through a <forward mode='hostdev'> network
NETWORK_PASSTHROUGH = "network-passthrough"  # a netdev through macvtap <forward mode='passthrough'>
KINDS = (HOSTDEV, NETWORK_HOSTDEV, NETWORK_PASSTHROUGH)

USABLE = "usable"
# Enumerating contested SR-IOV groups is exponential; past this many tries we give up.
MAX_SRIOV_CHOICES = 512


def attach_kind(device_type: str, class_code: str, netdevs: Sequence[str]) -> str:
    """How a device reaches a guest.

    Network controllers (class 02) go through a per-port libvirt network, so the
    domain XML names only the network and survives migration: a VF by hostdev
    forwarding (libvirt sets its MAC through the PF), any other NIC with a
    kernel interface by macvtap passthrough. Everything else is a plain hostdev.
    """
    if class_code.startswith("02"):
        if device_type == "vf":
            return NETWORK_HOSTDEV
        if netdevs:
            return NETWORK_PASSTHROUGH
    return HOSTDEV


def is_vfio(kind: str) -> bool:
    """Whether the device is handed to the guest by vfio-pci (macvtap is not)."""
    return kind in (HOSTDEV, NETWORK_HOSTDEV)


@dataclass(frozen=True)
class Candidate:
    """A device as the planner sees it. ``status`` is ``usable`` or why it is not."""

    id: int
    address: str
    flavors: frozenset[str]
    kind: str = HOSTDEV
    numa_node: int | None = None
    pf_address: str | None = None  # set for VFs
    is_pf: bool = False
    status: str = USABLE


@dataclass(frozen=True)
class Slot:
    """One device wanted: it must match all ``flavors`` (and have ``kind``, if given)."""

    index: int
    flavors: tuple[str, ...]
    kind: str | None = None

    def accepts(self, cand: Candidate) -> bool:
        return set(self.flavors) <= cand.flavors and (self.kind is None or cand.kind == self.kind)

    def label(self) -> str:
        base = "+".join(self.flavors)
        return f"{base} ({self.kind})" if self.kind else base


def slots_for(requests: Sequence[DeviceRequest], start: int = 0) -> list[Slot]:
    """Expand ``2 x a, 1 x b`` into slots numbered from ``start``."""
    flat = [r.flavors for r in requests for _ in range(r.count)]
    return [Slot(start + i, names) for i, names in enumerate(flat)]


@dataclass(frozen=True)
class Placement:
    assignment: Mapping[int, Candidate]  # slot index -> device

    @property
    def numa_nodes(self) -> frozenset[int | None]:
        return frozenset(c.numa_node for c in self.assignment.values())

    @property
    def numa_aligned(self) -> bool:
        return len({n for n in self.numa_nodes if n is not None}) <= 1


# ---------------------------------------------------------------- one host


def place(
    candidates: Sequence[Candidate], slots: Sequence[Slot], numa_node: int | None = None
) -> Placement | None:
    """The best placement of ``slots`` on these devices, or None if there is none.

    Tries the preferred NUMA node, then every other single node, then all devices.
    """
    if not slots:
        return Placement({})
    usable = sorted((c for c in candidates if c.status == USABLE), key=_preference)
    useful = [c for c in usable if any(s.accepts(c) for s in slots)]
    for subset in _numa_subsets(useful, numa_node):
        found = _match_with_sriov(subset, slots)
        if found is not None:
            return Placement(found)
    return None


def _preference(c: Candidate) -> tuple[bool, int, str]:
    # Spend plain devices before whole PFs, and versatile devices (many flavors) last.
    return (c.is_pf, len(c.flavors), c.address)


def _numa_subsets(useful: list[Candidate], preferred: int | None) -> Iterator[list[Candidate]]:
    nodes = sorted({c.numa_node for c in useful if c.numa_node is not None})
    if preferred in nodes:
        nodes.remove(preferred)
        nodes.insert(0, preferred)
    for node in nodes:
        yield [c for c in useful if c.numa_node == node]
    yield useful


def _match_with_sriov(cands: list[Candidate], slots: Sequence[Slot]) -> dict[int, Candidate] | None:
    contested = _contested_groups(cands)
    for pf_side in itertools.islice(_choices(contested), MAX_SRIOV_CHOICES):
        allowed = [c for c in cands if _allowed(c, pf_side, contested)]
        found = _bipartite(slots, allowed)
        if found is not None:
            return found
    return None


def _contested_groups(cands: list[Candidate]) -> list[str]:
    pfs = {c.address for c in cands if c.is_pf}
    return sorted(pfs & {c.pf_address for c in cands if c.pf_address})


def _choices(contested: list[str]) -> Iterator[frozenset[str]]:
    """Sets of contested PFs given whole (their VFs withheld), smallest first."""
    for size in range(len(contested) + 1):
        for combo in itertools.combinations(contested, size):
            yield frozenset(combo)


def _allowed(c: Candidate, pf_side: frozenset[str], contested: list[str]) -> bool:
    if c.pf_address is not None and c.pf_address in pf_side:
        return False
    return not (c.is_pf and c.address in contested and c.address not in pf_side)


def _bipartite(slots: Sequence[Slot], cands: list[Candidate]) -> dict[int, Candidate] | None:
    """Kuhn's augmenting paths: a device for every slot, or None."""
    options = {s.index: [c for c in cands if s.accepts(c)] for s in slots}
    owner: dict[int, int] = {}  # device id -> slot index
    by_id = {c.id: c for c in cands}

    def augment(slot: int, seen: set[int]) -> bool:
        # A free device first (keeps the preference order), else re-route an owner.
        for cand in options[slot]:
            if cand.id not in owner:
                owner[cand.id] = slot
                return True
        for cand in options[slot]:
            if cand.id in seen:
                continue
            seen.add(cand.id)
            if augment(owner[cand.id], seen):
                owner[cand.id] = slot
                return True
        return False

    for slot in slots:
        if not augment(slot.index, set()):
            return None
    return {slot: by_id[dev] for dev, slot in sorted(owner.items(), key=lambda kv: kv[1])}


# ---------------------------------------------------------------- explanations


def explain(candidates: Sequence[Candidate], slots: Sequence[Slot]) -> list[str]:
    """Why ``slots`` do not fit: per requested flavor, what is missing and where it went."""
    needs = Counter((s.flavors, s.kind) for s in slots)
    reasons = []
    for (flavors, kind), count in sorted(needs.items(), key=lambda kv: kv[0][0]):
        probe = Slot(-1, flavors, kind)
        matching = [c for c in candidates if probe.accepts(c)]
        usable = sum(1 for c in matching if c.status == USABLE)
        if usable >= count:
            continue
        if not matching:
            reasons.append(f"{probe.label()}: needs {count}, no device here matches")
            continue
        busy = Counter(c.status for c in matching if c.status != USABLE)
        detail = ", ".join(f"{n} {status}" for status, n in sorted(busy.items()))
        reasons.append(f"{probe.label()}: needs {count}, {usable} usable of {len(matching)} "
                       f"matching" + (f" ({detail})" if detail else ""))
    if not reasons:
        reasons.append("each request alone fits, but not all together: they compete for the "
                       "same devices (a device matching several flavors serves one request; "
                       "a PF and its VFs exclude each other)")
    return reasons


# ---------------------------------------------------------------- many hosts


@dataclass(frozen=True)
class HostChoice:
    host: str
    placement: Placement


def choose_host(
    hosts: Mapping[str, Sequence[Candidate]], slots: Sequence[Slot], numa_node: int | None = None
) -> tuple[list[HostChoice], dict[str, list[str]]]:
    """Every host that fits (best first: NUMA-aligned, then by name) and why the others don't."""
    fits: list[HostChoice] = []
    refusals: dict[str, list[str]] = {}
    for name in sorted(hosts):
        found = place(hosts[name], slots, numa_node)
        if found is None:
            refusals[name] = explain(hosts[name], slots)
        else:
            fits.append(HostChoice(name, found))
    fits.sort(key=lambda h: (not h.placement.numa_aligned, h.host))
    return fits, refusals
