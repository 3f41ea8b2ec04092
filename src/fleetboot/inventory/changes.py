"""Inventory change tracking: every ORM flush that touches inventory rows bumps
``inventory_revision``, in the same transaction, so readers see the new data and
the new revision together."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from fleetboot.inventory import models

# Only what the boot servers hold in memory counts: VM and passthrough rows do not.
_TRACKED_MODULES = frozenset({"fleetboot.inventory.models", "fleetboot.nodeconfig.models"})
# Leases change per packet and are held in memory by the DHCP server itself.
_UNTRACKED: tuple[type, ...] = (models.Lease, models.Lease6, models.InventoryRevision)


def _touches_inventory(session: Session) -> bool:
    for obj in (*session.new, *session.dirty, *session.deleted):
        if type(obj).__module__ in _TRACKED_MODULES and not isinstance(obj, _UNTRACKED):
            return True
    return False


def bump_on_flush(session: Session, _flush_context: Any, _instances: Any) -> None:
    if _touches_inventory(session):
        session.execute(
            update(models.InventoryRevision)
            .where(models.InventoryRevision.id == 1)
            .values(value=models.InventoryRevision.value + 1)
        )


def current_revision(session: Session) -> int:
    value = session.scalar(
        select(models.InventoryRevision.value).where(models.InventoryRevision.id == 1)
    )
    return int(value or 0)
