"""Read the inventory into the immutable view the DHCP path uses (one query set).

The runtime calls :func:`load_view` (in a thread) whenever the inventory's
revision changes and hands the result to ``DhcpService.set_view``; packets
then see the old view or the new one, never a mix.
"""

from __future__ import annotations

from sqlalchemy import select

from fleetboot.inventory.db import Database
from fleetboot.inventory.models import Interface, Node, Pool, Reservation, Subnet
from fleetboot.protocols.dhcp.view import (
    DhcpView,
    HostInfo,
    ReservationInfo,
    SubnetInfo,
    build_view,
)

__all__ = ["DhcpView", "HostInfo", "ReservationInfo", "SubnetInfo", "load_view"]


def load_view(db: Database, revision: int | None = None) -> DhcpView:
    with db.session() as s:
        subnets = [row._asdict() for row in s.execute(select(
            Subnet.id, Subnet.name, Subnet.cidr, Subnet.router, Subnet.dns_servers,
            Subnet.domain, Subnet.lease_seconds, Subnet.next_server, Subnet.mtu))]
        pools = [row._asdict() for row in s.execute(select(Pool.subnet_id, Pool.start,
                                                           Pool.end))]
        reservations = [row._asdict() for row in s.execute(select(
            Reservation.subnet_id, Reservation.mac, Reservation.address,
            Reservation.hostname))]
        interfaces = [row._asdict() for row in s.execute(
            select(Interface.mac, Interface.is_boot, Interface.name.label("interface"),
                   Node.id.label("node_id"), Node.name.label("node"), Node.arch)
            .join(Node, Interface.node_id == Node.id))]
    return build_view(subnets, pools, reservations, interfaces, revision)
