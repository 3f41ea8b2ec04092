"""The per-port networks made real in each host's libvirtd (through libvirt's API).

The inventory is the truth and libvirt follows it: :func:`sync_networks` makes
a host's libvirtd hold exactly the ``fb-*`` networks its rows describe
(defining what is missing or differs, undefining the rest), so a crash between
a database commit and a libvirt call is healed by the next sync. Networks not
named by Fleetboot are never touched. A host without a libvirt URI keeps its
networks as rows only, and every caller says so.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from fleetboot.inventory.db import Database
from fleetboot.passthrough import claims, hosts
from fleetboot.passthrough.errors import PassthroughError
from fleetboot.passthrough.networks import host_networks

OWNED_PREFIX = "fb-"


class LibvirtError(PassthroughError):
    """libvirtd could not be reached or refused a network operation."""


@dataclass
class SyncReport:
    host: str
    uri: str | None
    defined: list[str] = field(default_factory=list)
    undefined: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if self.uri is None:
            return (f"{self.host}: networks recorded only (the host has no libvirt URI: "
                    f"fleetboot host scan {self.host} --libvirt URI)")
        return (f"{self.host}: libvirt {len(self.defined)} defined, "
                f"{len(self.undefined)} removed")


@contextmanager
def connection(uri: str) -> Iterator[Any]:
    try:
        import libvirt  # the binding compiles against Debian's libvirt-dev
    except ImportError as exc:
        raise LibvirtError("the libvirt Python binding is missing: run make deps") from exc
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise LibvirtError(f"cannot reach libvirtd at {uri}: {exc}") from None
    try:
        yield conn
    except libvirt.libvirtError as exc:
        raise LibvirtError(f"libvirtd at {uri}: {exc}") from None
    finally:
        conn.close()


def defined_networks(uri: str) -> dict[str, str]:
    """Fleetboot's networks in that libvirtd: name -> XML as libvirt holds it."""
    with connection(uri) as conn:
        return {net.name(): net.XMLDesc(0) for net in conn.listAllNetworks()
                if net.name().startswith(OWNED_PREFIX)}


def same_network(ours: str, theirs: str) -> bool:
    """Whether libvirt's XML (which adds a uuid, a ``dev`` on the forward, hex forms...)
    forwards to the same devices in the same mode as ours."""
    return _forward_key(ours) == _forward_key(theirs)


def _forward_key(text: str) -> tuple[str, tuple[tuple[int, ...], ...], tuple[str, ...]]:
    node = ET.fromstring(text).find("forward")
    if node is None:
        return "", (), ()
    addresses = tuple(sorted(
        tuple(int(a.get(k, "0"), 0) for k in ("domain", "bus", "slot", "function"))
        for a in node.findall("address")))
    interfaces = tuple(sorted(i.get("dev", "") for i in node.findall("interface")))
    return node.get("mode", ""), addresses, interfaces


def sync_networks(db: Database, host_name: str) -> SyncReport:
    """Make the host's libvirtd hold exactly its networks rows (see the module doc)."""
    with db.session() as session:
        host = hosts.get_host(session, host_name)
        uri = host.libvirt_uri
        wanted = {n.name: n.xml for n in host_networks(session, host.id)}
    report = SyncReport(host_name, uri)
    if uri is None:
        return report
    with connection(uri) as conn:
        present = {net.name(): net for net in conn.listAllNetworks()
                   if net.name().startswith(OWNED_PREFIX)}
        for name, net in sorted(present.items()):
            if name not in wanted or not same_network(wanted[name], net.XMLDesc(0)):
                _remove(net)
                report.undefined.append(name)
        for name, text in sorted(wanted.items()):
            if name not in present or name in report.undefined:
                conn.networkDefineXML(text)
                report.defined.append(name)
    report.undefined = [n for n in report.undefined if n not in report.defined]
    return report


def _remove(net: Any) -> None:
    if net.isActive():
        net.destroy()
    net.undefine()


def attach(db: Database, instance_uuid: str) -> tuple[claims.Attachment, SyncReport]:
    """Allocate the instance's claims and define their networks in the host's libvirtd."""
    attachment = claims.attach(db, instance_uuid)
    try:
        return attachment, sync_networks(db, attachment.host)
    except LibvirtError as exc:
        raise LibvirtError(f"{exc}; the devices stay allocated: run `fleetboot host sync "
                           f"{attachment.host}` once libvirtd answers") from None


def release(db: Database, instance_uuid: str) -> tuple[list[str], list[SyncReport]]:
    """Free the instance's devices and remove their networks from the hosts' libvirtd."""
    held = {d.host for d in claims.instance_devices(db, instance_uuid)}
    held |= {d.host for d in claims.instance_devices(db, instance_uuid, incoming=True)}
    freed = claims.release(db, instance_uuid)
    return freed, [sync_networks(db, host) for host in sorted(held)]


def check_networks(db: Database, host_name: str, names: list[str]) -> list[str]:
    """Problems with ``names`` in the host's libvirtd: missing, or holding other devices."""
    with db.session() as session:
        host = hosts.get_host(session, host_name)
        uri = host.libvirt_uri
        wanted = {n.name: n.xml for n in host_networks(session, host.id) if n.name in names}
    if uri is None:
        return []
    present = defined_networks(uri)
    return [f"{name}: {'missing' if name not in present else 'holds another device'} in "
            f"{host_name}'s libvirtd" for name in names
            if name not in present or not same_network(wanted.get(name, ""), present[name])]
