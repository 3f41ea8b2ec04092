"""Read models shared by the API, the web view and the CLI: pages of nodes with their
state, pool use per subnet. Every function takes an open session; no rule here is
also coded in a caller.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, aliased, selectinload

from fleetboot.inventory.models import BootAction, BootProfile, Interface, Lease, Node, Subnet
from fleetboot.inventory.service import LEVELS, list_leases
from fleetboot.nodeconfig.models import NodeStateRow
from fleetboot.nodeconfig.states import NodeStatus, State
from fleetboot.nodeconfig.timeline import _status as row_status

StatusLookup = Callable[[list[int]], Mapping[int, NodeStatus]]


def status_doc(st: NodeStatus | None) -> dict[str, Any]:
    if st is None:
        return {"state": State.OFF.value, "since": None, "boot_number": 0, "address": None,
                "last_boot_s": None, "stuck": False, "message": ""}
    return {"state": st.state.value, "since": st.since or None, "boot_number": st.boot,
            "address": st.address, "last_boot_s": st.last_boot_s, "stuck": st.stuck,
            "message": st.message}


def node_doc(node: Node, st: NodeStatus | None) -> dict[str, Any]:
    boot: dict[str, Any] = {}
    for level in LEVELS:
        action = getattr(node, f"{level}_action")
        profile = getattr(node, f"{level}_profile")
        boot[level] = None if action is None else {
            "action": action.value, "profile": profile.name if profile else None}
    return {"name": node.name, "arch": node.arch,
            "interfaces": [{"mac": i.mac, "name": i.name, "boot": i.is_boot}
                           for i in node.interfaces],
            "boot": boot, "attributes": dict(node.attributes or {}), **status_doc(st)}


def stored_statuses(session: Session) -> StatusLookup:
    """Node states as the server last wrote them (for use without a running server)."""
    def lookup(ids: list[int]) -> Mapping[int, NodeStatus]:
        if not ids:
            return {}
        rows = session.scalars(select(NodeStateRow).where(NodeStateRow.node_id.in_(ids)))
        return {row.node_id: row_status(row) for row in rows}
    return lookup


@dataclass(frozen=True)
class NodeFilter:
    q: str | None = None  # part of the name
    state: str | None = None
    arch: str | None = None
    mac: str | None = None


def _filtered(query: Any, f: NodeFilter) -> Any:
    if f.q:
        query = query.where(Node.name.contains(f.q, autoescape=True))
    if f.arch:
        query = query.where(Node.arch == f.arch)
    if f.mac:
        query = query.where(Node.id.in_(select(Interface.node_id).where(
            Interface.mac == f.mac.lower())))
    if f.state:
        wanted = f.state.upper()
        query = query.outerjoin(NodeStateRow, NodeStateRow.node_id == Node.id)
        if wanted == State.OFF.value:
            query = query.where(or_(NodeStateRow.state.is_(None), NodeStateRow.state == wanted))
        else:
            query = query.where(NodeStateRow.state == wanted)
    return query


InventoryRow = tuple[int, dict[str, Any]]  # (node id, the node's document without state)


def inventory_page(session: Session, *, limit: int, offset: int,
                   filters: NodeFilter = NodeFilter()) -> tuple[int, list[InventoryRow]]:
    """(total matching, one page of nodes) in name order, without their states.

    Three plain queries (count, the page with its profiles joined, the page's
    interfaces) and no ORM objects: a page costs the same with 100 or 10,000 nodes.
    """
    total = session.scalar(_filtered(select(func.count(Node.id)), filters)) or 0
    profiles = [aliased(BootProfile) for _ in LEVELS]
    query = select(Node.id, Node.name, Node.arch, Node.attributes,
                   *[getattr(Node, f"{level}_action") for level in LEVELS],
                   *[p.name for p in profiles])
    for level, prof in zip(LEVELS, profiles, strict=True):
        query = query.outerjoin(prof, prof.id == getattr(Node, f"{level}_profile_id"))
    rows = session.execute(_filtered(query, filters).order_by(Node.name)
                           .limit(limit).offset(offset)).all()
    ids = [row[0] for row in rows]
    nics: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    if ids:
        for node_id, mac, name, is_boot in session.execute(
                select(Interface.node_id, Interface.mac, Interface.name, Interface.is_boot)
                .where(Interface.node_id.in_(ids)).order_by(Interface.id)):
            nics[node_id].append({"mac": mac, "name": name, "boot": bool(is_boot)})
    n = len(LEVELS)
    page = []
    for row in rows:
        actions, names = row[4:4 + n], row[4 + n:4 + 2 * n]
        boot = {level: None if action is None else {
                    "action": BootAction(action).value, "profile": prof}
                for level, action, prof in zip(LEVELS, actions, names, strict=True)}
        page.append((row[0], {"name": row[1], "arch": row[2], "interfaces": nics[row[0]],
                              "boot": boot, "attributes": dict(row[3] or {})}))
    return int(total), page


def with_states(page: list[InventoryRow], statuses: StatusLookup) -> list[dict[str, Any]]:
    known = statuses([node_id for node_id, _ in page])
    return [{**doc, **status_doc(known.get(node_id))} for node_id, doc in page]


def node_page(session: Session, statuses: StatusLookup, *, limit: int, offset: int,
              filters: NodeFilter = NodeFilter()) -> tuple[int, list[dict[str, Any]]]:
    """(total matching, one page of node documents with their states) in name order."""
    total, page = inventory_page(session, limit=limit, offset=offset, filters=filters)
    return total, with_states(page, statuses)


def db_state_counts(session: Session) -> dict[str, int]:
    """Nodes per state as the server last stored them (every state present)."""
    counts = {s.value: 0 for s in State}
    total = int(session.scalar(select(func.count(Node.id))) or 0)
    for state, n in session.execute(select(NodeStateRow.state, func.count())
                                    .group_by(NodeStateRow.state)):
        key = state if state in counts else State.OFF.value
        counts[key] += int(n)
    counts[State.OFF.value] += total - sum(counts.values())
    return counts


def state_counts(node_ids: list[int], statuses: Mapping[int, NodeStatus]) -> dict[str, int]:
    """Nodes per state, every state present (0 included)."""
    counts = {s.value: 0 for s in State}
    for node_id in node_ids:
        st = statuses.get(node_id)
        counts[st.state.value if st else State.OFF.value] += 1
    return counts


@dataclass(frozen=True)
class PoolUse:
    subnet: str
    cidr: str
    start: str
    end: str
    size: int
    leased: int

    @property
    def percent(self) -> float:
        return round(100.0 * self.leased / self.size, 1) if self.size else 0.0


def pool_use(session: Session, now: float) -> list[PoolUse]:
    """Every pool with its size and the active leases inside it (as last made durable)."""
    active = [ipaddress.IPv4Address(v.address)
              for v in list_leases(session, now=now)]
    out = []
    for sub in session.scalars(select(Subnet).options(selectinload(Subnet.pools))
                               .order_by(Subnet.name)):
        for p in sub.pools:
            lo, hi = ipaddress.IPv4Address(p.start), ipaddress.IPv4Address(p.end)
            out.append(PoolUse(sub.name, sub.cidr, p.start, p.end, int(hi) - int(lo) + 1,
                               sum(1 for a in active if lo <= a <= hi)))
    return out


def lease_count(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(Lease)) or 0)
