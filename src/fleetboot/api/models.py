"""Tables of the operator's surface: API tokens (stored hashed) and the audit log.

Neither is held in memory by the boot servers, so neither bumps the inventory
revision (``inventory/changes.py`` tracks only inventory and nodeconfig rows).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Double, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from fleetboot.inventory.db import Base

_BIG_ID = BigInteger().with_variant(Integer(), "sqlite")


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    # sha256 hex of the secret: a stolen database gives no usable token.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Double)
    created_by: Mapped[str] = mapped_column(String(127), default="")
    revoked_at: Mapped[float | None] = mapped_column(Double)


class AuditEntry(Base):
    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at"),)

    id: Mapped[int] = mapped_column(_BIG_ID, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Double)
    actor: Mapped[str] = mapped_column(String(127))  # "token:ops-bot", "cli:root", ...
    via: Mapped[str] = mapped_column(Text, default="")  # "PUT /api/v1/nodes/n1/boot/next"
    action: Mapped[str] = mapped_column(String(16))  # create | update | delete
    kind: Mapped[str] = mapped_column(String(63))  # the table: nodes, subnets, ...
    target: Mapped[str] = mapped_column(String(255))
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON)
