"""Power settings in the inventory, and power operations recorded on nodes' timelines.

Settings are written through ORM sessions (a configuration change bumps the
inventory revision); what BMCs answer is written with Core statements on the
engine, like the timeline writer, so polling never makes servers reload.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from fleetboot.inventory import service as inventory
from fleetboot.inventory.db import Database
from fleetboot.inventory.models import Node
from fleetboot.nodeconfig.models import NodeStateRow, TimelineEvent
from fleetboot.nodeconfig.states import State
from fleetboot.power.bulk import BulkRunner, BulkSettings
from fleetboot.power.core import (
    BRINGS_UP,
    ComeBack,
    ConfigError,
    Credentials,
    DriverName,
    Operation,
    Outcome,
    Target,
    came_back,
    parse_driver,
)
from fleetboot.power.models import PowerSetting
from fleetboot.power.secrets import SecretBox

if TYPE_CHECKING:
    from fleetboot.vm.service import VmService

TIMELINE_SOURCE = "power"
_seq = itertools.count(int(time.time() * 1_000_000))


@dataclass(frozen=True)
class PowerInfo:
    """A node's power settings as shown to people: never the password itself."""

    node: str
    driver: str
    address: str
    port: int | None
    username: str | None
    has_password: bool
    ca_file: str | None
    system: str | None
    state: str | None
    state_at: float | None
    last_answer: str | None


def configure(session: Session, box: SecretBox, node_name: str, driver: str, *,
              address: str | None = None, port: int | None = None,
              username: str | None = None, password: str | None = None,
              ca_file: str | None = None, system: str | None = None) -> PowerSetting:
    """Create or replace a node's power settings (a password of None keeps the stored one)."""
    node = inventory.get_node(session, node_name)
    kind = parse_driver(driver)
    if kind is DriverName.QMP:
        address = address or node.name  # the VM's name
    if not address:
        raise ConfigError(f"the {kind.value} driver needs --address (the BMC's host name or IP)")
    if port is not None and not 0 < port < 65536:
        raise ConfigError(f"--port {port} is not a port number (1-65535)")
    if ca_file is not None:
        if kind is not DriverName.REDFISH:
            raise ConfigError("--ca-file is for the redfish driver (HTTPS) only")
        path = Path(ca_file)
        if not path.is_file():
            raise ConfigError(f"the CA file {ca_file} does not exist")
        ca_file = str(path.resolve())
    row = session.get(PowerSetting, node.id)
    if row is None:
        row = PowerSetting(node_id=node.id)
        session.add(row)
    row.driver, row.address, row.port = kind.value, address, port
    row.username, row.ca_file, row.system = username, ca_file, system
    if password is not None:
        row.secret = box.seal(password)
    if kind is not DriverName.QMP and (row.username is None or row.secret is None):
        raise ConfigError(f"the {kind.value} driver needs --username and a password "
                          "(--password-file or --password-env)")
    row.state = row.state_at = row.last_answer = None
    return row


def unset(session: Session, node_name: str) -> None:
    node = inventory.get_node(session, node_name)
    row = session.get(PowerSetting, node.id)
    if row is None:
        raise ConfigError(f"{node_name} has no power settings")
    session.delete(row)


def describe(session: Session, names: Sequence[str] | None = None) -> list[PowerInfo]:
    query = select(Node.name, PowerSetting).join(PowerSetting, PowerSetting.node_id == Node.id)
    if names:
        query = query.where(Node.name.in_(names))
    return [PowerInfo(name, r.driver, r.address, r.port, r.username, r.secret is not None,
                      r.ca_file, r.system, r.state, r.state_at, r.last_answer)
            for name, r in session.execute(query.order_by(Node.name))]


def select_nodes(session: Session, names: Sequence[str], *, every: bool = False,
                 states: Sequence[str] = ()) -> list[tuple[int, str]]:
    """(id, name) of the nodes named, or all, or those in the given node states."""
    if not names and not every and not states:
        raise ConfigError("name nodes, or choose them with --all or --state STATE")
    wanted: dict[int, str] = {}
    for name in names:
        node = inventory.get_node(session, name)
        wanted[node.id] = node.name
    if every or states:
        rows = session.execute(select(Node.id, Node.name, NodeStateRow.state)
                               .outerjoin(NodeStateRow, NodeStateRow.node_id == Node.id)
                               .order_by(Node.name)).all()
        want_states = {_parse_state(s) for s in states}
        for node_id, name, st in rows:
            if every or (st or State.OFF.value) in want_states:
                wanted.setdefault(int(node_id), name)
    return list(wanted.items())


def _parse_state(text: str) -> str:
    try:
        return State(text.upper()).value
    except ValueError:
        names = ", ".join(s.value for s in State)
        raise ConfigError(f"unknown node state {text!r}; use one of {names}") from None


def targets(session: Session, box: Callable[[], SecretBox],
            nodes: Sequence[tuple[int, str]]) -> tuple[list[Target], list[str]]:
    """Targets of the nodes that have power settings, and the names of those that have none."""
    ids = [n for n, _ in nodes]
    rows = {r.node_id: r for r in session.scalars(
        select(PowerSetting).where(PowerSetting.node_id.in_(ids)))}
    found, missing = [], []
    opened: SecretBox | None = None
    for node_id, name in nodes:
        row = rows.get(node_id)
        if row is None:
            missing.append(name)
            continue
        password = None
        if row.secret is not None:
            opened = opened or box()
            password = opened.open(row.secret)
        found.append(Target(name, node_id, DriverName(row.driver), row.address, row.port,
                            Credentials(row.username, password), row.ca_file, row.system))
    return found, missing


def record(db: Database, outcomes: Sequence[Outcome], now: float | None = None,
           timeline: Sequence[Outcome] | None = None) -> None:
    """Remember each BMC's answer; put ``timeline`` (default: every outcome) on timelines."""
    if not outcomes:
        return
    now = time.time() if now is None else now
    events = outcomes if timeline is None else timeline
    with db.engine.begin() as conn:
        ids = [o.node_id for o in events]
        current = {int(n): (int(b), s) for n, b, s in conn.execute(
            select(NodeStateRow.node_id, NodeStateRow.boot, NodeStateRow.state)
            .where(NodeStateRow.node_id.in_(ids)))}
        alive = set(conn.scalars(select(Node.id).where(Node.id.in_(ids))))
        rows = [_event_row(o, now, current.get(o.node_id, (0, None)))
                for o in events if o.node_id in alive]
        if rows:
            conn.execute(insert(TimelineEvent), rows)
        for o in outcomes:
            values: dict[str, Any] = {"state_at": now, "last_answer": _answer(o)}
            if o.ok:
                values["state"] = o.state.value
                if o.operation in BRINGS_UP:
                    values["action"], values["action_at"] = o.operation.value, now
                elif o.operation is Operation.OFF:
                    values["action"] = values["action_at"] = None
            conn.execute(update(PowerSetting).where(PowerSetting.node_id == o.node_id)
                         .values(**values))


def _answer(o: Outcome) -> str:
    return f"{o.operation.value}: {o.state.value}" if o.ok else f"{o.operation.value}: {o.error}"


def _event_row(o: Outcome, now: float, current: tuple[int, str | None]) -> dict[str, Any]:
    boot, state = current
    detail: dict[str, Any] = {"ok": o.ok, "power": o.state.value, "attempts": o.attempts,
                              "duration_s": round(o.seconds, 3)}
    if not o.ok:
        detail["error"] = o.error
        detail["reason"] = o.reason
    return {"node_id": o.node_id, "boot": boot, "at": now, "seq": next(_seq),
            "source": TIMELINE_SOURCE, "kind": o.operation.value, "mac": None,
            "address": None, "state": state, "detail": detail}


async def run(db: Database, box: Callable[[], SecretBox], nodes: Sequence[tuple[int, str]],
              operation: Operation, settings: BulkSettings,
              vms: Callable[[], VmService] | None = None,
              ) -> tuple[list[Outcome], list[str]]:
    """Run ``operation`` on the nodes' BMCs, record every outcome; (outcomes, unconfigured)."""
    with db.session() as s:
        found, missing = targets(s, box, nodes)
    outcomes = await BulkRunner(settings, vms).run(found, operation)
    record(db, outcomes)
    return outcomes, missing


def flag_not_back(db: Database, now: float, limit_s: float) -> list[str]:
    """Flag nodes not UP within ``limit_s`` of a power action that should have brought
    them up: a ``power``/``not-back`` timeline event with the BMC's last answer. Returns
    the flagged node names. Each action is flagged (or found back) once."""
    flagged: list[str] = []
    with db.engine.begin() as conn:
        rows = conn.execute(
            select(PowerSetting.node_id, Node.name, PowerSetting.action, PowerSetting.action_at,
                   PowerSetting.last_answer, NodeStateRow.state, NodeStateRow.since,
                   NodeStateRow.boot)
            .join(Node, Node.id == PowerSetting.node_id)
            .outerjoin(NodeStateRow, NodeStateRow.node_id == PowerSetting.node_id)
            .where(PowerSetting.action_at.is_not(None))).all()
        for node_id, name, action, action_at, answer, st, since, boot in rows:
            at = float(action_at or 0.0)  # not None: the query asked for set ones
            verdict = came_back(at, st, since, now, limit_s)
            if verdict is ComeBack.WAIT:
                continue
            conn.execute(update(PowerSetting).where(PowerSetting.node_id == node_id)
                         .values(action=None, action_at=None))
            if verdict is ComeBack.FLAG:
                flagged.append(name)
                conn.execute(insert(TimelineEvent), [{
                    "node_id": node_id, "boot": int(boot or 0), "at": now, "seq": next(_seq),
                    "source": TIMELINE_SOURCE, "kind": "not-back", "mac": None,
                    "address": None, "state": st,
                    "detail": {"action": action, "after_s": round(now - at, 1),
                               "node_state": st or "OFF", "bmc_last_answer": answer}}])
    return flagged
