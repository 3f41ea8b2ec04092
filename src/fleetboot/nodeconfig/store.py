"""Configuration sections in the database: set, show, unset; and loading the facts
every document is rendered from.

Section writes go through ORM sessions so they bump the inventory revision
(running servers then re-render). ``load_facts`` reads everything with a few
Core queries: rendering 10,000 nodes must not build 10,000 ORM objects.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleetboot.inventory.models import Interface, Node, Reservation, Subnet
from fleetboot.inventory.service import get_node
from fleetboot.nodeconfig.errors import NodeConfigError
from fleetboot.nodeconfig.models import ConfigSection
from fleetboot.nodeconfig.render import FleetFacts, NicFacts, NodeFacts, fleet_hosts
from fleetboot.nodeconfig.sections import SECTIONS, validate_section


def _node_id(session: Session, node: str | None) -> int | None:
    return None if node is None else get_node(session, node).id


def _row(session: Session, node_id: int | None, section: str) -> ConfigSection | None:
    cond = ConfigSection.node_id.is_(None) if node_id is None else (
        ConfigSection.node_id == node_id)
    return session.scalar(select(ConfigSection).where(cond, ConfigSection.section == section))


def set_section(session: Session, node: str | None, section: str, value: Any) -> Any:
    """Validate and store ``section`` for ``node`` (None: the fleet default)."""
    normalised = validate_section(section, value)
    node_id = _node_id(session, node)
    row = _row(session, node_id, section)
    if row is None:
        session.add(ConfigSection(node_id=node_id, section=section, data=normalised))
    else:
        row.data = normalised
    session.flush()
    return normalised


def unset_section(session: Session, node: str | None, section: str) -> None:
    if section not in SECTIONS:
        raise NodeConfigError(f"unknown section {section!r}; sections are: {', '.join(SECTIONS)}")
    row = _row(session, _node_id(session, node), section)
    if row is None:
        where = f"node {node}" if node else "the fleet defaults"
        raise NodeConfigError(f"{where} has no section {section} set")
    session.delete(row)


def stored_sections(session: Session, node: str | None) -> dict[str, Any]:
    """The sections set for ``node`` itself (None: the defaults), as stored."""
    node_id = _node_id(session, node)
    cond = ConfigSection.node_id.is_(None) if node_id is None else (
        ConfigSection.node_id == node_id)
    rows = session.execute(select(ConfigSection.section, ConfigSection.data).where(cond))
    return {name: data for name, data in rows}


# --- facts for rendering -----------------------------------------------------------------


@dataclass(frozen=True)
class _SubnetFacts:
    prefix: int
    router: str | None
    mtu: int | None
    domain: str | None
    dns: tuple[str, ...]


def _subnets(session: Session) -> dict[int, _SubnetFacts]:
    rows = session.execute(select(Subnet.id, Subnet.cidr, Subnet.router, Subnet.mtu,
                                  Subnet.domain, Subnet.dns_servers))
    return {sid: _SubnetFacts(ipaddress.IPv4Network(cidr).prefixlen, router, mtu, domain,
                              tuple(dns or ()))
            for sid, cidr, router, mtu, domain, dns in rows}


def _reservations(session: Session) -> dict[str, tuple[str, int, str | None]]:
    rows = session.execute(select(Reservation.mac, Reservation.address, Reservation.subnet_id,
                                  Reservation.hostname))
    return {mac: (addr, sid, host) for mac, addr, sid, host in rows}


def _nic(row: Any, reserved: dict[str, tuple[str, int, str | None]],
         subnets: dict[int, _SubnetFacts]) -> NicFacts:
    _node_id, mac, name, is_boot = row
    res = reserved.get(mac)
    if res is None or res[1] not in subnets:
        return NicFacts(mac, name or "", bool(is_boot))
    sub = subnets[res[1]]
    return NicFacts(mac, name or "", bool(is_boot), res[0], sub.prefix, sub.router, sub.mtu,
                    sub.domain, sub.dns)


def load_facts(session: Session, with_fleet_hosts: bool = False, only: int | None = None,
               ) -> tuple[list[NodeFacts], FleetFacts]:
    """Every node's facts (or only node ``only``'s) and the fleet-wide facts, in five queries."""
    subnets, reserved = _subnets(session), _reservations(session)
    nic_q = select(Interface.node_id, Interface.mac, Interface.name, Interface.is_boot)
    sec_q = select(ConfigSection.node_id, ConfigSection.section, ConfigSection.data)
    node_q = select(Node.id, Node.name, Node.attributes).order_by(Node.id)
    if only is not None:
        nic_q = nic_q.where(Interface.node_id == only)
        sec_q = sec_q.where((ConfigSection.node_id == only) | ConfigSection.node_id.is_(None))
        node_q = node_q.where(Node.id == only)
    nics: dict[int, list[NicFacts]] = defaultdict(list)
    for row in session.execute(nic_q.order_by(Interface.id)):
        nics[row[0]].append(_nic(row, reserved, subnets))
    own: dict[int, dict[str, Any]] = defaultdict(dict)
    defaults: dict[str, Any] = {}
    for node_id, section, data in session.execute(sec_q):
        (defaults if node_id is None else own[node_id])[section] = data
    nodes = [NodeFacts(nid, name, tuple(nics.get(nid, ())), attrs or {}, own.get(nid, {}))
             for nid, name, attrs in session.execute(node_q)]
    hosts = _hosts(nodes, subnets, reserved) if with_fleet_hosts else ()
    return nodes, FleetFacts(defaults, hosts)


def _hosts(nodes: Sequence[NodeFacts], subnets: dict[int, _SubnetFacts],
           reserved: dict[str, tuple[str, int, str | None]]) -> tuple[dict[str, Any], ...]:
    pairs, domains = [], {}
    for node in nodes:
        for nic in node.nics:
            if nic.address:
                pairs.append((node.name, nic.address))
                if nic.domain:
                    domains[nic.address] = nic.domain
    for addr, sid, host in reserved.values():
        if host:
            pairs.append((host, addr))
            if sid in subnets and subnets[sid].domain:
                domains[addr] = subnets[sid].domain or ""
    return fleet_hosts(pairs, domains)
