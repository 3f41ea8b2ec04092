"""Claimed devices in the VM layout's passthrough pool, and QEMU accepting the arguments."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pt_helpers import INSTANCE, Fleet
from sqlalchemy import select

from fleetboot.passthrough import claims, migration, vmlayout
from fleetboot.passthrough.errors import ClaimError
from fleetboot.passthrough.flavors import parse_requests
from fleetboot.passthrough.models import PassthroughDevice, PassthroughNetwork
from fleetboot.passthrough.placement import HOSTDEV, NETWORK_HOSTDEV
from fleetboot.passthrough.vmlayout import VfioDevice, device_args, place_in_layout
from fleetboot.vm import planner
from fleetboot.vm.errors import PoolFullError, VmError
from fleetboot.vm.service import VmService, VmSettings
from fleetboot.vm.specs import CreateSpec


def _vfio(*ports: int) -> list[VfioDevice]:
    return [VfioDevice(p, f"0000:3b:02.{p % 8}", NETWORK_HOSTDEV) for p in ports]


def test_ports_keep_their_slots() -> None:
    layout = place_in_layout(planner.new_layout("q35"), _vfio(0, 1, 2))
    first = {f"ptdev{p}": layout.address_of(f"ptdev{p}") for p in (0, 1, 2)}
    assert planner.pool_map(layout, planner.PoolName.PASSTHROUGH) == "PPP_____"
    # Port 1 released, port 3 claimed: 0 and 2 stay, 3 takes the hole of the same pool.
    layout = place_in_layout(layout, _vfio(0, 2, 3))
    assert layout.address_of("ptdev0") == first["ptdev0"]
    assert layout.address_of("ptdev2") == first["ptdev2"]
    assert layout.find("ptdev1") is None
    # A migration swaps host devices, not ports: nothing moves.
    moved = [VfioDevice(d.port, "0000:18:02.0", d.kind) for d in _vfio(0, 2, 3)]
    assert place_in_layout(layout, moved) == layout
    bus = layout.slot(planner.PoolName.PASSTHROUGH, 0).addr.bus
    expected = f"vfio-pci,host=0000:18:02.0,id=ptdev0,bus={bus},addr=0x0"
    assert device_args(layout, moved)[0] == expected


def test_devices_the_vm_layer_placed_are_left_alone() -> None:
    layout = planner.add(planner.new_layout("pc"),
                         planner.DeviceRequest("hostdev0", planner.Kind.PASSTHROUGH))
    layout = place_in_layout(layout, _vfio(0))
    assert layout.find("hostdev0") is not None
    assert planner.pool_map(layout, planner.PoolName.PASSTHROUGH) == "PP__"


def test_full_pool_is_an_error_before_qemu() -> None:
    with pytest.raises(PoolFullError, match="passthrough pool is full"):
        place_in_layout(planner.new_layout("pc"), _vfio(*range(5)))


def test_unplaced_device_is_an_error() -> None:
    with pytest.raises(Exception, match="no slot in the VM layout"):
        device_args(planner.new_layout("q35"), _vfio(0))


def test_from_claims(fleet: Fleet) -> None:
    claims.claim(fleet.db, INSTANCE, parse_requests("1 x gpu-a100, 1 x mlx-netdev, "
                                                    "1 x sriov-physnet1"), host="compute-a")
    devices = vmlayout.vfio_devices(fleet.db, INSTANCE)
    assert [(d.port, d.kind) for d in devices] == [(0, HOSTDEV), (2, NETWORK_HOSTDEV)]
    layout = place_in_layout(planner.new_layout("q35"), devices)
    assert [a.split(",")[1] for a in device_args(layout, devices)] == [
        "host=0000:86:00.0", "host=0000:3b:02.0"]


def _root_port_args(layout: planner.Layout) -> list[str]:
    args = []
    for rp in layout.root_ports:
        multi = ",multifunction=on" if rp.multifunction else ""
        args += ["-device", f"pcie-root-port,id={rp.id},chassis={rp.chassis},"
                            f"bus={rp.addr.bus},addr={rp.addr.qemu}{multi}"]
    return args


@pytest.mark.qemu
def test_qemu_accepts_the_arguments() -> None:
    """QEMU parses and places the devices; only opening the (absent) host device fails."""
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86 not installed")
    devices = _vfio(0, 1)
    layout = place_in_layout(planner.new_layout("q35"), devices)
    argv = ["qemu-system-x86_64", "-machine", "q35,accel=tcg", "-nodefaults", "-display",
            "none", "-S", *_root_port_args(layout)]
    for arg in device_args(layout, devices):
        argv += ["-device", arg]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0
    assert "vfio 0000:3b:02.0: no such host device" in proc.stderr or \
        "/sys/bus/pci/devices/0000:3b:02.0: no such host device" in proc.stderr, proc.stderr


@pytest.mark.qemu
async def test_attach_to_a_vm_of_the_vm_service(sqlite_fleet: Fleet, tmp_path: Path) -> None:
    """Claims land in a real VM's stored layout and QEMU command line (VmService)."""
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86 not installed")
    run_dir = Path(tempfile.mkdtemp(prefix="fbpt", dir="/tmp"))
    try:
        service = VmService(sqlite_fleet.db, VmSettings(run_dir=run_dir,
                                                        image_dir=tmp_path / "images"))
        view = await service.create(CreateSpec(name="pt-vm"))
        claims.claim(sqlite_fleet.db, view.uuid, parse_requests("1 x gpu-a100, 1 x mlx-netdev, "
                                                                "1 x sriov-physnet1"))
        assert (await vmlayout.attach_to_vm(service, sqlite_fleet.db, "pt-vm"))[2] == [
            "ptdev0", "ptdev2"]
        assert (await vmlayout.attach_to_vm(service, sqlite_fleet.db, "pt-vm"))[2] == []
        layout = service.read("pt-vm").layout
        assert planner.pool_map(layout, planner.PoolName.PASSTHROUGH).startswith("PP_")
        argv = " ".join(await service.argv("pt-vm"))
        assert '"driver":"vfio-pci","id":"ptdev0","host":"0000:86:00.0"' in argv.replace(" ", "")
        assert '"host":"0000:3b:02.0"' in argv.replace(" ", "")
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture
async def vm_service(sqlite_fleet: Fleet, tmp_path: Path) -> AsyncIterator[VmService]:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86 not installed")
    run_dir = Path(tempfile.mkdtemp(prefix="fbpt", dir="/tmp"))
    service = VmService(sqlite_fleet.db, VmSettings(run_dir=run_dir,
                                                    image_dir=tmp_path / "images"))
    try:
        yield service
    finally:
        for view in service.list_instances():
            if view.process is not None:
                view.process.signal()
        shutil.rmtree(run_dir, ignore_errors=True)


def _device_states(fleet: Fleet) -> list[tuple[str, str]]:
    with fleet.db.session() as s:
        return [(d.address, d.state.value) for d in
                s.scalars(select(PassthroughDevice).order_by(PassthroughDevice.id))]


async def _argv(service: VmService, name: str) -> str:
    return " ".join(await service.argv(name)).replace(" ", "")


@pytest.mark.qemu
async def test_attach_to_a_running_vm_is_refused_before_anything_is_allocated(
    sqlite_fleet: Fleet, vm_service: VmService,
) -> None:
    """Regression: pci-attach allocated and defined networks, then failed on the VM."""
    view = await vm_service.create(CreateSpec(name="rv", memory_mib=128))
    claims.claim(sqlite_fleet.db, view.uuid, parse_requests("1 x mlx-netdev"))
    await vm_service.start("rv", paused=True)
    before = _device_states(sqlite_fleet)
    with pytest.raises(VmError, match="rv is running: stop it before attaching"):
        await vmlayout.attach_to_vm(vm_service, sqlite_fleet.db, "rv")
    assert _device_states(sqlite_fleet) == before
    with sqlite_fleet.db.session() as s:
        assert s.scalars(select(PassthroughNetwork)).all() == []


@pytest.mark.qemu
async def test_release_takes_the_devices_out_of_the_vm(
    sqlite_fleet: Fleet, vm_service: VmService,
) -> None:
    """Regression: after release the VM's argv still named the freed host device."""
    view = await vm_service.create(CreateSpec(name="rel", memory_mib=128))
    claims.claim(sqlite_fleet.db, view.uuid, parse_requests("1 x gpu-a100"))
    await vm_service.start("rel", paused=True)  # (the fake host device could not start)
    with pytest.raises(VmError, match="stop it before releasing"):
        await vmlayout.release_from_vm(vm_service, sqlite_fleet.db, "rel")
    assert claims.instance_devices(sqlite_fleet.db, view.uuid)  # nothing freed
    await vm_service.stop("rel")
    await vmlayout.attach_to_vm(vm_service, sqlite_fleet.db, "rel")
    assert '"host":"0000:86:00.0"' in await _argv(vm_service, "rel")
    freed, _ = await vmlayout.release_from_vm(vm_service, sqlite_fleet.db, "rel")
    assert freed == ["compute-a 0000:86:00.0"]
    assert "vfio-pci" not in await _argv(vm_service, "rel")
    assert vm_service.read("rel").layout.find("ptdev0") is None


@pytest.mark.qemu
async def test_pci_migrate_moves_the_vms_own_devices(
    sqlite_fleet: Fleet, vm_service: VmService,
) -> None:
    """Regression: after pci-migrate the VM's argv still named compute-a's device."""
    view = await vm_service.create(CreateSpec(name="mig", memory_mib=128))
    claims.claim(sqlite_fleet.db, view.uuid, parse_requests("1 x sriov-physnet1+x710-vf"),
                 host="compute-a")
    await vmlayout.attach_to_vm(vm_service, sqlite_fleet.db, "mig")
    slot = vm_service.read("mig").layout.address_of("ptdev0")
    assert '"host":"0000:3b:02.0"' in await _argv(vm_service, "mig")
    migration.migrate(sqlite_fleet.db, view.uuid, "compute-b")
    moved = await vmlayout.follow_migration(vm_service, sqlite_fleet.db, "mig")
    assert moved == ["ptdev0: 0000:3b:02.0 -> 0000:18:02.0"]
    argv = await _argv(vm_service, "mig")
    assert '"host":"0000:18:02.0"' in argv and "0000:3b:02.0" not in argv
    assert vm_service.read("mig").layout.address_of("ptdev0") == slot  # same guest slot


def test_a_device_a_rescan_marked_absent_is_not_handed_out(sqlite_fleet: Fleet) -> None:
    """Regression: attach allocated a claimed device that had vanished from the host."""
    claims.claim(sqlite_fleet.db, INSTANCE, parse_requests("1 x gpu-a100"), host="compute-a")
    with sqlite_fleet.db.session() as s:
        row = s.scalars(select(PassthroughDevice)
                        .where(PassthroughDevice.address == "0000:86:00.0")).one()
        row.present = False
    with pytest.raises(ClaimError, match=r"0000:86:00.0 .*is absent"):
        claims.attach(sqlite_fleet.db, INSTANCE)
    assert ("0000:86:00.0", "claimed") in _device_states(sqlite_fleet)
