"""Passthrough devices as the VM layout sees them: ``vfio-pci,host=...`` specs.

The VM planner (fleetboot.vm) owns guest PCI slots and has a pool for
passthrough devices; this module says *which* host devices an instance gets
there. Only devices handed over by vfio count: plain hostdevs and SR-IOV VFs
behind a hostdev network. macvtap ports are NICs of the guest, not vfio.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from fleetboot.inventory.db import Database
from fleetboot.passthrough import libvirtd
from fleetboot.passthrough.claims import Attachment, instance_devices
from fleetboot.passthrough.errors import PassthroughError
from fleetboot.passthrough.libvirtd import SyncReport
from fleetboot.passthrough.placement import is_vfio
from fleetboot.vm import planner


@dataclass(frozen=True)
class VfioDevice:
    """One host PCI function for the guest; ``port`` is stable for the instance's life."""

    port: int
    host_address: str
    kind: str

    @property
    def device_id(self) -> str:
        # Derived from the port, not the host address, so it survives migration;
        # "ptdev" keeps clear of the VM concern's own "hostdev<N>" ids.
        return f"ptdev{self.port}"

    def qemu_device(self, bus: str | None = None, addr: str | None = None) -> str:
        """The ``-device``/``device_add`` string; ``bus``/``addr`` from the VM planner."""
        parts = ["vfio-pci", f"host={self.host_address}", f"id={self.device_id}"]
        if bus is not None:
            parts.append(f"bus={bus}")
        if addr is not None:
            parts.append(f"addr={addr}")
        return ",".join(parts)


class VmPassthroughApi(Protocol):
    """What this module needs of ``fleetboot.vm.service.VmService``."""

    def read(self, name: str) -> Any: ...

    async def require_stopped(self, name: str, action: str) -> Any: ...

    async def add_passthrough(self, name: str, host: str, device: str | None = None) -> str: ...

    async def remove_passthrough(self, name: str, devices: Iterable[str]) -> None: ...

    async def move_passthrough(self, name: str, hosts: Mapping[str, str]) -> None: ...


def vfio_devices(db: Database, instance_uuid: str) -> list[VfioDevice]:
    """The instance's vfio devices in port order (claimed or allocated, not incoming)."""
    return [VfioDevice(d.port, d.address, d.kind)
            for d in instance_devices(db, instance_uuid) if is_vfio(d.kind)]


# ---------------------------------------------------------------- the VM planner's pool

_OWNED_ID = re.compile(r"^ptdev\d+$")


def place_in_layout(layout: planner.Layout, devices: Sequence[VfioDevice]) -> planner.Layout:
    """Give each vfio device a slot of the layout's passthrough pool (pure).

    Devices already placed keep their slot (the id is port-based, so a migration
    to an equivalent host device changes nothing); placements of ports the
    instance no longer holds are released. A full pool raises the planner's
    ``PoolFullError`` before QEMU is touched.
    """
    wanted = {d.device_id for d in devices}
    for placement in layout.placements:
        if (placement.kind is planner.Kind.PASSTHROUGH and _OWNED_ID.match(placement.device)
                and placement.device not in wanted):
            layout = planner.remove(layout, placement.device)
    for dev in sorted(devices, key=lambda d: d.port):
        if layout.find(dev.device_id) is None:
            layout = planner.add(layout, planner.DeviceRequest(dev.device_id,
                                                               planner.Kind.PASSTHROUGH))
    return layout


def device_args(layout: planner.Layout, devices: Sequence[VfioDevice]) -> list[str]:
    """``-device`` values for the vfio devices at their planned guest addresses."""
    args = []
    for dev in sorted(devices, key=lambda d: d.port):
        addr = layout.address_of(dev.device_id) if layout.find(dev.device_id) else None
        if addr is None:
            raise PassthroughError(f"{dev.device_id} ({dev.host_address}) has no slot in the "
                                   "VM layout; place it with place_in_layout first")
        args.append(dev.qemu_device(bus=addr.bus, addr=addr.qemu))
    return args


async def attach_to_vm(service: VmPassthroughApi, db: Database,
                       vm_name: str) -> tuple[Attachment, SyncReport, list[str]]:
    """Allocate the VM's claimed devices and put its vfio devices into its stored layout.

    The VM must be stopped, checked before anything is allocated. The claims are
    looked up by the VM's UUID; devices the VM already has (same port id) are left
    alone. Returns the attachment, what changed in the host's libvirtd, and the ids added.
    """
    view = await service.require_stopped(vm_name, "attaching passthrough devices")
    attachment, report = libvirtd.attach(db, view.uuid)
    present = {d.device for d in view.devices}
    added = []
    for dev in vfio_devices(db, view.uuid):
        if dev.device_id not in present:
            added.append(await service.add_passthrough(vm_name, dev.host_address, dev.device_id))
    return attachment, report, added


def _owned(view: Any) -> list[Any]:
    """The VM's vfio devices that came from passthrough claims (``ptdev<port>``)."""
    return [d for d in view.devices if _OWNED_ID.match(d.device)]


async def release_from_vm(service: VmPassthroughApi, db: Database,
                          vm_name: str) -> tuple[list[str], list[SyncReport]]:
    """Free the VM's claims and take their vfio devices out of it (VM stopped, checked
    first: a running guest still holds the host devices)."""
    view = await service.require_stopped(vm_name, "releasing its passthrough devices")
    freed, reports = libvirtd.release(db, view.uuid)
    await service.remove_passthrough(vm_name, [d.device for d in _owned(view)])
    return freed, reports


async def follow_migration(service: VmPassthroughApi, db: Database, vm_name: str) -> list[str]:
    """After a passthrough migration: point the VM's vfio devices at the new host devices.

    Returns ``device: old -> new`` lines for what changed.
    """
    view = service.read(vm_name)
    now = {d.device_id: d.host_address for d in vfio_devices(db, view.uuid)}
    moved = {d.device: now[d.device] for d in _owned(view)
             if d.device in now and d.props.get("host") != now[d.device]}
    await service.move_passthrough(vm_name, moved)
    return [f"{dev}: {next(d.props.get('host') for d in view.devices if d.device == dev)} "
            f"-> {host}" for dev, host in sorted(moved.items())]
