"""Real QEMU (TCG): start, hotplug NICs and disks, unplug, restart, the seed's sequence.

After every step the stored layout is compared with QEMU's ``query-pci``.

What this machine shows about unplug without a guest OS (no OS ever runs here):
* q35, native PCIe hotplug: a device hot-plugged into a root port whose slot
  the guest never powered on is removed at once (DEVICE_DELETED without a guest
  round trip). A device present at boot sits in a powered slot: its unplug
  needs the guest's ack and times out.
* pc (i440fx), ACPI hotplug: every unplug needs the guest's ACPI eject, so
  without an OS it times out: the slot stays held until QEMU reports the
  device gone or the VM restarts.
"""

from __future__ import annotations

import pytest

from fleetboot.vm import planner as P
from fleetboot.vm.errors import PoolFullError, UnplugPendingError, VmError
from fleetboot.vm.models import VmStatus
from fleetboot.vm.planner import Family, PoolName, PoolSizes, State
from fleetboot.vm.service import InstanceView, VmService
from fleetboot.vm.specs import CreateSpec, parse_disk, parse_nic

pytestmark = [pytest.mark.qemu, pytest.mark.timeout(180)]


async def matches(vms: VmService, name: str) -> InstanceView:
    view = await vms.show(name)
    assert view.drift is not None, f"{name} is {view.status}"
    assert view.drift.ok, str(view.drift)
    return view


def addresses(view: InstanceView) -> dict[str, P.PciAddr | None]:
    return {p.device: view.layout.address_of(p.device) for p in view.layout.placements}


async def test_q35_hotplug_unplug_and_restart_from_stored_layout(vms: VmService) -> None:
    await vms.create(CreateSpec(
        "q1", Family.Q35, memory_mib=128, nics=(parse_nic("boot"),),
        disks=(parse_disk("size=16M"),), balloon=True))
    view = await vms.start("q1")  # the firmware runs and numbers the root ports
    assert view.status is VmStatus.RUNNING and view.drift is not None and view.drift.ok

    nic = await vms.hotplug_nic("q1", parse_nic("model=e1000"))
    assert nic.address == "rp-nic1:00.0" and nic.latency_s is not None
    await matches(vms, "q1")
    disk = await vms.hotplug_disk("q1", parse_disk("size=16M"))
    assert disk.address == "rp-disk1:00.0"
    await matches(vms, "q1")
    scsi = await vms.hotplug_disk("q1", parse_disk("size=16M,bus=virtio-scsi"))
    assert scsi.address == "scsi"
    view = await matches(vms, "q1")
    assert view.layout.address_of("scsi0") == P.PciAddr("rp-disk2", 0)
    assert P.render(view.layout) == "I .......B NN______ DDS_____________ ________ I"

    # A hot-plugged device sits in a slot no guest powered on: QEMU removes it at once.
    result = await vms.unplug("q1", "net1")
    assert result.outcome == "deleted"
    view = await matches(vms, "q1")
    assert view.layout.find("net1") is None and view.nic("net1") is None
    await vms.unplug("q1", "disk2")  # SCSI disks leave without a guest round trip
    await matches(vms, "q1")

    # net0 was there at boot, its slot is powered: no OS acks the unplug.
    with pytest.raises(UnplugPendingError, match=r"slot rp-nic0:00\.0 stays held"):
        await vms.unplug("q1", "net0", timeout=1.0)
    view = await matches(vms, "q1")
    assert view.layout.get("net0").state is State.UNPLUGGING
    before = addresses(view)

    # Restart from the stored layout: the pending unplug completes, nothing moves.
    await vms.stop("q1")
    view = await vms.start("q1")
    assert view.drift is not None and view.drift.ok
    after = addresses(view)
    assert "net0" not in after
    assert after == {d: a for d, a in before.items() if d != "net0"}


async def test_pc_hotplug_while_paused_and_unplug_timeout_holds_the_slot(
    vms: VmService,
) -> None:
    await vms.create(CreateSpec("p1", Family.PC, memory_mib=128, nics=(parse_nic("boot"),),
                                pools=PoolSizes(qemu=4, nic=2, disk=2, passthrough=0)))
    await vms.start("p1", paused=True)
    await vms.hotplug_nic("p1", parse_nic("model=rtl8139"))
    await vms.hotplug_disk("p1", parse_disk("size=8M"))
    view = await matches(vms, "p1")
    assert P.render(view.layout) == "II .... NN D_"

    with pytest.raises(UnplugPendingError, match="did not acknowledge"):
        await vms.unplug("p1", "net1", timeout=0.5)
    view = await matches(vms, "p1")
    assert P.render(view.layout) == "II .... N~ D_"
    # The held slot is not given away, so the pool is full now.
    with pytest.raises(PoolFullError, match="1 of them waiting"):
        await vms.hotplug_nic("p1", parse_nic("model=e1000"))
    # Nothing changed in QEMU either.
    view = await matches(vms, "p1")
    assert view.layout.get("net1").state is State.UNPLUGGING

    await vms.stop("p1")  # the stop completes the unplug
    view = vms.read("p1")
    assert P.render(view.layout) == "II .... N_ D_"
    view = await vms.start("p1", paused=True)
    assert view.drift is not None and view.drift.ok


@pytest.mark.parametrize("family", [Family.PC, Family.Q35])
async def test_seed_sequence_then_migration(vms: VmService, family: Family) -> None:
    """Seed 001: add NIC, add disk, remove NIC, add disk; then migrate and compare."""
    await vms.create(CreateSpec("s1", family, memory_mib=128, nics=(parse_nic("boot"),),
                                disks=(parse_disk("size=8M"),)))
    await vms.start("s1")
    await vms.hotplug_nic("s1", parse_nic("model=e1000"))  # 1
    await matches(vms, "s1")
    await vms.hotplug_disk("s1", parse_disk("size=8M"))  # 2
    await matches(vms, "s1")
    try:  # 3: q35 frees the slot at once; pc keeps it held (no OS to ack)
        await vms.unplug("s1", "net1", timeout=0.5)
    except UnplugPendingError:
        assert family is Family.PC
    await matches(vms, "s1")
    result = await vms.hotplug_disk("s1", parse_disk("size=8M"))  # 4
    view = await matches(vms, "s1")
    disk2 = view.layout.get(result.device)
    assert disk2.pool is PoolName.DISK and disk2.index == 2  # not in the NIC's hole
    before = addresses(view)

    migrated = await vms.migrate("s1")
    assert migrated.drift.ok
    view = await matches(vms, "s1")
    assert view.pid == migrated.pid and addresses(view) == before


async def test_migration_over_tcp_carries_hotplugged_devices(vms: VmService) -> None:
    await vms.create(CreateSpec("m1", Family.Q35, memory_mib=128, nics=(parse_nic("boot"),)))
    first = await vms.start("m1")
    await vms.hotplug_disk("m1", parse_disk("size=8M,bus=virtio-scsi"))
    await vms.hotplug_nic("m1", parse_nic("model=rtl8139"))
    before = addresses(await matches(vms, "m1"))
    result = await vms.migrate("m1", "tcp")
    assert result.uri.startswith("tcp:127.0.0.1:") and not result.uri.endswith(":0")
    assert result.stats["destination_status"] == "running"
    old = first.process
    assert old is not None and not old.alive()
    view = await matches(vms, "m1")
    assert view.generation == first.generation + 1 and addresses(view) == before
    # And the migrated VM keeps working: hotplug into it, then migrate back over unix.
    await vms.hotplug_nic("m1", parse_nic("model=e1000"))
    await matches(vms, "m1")
    assert (await vms.migrate("m1", "unix")).drift.ok


async def test_stopped_vm_takes_devices_into_its_definition(vms: VmService) -> None:
    await vms.create(CreateSpec("c1", Family.Q35, memory_mib=128))
    result = await vms.hotplug_nic("c1", parse_nic("model=e1000,boot"))
    assert not result.hotplugged
    await vms.hotplug_disk("c1", parse_disk("size=8M,boot"))
    view = vms.read("c1")
    assert view.layout.get("net0").bootindex == 1 and view.layout.get("disk0").bootindex == 2
    view = await vms.start("c1", paused=True)  # -S: QOM answers for the root ports
    assert view.drift is not None and view.drift.ok
    with pytest.raises(VmError, match="boot NIC while the VM is stopped"):
        await vms.hotplug_nic("c1", parse_nic("boot"))
    with pytest.raises(VmError, match="already running"):
        await vms.start("c1")
