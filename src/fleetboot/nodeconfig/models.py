"""Node-configuration tables: configuration sections, per-boot tokens, node states
and boot timelines.

Only ``ConfigSection`` is written through ORM sessions (the CLI and the admin
API), so a change bumps the inventory revision and running servers re-render
the documents. Tokens, states and timeline events change on the packet paths
and are written by the batching writer (``nodeconfig.timeline``) with Core
statements on their own connection: they never bump the revision, so a boot
storm does not make every service reload its view.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from fleetboot.inventory.db import Base

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a bigint.
_BIG_ID = BigInteger().with_variant(Integer(), "sqlite")


def _now() -> datetime:
    return datetime.now().astimezone()


class ConfigSection(Base):
    """One section (``accounts``, ``mounts``, ...) of one node, or the fleet default.

    ``node_id`` NULL is the default every node gets unless it has its own row
    for that section. ``data`` holds the validated, normalised JSON value.
    """

    __tablename__ = "config_sections"
    __table_args__ = (
        UniqueConstraint("node_id", "section"),
        # NULLs are distinct in a unique constraint: a partial index keeps one default each.
        Index(
            "uq_config_sections_default",
            "section",
            unique=True,
            sqlite_where=text("node_id IS NULL"),
            postgresql_where=text("node_id IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    node_id: Mapped[int | None] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    section: Mapped[str] = mapped_column(String(32))
    data: Mapped[Any] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now,
                                                 onupdate=_now)


class BootToken(Base):
    """A per-boot token handed to a node on its kernel command line (only its hash)."""

    __tablename__ = "boot_tokens"

    id: Mapped[int] = mapped_column(_BIG_ID, primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    mac: Mapped[str | None] = mapped_column(String(17))
    address: Mapped[str | None] = mapped_column(String(15))
    issued_at: Mapped[float] = mapped_column(Double)
    expires_at: Mapped[float] = mapped_column(Double)


class NodeStateRow(Base):
    """The current state of a node, as the state machine last left it."""

    __tablename__ = "node_states"

    node_id: Mapped[int] = mapped_column(
        ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    state: Mapped[str] = mapped_column(String(16))
    since: Mapped[float] = mapped_column(Double)
    boot: Mapped[int] = mapped_column(Integer, default=0)
    boot_started: Mapped[float | None] = mapped_column(Double)
    last_boot_s: Mapped[float | None] = mapped_column(Double)
    address: Mapped[str | None] = mapped_column(String(15))
    stuck: Mapped[bool] = mapped_column(Boolean, default=False)
    message: Mapped[str] = mapped_column(Text, default="")


class TimelineEvent(Base):
    """One timed event of one boot of one node (DHCP message, file, fetch, report)."""

    __tablename__ = "timeline_events"
    __table_args__ = (Index("ix_timeline_events_node_boot_at", "node_id", "boot", "at"),)

    id: Mapped[int] = mapped_column(_BIG_ID, primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    boot: Mapped[int] = mapped_column(Integer)
    at: Mapped[float] = mapped_column(Double)
    seq: Mapped[int] = mapped_column(BigInteger)
    source: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(32))
    mac: Mapped[str | None] = mapped_column(String(17))
    address: Mapped[str | None] = mapped_column(String(15))
    state: Mapped[str | None] = mapped_column(String(16))  # the node's state after the event
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
