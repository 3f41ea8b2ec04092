"""Inventory as YAML: export everything, import (create or update by name).

The document has three lists, ``profiles``, ``subnets`` and ``nodes`` (and
``subnets6`` for IPv6, exported only when there are any); an export imports
back to the same inventory. Import is one transaction: a bad entry
aborts it whole, with the entry named in the error.
"""

from __future__ import annotations

from typing import Any

import yaml
from sqlalchemy.orm import Session

from fleetboot.inventory import service, service6
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


def _node_doc(n: Node) -> dict[str, Any]:
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
    return doc


def export_inventory(session: Session) -> str:
    doc = {
        "profiles": [_profile_doc(p) for p in service.list_profiles(session)],
        "subnets": [_subnet_doc(s) for s in service.list_subnets(session)],
        "nodes": [_node_doc(n) for n in service.list_nodes(session)],
    }
    subnets6 = [_subnet6_doc(s) for s in service6.list_subnets6(session)]
    if subnets6:
        doc["subnets6"] = subnets6
    return yaml.safe_dump(doc, sort_keys=False)


def import_inventory(session: Session, text: str) -> dict[str, int]:
    """Create or update every entry; returns how many of each kind were applied."""
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise service.InventoryError(f"not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise service.InventoryError("the inventory document must be a mapping with "
                                     "profiles, subnets and nodes lists")
    counts = {}
    for kind, apply in (("profiles", _import_profile), ("subnets", _import_subnet),
                        ("subnets6", _import_subnet6), ("nodes", _import_node)):
        if kind == "subnets6" and kind not in doc:
            continue  # optional: an IPv4-only inventory reports what it always did
        entries = doc.get(kind) or []
        for index, entry in enumerate(entries):
            try:
                apply(session, entry)
            except (KeyError, TypeError, ValueError, service.InventoryError) as exc:
                label = entry.get("name", f"#{index + 1}") if isinstance(entry, dict) else index
                raise service.InventoryError(f"{kind} entry {label}: {_reason(exc)}") from None
        counts[kind] = len(entries)
    return counts


def _reason(exc: Exception) -> str:
    return f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)


def _import_profile(session: Session, e: dict[str, Any]) -> None:
    existing = session.query(BootProfile).filter_by(name=e["name"]).one_or_none()
    if existing is None:
        service.add_profile(session, e["name"], kernel=e.get("kernel"), initrd=e.get("initrd"),
                            cmdline=e.get("cmdline", ""), script=e.get("script"))
        return
    same = (existing.kernel, existing.initrd, existing.cmdline or "", existing.script) == (
        e.get("kernel"), e.get("initrd"), e.get("cmdline", ""), e.get("script"))
    if not same:
        raise service.InventoryError("differs from the existing profile of that name; "
                                     "profiles are immutable, use a new name")


def _import_subnet(session: Session, e: dict[str, Any]) -> None:
    existing = session.query(Subnet).filter_by(name=e["name"]).one_or_none()
    if existing is not None:
        session.delete(existing)
        session.flush()
    service.add_subnet(
        session, e["name"], e["cidr"], router=e.get("router"), dns=e.get("dns", []),
        domain=e.get("domain"), lease_seconds=int(e.get("lease_seconds", 3600)),
        next_server=e.get("next_server"), mtu=e.get("mtu"),
    )
    for pool in e.get("pools", []):
        service.add_pool(session, e["name"], pool["start"], pool["end"])
    for res in e.get("reservations", []):
        service.add_reservation(session, e["name"], res["mac"], res["address"],
                                res.get("hostname"))


def _import_node(session: Session, e: dict[str, Any]) -> None:
    """Create the node, or update it in place so its own data (configuration
    sections, state, timeline) survives a re-import."""
    nics = [service.NicSpec(service.normalize_mac(i["mac"]), i.get("name", ""),
                            bool(i.get("boot"))) for i in e.get("interfaces", [])]
    existing = session.query(Node).filter_by(name=e["name"]).one_or_none()
    if existing is None:
        service.add_node(session, e["name"], nics, arch=e.get("arch", "x86_64"),
                         attributes=e.get("attributes"))
    else:
        existing.arch = e.get("arch", "x86_64")
        existing.attributes = dict(e.get("attributes") or {})
        _sync_interfaces(session, existing, nics)
    for level in service.LEVELS[1:]:  # levels absent from the file are cleared
        service.set_boot(session, e["name"], level, None)
    for level, value in (e.get("boot") or {}).items():
        if value in {a.value for a in BootAction} and value != BootAction.PROFILE.value:
            service.set_boot(session, e["name"], level, BootAction(value))
        else:
            service.set_boot(session, e["name"], level, BootAction.PROFILE, profile=value)


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


def _import_subnet6(session: Session, e: dict[str, Any]) -> None:
    existing = session.query(Subnet6).filter_by(name=e["name"]).one_or_none()
    if existing is not None:
        session.delete(existing)
        session.flush()
    service6.add_subnet6(
        session, e["name"], e["prefix"], dns=e.get("dns", []), domains=e.get("domains", []),
        valid_seconds=int(e.get("valid_seconds", 3600)),
        preferred_seconds=e.get("preferred_seconds"))
    for pool in e.get("pools", []):
        service6.add_pool6(session, e["name"], pool["start"], pool["end"])
    for res in e.get("reservations", []):
        service6.add_reservation6(session, e["name"], res["address"], mac=res.get("mac"),
                                  duid=res.get("duid"), hostname=res.get("hostname"))
