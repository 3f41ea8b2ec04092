"""Database engine and session handling shared by every concern.

Every model module declares its tables on :class:`Base`; the schema is owned by
Alembic (``fleetboot/inventory/migrations``). SQLite is the embedded default,
PostgreSQL the tested alternative.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, MetaData, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from fleetboot.errors import FleetbootError

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def make_engine(url: str) -> Engine:
    """Create an engine; SQLite gets WAL and foreign keys so it behaves like a server."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    try:
        return create_engine(url, pool_pre_ping=True)
    except (ImportError, NoSuchModuleError, ArgumentError) as exc:
        where = _shown(url)
        raise DatabaseUnavailable(
            f"cannot use the database URL {where!r} ({exc}); Fleetboot supports "
            "sqlite:///PATH and postgresql+psycopg://USER@HOST/NAME: fix database.url in "
            "fleetboot.yaml or FLEETBOOT_DB") from None


def _shown(url: str) -> str:
    """The URL for a message, without its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url.split("@")[-1]


def import_all_models() -> None:
    """Import every model module so ``Base.metadata`` knows all tables."""
    from fleetboot import model_registry

    model_registry.load()


def create_schema(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision."""
    from fleetboot.inventory.migrate import upgrade

    upgrade(engine)


def epoch_seconds(value: datetime | str | None) -> float:
    """A stored timestamp as Unix seconds (0 for none). SQLite keeps no zone: we
    always write UTC, so a naive value is UTC."""
    if value is None:
        return 0.0
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


class DatabaseUnavailable(FleetbootError):
    """The configured database cannot be opened or reached."""


class Database:
    """One engine plus a session factory; the unit the rest of the code passes around."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        from fleetboot.inventory.changes import bump_on_flush

        event.listen(self._sessions, "before_flush", bump_on_flush)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on any error."""
        with self._sessions() as session, session.begin():
            yield session

    def create_schema(self) -> None:
        try:
            create_schema(self.engine)
        except OperationalError as exc:
            where = make_url(self.url).render_as_string(hide_password=True)
            raise DatabaseUnavailable(
                f"cannot open the database {where}: {exc.orig}; check database.url in "
                "fleetboot.yaml (for SQLite the directory must exist and be writable; for "
                "PostgreSQL the server must run and accept this user) or set FLEETBOOT_DB"
            ) from None

    def revision(self) -> int:
        """The inventory's change counter (cheap; servers poll it)."""
        from fleetboot.inventory.changes import current_revision

        with self.session() as session:
            return current_revision(session)

    def dispose(self) -> None:
        self.engine.dispose()
