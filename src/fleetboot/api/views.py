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
from sqlalchemy.orm import Session, selectinload

from fleetboot.inventory.models import Interface, Lease, Node, Subnet
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


def node_page(session: Session, statuses: StatusLookup, *, limit: int, offset: int,
              filters: NodeFilter = NodeFilter()) -> tuple[int, list[dict[str, Any]]]:
    """(total matching, one page of node documents) in name order."""
    total = session.scalar(_filtered(select(func.count(Node.id)), filters)) or 0
    query = _filtered(select(Node), filters).order_by(Node.name).limit(limit).offset(offset)
    query = query.options(selectinload(Node.interfaces), selectinload(Node.default_profile),
                          selectinload(Node.temp_profile), selectinload(Node.next_profile))
    nodes = list(session.scalars(query))
    known = statuses([n.id for n in nodes])
    return int(total), [node_doc(n, known.get(n.id)) for n in nodes]


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
