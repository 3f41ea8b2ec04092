"""Leases on disk: the batching journal (group commit) and reloading after a restart.

The in-memory table (``fleetboot.protocols.dhcp.leases.LeaseTable``, re-exported
here) answers every packet. Each lease change becomes a ``LeaseRecord`` handed
to :class:`LeaseJournal`, whose writer thread commits whatever accumulated in
one transaction (multi-row upsert) and then gives the batch's tokens (the ACKs
waiting for it) back to the event loop with a single ``call_soon_threadsafe``.
So an ACK leaves only after its lease is committed, the loop never waits for
the disk, and a thousand ACKs cost one commit.

Durability: a committed SQLite transaction survives ``kill -9`` of the process
in WAL mode even with ``synchronous=NORMAL`` (SQLite only gives up the last
commits on power loss or an OS crash); PostgreSQL commits are durable as its
server is configured. Times are stored as UTC (naive UTC text on SQLite).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.exc import IntegrityError

from fleetboot.inventory.db import Database, epoch_seconds
from fleetboot.inventory.models import Lease as LeaseRow
from fleetboot.protocols.dhcp.engine import LeaseRecord
from fleetboot.protocols.dhcp.leases import BOUND, Lease, LeaseInfo, LeaseTable
from fleetboot.protocols.dhcp.options import ip_int, ip_text, mac_text
from fleetboot.server.metrics import Metrics, RateLimitedLog, registry

__all__ = ["LeaseInfo", "LeaseJournal", "LeaseTable", "load_leases"]

log = logging.getLogger("fleetboot.dhcp.leases")
CHECKPOINT_POLL = 0.25
CHECKPOINT_IDLE = 0.5  # seconds without a commit before the WAL is checkpointed
CHECKPOINT_WAL_BYTES = 64 << 20
CHUNK = 500  # rows per statement: 7 parameters each stays under every driver's limit
COLUMNS = "address, mac, client_id, hostname, subnet_id, starts, expires"
UPDATE = ("mac = excluded.mac, client_id = excluded.client_id, hostname = excluded.hostname, "
          "subnet_id = excluded.subnet_id, starts = excluded.starts, expires = excluded.expires")

Committed = Callable[[list[Any], bool], None]


def load_leases(db: Database) -> list[Lease]:
    """Every lease row, as in-memory leases (expired ones too: they give address affinity)."""
    table = LeaseRow.__table__
    query = select(table.c.address, table.c.mac, table.c.client_id, table.c.hostname,
                   table.c.subnet_id, table.c.starts, table.c.expires)
    out: list[Lease] = []
    with db.session() as session:
        for addr, mac, client_id, hostname, subnet_id, starts, expires in session.execute(query):
            try:
                out.append(Lease(ip_int(addr), bytes.fromhex(mac.replace(":", "")), BOUND,
                                 epoch_seconds(expires), subnet_id, epoch_seconds(starts),
                                 bytes.fromhex(client_id) if client_id else None, hostname))
            except ValueError:
                log.warning("lease row %s/%s is unreadable; ignored", addr, mac)
    return out


class LeaseJournal:
    """Group commit of lease records on one writer thread.

    ``submit`` is called on the event loop; ``on_committed(tokens, ok)`` runs on
    the loop once per batch. ``window_s`` is the least time between the starts of
    two commits: an idle journal commits a lone record at once, a busy one
    gathers everything that arrives within the window into one transaction
    (each commit rewrites whole pages, so fewer, larger commits cost less per
    lease). ``max_batch`` bounds one transaction.
    """

    def __init__(self, db: Database, on_committed: Committed, *,
                 loop: asyncio.AbstractEventLoop | None = None, window_s: float = 0.002,
                 max_batch: int = 4096, metrics: Metrics = registry) -> None:
        self.db = db
        self.on_committed = on_committed
        self.window_s = window_s
        self.max_batch = max_batch
        self.metrics = metrics
        self._loop = loop
        self._cond = threading.Condition()
        self._pending: list[tuple[LeaseRecord, Any]] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._busy = False
        self._rlog = RateLimitedLog(log)
        dialect = db.engine.dialect
        self._sqlite = dialect.name == "sqlite"
        self._mark = "?" if dialect.paramstyle == "qmark" else "%s"
        self._sql: dict[int, str] = {}
        self._conn: Connection | None = None
        self._checkpointer: threading.Thread | None = None
        self._stopped = threading.Event()
        self._dirty = False
        self._last_start = 0.0
        self._times: dict[int, str] = {}

    def start(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="lease-journal", daemon=True)
        self._thread.start()
        if self._sqlite:
            self._checkpointer = threading.Thread(target=self._checkpoint_loop,
                                                  name="lease-checkpoint", daemon=True)
            self._checkpointer.start()

    def submit(self, record: LeaseRecord, token: Any = None) -> None:
        """Queue a record; ``token`` comes back through ``on_committed`` once it is durable."""
        with self._cond:
            self._pending.append((record, token))
            if not self._busy:
                self._cond.notify()

    @property
    def backlog(self) -> int:
        return len(self._pending)

    def stop(self, timeout: float = 10.0) -> None:
        """Commit what is queued, then end the thread (blocking: call via to_thread)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        self._stopped.set()
        if self._checkpointer is not None:
            self._checkpointer.join(timeout)
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # --- writer thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                self._busy = False
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if not self._pending:
                    return
                self._busy = True
            wait = self._last_start + self.window_s - time.monotonic()
            if wait > 0 and len(self._pending) < self.max_batch and not self._stopping:
                time.sleep(wait)
            self._last_start = time.monotonic()
            with self._cond:
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
            ok = self._commit(batch)
            tokens = [token for _, token in batch if token is not None]
            if tokens and self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self.on_committed, tokens, ok)

    def _commit(self, batch: list[tuple[LeaseRecord, Any]]) -> bool:
        started = time.perf_counter()
        try:
            self.write([record for record, _ in batch])
        except Exception as exc:
            self._reset_connection()
            self.metrics.inc("dhcp.journal.errors")
            self._rlog.log("commit", logging.ERROR, "committing %d lease records failed: %s; "
                           "their ACKs are not sent (clients will retry)", len(batch), exc)
            return False
        self.metrics.inc("dhcp.journal.batches")
        self.metrics.inc("dhcp.journal.records", len(batch))
        self.metrics.set("dhcp.journal.last_batch", len(batch))
        spent = int((time.perf_counter() - started) * 1e6)
        self.metrics.set("dhcp.journal.last_commit_us", spent)
        self.metrics.inc("dhcp.journal.commit_us_total", spent)
        if spent > self.metrics.get("dhcp.journal.commit_us_max"):
            self.metrics.set("dhcp.journal.commit_us_max", spent)
        return True

    def write(self, records: Sequence[LeaseRecord]) -> None:
        """Apply records in one transaction; the last record per address wins."""
        try:
            self._write(records)
        except IntegrityError:
            # A subnet deleted since the view was built: keep the leases without it.
            self._write([r._replace(subnet_id=None) for r in records])

    def _write(self, records: Sequence[LeaseRecord]) -> None:
        final: dict[int, LeaseRecord] = {}
        for record in records:
            final[record.addr] = record
        binds = [self._row(r) for r in final.values() if r.op == "bind"]
        frees = [(ip_text(r.addr), mac_text(r.mac)) for r in final.values() if r.op == "free"]
        conn = self._connection()
        with conn.begin():
            for start in range(0, len(binds), CHUNK):
                chunk = binds[start : start + CHUNK]
                params = tuple(value for row in chunk for value in row)
                conn.exec_driver_sql(self._upsert(len(chunk)), params)
            if frees:
                m = self._mark
                conn.exec_driver_sql(
                    f"DELETE FROM leases WHERE address = {m} AND mac = {m}", frees)
        self._dirty = True

    def _connection(self) -> Connection:
        """The writer's own connection. On SQLite it never checkpoints: a checkpoint
        fsyncs, and a commit stalled behind one would hold back a whole batch of ACKs."""
        if self._conn is None or self._conn.closed:
            self._conn = self.db.engine.connect()
            if self._sqlite:
                self._conn.exec_driver_sql("PRAGMA wal_autocheckpoint=0")
                # Lease pages and both indexes stay in memory: no re-reads per commit.
                self._conn.exec_driver_sql("PRAGMA cache_size=-65536")
                self._conn.commit()
        return self._conn

    def _wal_path(self) -> str | None:
        database = self.db.engine.url.database
        return f"{database}-wal" if database and database != ":memory:" else None

    def _reset_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.invalidate()
            except Exception as exc:  # already broken: nothing more to release
                log.debug("dropping the journal connection: %s", exc)

    def _checkpoint_loop(self) -> None:
        """Copy the WAL into the database off the commit path.

        A checkpoint fsyncs, and on a busy disk an fsync can hold up the writer's
        next commit (and its ACKs) for a long time; so it runs once commits have
        paused for a moment, or when the WAL has grown past ``CHECKPOINT_WAL_BYTES``
        (a long boot storm), never on a timer in the middle of a burst.
        """
        wal = self._wal_path()
        with self.db.engine.connect() as conn:
            while not self._stopped.wait(CHECKPOINT_POLL):
                if not self._dirty:
                    continue
                quiet = time.monotonic() - self._last_start >= CHECKPOINT_IDLE
                if not quiet and _size(wal) < CHECKPOINT_WAL_BYTES:
                    continue
                self._dirty = False
                try:
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
                    conn.commit()
                except Exception as exc:
                    self._rlog.warning("checkpoint", "WAL checkpoint failed: %s", exc)

    def _row(self, r: LeaseRecord) -> tuple[object, ...]:
        return (ip_text(r.addr), mac_text(r.mac), r.client_id.hex() if r.client_id else None,
                r.hostname, r.subnet_id, self._time(r.starts), self._time(r.expires))

    def _time(self, epoch: float) -> object:
        if not self._sqlite:
            return datetime.fromtimestamp(epoch, UTC)
        # The text form SQLAlchemy itself writes on SQLite, to the second (rounded up:
        # a lease must never end earlier on disk than the client was told); a batch
        # shares a few distinct seconds, so each is formatted once.
        second = math.ceil(epoch)
        text = self._times.get(second)
        if text is None:
            if len(self._times) > 4096:
                self._times.clear()
            text = self._times[second] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second))
        return text

    def _upsert(self, rows: int) -> str:
        sql = self._sql.get(rows)
        if sql is None:
            group = "(" + ", ".join([self._mark] * 7) + ")"
            sql = (f"INSERT INTO leases ({COLUMNS}) VALUES " + ", ".join([group] * rows)
                   + f" ON CONFLICT (address) DO UPDATE SET {UPDATE}")
            if len(self._sql) > 64:
                self._sql.clear()
            self._sql[rows] = sql
        return sql


def _size(path: str | None) -> int:
    try:
        return os.path.getsize(path) if path else 0
    except OSError:
        return 0
