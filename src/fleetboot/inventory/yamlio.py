"""Inventory as YAML: export everything, import (create or update by name).

The document has the lists ``profiles``, ``subnets`` and ``nodes`` (with their
configuration sections), ``subnets6`` (IPv6, when there are any), the fleet
``defaults``, and ``flavors``, ``passthrough_hosts``, ``vm_hosts`` and ``vms``
(see ``inventory.backup``); an export
imports back to the same inventory. Import is one transaction: a bad entry
aborts it whole, with the entry named in the error.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy.orm import Session

from fleetboot.errors import FleetbootError
from fleetboot.inventory import backup, document, service, service6
from fleetboot.inventory.models import BootAction, BootProfile, Node, Subnet, Subnet6


def _profile_doc(p: BootProfile) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": p.name}
    if p.script is not None:
        doc["script"] = p.script
    else:
        doc.update(kernel=p.kernel, initrd=p.initrd, cmdline=p.cmdline)
    return {k: v for k, v in doc.items() if v not in (None, "")}


def _subnet_doc(s: Subnet) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": s.name, "cidr": s.cidr, "router": s.router, "dns": list(s.dns_servers),
        "domain": s.domain, "lease_seconds": s.lease_seconds, "next_server": s.next_server,
        "mtu": s.mtu,
        "pools": [{"start": p.start, "end": p.end} for p in s.pools],
        "reservations": [
            {k: v for k, v in {"mac": r.mac, "address": r.address, "hostname": r.hostname}.items()
             if v} for r in s.reservations
        ],
    }
    return {k: v for k, v in doc.items() if v not in (None, [], "")}


def _boot_doc(node: Node) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for level in service.LEVELS:
        action = getattr(node, f"{level}_action")
        if action is None:
            continue
        profile = getattr(node, f"{level}_profile")
        doc[level] = profile.name if profile is not None else action.value
    return doc


def _node_doc(session: Session, n: Node, secrets: bool) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": n.name, "arch": n.arch,
        "interfaces": [
            {k: v for k, v in {"mac": i.mac, "name": i.name, "boot": i.is_boot}.items() if v}
            for i in n.interfaces
        ],
        "boot": _boot_doc(n),
    }
    if n.attributes:
        doc["attributes"] = dict(n.attributes)
    if config := backup.config_doc(session, n.name, secrets):
        doc["config"] = config
    return doc


def export_inventory(session: Session, secrets: bool = False) -> str:
    """The whole inventory as YAML; secret configuration only with ``secrets``."""
    doc: dict[str, Any] = {
        "secrets": "included" if secrets else "omitted",
        "profiles": [_profile_doc(p) for p in service.list_profiles(session)],
        "subnets": [_subnet_doc(s) for s in service.list_subnets(session)],
        "nodes": [_node_doc(session, n, secrets) for n in service.list_nodes(session)],
    }
    subnets6 = [_subnet6_doc(s) for s in service6.list_subnets6(session)]
    if subnets6:
        doc["subnets6"] = subnets6
    if defaults := backup.config_doc(session, None, secrets):
        doc["defaults"] = defaults
    for key, docs in (("flavors", backup.flavor_docs(session)),
                      ("passthrough_hosts", backup.host_docs(session)),
                      ("vm_hosts", backup.vm_host_docs(session)),
                      ("vms", backup.vm_docs(session))):
        if docs:
            doc[key] = docs
    return yaml.safe_dump(doc, sort_keys=False)


def import_inventory(session: Session, text: str,
                     boot_root: str | Path | None = None) -> dict[str, int]:
    """Create or update every entry; returns how many of each kind were applied.

    The document is parsed whole first (strict: unknown keys, wrong types and
    duplicates are refused); then each entry goes through the service layer,
    which checks values the way the CLI does. With ``boot_root`` profile files
    must exist there.
    """
    doc = document.parse_document(text)
    omitted = doc.secrets == "omitted"
    appliers: dict[str, Callable[[Any], None]] = {
        "profiles": lambda e: _import_profile(session, e, boot_root),
        "subnets": lambda e: _import_subnet(session, e),
        "subnets6": lambda e: _import_subnet6(session, e),
        "nodes": lambda e: _import_node(session, e, omitted),
        "flavors": lambda e: backup.import_flavor(session, e),
        "passthrough_hosts": lambda e: backup.import_host(session, e),
        "vm_hosts": lambda e: backup.import_vm_host(session, e),
        "vms": lambda e: backup.import_vm(session, e),
    }
    counts = {}
    for kind in document.LISTS:
        entries = getattr(doc, kind)
        for index, entry in enumerate(entries):
            try:
                appliers[kind](entry)
            except (ValueError, FleetbootError) as exc:
                raise service.InventoryError(f"{kind}[{index}] ({entry.name}): {exc}") from None
        if entries or kind in document.KINDS:
            counts[kind] = len(entries)
    if doc.defaults is not None:
        try:
            backup.import_config(session, None, doc.defaults, omitted)
        except FleetbootError as exc:
            raise service.InventoryError(f"defaults: {exc}") from None
    return counts


def _import_profile(session: Session, e: document.ProfileEntry,
                    boot_root: str | Path | None) -> None:
    existing = session.query(BootProfile).filter_by(name=e.name).one_or_none()
    if existing is None:
        service.add_profile(session, e.name, kernel=e.kernel, initrd=e.initrd,
                            cmdline=e.cmdline, script=e.script, boot_root=boot_root)
        return
    same = (existing.kernel, existing.initrd, existing.cmdline or "", existing.script) == (
        e.kernel, e.initrd, e.cmdline, e.script)
    if not same:
        raise service.InventoryError("differs from the existing profile of that name; "
                                     "profiles are immutable, use a new name")


def _import_subnet(session: Session, e: document.SubnetEntry) -> None:
    """Create the subnet or change it in place: its id stays, so leases keep it."""
    options = service.SubnetOptions(e.router, tuple(e.dns), e.domain, e.lease_seconds,
                                    e.next_server, e.mtu)
    existing = session.query(Subnet).filter_by(name=e.name).one_or_none()
    if existing is None:
        service.add_subnet(session, e.name, e.cidr, router=e.router, dns=e.dns,
                           domain=e.domain, lease_seconds=e.lease_seconds,
                           next_server=e.next_server, mtu=e.mtu)
        existing = service.get_subnet(session, e.name)
    else:
        service.set_subnet(session, e.name, options, cidr=e.cidr)
    _sync_ranges(session, existing, e)


def _sync_ranges(session: Session, subnet: Subnet, e: document.SubnetEntry) -> None:
    """Replace the pools and reservations only when they differ (their rows carry no
    lease, so replacing them loses nothing)."""
    have_pools = [(p.start, p.end) for p in subnet.pools]
    have_res = [(r.mac, r.address, r.hostname) for r in subnet.reservations]
    want_pools = [(p.start, p.end) for p in e.pools]
    want_res = [(service.normalize_mac(r.mac), r.address, r.hostname) for r in e.reservations]
    if (have_pools, have_res) == (want_pools, want_res):
        return
    subnet.pools.clear()
    subnet.reservations.clear()
    session.flush()
    for res in e.reservations:
        service.add_reservation(session, e.name, res.mac, res.address, res.hostname)
    for pool in e.pools:
        service.add_pool(session, e.name, pool.start, pool.end)


def _import_node(session: Session, e: document.NodeEntry, secrets_omitted: bool) -> None:
    """Create the node, or update it in place so its own data (configuration
    sections, state, timeline) survives a re-import."""
    nics = [service.NicSpec(service.unicast_mac(i.mac), i.name, i.boot) for i in e.interfaces]
    existing = session.query(Node).filter_by(name=e.name).one_or_none()
    if existing is None:
        service.add_node(session, e.name, nics, arch=e.arch, attributes=e.attributes)
    else:
        existing.arch = service.check_arch(e.arch)
        existing.attributes = dict(e.attributes)
        _sync_interfaces(session, existing, nics)
    for level in service.LEVELS[1:]:  # levels absent from the file are cleared
        service.set_boot(session, e.name, level, None)
    for level, value in e.boot.items():
        if value in {a.value for a in BootAction} and value != BootAction.PROFILE.value:
            service.set_boot(session, e.name, level, BootAction(value))
        else:
            service.set_boot(session, e.name, level, BootAction.PROFILE, profile=value)
    if e.config is not None:
        backup.import_config(session, e.name, e.config, secrets_omitted)


def _sync_interfaces(session: Session, node: Node, nics: list[service.NicSpec]) -> None:
    wanted = {n.mac: n for n in nics}
    for iface in list(node.interfaces):
        if iface.mac not in wanted:
            node.interfaces.remove(iface)
    for iface in node.interfaces:
        iface.is_boot = False
    session.flush()  # the one-boot-NIC index must see the old flags cleared first
    have = {i.mac for i in node.interfaces}
    for nic in nics:
        if nic.mac not in have:
            service.add_interface(session, node.name, service.NicSpec(nic.mac, nic.name))
    boot = next((n.mac for n in nics if n.boot), nics[0].mac if nics else None)
    for iface in node.interfaces:
        iface.name = wanted[iface.mac].name
        iface.is_boot = iface.mac == boot


def _subnet6_doc(s: Subnet6) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": s.name, "prefix": s.prefix, "dns": list(s.dns_servers),
        "domains": list(s.domains), "valid_seconds": s.valid_seconds,
        "preferred_seconds": s.preferred_seconds,
        "pools": [{"start": p.start, "end": p.end} for p in s.pools],
        "reservations": [
            {k: v for k, v in {"mac": r.mac, "duid": r.duid, "address": r.address,
                               "hostname": r.hostname}.items() if v} for r in s.reservations
        ],
    }
    return {k: v for k, v in doc.items() if v not in (None, [], "")}


def _import_subnet6(session: Session, e: document.Subnet6Entry) -> None:
    existing = session.query(Subnet6).filter_by(name=e.name).one_or_none()
    if existing is not None:
        session.delete(existing)
        session.flush()
    service6.add_subnet6(session, e.name, e.prefix, dns=e.dns, domains=e.domains,
                         valid_seconds=e.valid_seconds, preferred_seconds=e.preferred_seconds)
    for pool in e.pools:
        service6.add_pool6(session, e.name, pool.start, pool.end)
    for res in e.reservations:
        service6.add_reservation6(session, e.name, res.address, mac=res.mac, duid=res.duid,
                                  hostname=res.hostname)
