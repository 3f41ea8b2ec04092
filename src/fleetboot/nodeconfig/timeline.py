"""Boot timelines, node states and tokens on disk: one batching writer, and the queries.

The packet and HTTP paths never wait for the database: they hand records to
``BatchWriter``, which commits everything gathered in the last interval in
one transaction on a worker thread (Core statements on the engine, so the
inventory revision is not bumped). Retention is bounded twice: at most
``per_node`` events per node and ``total`` events overall; the oldest go first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session

from fleetboot.inventory.db import Database
from fleetboot.inventory.models import Node
from fleetboot.nodeconfig.models import BootToken, NodeStateRow, TimelineEvent
from fleetboot.nodeconfig.states import NodeStatus, State
from fleetboot.nodeconfig.tokens import TokenChanges, TokenRecord

log = logging.getLogger("fleetboot.nodeconfig.timeline")


@dataclass(frozen=True)
class EventRecord:
    """One timeline row, as the writer receives it and the readers return it."""

    node_id: int
    boot: int
    at: float
    seq: int
    source: str
    kind: str
    mac: str | None = None
    address: str | None = None
    state: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "boot": self.boot, "at": self.at, "seq": self.seq,
                "source": self.source, "kind": self.kind, "mac": self.mac,
                "address": self.address, "state": self.state, "detail": self.detail}


@dataclass
class Retention:
    per_node: int = 2000
    total: int = 1_000_000
    slack: float = 0.1  # prune only once a limit is passed by this fraction: batches deletes


@dataclass
class _Batch:
    events: list[EventRecord] = field(default_factory=list)
    states: dict[int, NodeStatus] = field(default_factory=dict)
    tokens: list[TokenChanges] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.events or self.states or self.tokens or self.expired)


def _state_row(node_id: int, st: NodeStatus) -> dict[str, Any]:
    return {"node_id": node_id, "state": st.state.value, "since": st.since, "boot": st.boot,
            "boot_started": st.boot_started, "last_boot_s": st.last_boot_s,
            "address": st.address, "stuck": st.stuck, "message": st.message[:2000]}


def _token_row(rec: TokenRecord) -> dict[str, Any]:
    return {"node_id": rec.node_id, "token_hash": rec.hash, "mac": rec.mac,
            "address": rec.address, "issued_at": rec.issued_at, "expires_at": rec.expires_at}


_UPDATE_STATE = (
    update(NodeStateRow).where(NodeStateRow.node_id == bindparam("b_node_id"))
    .values({c: bindparam(c) for c in ("state", "since", "boot", "boot_started", "last_boot_s",
                                       "address", "stuck", "message")}))


class BatchWriter:
    """Collects records on the event loop; writes them in batches on a worker thread."""

    def __init__(self, db: Database, retention: Retention | None = None,
                 interval_s: float = 0.25, max_pending: int = 200_000) -> None:
        self.db = db
        self.retention = retention or Retention()
        self.interval_s = interval_s
        self._events: deque[EventRecord] = deque(maxlen=max_pending)
        self._batch = _Batch()
        self._counts: dict[int, int] = {}
        self._total = 0
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # one batch at a time: the counts live on the worker
        self._mutex = threading.Lock()  # producers on other threads vs. taking a batch
        self._stopping = False
        self.dropped = 0  # events lost because the database lagged too far behind
        self.written = 0
        self.failures = 0

    # --- producers (event loop, never block) ---

    def event(self, record: EventRecord) -> None:
        if len(self._events) == self._events.maxlen:
            self.dropped += 1
        self._events.append(record)

    def state(self, node_id: int, status: NodeStatus) -> None:
        with self._mutex:
            self._batch.states[node_id] = status

    def tokens(self, changes: TokenChanges) -> None:
        # Called from the iPXE renderer's worker thread too.
        with self._mutex:
            self._batch.tokens.append(changes)

    def expired_tokens(self, hashes: Sequence[str]) -> None:
        with self._mutex:
            self._batch.expired.extend(hashes)

    # --- lifecycle ---

    async def start(self) -> None:
        self._counts, self._total = await asyncio.to_thread(self._load_counts)
        self._task = asyncio.create_task(self._run(), name="nodeconfig-writer")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
        await self.flush()

    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Write everything gathered so far (also used by tests and at shutdown)."""
        async with self._lock:
            with self._mutex:
                batch, self._batch = self._batch, _Batch()
                batch.events = list(self._events)
                self._events.clear()
            if batch.empty():
                return
            try:
                await asyncio.to_thread(self._write, batch)
            except Exception as exc:  # the database is down, or a record is unwritable
                # Keep serving: these records are lost, not the boots.
                self.failures += 1
                log.warning("writing %d timeline events failed: %s", len(batch.events), exc)

    # --- the worker thread ---

    def _load_counts(self) -> tuple[dict[int, int], int]:
        with self.db.engine.connect() as conn:
            rows = conn.execute(select(TimelineEvent.node_id, func.count())
                                .group_by(TimelineEvent.node_id)).all()
        counts = {int(n): int(c) for n, c in rows}
        return counts, sum(counts.values())

    def _write(self, batch: _Batch) -> None:
        with self.db.engine.begin() as conn:
            events = self._existing(conn, batch.events)
            if events:
                conn.execute(insert(TimelineEvent), [e.row() for e in events])
            self._write_states(conn, batch.states)
            self._write_tokens(conn, batch.tokens, batch.expired)
            for e in events:
                self._counts[e.node_id] = self._counts.get(e.node_id, 0) + 1
            self._total += len(events)
            self._prune(conn, {e.node_id for e in events})
        self.written += len(events)

    def _existing(self, conn: Connection, events: list[EventRecord]) -> list[EventRecord]:
        # A node deleted since its events were queued would fail the whole batch.
        ids = {e.node_id for e in events}
        if not ids:
            return []
        alive = set(conn.scalars(select(Node.id).where(Node.id.in_(ids))))
        return [e for e in events if e.node_id in alive]

    def _write_states(self, conn: Connection, states: dict[int, NodeStatus]) -> None:
        if not states:
            return
        alive = set(conn.scalars(select(Node.id).where(Node.id.in_(states))))
        rows = [_state_row(n, st) for n, st in states.items() if n in alive]
        have = set(conn.scalars(select(NodeStateRow.node_id)
                                .where(NodeStateRow.node_id.in_([r["node_id"] for r in rows]))))
        fresh = [r for r in rows if r["node_id"] not in have]
        if fresh:
            conn.execute(insert(NodeStateRow), fresh)
        known = [{**r, "b_node_id": r["node_id"]} for r in rows if r["node_id"] in have]
        if known:  # one statement, many parameter sets: a storm's states in one round trip
            conn.execute(_UPDATE_STATE, known)

    def _write_tokens(self, conn: Connection, changes: list[TokenChanges],
                      expired: list[str]) -> None:
        gone = set(expired)
        for ch in changes:
            gone.update(ch.dropped)
        issued = [_token_row(ch.issued) for ch in changes if ch.issued.hash not in gone]
        if issued:
            alive = set(conn.scalars(select(Node.id).where(
                Node.id.in_({r["node_id"] for r in issued}))))
            issued = [r for r in issued if r["node_id"] in alive]
            if issued:
                conn.execute(insert(BootToken), issued)
        for ch in changes:
            for rec in ch.shortened:
                conn.execute(update(BootToken).where(BootToken.token_hash == rec.hash)
                             .values(expires_at=rec.expires_at))
        if gone:
            conn.execute(delete(BootToken).where(BootToken.token_hash.in_(gone)))

    def _prune(self, conn: Connection, touched: Iterable[int]) -> None:
        keep, slack = self.retention.per_node, 1 + self.retention.slack
        for node_id in touched:
            if self._counts.get(node_id, 0) > keep * slack:
                self._prune_node(conn, node_id, keep)
        if self._total > self.retention.total * slack:
            self._prune_total(conn, self.retention.total)

    def _prune_node(self, conn: Connection, node_id: int, keep: int) -> None:
        cutoff = conn.scalar(select(TimelineEvent.id).where(TimelineEvent.node_id == node_id)
                             .order_by(TimelineEvent.id.desc()).offset(keep).limit(1))
        if cutoff is None:
            return
        gone = conn.execute(delete(TimelineEvent).where(TimelineEvent.node_id == node_id,
                                                        TimelineEvent.id <= cutoff)).rowcount
        self._counts[node_id] = self._counts.get(node_id, 0) - gone
        self._total -= gone

    def _prune_total(self, conn: Connection, keep: int) -> None:
        cutoff = conn.scalar(select(TimelineEvent.id).order_by(TimelineEvent.id.desc())
                             .offset(keep).limit(1))
        if cutoff is None:
            return
        conn.execute(delete(TimelineEvent).where(TimelineEvent.id <= cutoff))
        self._counts, self._total = self._recount(conn)

    @staticmethod
    def _recount(conn: Connection) -> tuple[dict[int, int], int]:
        rows = conn.execute(select(TimelineEvent.node_id, func.count())
                            .group_by(TimelineEvent.node_id)).all()
        counts = {int(n): int(c) for n, c in rows}
        return counts, sum(counts.values())


# --- reading (CLI, admin API, the service at start) ----------------------------------------


def _status(row: NodeStateRow) -> NodeStatus:
    try:
        state = State(row.state)
    except ValueError:
        state = State.OFF
    return NodeStatus(state=state, since=row.since, boot=row.boot, boot_started=row.boot_started,
                      last_boot_s=row.last_boot_s, stuck=row.stuck, address=row.address,
                      message=row.message or "")


def read_states(session: Session) -> dict[int, NodeStatus]:
    return {row.node_id: _status(row) for row in session.scalars(select(NodeStateRow))}


def read_tokens(session: Session, now: float) -> list[TokenRecord]:
    rows = session.scalars(select(BootToken).where(BootToken.expires_at > now))
    return [TokenRecord(r.node_id, r.token_hash, r.issued_at, r.expires_at, r.mac, r.address)
            for r in rows]


def boots(session: Session, node_id: int) -> list[tuple[int, float, float, int]]:
    """(boot, first event, last event, number of events) per boot of a node, oldest first."""
    rows = session.execute(
        select(TimelineEvent.boot, func.min(TimelineEvent.at), func.max(TimelineEvent.at),
               func.count()).where(TimelineEvent.node_id == node_id)
        .group_by(TimelineEvent.boot).order_by(TimelineEvent.boot))
    return [(int(b), float(lo), float(hi), int(n)) for b, lo, hi, n in rows]


def read_timeline(session: Session, node_id: int, boot: int | None = None,
                  limit: int = 5000) -> list[EventRecord]:
    """A node's events of one boot (default: its latest), in time order."""
    if boot is None:
        boot = session.scalar(select(func.max(TimelineEvent.boot))
                              .where(TimelineEvent.node_id == node_id))
        if boot is None:
            return []
    rows = session.scalars(
        select(TimelineEvent).where(TimelineEvent.node_id == node_id, TimelineEvent.boot == boot)
        .order_by(TimelineEvent.at, TimelineEvent.seq).limit(limit))
    return [EventRecord(r.node_id, r.boot, r.at, r.seq, r.source, r.kind, r.mac, r.address,
                        r.state, dict(r.detail or {})) for r in rows]
