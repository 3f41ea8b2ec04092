"""What ``inventory export`` adds to nodes, subnets and profiles so it is a backup:
configuration sections (per node and fleet defaults), passthrough flavors and
hosts, and VM definitions.

Secret configuration (accounts, tunnels, a files section holding a secret
file) is exported only on request; a document without it says
``secrets: omitted`` and importing it leaves those sections as they are.
Running state (leases, node states, timelines, tokens, QEMU processes, device
claims) is not part of the inventory and is not exported.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from fleetboot.inventory import document as d
from fleetboot.inventory.service import InventoryError, unicast_mac
from fleetboot.nodeconfig import store
from fleetboot.nodeconfig.sections import SECRET_SECTIONS
from fleetboot.passthrough import catalog
from fleetboot.passthrough.flavors import Flavor
from fleetboot.passthrough.models import PassthroughDevice, PassthroughHost
from fleetboot.vm.models import Device, Disk, Instance, Nic, VmHost

# Sections that may hold secrets: whole (accounts, tunnels) or per item (files).
MAYBE_SECRET = SECRET_SECTIONS | {"files"}


def is_secret(section: str, value: Any) -> bool:
    if section in SECRET_SECTIONS:
        return True
    return section == "files" and any(isinstance(i, dict) and i.get("secret") for i in value)


def config_doc(session: Session, node: str | None, secrets: bool) -> dict[str, Any]:
    """The stored sections of ``node`` (None: the fleet defaults), in section order."""
    stored = store.stored_sections(session, node)
    return {name: stored[name] for name in sorted(stored)
            if secrets or not is_secret(name, stored[name])}


def import_config(session: Session, node: str | None, wanted: dict[str, Any],
                  secrets_omitted: bool) -> None:
    """Make the node's (or the defaults') sections those of the document."""
    for name, value in wanted.items():
        store.set_section(session, node, name, value)
    for name in store.stored_sections(session, node):
        if name not in wanted and not (secrets_omitted and name in MAYBE_SECRET):
            store.unset_section(session, node, name)


# ---- flavors and passthrough hosts -----------------------------------------------------

def flavor_docs(session: Session) -> list[dict[str, Any]]:
    out = []
    for flavor in catalog.list_flavors(session):
        doc: dict[str, Any] = {"name": flavor.name, "spec": flavor.to_dict()}
        if flavor.description:
            doc["description"] = flavor.description
        out.append(doc)
    return out


def import_flavor(session: Session, e: d.FlavorEntry) -> None:
    catalog.add_flavor(session, Flavor.from_dict(e.name, e.spec, e.description), replace=True)


_DEVICE_FACTS = tuple(f for f in d.HostDeviceEntry.model_fields if f not in ("address", "tags"))


def host_docs(session: Session) -> list[dict[str, Any]]:
    hosts = session.scalars(select(PassthroughHost).options(
        selectinload(PassthroughHost.devices)).order_by(PassthroughHost.name))
    return [{"name": h.name, "sysfs_root": h.sysfs_root, "libvirt_uri": h.libvirt_uri,
             "allow": list(h.allow or ()),
             "devices": [_device_doc(dev) for dev in h.devices]} for h in hosts]


def _device_doc(dev: PassthroughDevice) -> dict[str, Any]:
    doc: dict[str, Any] = {"address": dev.address}
    doc.update({k: getattr(dev, k) for k in _DEVICE_FACTS})
    doc["netdevs"] = list(dev.netdevs)
    doc["tags"] = dict(dev.tags)
    return doc


def import_host(session: Session, e: d.HostEntry) -> None:
    """Create the host and the devices it had (as available: claims are runtime state);
    on a known device only the operator's tags change (facts come from scans)."""
    host = session.scalar(select(PassthroughHost).where(PassthroughHost.name == e.name))
    if host is None:
        host = PassthroughHost(name=e.name, sysfs_root=e.sysfs_root)
        session.add(host)
        session.flush()
    host.libvirt_uri = e.libvirt_uri
    host.allow = [Flavor.from_dict("allow", rule).to_dict() for rule in e.allow]  # validated
    rows = {dev.address: dev for dev in host.devices}
    for dev in e.devices:
        row = rows.get(dev.address)
        if row is None:
            facts = {k: getattr(dev, k) for k in _DEVICE_FACTS}
            host.devices.append(PassthroughDevice(address=dev.address, tags=dict(dev.tags),
                                                  **facts))
        else:
            row.tags = dict(dev.tags)
    session.flush()


# ---- VM hosts and VM definitions ------------------------------------------------------

def vm_host_docs(session: Session) -> list[dict[str, Any]]:
    return [{"name": h.name, "address": h.address, "netns": h.netns, "run_dir": h.run_dir,
             "image_dir": h.image_dir}
            for h in session.scalars(select(VmHost).order_by(VmHost.name))]


def import_vm_host(session: Session, e: d.VmHostEntry) -> None:
    host = session.scalar(select(VmHost).where(VmHost.name == e.name))
    if host is None:
        host = VmHost(name=e.name)
        session.add(host)
    host.address, host.netns, host.run_dir, host.image_dir = (
        e.address, e.netns, e.run_dir, e.image_dir)
    session.flush()


def vm_docs(session: Session) -> list[dict[str, Any]]:
    vms = session.scalars(select(Instance).options(
        selectinload(Instance.nics), selectinload(Instance.disks),
        selectinload(Instance.devices)).order_by(Instance.name))
    return [_vm_doc(vm) for vm in vms]


def _vm_doc(vm: Instance) -> dict[str, Any]:
    return {
        "name": vm.name, "uuid": vm.uuid, "family": vm.family,
        "machine_type": vm.machine_type, "accel": vm.accel, "vcpus": vm.vcpus,
        "memory_mib": vm.memory_mib, "firmware": vm.firmware, "uefi_vars": vm.uefi_vars,
        "extra_args": list(vm.extra_args), "netns": vm.netns, "host": vm.host,
        "layout": vm.layout,
        "nics": [{"device": n.device_id, "model": n.model, "mac": n.mac,
                  "backend": n.backend, "target": n.backend_target, "boot": n.is_boot,
                  "rom": n.rom} for n in vm.nics],
        "disks": [{"device": k.device_id, "path": k.path, "size_bytes": k.size_bytes,
                   "format": k.format, "bus": k.bus, "boot": k.boot,
                   "created_image": k.created_image} for k in vm.disks],
        "devices": [{"device": v.device_id, "kind": v.kind, "props": v.props}
                    for v in vm.devices],
    }


def import_vm(session: Session, e: d.VmEntry) -> None:
    """Define a VM that is not there (stopped); one that is must match: VM definitions
    change only through `fleetboot vm`, which keeps the running QEMU in step."""
    existing = session.scalar(select(Instance).where(Instance.name == e.name))
    if existing is not None:
        if _vm_doc(existing) != e.model_dump():
            raise InventoryError("differs from the VM of that name; change a VM with "
                                 "`fleetboot vm` commands, or import it under a new name")
        return
    for nic in e.nics:
        unicast_mac(nic.mac)
        if session.scalar(select(Nic.id).where(Nic.mac == nic.mac)) is not None:
            raise InventoryError(f"MAC {nic.mac} already belongs to another VM")
    vm = Instance(name=e.name, uuid=e.uuid, family=e.family, machine_type=e.machine_type,
                  accel=e.accel, vcpus=e.vcpus, memory_mib=e.memory_mib, firmware=e.firmware,
                  uefi_vars=e.uefi_vars, extra_args=list(e.extra_args), netns=e.netns,
                  host=e.host, layout=e.layout)
    vm.nics = [Nic(device_id=n.device, model=n.model, mac=n.mac, backend=n.backend,
                   backend_target=n.target, is_boot=n.boot, rom=n.rom) for n in e.nics]
    vm.disks = [Disk(device_id=k.device, path=k.path, size_bytes=k.size_bytes,
                     format=k.format, bus=k.bus, boot=k.boot, created_image=k.created_image)
                for k in e.disks]
    vm.devices = [Device(device_id=v.device, kind=v.kind, props=v.props) for v in e.devices]
    session.add(vm)
    session.flush()
