"""The pure parts of fleetboot.lab.boots: machine fleets, the inventory they need, and how
a boot run folds the server's node states into per-VM progress."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetboot.inventory import yamlio
from fleetboot.inventory.db import Database
from fleetboot.inventory.models import Node
from fleetboot.lab import boots
from fleetboot.nodeconfig.states import NodeStatus, State

KINDS = st.lists(st.sampled_from(sorted(boots.MACHINE_KINDS)), min_size=1, max_size=4)
START = 1_700_000_000.0


@given(count=st.integers(1, 80), kinds=KINDS)
def test_a_fleet_has_unique_names_and_macs_and_one_boot_nic_each(count: int,
                                                                  kinds: list[str]) -> None:
    fleet = boots.fleet_of(count, kinds)
    assert len(fleet) == count
    assert len({m.name for m in fleet}) == count
    macs = [n.mac for m in fleet for n in m.nics]
    assert len(set(macs)) == len(macs)
    for i, m in enumerate(fleet):
        assert m.kind == kinds[i % len(kinds)]
        assert sum(n.bootindex is not None for n in m.nics) == 1
        assert m.boot_nic in m.nics
        assert m.flavor == ("cloud" if m.boot_nic.model.startswith("virtio") else "generic")
    assert [m.name for m in fleet] == sorted(m.name for m in fleet)


def test_the_three_nic_machine_boots_only_its_designated_nic() -> None:
    for model in boots.MULTI_NIC_MODELS:
        m = boots.multi_nic_machine("m", 1, boot_model=model)
        assert [n.model for n in m.nics] == list(boots.MULTI_NIC_MODELS)
        assert m.boot_nic.model == model
        assert all(n.rom is None for n in m.nics)  # every NIC keeps its iPXE ROM
    assert boots.uefi_machine("u", 1).boot_nic.rom == ""  # OVMF's own PXE, no iPXE ROM


def test_bad_fleets_are_refused_with_a_reason() -> None:
    with pytest.raises(boots.BootRunError, match="at least one"):
        boots.fleet_of(0)
    with pytest.raises(boots.BootRunError, match="choose from"):
        boots.fleet_of(2, ["bios", "arm"])
    with pytest.raises(boots.BootRunError, match="choose one of"):
        boots.multi_nic_machine("m", 1, boot_model="ne2k_pci")


def test_the_kernel_command_line_names_the_boot_nic_for_ipxe_to_fill_in() -> None:
    line = boots.lab_cmdline()
    assert "BOOTIF=01-${mac:hexhyp}" in line.split()
    assert "fleetboot.end=poweroff" in line.split()


@settings(max_examples=10, deadline=None)
@given(kinds=KINDS, count=st.integers(1, 12))
def test_the_inventory_imports_into_a_real_database(tmp_path_factory: pytest.TempPathFactory,
                                                     kinds: list[str], count: int) -> None:
    fleet = boots.fleet_of(count, kinds)
    profiles = [{"name": boots.profile_name(f), "kernel": f"images/x/vmlinuz-{f}",
                 "initrd": f"images/x/initrd-{f}.img", "cmdline": boots.lab_cmdline()}
                for f in ("cloud", "generic")]
    db = Database(f"sqlite:///{tmp_path_factory.mktemp('inv')}/fleetboot.db")
    db.create_schema()
    try:
        with db.session() as s:
            yamlio.import_inventory(s, yamlio.yaml.safe_dump(boots.lab_inventory(fleet, profiles)))
        with db.session() as s:
            nodes = {n.name: n for n in s.query(Node)}
            for m in fleet:
                node = nodes[m.name]
                assert node.boot_interface is not None
                assert node.boot_interface.mac == m.boot_nic.mac
                assert node.default_profile.name == boots.profile_name(m.flavor)
    finally:
        db.dispose()


# --- folding the server's states -----------------------------------------------------------


def _progress() -> boots.VmProgress:
    return boots.VmProgress(boots.bios_machine("vm01", 1), started_wall=START, state="firmware")


def _status(state: State, at: float, **kw: object) -> NodeStatus:
    return NodeStatus(state=state, since=START + at, **kw)  # type: ignore[arg-type]


ORDER = [State.PXEBOOTING, State.BOOTING, State.CONFIGURING, State.UP]


@given(times=st.lists(st.floats(0, 500), min_size=4, max_size=4).map(sorted),
       polls=st.sets(st.integers(0, 3), min_size=1))
def test_up_time_is_the_servers_timestamp_whatever_polls_were_missed(times: list[float],
                                                                      polls: set[int]) -> None:
    p = _progress()
    for i in sorted(polls | {3}):  # the poller may miss any state but the last
        boots.fold(p, _status(ORDER[i], times[i], last_boot_s=times[3] - times[0]), True,
                   START + times[i] + 0.3)
        assert p.state == ORDER[i].value
    assert p.done and p.error is None
    # Wall-clock times near 1.7e9 s carry ~2e-7 s of rounding.
    assert p.up_s == pytest.approx(times[3], abs=1e-6)
    assert p.server_boot_s == pytest.approx(times[3] - times[0], abs=1e-6)
    assert all(p.seen[ORDER[i].value] == pytest.approx(times[i], abs=1e-6) for i in polls | {3})


def test_a_state_from_an_earlier_boot_is_not_this_boots_up() -> None:
    p = _progress()
    boots.fold(p, _status(State.UP, -30.0), True, START + 1)
    assert not p.done and p.state == "firmware"


@given(exit_at=st.floats(0, 100), later=st.floats(0, 10))
def test_a_vm_that_exits_without_up_fails_only_after_the_grace(exit_at: float,
                                                               later: float) -> None:
    p = _progress()
    boots.fold(p, _status(State.BOOTING, 1.0), False, START + exit_at)
    boots.fold(p, _status(State.BOOTING, 1.0), False, START + exit_at + later)
    failed = later > boots.EXIT_GRACE_S
    assert (p.error is not None) == failed
    if failed:
        assert "BOOTING" in (p.error or "")


def test_an_up_committed_just_after_power_off_still_counts() -> None:
    p = _progress()
    boots.fold(p, _status(State.CONFIGURING, 9.0), False, START + 10)
    boots.fold(p, _status(State.UP, 9.5), False, START + 11)
    assert p.up_s == pytest.approx(9.5) and p.error is None


def test_a_failed_report_ends_the_vm_with_its_message() -> None:
    p = _progress()
    boots.fold(p, _status(State.FAILED, 5.0, message="sha256 mismatch"), True, START + 6)
    assert p.done and "sha256 mismatch" in (p.error or "")


def test_the_result_line_has_the_benchmark_format() -> None:
    run = boots.BootRun.begin(boots.fleet_of(2))
    for i, p in enumerate(run.progress.values()):
        p.started_wall = run.began_wall + i
        boots.fold(p, NodeStatus(state=State.UP, since=p.started_wall + 20), True,
                   p.started_wall + 21)
    report = run.report()
    assert report.ok and report.all_up_s == pytest.approx(21.0)
    assert re.fullmatch(r"RESULT storm_qemu n=2 all_up_s=21\.0 failed=0",
                        report.result_line("storm_qemu"))
    run.progress["vm02"].up_s = None
    run.progress["vm02"].error = "x"
    assert run.report().result_line("q").endswith("all_up_s=nan failed=1")


def test_machine_files_stay_in_the_boot_root(tmp_path: Path) -> None:
    src = tmp_path / "vmlinuz"
    src.write_bytes(b"kernel")
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"initrd")
    profiles = boots.store_profiles(tmp_path / "root", [boots.GuestFiles("cloud", src, initrd)])
    assert profiles[0]["name"] == "lab-cloud"
    assert (tmp_path / "root" / profiles[0]["kernel"]).read_bytes() == b"kernel"
    assert (tmp_path / "root" / profiles[0]["initrd"]).read_bytes() == b"initrd"
