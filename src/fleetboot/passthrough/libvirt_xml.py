"""libvirt XML for passthrough devices (pure, deterministic: same input, same bytes).

Plain devices become ``<hostdev>`` elements that name the host PCI address.
Network devices become ``<interface type='network'>`` elements that name only
a per-instance, per-port network (``fb-<instance uuid>-p<port>``); that
network's own XML holds exactly one host device. Migrating means defining the
same-named network on the target with the target's equivalent device, so the
domain XML does not change by a single byte (seeds/003).
"""

from __future__ import annotations

import hashlib
import uuid as uuidlib
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass

from fleetboot.passthrough.errors import PassthroughError
from fleetboot.passthrough.pci import PciAddress
from fleetboot.passthrough.placement import HOSTDEV, NETWORK_HOSTDEV, NETWORK_PASSTHROUGH


@dataclass(frozen=True)
class PortSpec:
    """One passthrough device of an instance, as the XML needs it."""

    port: int  # the instance's slot/port index: stable for the instance's life
    kind: str
    host_address: str
    netdev: str | None = None  # the host interface, for macvtap passthrough
    mac: str | None = None
    guest_address: PciAddress | None = None  # where the guest sees it, if planned


def network_name(instance_uuid: str, port: int) -> str:
    """The per-instance, per-port network name: the same on every host."""
    return f"fb-{_uuid(instance_uuid)}-p{port}"


def port_mac(instance_uuid: str, port: int) -> str:
    """A stable, locally administered MAC for a port (52:54:00 is QEMU/libvirt's prefix)."""
    digest = hashlib.sha256(f"{_uuid(instance_uuid)}/{port}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def _uuid(text: str) -> str:
    try:
        return str(uuidlib.UUID(text))
    except ValueError:
        raise PassthroughError(f"{text!r} is not an instance UUID (like "
                               "123e4567-e89b-12d3-a456-426614174000)") from None


def _pci_attrs(addr: PciAddress) -> dict[str, str]:
    return {
        "domain": f"0x{addr.domain:04x}",
        "bus": f"0x{addr.bus:02x}",
        "slot": f"0x{addr.slot:02x}",
        "function": f"0x{addr.function:x}",
    }


def _guest_address(parent: ET.Element, spec: PortSpec) -> None:
    if spec.guest_address is not None:
        ET.SubElement(parent, "address", {"type": "pci", **_pci_attrs(spec.guest_address)})


def _serialize(elem: ET.Element) -> str:
    ET.indent(elem, space="  ")
    return ET.tostring(elem, encoding="unicode") + "\n"


# ---------------------------------------------------------------- domain side


def hostdev_element(spec: PortSpec) -> ET.Element:
    elem = ET.Element("hostdev", {"mode": "subsystem", "type": "pci", "managed": "yes"})
    ET.SubElement(elem, "driver", {"name": "vfio"})
    source = ET.SubElement(elem, "source")
    ET.SubElement(source, "address", _pci_attrs(PciAddress.parse(spec.host_address)))
    _guest_address(elem, spec)
    return elem


def interface_element(instance_uuid: str, spec: PortSpec) -> ET.Element:
    elem = ET.Element("interface", {"type": "network"})
    ET.SubElement(elem, "mac", {"address": spec.mac or port_mac(instance_uuid, spec.port)})
    ET.SubElement(elem, "source", {"network": network_name(instance_uuid, spec.port)})
    _guest_address(elem, spec)
    return elem


def device_element(instance_uuid: str, spec: PortSpec) -> ET.Element:
    if spec.kind == HOSTDEV:
        return hostdev_element(spec)
    return interface_element(instance_uuid, spec)


def devices_xml(instance_uuid: str, specs: Sequence[PortSpec]) -> str:
    """The ``<hostdev>``/``<interface>`` elements of an instance, in port order."""
    return "".join(_serialize(device_element(instance_uuid, s))
                   for s in sorted(specs, key=lambda s: s.port))


def domain_xml(
    name: str,
    instance_uuid: str,
    specs: Sequence[PortSpec],
    *,
    memory_mib: int = 512,
    vcpus: int = 1,
    machine: str = "q35",
) -> str:
    """A whole (minimal) domain with the instance's passthrough devices."""
    dom = ET.Element("domain", {"type": "kvm"})
    ET.SubElement(dom, "name").text = name
    ET.SubElement(dom, "uuid").text = _uuid(instance_uuid)
    ET.SubElement(dom, "memory", {"unit": "MiB"}).text = str(memory_mib)
    ET.SubElement(dom, "vcpu").text = str(vcpus)
    os_elem = ET.SubElement(dom, "os")
    ET.SubElement(os_elem, "type", {"arch": "x86_64", "machine": machine}).text = "hvm"
    devices = ET.SubElement(dom, "devices")
    for spec in sorted(specs, key=lambda s: s.port):
        devices.append(device_element(instance_uuid, spec))
    return _serialize(dom)


# ---------------------------------------------------------------- network side


def network_xml(name: str, kind: str, host_address: str, netdev: str | None = None) -> str:
    """A libvirt network holding exactly one device.

    ``hostdev`` forwarding hands the VF itself to the guest (vfio); ``passthrough``
    puts a macvtap in passthrough mode on the device's kernel interface.
    """
    net = ET.Element("network")
    ET.SubElement(net, "name").text = name
    if kind == NETWORK_HOSTDEV:
        forward = ET.SubElement(net, "forward", {"mode": "hostdev", "managed": "yes"})
        ET.SubElement(forward, "driver", {"name": "vfio"})
        ET.SubElement(forward, "address",
                      {"type": "pci", **_pci_attrs(PciAddress.parse(host_address))})
    elif kind == NETWORK_PASSTHROUGH:
        if not netdev:
            raise PassthroughError(f"{host_address} has no kernel network interface; "
                                   "macvtap passthrough needs one (is its driver bound?)")
        forward = ET.SubElement(net, "forward", {"mode": "passthrough"})
        ET.SubElement(forward, "interface", {"dev": netdev})
    else:
        raise PassthroughError(f"{host_address} is attached as {kind!r}, which uses no network")
    return _serialize(net)
