"""Failure paths with real QEMU: rollback of a failed hotplug leaves nothing behind, a full
pool fails before QEMU is touched, and QEMU dying mid-operation leaves the inventory
consistent."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import replace
from pathlib import Path

import pytest

from fleetboot.vm import planner as P
from fleetboot.vm import runtime
from fleetboot.vm.errors import LayoutError, PoolFullError, QemuGoneError, VmError
from fleetboot.vm.models import VmStatus
from fleetboot.vm.planner import Family, PoolSizes, State
from fleetboot.vm.runtime import Qmp
from fleetboot.vm.service import InstanceView, VmService, VmSettings
from fleetboot.vm.specs import CreateSpec, parse_disk, parse_nic

pytestmark = [pytest.mark.qemu, pytest.mark.timeout(180)]


async def qemu_backends(view: InstanceView) -> tuple[str, set[str]]:
    """(HMP ``info network`` text, block node names) of the running QEMU."""
    assert view.qmp_socket is not None
    async with Qmp(view.qmp_socket) as qmp:
        network = await qmp.cmd("human-monitor-command", {"command-line": "info network"})
        nodes = {n["node-name"] for n in await qmp.cmd("query-named-block-nodes")}
    return str(network), nodes


async def start(vms: VmService, name: str, family: Family = Family.Q35, **kw: object) -> None:
    spec = CreateSpec(name, family, memory_mib=128, nics=(parse_nic("boot"),),
                      disks=(parse_disk("size=8M"),), **kw)  # type: ignore[arg-type]
    await vms.create(spec)
    await vms.start(name, paused=family is Family.PC)


async def test_failing_device_add_rolls_back_the_netdev_and_the_slot(vms: VmService) -> None:
    await start(vms, "f1")
    before = vms.read("f1")
    with pytest.raises(VmError, match=r"device_add net1 failed.*rolled back netdev_add hn-net1"):
        await vms.hotplug_nic("f1", parse_nic("model=no-such-nic"))
    view = await vms.show("f1")
    assert view.layout == before.layout and view.nics == before.nics
    assert view.drift is not None and view.drift.ok
    network, _ = await qemu_backends(view)
    assert "hn-net0" in network and "hn-net1" not in network  # no leaked netdev


async def test_bad_disk_backend_fails_cleanly(vms: VmService) -> None:
    """A bad backend: the image is already in use (by disk0), so QEMU refuses to open it."""
    await start(vms, "f2")
    before = vms.read("f2")
    in_use = before.disks[0].path
    with pytest.raises(VmError, match=r"blockdev-add drive-disk1 failed.*write\" lock"):
        await vms.hotplug_disk("f2", parse_disk(f"path={in_use}"))
    view = await vms.show("f2")
    assert view.layout == before.layout and view.disks == before.disks
    assert view.drift is not None and view.drift.ok
    _, nodes = await qemu_backends(view)
    assert "drive-disk0" in nodes and "drive-disk1" not in nodes
    assert Path(in_use).exists()  # not ours to delete


async def test_failing_disk_device_add_rolls_back_blockdev_and_image(vms: VmService) -> None:
    """blockdev-add works, device_add fails (the slot is taken behind our back)."""
    await start(vms, "f6", Family.PC)
    view = vms.read("f6")
    assert view.qmp_socket is not None
    free = P.free_slots(view.layout, P.PoolName.DISK)[0].addr
    async with Qmp(view.qmp_socket) as qmp:
        await qmp.cmd("device_add", {"driver": "virtio-rng-pci", "id": "intruder",
                                     "bus": free.bus, "addr": free.qemu})
    with pytest.raises(VmError, match=r"device_add disk1 failed.*rolled back blockdev-add"):
        await vms.hotplug_disk("f6", parse_disk("size=8M"))
    after = await vms.show("f6")
    assert after.layout == view.layout and after.disks == view.disks
    _, nodes = await qemu_backends(after)
    assert "drive-disk1" not in nodes  # no leaked blockdev
    assert not list(vms.settings.image_dir.glob("f6-disk1*"))  # the image we made is gone


async def test_scsi_hotplug_failure_also_removes_the_new_controller(vms: VmService) -> None:
    await start(vms, "f3")
    before = vms.read("f3")
    with pytest.raises(VmError, match="rolled back"):
        await vms.hotplug_disk("f3", parse_disk(f"path={before.disks[0].path},bus=virtio-scsi"))
    view = await vms.show("f3")
    assert view.layout == before.layout  # scsi0 went back out with the disk
    assert view.drift is not None and view.drift.ok


async def test_occupied_slot_is_drift_and_the_hotplug_rolls_back(vms: VmService) -> None:
    await start(vms, "f4", Family.PC)
    view = vms.read("f4")
    assert view.qmp_socket is not None
    free = P.free_slots(view.layout, P.PoolName.NIC)[0].addr
    async with Qmp(view.qmp_socket) as qmp:  # someone plugs a device behind our back
        await qmp.cmd("device_add", {"driver": "virtio-rng-pci", "id": "intruder",
                                     "bus": free.bus, "addr": free.qemu})
    drift = await vms.drift("f4")
    assert not drift.ok and "intruder" in str(drift)
    with pytest.raises(VmError, match="rolled back"):
        await vms.hotplug_nic("f4", parse_nic("model=e1000"))
    view = await vms.show("f4")
    assert view.layout.find("net1") is None
    network, _ = await qemu_backends(view)
    assert "hn-net1" not in network


async def test_full_pool_fails_before_qemu_is_touched(vms: VmService) -> None:
    await start(vms, "f5", pools=PoolSizes(qemu=2, nic=1, disk=1, passthrough=0))
    view = vms.read("f5")
    with pytest.raises(PoolFullError, match="nic pool is full"):
        await vms.hotplug_nic("f5", parse_nic("model=e1000"))
    with pytest.raises(PoolFullError, match="disk pool is full"):
        await vms.hotplug_disk("f5", parse_disk("size=8M"))
    after = await vms.show("f5")
    assert after.layout == view.layout and after.nics == view.nics
    assert not list((vms.settings.image_dir).glob("f5-disk1*"))  # no image made either
    network, nodes = await qemu_backends(after)
    assert "hn-net1" not in network and "drive-disk1" not in nodes


async def test_qemu_killed_mid_hotplug_leaves_the_inventory_consistent(
    vms: VmService,
) -> None:
    await start(vms, "k1")
    before = vms.read("k1")
    process = before.process
    assert process is not None

    async def kill_after_netdev(step: str) -> None:
        if step.startswith("netdev_add"):
            process.signal(signal.SIGKILL)
            await process.wait_gone()

    with pytest.raises(QemuGoneError, match="marked stopped"):
        await vms.hotplug_nic("k1", parse_nic("model=e1000"), after_step=kill_after_netdev)
    view = vms.read("k1")
    assert view.status is VmStatus.STOPPED and view.pid is None
    assert view.layout == before.layout and view.nics == before.nics
    assert view.last_error and "hot-plugging net1" in view.last_error
    # The stored layout still starts, and QEMU agrees with it.
    view = await vms.start("k1")
    assert view.drift is not None and view.drift.ok


async def test_qemu_killed_between_commands_is_noticed(vms: VmService) -> None:
    await start(vms, "k2", Family.PC)
    await vms.hotplug_nic("k2", parse_nic("model=e1000"))
    with pytest.raises(VmError, match="did not acknowledge"):
        await vms.unplug("k2", "net1", timeout=0.3)
    view = vms.read("k2")
    assert view.process is not None
    view.process.signal(signal.SIGKILL)
    await view.process.wait_gone()
    view = await vms.show("k2")
    assert view.status is VmStatus.STOPPED and "exited unexpectedly" in str(view.last_error)
    assert view.layout.find("net1") is None  # the pending unplug is done: QEMU is gone
    assert view.nic("net1") is None
    assert P.render(view.layout).split()[2].startswith("N_")


async def test_interrupted_commands_are_resolved_by_the_next_one(vms: VmService) -> None:
    """A fleetboot process that dies after recording intent: the next command asks QEMU."""
    await start(vms, "i1")
    view = vms.read("i1")
    # Intent for net1 recorded, and the device really made it into QEMU...
    adopted = vms._plan_nic(view, parse_nic("model=e1000"), State.PLUGGING)
    # ...and intent for net2 recorded, but the process died before telling QEMU.
    dropped = vms._plan_nic(view, parse_nic("model=rtl8139"), State.PLUGGING)
    view = vms.read("i1")
    assert view.qmp_socket is not None
    nic = next(n for n in view.nics if n.device == adopted)
    async with Qmp(view.qmp_socket) as qmp:
        await qmp.cmd("netdev_add", {"type": "user", "id": f"hn-{adopted}"})
        addr = view.layout.address_of(adopted)
        assert addr is not None
        await qmp.cmd("device_add", {"driver": "e1000", "id": adopted, "netdev": f"hn-{adopted}",
                                     "mac": nic.mac, "romfile": "", "bus": addr.bus,
                                     "addr": addr.qemu})
    view = await vms.show("i1")
    assert view.layout.get(adopted).state is State.ACTIVE
    assert view.layout.find(dropped) is None and view.nic(dropped) is None
    assert view.drift is not None and view.drift.ok


async def test_interrupted_migration_keeps_the_source(vms: VmService) -> None:
    await start(vms, "i2")
    with vms.db.session() as s:  # as if a migrate command died after starting nothing
        inst = vms._get(s, "i2")
        inst.status = VmStatus.MIGRATING.value
        inst.migration_target = {"pid": 999999, "qmp_socket": "/nonexistent.qmp"}
    view = await vms.show("i2")
    assert view.status is VmStatus.RUNNING and view.migration_target is None
    assert view.drift is not None and view.drift.ok


async def test_device_rules_while_running(vms: VmService) -> None:
    await start(vms, "r1", balloon=True)
    await vms.hotplug_disk("r1", parse_disk("size=8M,bus=virtio-scsi"))
    with pytest.raises(LayoutError, match="still holds disk1"):
        await vms.unplug("r1", "scsi0")
    with pytest.raises(VmError, match="root bus, which has no hotplug"):
        await vms.unplug("r1", "balloon0")
    with pytest.raises(LayoutError, match="no device 'nope'"):
        await vms.unplug("r1", "nope")


async def test_qemu_auto_assigned_device_in_a_pool_is_caught_at_start(vms: VmService) -> None:
    """Seed 001's failure: QEMU places a device it owns (here -vga) in a Fleetboot slot.

    With QEMU's range sized 0 there is nowhere else for it: the start is refused with
    the reason, instead of a later hotplug colliding with it.
    """
    pools = PoolSizes(qemu=0, nic=2, disk=2, passthrough=0)
    await vms.create(CreateSpec("a1", Family.PC, memory_mib=128, pools=pools,
                                extra_args=("-vga", "std")))
    with pytest.raises(VmError, match=r"unnamed VGA controller at pci\.0:02\.0, "
                                      r"in nic slot 0.*stopped again"):
        await vms.start("a1", paused=True)
    assert vms.read("a1").status is VmStatus.STOPPED
    # With a NIC planned at that slot QEMU itself refuses to start: also a clear error.
    await vms.hotplug_nic("a1", parse_nic("model=e1000"))
    with pytest.raises(VmError, match=r"QEMU failed to start: .*in use by VGA"):
        await vms.start("a1", paused=True)
    # The default pools leave QEMU its range: -vga lands there and all is well.
    await vms.create(CreateSpec("a2", Family.PC, memory_mib=128, nics=(parse_nic("boot"),),
                                extra_args=("-vga", "std")))
    view = await vms.start("a2", paused=True)
    assert view.drift is not None and view.drift.ok


async def test_rollback_that_the_guest_does_not_ack_keeps_the_slot_held(
    vms: VmService, vm_settings: VmSettings
) -> None:
    """A failure after device_add on pc (no OS: the rollback's unplug is never acked)."""
    vms.settings = replace(vm_settings, unplug_timeout=0.5)
    await start(vms, "h1", Family.PC)

    async def fail_after_device_add(step: str) -> None:
        if step == "device_add net1":
            raise RuntimeError("interrupted")

    with pytest.raises(VmError, match=r"interrupted.*could not roll back device_add net1 .*"
                                      r"slot stays held"):
        await vms.hotplug_nic("h1", parse_nic("model=e1000"), after_step=fail_after_device_add)
    view = await vms.show("h1")
    assert view.layout.get("net1").state is State.UNPLUGGING and view.nic("net1") is not None
    assert view.drift is not None and view.drift.ok
    network, _ = await qemu_backends(view)
    assert "hn-net1" in network  # kept for the device that still uses it
    await vms.stop("h1")
    view = await vms.start("h1", paused=True)
    assert view.layout.find("net1") is None and view.drift is not None and view.drift.ok


async def test_interrupted_after_the_state_moved_adopts_the_destination(
    vms: VmService,
) -> None:
    """migrate died after QEMU finished but before the inventory was updated."""
    await start(vms, "i3")
    view = vms.read("i3")
    source = view.process
    assert source is not None
    uri = f"unix:{vms.settings.run_dir}/i3.mig"
    target = await vms._launch(view, view.generation + 1, incoming=uri)
    vms._set_migrating("i3", target)
    async with Qmp(source.qmp_socket) as src:
        await runtime.migrate(src, uri, 60)
    view = await vms.show("i3")
    assert view.status is VmStatus.RUNNING and view.pid == target.pid
    assert not source.alive()  # the stale copy must never run again
    assert view.drift is not None and view.drift.ok


async def test_show_only_reads_while_another_command_works(vms: VmService) -> None:
    await start(vms, "b1")
    async with vms._locked("b1"):
        view = await vms.show("b1")
        assert view.drift is None and view.status is VmStatus.RUNNING
        with pytest.raises(VmError, match="another fleetboot command"):
            async with vms._locked("b1", timeout=0.1):
                pass
    assert (await vms.show("b1")).drift is not None


def run_files(vms: VmService) -> list[str]:
    """QEMU's per-process files (.qmp, .pid, .mig) left in the run directory."""
    return sorted(p.name for p in vms.settings.run_dir.iterdir()
                  if p.suffix in (".qmp", ".pid", ".mig"))


async def test_qemu_killed_during_an_unplug_leaves_no_device_unplugging(vms: VmService) -> None:
    """Regression: the crash handler used a view read before the unplug intent, so the
    stopped VM kept its device 'unplugging' for ever, and the command said it was deleted."""
    await start(vms, "u1", Family.PC)  # paused: the guest never acknowledges the unplug
    await vms.hotplug_nic("u1", parse_nic("model=e1000"))
    process = vms.read("u1").process
    assert process is not None

    async def kill_soon() -> None:
        await asyncio.sleep(0.5)
        process.signal(signal.SIGKILL)

    killer = asyncio.create_task(kill_soon())
    with pytest.raises(QemuGoneError, match=r"exited while unplugging net1.*marked stopped"):
        await vms.unplug("u1", "net1", timeout=10)
    await killer
    view = vms.read("u1")
    assert view.status is VmStatus.STOPPED
    assert all(p.state is State.ACTIVE for p in view.layout.placements)
    assert view.layout.find("net1") is None and view.nic("net1") is None
    assert run_files(vms) == []  # a killed QEMU removes none of its files itself


@pytest.mark.parametrize("action", ["hotplug", "unplug"])
async def test_commands_after_a_crash_say_qemu_died_and_change_nothing(
    vms: VmService, action: str,
) -> None:
    """Regression: after QEMU died, hotplug/unplug edited the stopped definition, exit 0."""
    await start(vms, "c1")
    view = vms.read("c1")
    assert view.process is not None
    view.process.signal(signal.SIGKILL)
    await view.process.wait_gone()
    with pytest.raises(QemuGoneError, match=r"had exited.*nothing was changed"):
        if action == "hotplug":
            await vms.hotplug_nic("c1", parse_nic("model=e1000"))
        else:
            await vms.unplug("c1", "disk0")
    after = vms.read("c1")
    assert after.status is VmStatus.STOPPED
    assert after.layout == view.layout and after.nics == view.nics and after.disks == view.disks
    assert run_files(vms) == []
    # Said again on the stopped VM, the same command edits its definition, as asked.
    if action == "hotplug":
        await vms.hotplug_nic("c1", parse_nic("model=e1000"))
        assert vms.read("c1").nic("net1") is not None


async def test_unplugged_disk_takes_its_image_and_the_next_disk_gets_the_id(
    vms: VmService,
) -> None:
    """Regression: a hot-unplugged disk's image stayed behind, unknown to `vm delete
    --images`, and the next hotplug failed with '...-disk1.qcow2 exists already'."""
    await start(vms, "d1")
    plugged = await vms.hotplug_disk("d1", parse_disk("size=8M"))
    image = Path(next(d.path for d in vms.read("d1").disks if d.device == plugged.device))
    assert image.exists()
    await vms.unplug("d1", plugged.device)
    assert not image.exists()
    again = await vms.hotplug_disk("d1", parse_disk("size=8M"))
    assert again.device == plugged.device and image.exists()
    view = await vms.show("d1")
    assert view.drift is not None and view.drift.ok


async def test_migration_whose_source_died_does_not_claim_a_rollback(vms: VmService) -> None:
    """Regression: it said 'rolled back' though the VM was gone; and .mig/.qmp/.pid stayed."""
    await start(vms, "m1")
    source = vms.read("m1").process
    assert source is not None
    real_migrate = runtime.migrate

    async def source_dies(qmp: Qmp, uri: str, timeout: float) -> dict[str, object]:
        source.signal(signal.SIGKILL)
        await source.wait_gone()
        return await real_migrate(qmp, uri, timeout)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runtime, "migrate", source_dies)
        with pytest.raises(QemuGoneError, match=r"nothing to roll back to.*marked stopped") as err:
            await vms.migrate("m1")
    assert "rolled back" not in str(err.value)
    view = vms.read("m1")
    assert view.status is VmStatus.STOPPED and view.migration_target is None
    assert run_files(vms) == []
    assert (await vms.start("m1")).drift is not None


async def test_stop_and_migration_leave_no_run_files(vms: VmService) -> None:
    await start(vms, "r1")
    await vms.migrate("r1")
    assert len(run_files(vms)) == 2  # the new process's .qmp and .pid only
    await vms.stop("r1")
    assert run_files(vms) == []
