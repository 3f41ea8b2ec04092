"""The per-host planner against a brute-force oracle, and its explanations (pure)."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from fleetboot.passthrough.flavors import DeviceRequest
from fleetboot.passthrough.placement import (
    HOSTDEV,
    NETWORK_HOSTDEV,
    NETWORK_PASSTHROUGH,
    USABLE,
    Candidate,
    Placement,
    Slot,
    attach_kind,
    choose_host,
    explain,
    place,
    slots_for,
)

FLAVORS = ("a", "b", "c")


@st.composite
def hosts(draw: st.DrawFn) -> list[Candidate]:
    """Up to 3 PFs with up to 3 VFs each, plus plain devices; random flavors and states."""
    cands: list[Candidate] = []
    ident = itertools.count()

    def flavors() -> frozenset[str]:
        return frozenset(draw(st.sets(st.sampled_from(FLAVORS), max_size=3)))

    def status() -> str:
        return draw(st.sampled_from([USABLE, USABLE, USABLE, "claimed"]))

    for pf in range(draw(st.integers(0, 3))):
        pf_addr = f"0000:{pf + 1:02x}:00.0"
        numa = draw(st.sampled_from([0, 1, None]))
        cands.append(Candidate(next(ident), pf_addr, flavors(), numa_node=numa, is_pf=True,
                               status=status()))
        for vf in range(draw(st.integers(0, 3))):
            cands.append(Candidate(next(ident), f"0000:{pf + 1:02x}:02.{vf}", flavors(),
                                   numa_node=numa, pf_address=pf_addr, status=status()))
    for dev in range(draw(st.integers(0, 4))):
        cands.append(Candidate(next(ident), f"0000:80:{dev:02x}.0", flavors(),
                               numa_node=draw(st.sampled_from([0, 1])), status=status()))
    return cands


requests = st.lists(
    st.builds(DeviceRequest, st.integers(1, 2),
              st.lists(st.sampled_from(FLAVORS), min_size=1, max_size=2, unique=True).map(tuple)),
    min_size=1, max_size=3)


def valid(cands: list[Candidate], slots: list[Slot], chosen: dict[int, Candidate]) -> bool:
    ids = [c.id for c in chosen.values()]
    addresses = {c.address for c in chosen.values()}
    return (
        set(chosen) == {s.index for s in slots}
        and len(ids) == len(set(ids))
        and all(c.status == USABLE for c in chosen.values())
        and all(s.accepts(chosen[s.index]) for s in slots)
        and not any(c.pf_address in addresses for c in chosen.values())
    )


def brute_force(cands: list[Candidate], slots: list[Slot]) -> bool:
    usable = [c for c in cands if c.status == USABLE]
    for combo in itertools.permutations(usable, len(slots)):
        if valid(cands, slots, {s.index: c for s, c in zip(slots, combo, strict=True)}):
            return True
    return False


@settings(max_examples=300, deadline=None)
@given(cands=hosts(), reqs=requests)
def test_planner_agrees_with_brute_force(cands: list[Candidate],
                                         reqs: list[DeviceRequest]) -> None:
    slots = slots_for(reqs)
    found = place(cands, slots)
    if found is None:
        assert not brute_force(cands, slots)
        assert explain(cands, slots)
    else:
        assert valid(cands, slots, dict(found.assignment))


@settings(max_examples=200, deadline=None)
@given(cands=hosts(), reqs=requests, numa=st.sampled_from([0, 1]))
def test_numa_alignment_is_found_when_possible(cands: list[Candidate],
                                               reqs: list[DeviceRequest], numa: int) -> None:
    slots = slots_for(reqs)
    found = place(cands, slots, numa)
    if found is None:
        return
    on_node = [c for c in cands if c.numa_node == numa]
    if place(on_node, slots) is not None:
        assert found.numa_nodes == {numa}  # the preferred node wins when it can
    for node in (0, 1):
        if place([c for c in cands if c.numa_node == node], slots) is not None:
            assert found.numa_aligned


def _nic(ident: int, address: str, flavors: set[str], **kw: object) -> Candidate:
    return Candidate(ident, address, frozenset(flavors), **kw)  # type: ignore[arg-type]


def test_overlapping_flavors_are_matched_not_greedy() -> None:
    # d1 matches both flavors, d2 only "a": a greedy pick of d1 for "a" starves "b".
    cands = [_nic(1, "0000:01:00.0", {"a", "b"}), _nic(2, "0000:02:00.0", {"a", "c", "d"})]
    found = place(cands, slots_for([DeviceRequest(1, ("a",)), DeviceRequest(1, ("b",))]))
    assert found is not None
    assert {s: c.id for s, c in found.assignment.items()} == {0: 2, 1: 1}


def test_vfs_are_spent_before_their_pf() -> None:
    cands = [_nic(1, "0000:01:00.0", {"nic"}, is_pf=True),
             _nic(2, "0000:01:02.0", {"nic"}, pf_address="0000:01:00.0"),
             _nic(3, "0000:01:02.1", {"nic"}, pf_address="0000:01:00.0")]
    found = place(cands, slots_for([DeviceRequest(2, ("nic",))]))
    assert found is not None and {c.id for c in found.assignment.values()} == {2, 3}
    # Three devices from one PF group is impossible: the PF excludes its VFs.
    assert place(cands, slots_for([DeviceRequest(3, ("nic",))])) is None


def test_pf_and_vf_flavors_exclude_each_other() -> None:
    cands = [_nic(1, "0000:01:00.0", {"whole"}, is_pf=True),
             _nic(2, "0000:01:02.0", {"vf"}, pf_address="0000:01:00.0")]
    assert place(cands, slots_for([DeviceRequest(1, ("whole",))])) is not None
    assert place(cands, slots_for([DeviceRequest(1, ("vf",))])) is not None
    both = slots_for([DeviceRequest(1, ("whole",)), DeviceRequest(1, ("vf",))])
    assert place(cands, both) is None
    assert "compete" in explain(cands, both)[0]


def test_numa_preference() -> None:
    cands = [_nic(1, "0000:01:00.0", {"g"}, numa_node=0), _nic(2, "0000:81:00.0", {"g"},
                                                                numa_node=1),
             _nic(3, "0000:82:00.0", {"g"}, numa_node=1)]
    two = slots_for([DeviceRequest(2, ("g",))])
    found = place(cands, two)
    assert found is not None and found.numa_nodes == {1}
    one = slots_for([DeviceRequest(1, ("g",))])
    for node in (0, 1):
        found = place(cands, one, numa_node=node)
        assert found is not None and found.numa_nodes == {node}
    found = place(cands, slots_for([DeviceRequest(3, ("g",))]))
    assert found is not None and not found.numa_aligned


def test_explanations_say_what_is_missing() -> None:
    cands = [_nic(1, "0000:01:00.0", {"gpu"}), _nic(2, "0000:02:00.0", {"gpu"}, status="claimed"),
             _nic(3, "0000:03:00.0", {"gpu"}, status="absent")]
    reasons = explain(cands, slots_for([DeviceRequest(2, ("gpu",)), DeviceRequest(1, ("fpga",))]))
    assert reasons == [
        "fpga: needs 1, no device here matches",
        "gpu: needs 2, 1 usable of 3 matching (1 absent, 1 claimed)",
    ]


def test_kind_constraint() -> None:
    cands = [_nic(1, "0000:01:00.0", {"n"}, kind=NETWORK_PASSTHROUGH),
             _nic(2, "0000:02:02.0", {"n"}, kind=NETWORK_HOSTDEV)]
    found = place(cands, [Slot(0, ("n",), NETWORK_HOSTDEV)])
    assert found is not None and found.assignment[0].id == 2


def test_choose_host_prefers_aligned_then_name() -> None:
    split = [_nic(1, "0000:01:00.0", {"g"}, numa_node=0), _nic(2, "0000:81:00.0", {"g"},
                                                               numa_node=1)]
    aligned = [_nic(3, "0000:01:00.0", {"g"}, numa_node=1), _nic(4, "0000:02:00.0", {"g"},
                                                                 numa_node=1)]
    fits, refusals = choose_host({"a": split, "b": aligned, "c": []},
                                 slots_for([DeviceRequest(2, ("g",))]))
    assert [f.host for f in fits] == ["b", "a"]
    assert refusals == {"c": ["g: needs 2, no device here matches"]}


def test_empty_request_places_trivially() -> None:
    assert place([], []) == Placement({})


def test_attach_kind() -> None:
    assert attach_kind("vf", "020000", []) == NETWORK_HOSTDEV
    assert attach_kind("vf", "020000", ["eth3"]) == NETWORK_HOSTDEV
    assert attach_kind("pf", "020000", ["ens1f0"]) == NETWORK_PASSTHROUGH
    assert attach_kind("pci", "020000", []) == HOSTDEV  # a NIC bound to vfio-pci
    assert attach_kind("pci", "030200", []) == HOSTDEV
    assert attach_kind("vf", "120000", []) == HOSTDEV  # an accelerator VF
