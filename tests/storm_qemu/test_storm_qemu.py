"""Three real VMs boot at once through one ``fleetboot serve``: the CI-sized storm.

A SeaBIOS + iPXE VM, an OVMF VM (native PXE, snponly.efi over TFTP) and a three-NIC
VM that must boot from its e1000 power on together and go the whole chain to UP
(bench/storm_qemu.py runs the same code with 8+ VMs and reports the times). Speed
is not asserted; the server's view is: every node UP in its first boot, one
configuration fetch each, every phase in order, and nothing from the NICs that
must not boot.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import select

from fleetboot.inventory.models import Node
from fleetboot.lab import boots, guest, netns
from fleetboot.nodeconfig.timeline import EventRecord, read_timeline

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.netns]

KINDS = ("bios", "uefi", "3-nic")
# The state each phase of a boot leaves the node in, in the order they must come.
PHASE_ORDER = ["PXEBOOTING", "BOOTING", "CONFIGURING", "UP"]


@pytest.fixture
def machines() -> list[boots.Machine]:
    if not netns.have_netns():
        pytest.skip("needs root and iproute2 to create network namespaces")
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("needs qemu-system-x86 (run scripts/install-system-deps.sh)")
    return boots.fleet_of(len(KINDS), KINDS, prefix="sq")


def _timelines(fleet: boots.FleetLab) -> dict[str, list[EventRecord]]:
    with fleet.db.session() as s:
        ids = {name: i for i, name in s.execute(select(Node.id, Node.name))}
        return {name: read_timeline(s, i) for name, i in ids.items()}


def _check_timeline(m: boots.Machine, events: list[EventRecord]) -> None:
    states = [e.state for e in events]
    firsts = [states.index(state) for state in PHASE_ORDER]
    assert firsts == sorted(firsts), f"{m.name}: phases out of order: {states}"
    seen = [(e.source, e.kind) for e in events]
    assert seen.count(("config", "config")) == 1, f"{m.name}: {seen}"  # one request per boot
    assert ("http", "script") in seen and seen.index(("http", "script")) < firsts[1]
    assert {e.boot for e in events} == {1}
    # Only the designated NIC ever talked to the server (the others must not PXE-boot).
    assert {e.mac for e in events if e.mac} == {m.boot_nic.mac}, f"{m.name}: {events}"


def test_three_vms_boot_through_fleetboot_at_once(machines: list[boots.Machine],
                                                  tmp_path: Path) -> None:
    try:
        guests = boots.prepare_guests(m.flavor for m in machines)
    except guest.GuestError as exc:
        pytest.skip(f"no guest kernel: {exc}")
    with boots.FleetLab.start(tmp_path / "fleet", machines, guests=guests) as fleet:
        report = fleet.boot(machines, timeout_s=300)
        assert report.ok, f"{report.errors()}\n--- server log:\n{fleet.server.log_tail(40)}"
        states = fleet.states()
        timelines = _timelines(fleet)
        nodes_table = fleet.server.cli("nodes").stdout
    assert report.all_up_s is not None and report.failed == 0
    addresses = {states[m.name].address for m in machines}
    assert len(addresses) == len(machines)
    for m in machines:
        st = states[m.name]
        assert st.state.value == "UP" and st.boot == 1 and st.last_boot_s is not None
        assert st.address is not None and st.address.startswith(boots.LAB_SUBNET + ".")
        _check_timeline(m, timelines[m.name])
        assert m.name in nodes_table
    assert nodes_table.count("UP") >= len(machines)
