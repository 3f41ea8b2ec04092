"""The PCI layout planner: pools, stability for life, the seed's sequence, JSON, errors."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetboot.vm import planner as P
from fleetboot.vm.errors import LayoutError, PoolFullError
from fleetboot.vm.planner import DeviceRequest, Family, Kind, PoolName, PoolSizes, State


def _add(layout: P.Layout, device: str, kind: Kind, **kw: object) -> P.Layout:
    return P.add(layout, DeviceRequest(device, kind, **kw))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------


def test_pc_pools_are_consecutive_slots_of_pci0() -> None:
    layout = P.new_layout("pc", PoolSizes(qemu=6, nic=8, disk=12, passthrough=4))
    slots = {pool: [s.addr.slot for s in layout.slots if s.pool is pool] for pool in PoolName}
    assert slots[PoolName.QEMU] == list(range(2, 8))
    assert slots[PoolName.NIC] == list(range(8, 16))
    assert slots[PoolName.DISK] == list(range(16, 28))
    assert slots[PoolName.PASSTHROUGH] == list(range(28, 32))
    assert all(s.addr.bus == "pci.0" and s.root_port is None for s in layout.slots)
    assert layout.hotplug == "acpi"


def test_q35_hot_pools_are_root_ports_packed_eight_per_slot() -> None:
    layout = P.new_layout("q35", PoolSizes(qemu=4, nic=3, disk=6, passthrough=0))
    ports = layout.root_ports
    assert len(ports) == 9
    assert [p.addr for p in ports[:8]] == [P.PciAddr("pcie.0", 5, f) for f in range(8)]
    assert ports[8].addr == P.PciAddr("pcie.0", 6, 0)
    assert len({p.chassis for p in ports}) == 9  # unique chassis/slot numbers
    # Function 0 announces the other functions of its slot; a lone port does not.
    assert ports[0].multifunction and not ports[1].multifunction
    assert not ports[8].multifunction
    nic0 = layout.slot(PoolName.NIC, 0)
    assert nic0.addr == P.PciAddr("rp-nic0", 0) and nic0.hotpluggable
    assert not layout.slot(PoolName.QEMU, 0).hotpluggable  # q35 root bus: no hotplug


def test_pools_that_do_not_fit_are_refused() -> None:
    with pytest.raises(LayoutError, match=r"pci\.0 has 30 free"):
        P.new_layout("pc", PoolSizes(qemu=8, nic=8, disk=16, passthrough=0))
    with pytest.raises(LayoutError, match="root-bus slots"):
        P.new_layout("q35", PoolSizes(qemu=20, nic=40, disk=40, passthrough=8))
    with pytest.raises(LayoutError, match="0 or more"):
        P.new_layout("q35", PoolSizes(qemu=1, nic=-1, disk=1, passthrough=0))
    with pytest.raises(LayoutError, match=r"'pc' .* or 'q35'"):
        P.new_layout("virt")


# ---------------------------------------------------------------------------
# The seed's sequence (001): add NIC, add disk, remove NIC, add disk
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["pc", "q35"])
def test_seed_sequence_puts_new_disk_in_disk_pool(family: str) -> None:
    layout = P.new_layout(family)
    layout = _add(_add(layout, "net0", Kind.NIC), "disk0", Kind.DISK)
    start = {p.device: layout.address_of(p.device) for p in layout.placements}
    layout = _add(layout, "net1", Kind.NIC)  # 1. hotplug a NIC
    layout = _add(layout, "disk1", Kind.DISK)  # 2. hotplug a disk
    disk1 = layout.address_of("disk1")
    layout = P.remove(layout, "net1")  # 3. remove the NIC: a hole in the NIC pool
    layout = _add(layout, "disk2", Kind.DISK)  # 4. the new disk
    assert layout.get("disk2").pool is PoolName.DISK
    assert layout.get("disk2").index == 2  # after disk1, not in net1's hole
    assert layout.address_of("disk1") == disk1
    for device, addr in start.items():
        assert layout.address_of(device) == addr
    text = P.render(layout, ["disk2"])
    nic_group, disk_group = text.split()[2], text.split()[3]
    assert nic_group.startswith("N_") and disk_group.startswith("DDd_")


def test_render_matches_the_seed_style() -> None:
    layout = P.new_layout("pc", PoolSizes(qemu=3, nic=4, disk=4, passthrough=0))
    layout = _add(layout, "balloon0", Kind.BALLOON)
    layout = _add(_add(layout, "net0", Kind.NIC), "disk0", Kind.DISK)
    layout = _add(layout, "net1", Kind.NIC)
    assert P.render(layout, ["net1"]) == "II ..B Nn__ D___"
    layout = P.set_state(layout, "net0", State.UNPLUGGING)
    assert P.render(layout) == "II ..B ~N__ D___"
    q35 = _add(P.new_layout("q35", PoolSizes(qemu=2, nic=2, disk=2, passthrough=1)),
               "disk0", Kind.SCSI_DISK)
    assert P.render(q35) == "I .. __ S_ _ I"


# ---------------------------------------------------------------------------
# QEMU's range, extra devices, SCSI, errors
# ---------------------------------------------------------------------------


def test_fleetboot_devices_fill_qemu_range_from_the_top() -> None:
    layout = P.new_layout("pc", PoolSizes(qemu=4, nic=1, disk=1, passthrough=0))
    layout = _add(_add(layout, "balloon0", Kind.BALLOON), "rng0", Kind.RNG)
    assert [layout.address_of(d).slot for d in ("balloon0", "rng0")] == [5, 4]  # type: ignore[union-attr]
    assert P.pool_map(layout, PoolName.QEMU) == "..RB"


def test_extra_device_pinned_inside_qemu_range() -> None:
    layout = P.new_layout("pc", PoolSizes(qemu=4, nic=2, disk=2, passthrough=0))
    layout = _add(layout, "extra0", Kind.EXTRA, at_slot=3)
    assert layout.address_of("extra0") == P.PciAddr("pci.0", 3)
    with pytest.raises(LayoutError, match="already held by extra0"):
        _add(layout, "extra1", Kind.EXTRA, at_slot=3)
    with pytest.raises(LayoutError, match="nic pool"):
        _add(layout, "extra1", Kind.EXTRA, at_slot=6)
    with pytest.raises(LayoutError, match="machine's own devices"):
        _add(layout, "extra1", Kind.EXTRA, at_slot=1)
    with pytest.raises(LayoutError, match="outside QEMU's range"):
        _add(layout, "extra1", Kind.EXTRA, at_slot=20)
    with pytest.raises(LayoutError, match="only extra devices"):
        _add(layout, "net0", Kind.NIC, at_slot=2)


def test_q35_extra_device_cannot_take_a_root_port_slot() -> None:
    layout = P.new_layout("q35", PoolSizes(qemu=2, nic=2, disk=2, passthrough=0))
    with pytest.raises(LayoutError, match="root ports"):
        _add(layout, "extra0", Kind.EXTRA, at_slot=3)


def test_full_pool_is_a_clear_error() -> None:
    layout = P.new_layout("q35", PoolSizes(qemu=1, nic=2, disk=1, passthrough=0))
    layout = _add(_add(layout, "net0", Kind.NIC), "net1", Kind.NIC)
    layout = P.set_state(layout, "net1", State.UNPLUGGING)
    with pytest.raises(PoolFullError, match=r"nic pool is full \(2 of 2 slots held, 1 of them "
                                            r"waiting .*--nic-pool"):
        _add(layout, "net2", Kind.NIC)
    with pytest.raises(PoolFullError, match="qemu pool"):
        _add(_add(layout, "balloon0", Kind.BALLOON), "rng0", Kind.RNG)


def test_scsi_disks_share_one_controller_in_the_disk_pool() -> None:
    layout = P.new_layout("q35")
    layout = _add(layout, "disk0", Kind.SCSI_DISK)
    layout = _add(layout, "disk1", Kind.SCSI_DISK)
    layout = _add(layout, "disk2", Kind.DISK)
    assert layout.get(P.SCSI_CONTROLLER_ID).pool is PoolName.DISK
    assert layout.get(P.SCSI_CONTROLLER_ID).index == 0
    assert [layout.get(d).scsi_target for d in ("disk0", "disk1")] == [0, 1]
    assert layout.address_of("disk0") is None
    assert layout.get("disk2").index == 1
    with pytest.raises(LayoutError, match="still holds disk0, disk1"):
        P.remove(layout, P.SCSI_CONTROLLER_ID)
    layout = P.remove(layout, "disk0")
    assert _add(layout, "disk3", Kind.SCSI_DISK).get("disk3").scsi_target == 0  # hole reused
    layout = P.remove(layout, "disk1")
    assert P.remove(layout, P.SCSI_CONTROLLER_ID).find(P.SCSI_CONTROLLER_ID) is None


def test_bad_ids_are_refused() -> None:
    layout = _add(P.new_layout("q35"), "net0", Kind.NIC)
    for bad, message in [("net0", "already"), ("rp-nic0", "buses"), ("0net", "start with"),
                         ("pcie.0", "buses"), ("scsi0", "SCSI controller"), ("a" * 40, "31")]:
        with pytest.raises(LayoutError, match=message):
            _add(layout, bad, Kind.NIC)
    with pytest.raises(LayoutError, match="no device 'nope'"):
        P.remove(layout, "nope")


def test_nic_boot_attrs_disable_every_other_rom() -> None:
    assert P.nic_boot_attrs(True) == (1, None)
    assert P.nic_boot_attrs(True, "/roms/custom.rom") == (1, "/roms/custom.rom")
    assert P.nic_boot_attrs(False) == (None, "")


def test_json_round_trip_and_malformed_input() -> None:
    layout = P.new_layout("q35")
    layout = _add(_add(layout, "net0", Kind.NIC, bootindex=1), "disk0", Kind.SCSI_DISK)
    layout = _add(layout, "net1", Kind.NIC, romfile="")
    assert P.from_json(P.to_json(layout)) == layout
    data = P.to_dict(layout)
    for broken, message in [
        ("{", "not JSON"),
        (json.dumps({**data, "version": 9}), "version 9"),
        (json.dumps({**data, "family": "arm"}), "malformed"),
        (json.dumps({k: v for k, v in data.items() if k != "slots"}), "malformed"),
        (json.dumps({**data, "placements": [data["placements"][0]] * 2}), "twice"),
        (json.dumps(["a"]), "malformed"),
    ]:
        with pytest.raises(LayoutError, match=message):
            P.from_json(broken)


def test_stored_geometry_wins_over_recomputed_geometry() -> None:
    """A stored layout keeps its addresses even if the defaults change later."""
    data = P.to_dict(_add(P.new_layout("pc"), "net0", Kind.NIC))
    for s in data["slots"]:
        if s["pool"] == "nic" and s["index"] == 0:
            s["addr"]["slot"] = 30  # as if an older planner had put the NIC pool elsewhere
    assert P.from_dict(data).address_of("net0") == P.PciAddr("pci.0", 30)


# ---------------------------------------------------------------------------
# Properties: random sequences of adds and removes
# ---------------------------------------------------------------------------

KINDS = [Kind.NIC, Kind.DISK, Kind.SCSI_DISK, Kind.PASSTHROUGH, Kind.BALLOON, Kind.EXTRA]
ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.sampled_from(KINDS), st.none()),
        st.tuples(st.just("remove"), st.none(), st.integers(0, 1000)),
        st.tuples(st.just("pend"), st.none(), st.integers(0, 1000)),
    ),
    max_size=60,
)
sizes = st.builds(PoolSizes, qemu=st.integers(0, 4), nic=st.integers(0, 5),
                  disk=st.integers(0, 5), passthrough=st.integers(0, 3))


def _apply(layout: P.Layout, op: tuple[str, Kind | None, int | None], n: int) -> P.Layout:
    action, kind, pick = op
    if action == "add":
        assert kind is not None
        return P.add(layout, DeviceRequest(f"d{n}", kind))
    removable = [p.device for p in layout.placements
                 if not (p.kind is Kind.SCSI_CONTROLLER
                         and any(q.kind is Kind.SCSI_DISK for q in layout.placements))]
    if not removable:
        return layout
    device = removable[(pick or 0) % len(removable)]
    if action == "pend":
        return P.set_state(layout, device, State.UNPLUGGING)
    return P.remove(layout, device)


@settings(max_examples=300, deadline=None)
@given(family=st.sampled_from(list(Family)), pools=sizes, steps=ops)
def test_random_sequences_never_move_or_double_book(
    family: Family, pools: PoolSizes, steps: list[tuple[str, Kind | None, int | None]]
) -> None:
    layout = P.new_layout(family, pools)
    for n, op in enumerate(steps):
        before = {p.device: (p.pool, p.index, p.scsi_target) for p in layout.placements}
        try:
            after_layout = _apply(layout, op, n)
        except PoolFullError:
            # Refused only when the pool really is full.
            kind = op[1]
            assert kind is not None
            pool = P.KIND_POOL[kind]
            if kind is Kind.SCSI_DISK and layout.find(P.SCSI_CONTROLLER_ID) is None:
                pool = PoolName.DISK
            assert pool is not None
            assert not P.free_slots(layout, pool)
            continue
        P.check(after_layout)
        after = {p.device: (p.pool, p.index, p.scsi_target) for p in after_layout.placements}
        # Nothing that stayed has moved.
        for device, where in before.items():
            if device in after:
                assert after[device] == where
        # No slot is booked twice, every device sits in its kind's pool.
        held = [(p.pool, p.index) for p in after_layout.placements if p.pool is not None]
        assert len(held) == len(set(held))
        for p in after_layout.placements:
            assert p.pool is P.KIND_POOL[p.kind]
            if p.index is not None and p.pool is not None:
                assert 0 <= p.index < pools.size(p.pool)
        assert P.from_json(P.to_json(after_layout)) == after_layout
        layout = after_layout


@settings(max_examples=100, deadline=None)
@given(family=st.sampled_from(list(Family)), pools=sizes)
def test_geometry_addresses_are_unique_and_deterministic(family: Family, pools: PoolSizes) -> None:
    try:
        layout = P.new_layout(family, pools)
    except LayoutError:
        return
    assert layout == P.new_layout(family, pools)
    addrs = [s.addr for s in layout.slots] + [rp.addr for rp in layout.root_ports]
    assert len(addrs) == len(set(addrs))
    internal = set(P.INTERNAL_SLOTS[family])
    root = [a for a in addrs if a.bus == layout.root_bus]
    assert all(a.slot not in internal and 0 <= a.slot <= P.MAX_SLOT for a in root)
    text = P.render(layout)
    assert text.count("_") + text.count(".") == sum(pools.size(p) for p in PoolName)
