"""The audit log: who changed what, when, with the row before and after.

Changes are recorded by one ``before_flush`` listener on every ORM session, in
the same transaction as the change itself, so a change and its audit entry are
committed (or rolled back) together, whether it came through the API or the
CLI, and no service function has to remember to log. Only sessions running
under an actor (:func:`acting_as`) are audited: the servers' own writes (leases,
states, timelines, which go through Core batches anyway) are not operator
actions.

The actor lives in a context variable: the API sets it per request and the
thread pool running the request's database work inherits it.
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import event, inspect, select
from sqlalchemy.orm import Session

from fleetboot.api.models import ApiToken, AuditEntry
from fleetboot.nodeconfig.sections import SECRET_SECTIONS

_TRACKED_MODULES = frozenset({
    "fleetboot.inventory.models", "fleetboot.nodeconfig.models", "fleetboot.api.models",
    "fleetboot.vm.models", "fleetboot.passthrough.models",
})
# Written by the servers (per packet, per boot) or by this module itself.
_UNTRACKED_TABLES = frozenset({
    "leases", "inventory_revision", "audit_log", "boot_tokens", "node_states",
    "timeline_events",
})
_REDACTED = frozenset({"token_hash", "password", "secret"})


@dataclass(frozen=True)
class Actor:
    who: str  # "token:NAME", "admin-token", "cli:USER"
    via: str = ""  # the request or command line that made the change


_actor: contextvars.ContextVar[Actor | None] = contextvars.ContextVar("fleetboot_actor",
                                                                     default=None)


def current_actor() -> Actor | None:
    return _actor.get()


def set_actor(actor: Actor | None) -> None:
    """Make ``actor`` the author of every change in this context from now on."""
    _actor.set(actor)


@contextlib.contextmanager
def acting_as(actor: Actor) -> Iterator[None]:
    token = _actor.set(actor)
    try:
        yield
    finally:
        _actor.reset(token)


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return value


def _columns(obj: Any, old: bool = False) -> dict[str, Any]:
    state = inspect(obj)
    out: dict[str, Any] = {}
    for attr in state.mapper.column_attrs:
        key = attr.key
        if old:
            hist = state.attrs[key].history
            value = hist.deleted[0] if hist.deleted else (
                hist.unchanged[0] if hist.unchanged else getattr(obj, key, None))
        else:
            value = getattr(obj, key, None)
        out[key] = "(hidden)" if key in _REDACTED else _plain(value)
    if getattr(obj, "__tablename__", "") == "config_sections" and \
            out.get("section") in SECRET_SECTIONS:
        out["data"] = "(hidden)"
    return out


def _target(obj: Any, values: dict[str, Any]) -> str:
    for key in ("name", "mac", "section", "address"):
        if values.get(key):
            owner = values.get("node_id")
            return f"{values[key]}" + (f" (node {owner})" if key == "section" and owner else "")
    return str(values.get("id", "?"))


def _tracked(obj: Any) -> bool:
    return type(obj).__module__ in _TRACKED_MODULES and \
        getattr(obj, "__tablename__", "") not in _UNTRACKED_TABLES


def _record(session: Session, _context: Any, _instances: Any) -> None:
    actor = _actor.get()
    if actor is None:
        return
    now = time.time()
    entries: list[AuditEntry] = []
    for action, objs in (("create", session.new), ("update", session.dirty),
                         ("delete", session.deleted)):
        for obj in list(objs):
            if not _tracked(obj) or (action == "update" and not session.is_modified(obj)):
                continue
            before = None if action == "create" else _columns(obj, old=True)
            after = None if action == "delete" else _columns(obj)
            if before is not None and after is not None and before == after:
                continue
            entries.append(AuditEntry(at=now, actor=actor.who[:127], via=actor.via[:2000],
                                      action=action, kind=type(obj).__tablename__,
                                      target=_target(obj, after or before or {})[:255],
                                      before=before, after=after))
    session.add_all(entries)


def record(session: Session, actor: Actor, action: str, kind: str, target: str,
           before: dict[str, Any] | None, after: dict[str, Any] | None) -> None:
    """An audit entry for a change that is not an ORM row (e.g. a node's state, kept by
    the running server)."""
    session.add(AuditEntry(at=time.time(), actor=actor.who[:127], via=actor.via[:2000],
                           action=action, kind=kind, target=target[:255], before=before,
                           after=after))


def install() -> None:
    """Audit every ORM session of the process (idempotent)."""
    if not event.contains(Session, "before_flush", _record):
        event.listen(Session, "before_flush", _record)


@dataclass(frozen=True)
class AuditView:
    id: int
    at: float
    actor: str
    via: str
    action: str
    kind: str
    target: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None


def list_audit(session: Session, *, limit: int = 100, offset: int = 0,
               actor: str | None = None, kind: str | None = None,
               since: float | None = None) -> list[AuditView]:
    """Newest first."""
    query = select(AuditEntry).order_by(AuditEntry.id.desc())
    if actor:
        query = query.where(AuditEntry.actor == actor)
    if kind:
        query = query.where(AuditEntry.kind == kind)
    if since is not None:
        query = query.where(AuditEntry.at >= since)
    rows = session.scalars(query.limit(limit).offset(offset))
    return [AuditView(r.id, r.at, r.actor, r.via, r.action, r.kind, r.target, r.before,
                      r.after) for r in rows]


__all__ = ["Actor", "ApiToken", "AuditView", "acting_as", "current_actor", "install",
           "list_audit", "record", "set_actor"]
