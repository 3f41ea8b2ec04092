"""The power table: how to reach each node's BMC. The password is stored encrypted
(``secrets.py``); the last state read from the BMC and its last answer live here too."""

from __future__ import annotations

from sqlalchemy import Double, ForeignKey, Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from fleetboot.inventory.db import Base


class PowerSetting(Base):
    __tablename__ = "power_settings"

    node_id: Mapped[int] = mapped_column(
        ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    driver: Mapped[str] = mapped_column(String(16))
    address: Mapped[str] = mapped_column(String(255))
    port: Mapped[int | None] = mapped_column(Integer)
    username: Mapped[str | None] = mapped_column(String(128))
    # Fernet token of the password, made with the service's key file (0600).
    secret: Mapped[str | None] = mapped_column(Text)
    ca_file: Mapped[str | None] = mapped_column(String(1024))
    system: Mapped[str | None] = mapped_column(String(255))
    # What the BMC said last (written with Core statements: no inventory revision bump).
    state: Mapped[str | None] = mapped_column(String(16))
    state_at: Mapped[float | None] = mapped_column(Double)
    last_answer: Mapped[str | None] = mapped_column(Text)
    # The last power action that should bring the node up (on, cycle, reboot) and when;
    # cleared once the node is UP again, or once it has been flagged for not coming back.
    action: Mapped[str | None] = mapped_column(String(32))
    action_at: Mapped[float | None] = mapped_column(Double)


def power_states(session: Session) -> dict[int, str]:
    """node id -> the power state its BMC last reported ("unknown" if never asked)."""
    return {int(n): st or "unknown" for n, st in session.execute(
        select(PowerSetting.node_id, PowerSetting.state))}
