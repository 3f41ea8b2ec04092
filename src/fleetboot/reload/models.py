"""The deployment history: one row per node per ``fleetboot deploy``."""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from fleetboot.inventory.db import Base


class DeployState(enum.StrEnum):
    PENDING = "pending"
    DEPLOYING = "deploying"
    VERIFIED = "verified"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE = (DeployState.PENDING, DeployState.DEPLOYING)


def utc_now() -> datetime:
    return datetime.now(UTC)


class Deployment(Base):
    __tablename__ = "deployments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"),
                                         index=True)
    image_id: Mapped[str] = mapped_column(String(16))
    image_name: Mapped[str] = mapped_column(String(255))
    transport: Mapped[str] = mapped_column(String(16))
    session: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default=DeployState.PENDING.value)
    percent: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
