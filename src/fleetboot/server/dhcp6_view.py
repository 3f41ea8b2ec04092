"""Read the IPv6 inventory (and the node interfaces both families share) into a view."""

from __future__ import annotations

from sqlalchemy import select

from fleetboot.inventory.db import Database
from fleetboot.inventory.models import Interface, Node, Pool6, Reservation6, Subnet6
from fleetboot.protocols.dhcp6.view import Dhcp6View, build_view6

__all__ = ["Dhcp6View", "load_view6"]


def load_view6(db: Database, revision: int | None = None) -> Dhcp6View:
    with db.session() as s:
        subnets = [row._asdict() for row in s.execute(select(
            Subnet6.id, Subnet6.name, Subnet6.prefix, Subnet6.dns_servers, Subnet6.domains,
            Subnet6.preferred_seconds, Subnet6.valid_seconds))]
        pools = [row._asdict() for row in s.execute(select(Pool6.subnet_id, Pool6.start,
                                                           Pool6.end))]
        reservations = [row._asdict() for row in s.execute(select(
            Reservation6.subnet_id, Reservation6.duid, Reservation6.mac, Reservation6.address,
            Reservation6.hostname))]
        interfaces = [row._asdict() for row in s.execute(
            select(Interface.mac, Interface.is_boot, Interface.name.label("interface"),
                   Node.id.label("node_id"), Node.name.label("node"), Node.arch)
            .join(Node, Interface.node_id == Node.id))]
    return build_view6(subnets, pools, reservations, interfaces, revision)
