"""Stored flavors: add, list, look up, remove."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleetboot.passthrough.errors import FlavorError
from fleetboot.passthrough.flavors import Flavor
from fleetboot.passthrough.models import PassthroughClaim, PassthroughFlavor


def _to_flavor(row: PassthroughFlavor) -> Flavor:
    return Flavor.from_dict(row.name, row.spec, row.description)


def add_flavor(session: Session, flavor: Flavor, replace: bool = False) -> Flavor:
    """Store ``flavor``. Replacing one changes what it matches from now on; claims
    already made keep their devices."""
    row = session.scalar(select(PassthroughFlavor).where(PassthroughFlavor.name == flavor.name))
    if row is not None and not replace:
        raise FlavorError(f"flavor {flavor.name!r} exists; remove it first or use --replace")
    if row is None:
        row = PassthroughFlavor(name=flavor.name)
        session.add(row)
    row.spec = flavor.to_dict()
    row.description = flavor.description
    return flavor


def list_flavors(session: Session) -> list[Flavor]:
    rows = session.scalars(select(PassthroughFlavor).order_by(PassthroughFlavor.name))
    return [_to_flavor(r) for r in rows]


def get_flavor(session: Session, name: str) -> Flavor:
    row = session.scalar(select(PassthroughFlavor).where(PassthroughFlavor.name == name))
    if row is None:
        raise FlavorError(f"unknown flavor {name!r}; see `fleetboot flavor list`")
    return _to_flavor(row)


def require_known(flavors: Iterable[Flavor], names: Iterable[str]) -> None:
    known = {f.name for f in flavors}
    missing = sorted(set(names) - known)
    if missing:
        have = ", ".join(sorted(known)) or "none (add one with `fleetboot flavor add`)"
        raise FlavorError(f"unknown flavor(s) {', '.join(missing)}; known: {have}")


def remove_flavor(session: Session, name: str, force: bool = False) -> None:
    row = session.scalar(select(PassthroughFlavor).where(PassthroughFlavor.name == name))
    if row is None:
        raise FlavorError(f"unknown flavor {name!r}; see `fleetboot flavor list`")
    users = sorted({c.instance_uuid for c in session.scalars(select(PassthroughClaim))
                    if name in c.flavors})
    if users and not force:
        raise FlavorError(f"flavor {name!r} is in use by instance(s) {', '.join(users)}; "
                          "release them first or use --force (a migration would then find "
                          "no equivalent device)")
    session.delete(row)
