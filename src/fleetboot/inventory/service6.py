"""IPv6 inventory operations: subnets (prefixes), pools, reservations, and DHCPv6 leases.

Like ``fleetboot.inventory.service`` (whose errors, ``LeaseView`` and node lookups
these share), every function takes an open ``Session`` and raises
``InventoryError`` with a message that tells the user what to do.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from fleetboot.inventory.addr import normalize_duid, normalize_mac, parse_ipv6, parse_network6
from fleetboot.inventory.db import epoch_seconds
from fleetboot.inventory.models import Interface, Lease6, Node, Pool6, Reservation6, Subnet6
from fleetboot.inventory.service import (
    InventoryError,
    LeaseView,
    NotFound,
    get_subnet,
    list_leases,
)


def get_subnet6(session: Session, name: str) -> Subnet6:
    subnet = session.scalar(select(Subnet6).where(Subnet6.name == name))
    if subnet is None:
        raise NotFound(f"no IPv6 subnet named {name!r}; `fleetboot subnet6 list` shows them")
    return subnet


def _check_in(net: ipaddress.IPv6Network, addr: ipaddress.IPv6Address, what: str) -> None:
    if addr not in net or addr == net.network_address:
        raise InventoryError(f"{what} {addr} is not a host address of {net}")


def add_subnet6(session: Session, name: str, prefix: str, *, dns: Sequence[str] = (),
                domains: Sequence[str] = (), valid_seconds: int = 3600,
                preferred_seconds: int | None = None) -> Subnet6:
    net = parse_network6(prefix)
    if session.scalar(select(Subnet6.id).where(Subnet6.name == name)) is not None:
        raise InventoryError(f"IPv6 subnet {name!r} exists")
    for other in session.scalars(select(Subnet6)):
        if net.overlaps(ipaddress.IPv6Network(other.prefix)):
            raise InventoryError(f"{net} overlaps IPv6 subnet {other.name!r} ({other.prefix})")
    preferred = valid_seconds * 5 // 6 if preferred_seconds is None else preferred_seconds
    if valid_seconds < 60 or not 0 < preferred <= valid_seconds:
        raise InventoryError("valid lifetime must be at least 60 seconds and the preferred "
                             "lifetime between 1 and the valid one")
    subnet = Subnet6(name=name, prefix=str(net), dns_servers=[str(parse_ipv6(d)) for d in dns],
                     domains=list(domains), valid_seconds=valid_seconds,
                     preferred_seconds=preferred)
    session.add(subnet)
    session.flush()
    return subnet


def list_subnets6(session: Session) -> list[Subnet6]:
    return list(session.scalars(select(Subnet6).options(
        selectinload(Subnet6.pools), selectinload(Subnet6.reservations)).order_by(Subnet6.name)))


def remove_subnet6(session: Session, name: str) -> None:
    session.delete(get_subnet6(session, name))


def add_pool6(session: Session, subnet_name: str, start: str, end: str) -> Pool6:
    subnet = get_subnet6(session, subnet_name)
    net = ipaddress.IPv6Network(subnet.prefix)
    first, last = parse_ipv6(start), parse_ipv6(end)
    _check_in(net, first, "pool start")
    _check_in(net, last, "pool end")
    if last < first:
        raise InventoryError(f"pool end {last} is before its start {first}")
    for pool in subnet.pools:
        if not (last < parse_ipv6(pool.start) or first > parse_ipv6(pool.end)):
            raise InventoryError(f"pool {first}-{last} overlaps pool {pool.start}-{pool.end}")
    pool = Pool6(start=str(first), end=str(last))
    subnet.pools.append(pool)
    session.flush()
    return pool


def add_reservation6(session: Session, subnet_name: str, address: str, *,
                     mac: str | None = None, duid: str | None = None,
                     hostname: str | None = None) -> Reservation6:
    """A fixed IPv6 address for a node's MAC (the same MAC as its inventory entry) or a DUID."""
    if not mac and not duid:
        raise InventoryError("an IPv6 reservation needs a MAC or a DUID (or both)")
    subnet = get_subnet6(session, subnet_name)
    addr = parse_ipv6(address)
    _check_in(ipaddress.IPv6Network(subnet.prefix), addr, "reserved address")
    mac = normalize_mac(mac) if mac else None
    duid = normalize_duid(duid) if duid else None
    if mac and session.scalar(select(Reservation6.id).where(Reservation6.mac == mac)):
        raise InventoryError(f"MAC {mac} already has an IPv6 reservation")
    if duid and session.scalar(select(Reservation6.id).where(Reservation6.duid == duid)):
        raise InventoryError(f"DUID {duid} already has an IPv6 reservation")
    if session.scalar(select(Reservation6.id).where(Reservation6.address == str(addr))):
        raise InventoryError(f"address {addr} is already reserved")
    res = Reservation6(mac=mac, duid=duid, address=str(addr), hostname=hostname)
    subnet.reservations.append(res)
    session.flush()
    return res


def remove_reservation6(session: Session, address: str) -> None:
    addr = str(parse_ipv6(address))
    res = session.scalar(select(Reservation6).where(Reservation6.address == addr))
    if res is None:
        raise NotFound(f"no IPv6 reservation of {addr}")
    session.delete(res)


def list_leases6(session: Session, *, now: float, subnet: str | None = None,
                 include_expired: bool = False) -> list[LeaseView]:
    """DHCPv6 leases as the server last made them durable, in address order."""
    query = (select(Lease6.address, Lease6.mac, Lease6.duid, Lease6.hostname, Node.name,
                    Subnet6.name, Lease6.starts, Lease6.expires)
             .outerjoin(Subnet6, Subnet6.id == Lease6.subnet_id)
             .outerjoin(Interface, Interface.mac == Lease6.mac)
             .outerjoin(Node, Node.id == Interface.node_id))
    if subnet is not None:
        query = query.where(Lease6.subnet_id == get_subnet6(session, subnet).id)
    views = [LeaseView(address, mac or f"duid {duid}", hostname, node, subnet_name,
                       epoch_seconds(starts), epoch_seconds(expires))
             for address, mac, duid, hostname, node, subnet_name, starts, expires
             in session.execute(query)]
    if not include_expired:
        views = [v for v in views if v.expires > now]
    return sorted(views, key=lambda v: ipaddress.IPv6Address(v.address))


def list_all_leases(session: Session, *, now: float, subnet: str | None = None,
                    include_expired: bool = False) -> list[LeaseView]:
    """IPv4 then IPv6 leases; ``subnet`` may name a subnet of either family."""
    if subnet is not None:
        is_v4 = session.scalar(select(Subnet6.id).where(Subnet6.name == subnet)) is None
        if is_v4:
            get_subnet(session, subnet)  # the usual "no subnet named" error
            return list_leases(session, now=now, subnet=subnet, include_expired=include_expired)
        return list_leases6(session, now=now, subnet=subnet, include_expired=include_expired)
    return (list_leases(session, now=now, include_expired=include_expired)
            + list_leases6(session, now=now, include_expired=include_expired))
