"""Deployments in the database: planned all-or-nothing, updated in place, cancelled.

A deployment never touches a node's boot settings, so cancelling or failing one
leaves them exactly as they were.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleetboot.errors import FleetbootError
from fleetboot.inventory.models import Node
from fleetboot.power.models import power_states
from fleetboot.reload.models import ACTIVE, Deployment, DeployState, utc_now
from fleetboot.reload.store import StoredDisk

TRANSPORTS = ("multicast", "http")


class DeployError(FleetbootError):
    pass


def plan(s: Session, disk: StoredDisk, names: Sequence[str], transport: str,
         session_id: int) -> list[Deployment]:
    """One pending row per node; refuses unknown nodes, nodes whose BMC last reported
    them off, and nodes already deploying."""
    if transport not in TRANSPORTS:
        raise DeployError(f"transport {transport!r}: use multicast or http")
    if not names:
        raise DeployError("name at least one node to deploy")
    if len(set(names)) != len(names):
        raise DeployError("a node is named twice; name each node once")
    nodes = {n.name: n for n in s.scalars(select(Node).where(Node.name.in_(names)))}
    unknown = [n for n in names if n not in nodes]
    if unknown:
        raise DeployError(f"unknown node(s): {', '.join(unknown)}; add them with "
                          "`fleetboot node add` or check `fleetboot node list`")
    off = [name for name in names if power_states(s).get(nodes[name].id) == "off"]
    if off:
        raise DeployError(f"powered off (their BMC last said so): {', '.join(off)}; power "
                          f"them on first (`fleetboot power on {' '.join(off)}`)")
    busy = s.scalars(select(Deployment).where(
        Deployment.node_id.in_([n.id for n in nodes.values()]),
        Deployment.state.in_([a.value for a in ACTIVE]))).all()
    if busy:
        by_id = {n.id: n.name for n in nodes.values()}
        raise DeployError("already being deployed: " + ", ".join(
            f"{by_id[d.node_id]} (deployment {d.id})" for d in busy)
            + "; cancel with `fleetboot deploy cancel NODE`")
    m = disk.manifest
    rows = [Deployment(node_id=nodes[name].id, image_id=m.image_id, image_name=m.name,
                       transport=transport, session=session_id,
                       state=DeployState.PENDING.value) for name in names]
    s.add_all(rows)
    s.flush()
    return rows


def finish(s: Session, ids: Iterable[int], outcome: dict[int, tuple[DeployState, int, str]]
           ) -> None:
    """Record each deployment's end (state, percent, reason); cancelled rows stay cancelled."""
    for d in s.scalars(select(Deployment).where(Deployment.id.in_(list(ids)))):
        if d.state == DeployState.CANCELLED.value:
            continue
        state, percent, reason = outcome[d.id]
        d.state, d.percent, d.reason = state.value, percent, reason
        if state not in ACTIVE:
            d.finished_at = utc_now()


def cancelled(s: Session, ids: Iterable[int]) -> bool:
    """True when every one of these deployments was cancelled."""
    states = s.scalars(select(Deployment.state).where(Deployment.id.in_(list(ids)))).all()
    return bool(states) and all(x == DeployState.CANCELLED.value for x in states)


def cancel(s: Session, names: Sequence[str]) -> list[tuple[str, Deployment]]:
    """Cancel the active deployments of these nodes (all active ones when none named)."""
    q = select(Node.name, Deployment).join(Node, Node.id == Deployment.node_id).where(
        Deployment.state.in_([a.value for a in ACTIVE]))
    if names:
        q = q.where(Node.name.in_(names))
    found = [(name, d) for name, d in s.execute(q).all()]
    for _, d in found:
        d.state, d.reason, d.finished_at = DeployState.CANCELLED.value, "cancelled", utc_now()
    return found


def history(s: Session, node: str | None = None, limit: int = 50
            ) -> list[tuple[str, Deployment]]:
    q = select(Node.name, Deployment).join(Node, Node.id == Deployment.node_id)
    if node is not None:
        q = q.where(Node.name == node)
    q = q.order_by(Deployment.id.desc()).limit(limit)
    return [(name, d) for name, d in s.execute(q).all()]
