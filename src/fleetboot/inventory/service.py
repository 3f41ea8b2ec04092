"""Inventory operations used by the CLI, the admin API and YAML import.

Every function takes an open ``Session`` (one transaction, see
``Database.session``) and raises ``InventoryError`` with a message that tells
the user what to do, never an SQL error.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from fleetboot.errors import FleetbootError
from fleetboot.inventory.addr import normalize_mac, parse_ipv4, parse_network
from fleetboot.inventory.db import epoch_seconds
from fleetboot.inventory.models import (
    BootAction,
    BootProfile,
    Interface,
    Lease,
    Node,
    Pool,
    ProfileKind,
    Reservation,
    Subnet,
)


class InventoryError(FleetbootError):
    pass


class NotFound(InventoryError):
    pass


# ---- nodes -------------------------------------------------------------------


@dataclass(frozen=True)
class NicSpec:
    mac: str
    name: str = ""
    boot: bool = False


def parse_nic(text: str) -> NicSpec:
    """``52:54:00:..:01[,name=eth0][,boot]`` as typed on the command line."""
    mac, *flags = [p.strip() for p in text.split(",") if p.strip()]
    name, boot = "", False
    for flag in flags:
        if flag == "boot":
            boot = True
        elif flag.startswith("name="):
            name = flag[5:]
        else:
            raise InventoryError(f"unknown NIC flag {flag!r}; use name=IFNAME or boot")
    return NicSpec(normalize_mac(mac), name, boot)


def _choose_boot(nics: Sequence[NicSpec]) -> list[NicSpec]:
    flagged = [n for n in nics if n.boot]
    if len(flagged) > 1:
        raise InventoryError("only one interface per node may be the boot interface")
    if not flagged and nics:  # the first NIC boots unless told otherwise
        nics = [NicSpec(nics[0].mac, nics[0].name, True), *nics[1:]]
    return list(nics)


def get_node(session: Session, name: str) -> Node:
    node = session.scalar(
        select(Node).where(Node.name == name).options(selectinload(Node.interfaces))
    )
    if node is None:
        raise NotFound(f"no node named {name!r}; `fleetboot node list` shows the known nodes")
    return node


def node_by_mac(session: Session, mac: str) -> Node | None:
    iface = session.scalar(select(Interface).where(Interface.mac == normalize_mac(mac)))
    return iface.node if iface else None


def _check_macs_free(session: Session, macs: Sequence[str], owner: Node | None = None) -> None:
    for mac in macs:
        taken = session.scalar(select(Interface).where(Interface.mac == mac))
        if taken is not None and taken.node is not owner:
            raise InventoryError(f"MAC {mac} already belongs to node {taken.node.name!r}")


def add_node(
    session: Session, name: str, nics: Sequence[NicSpec], arch: str = "x86_64",
    attributes: dict[str, object] | None = None,
) -> Node:
    if not name or len(name) > 63:
        raise InventoryError("a node name must be 1 to 63 characters")
    if session.scalar(select(Node.id).where(Node.name == name)) is not None:
        raise InventoryError(f"node {name!r} exists; use `fleetboot node edit {name}`")
    chosen = _choose_boot(nics)
    _check_macs_free(session, [n.mac for n in chosen])
    node = Node(name=name, arch=arch, attributes=dict(attributes or {}))
    node.interfaces = [Interface(mac=n.mac, name=n.name, is_boot=n.boot) for n in chosen]
    session.add(node)
    session.flush()
    return node


def list_nodes(session: Session) -> list[Node]:
    return list(session.scalars(select(Node).options(selectinload(Node.interfaces))
                                .order_by(Node.name)))


def remove_node(session: Session, name: str) -> None:
    session.delete(get_node(session, name))


def add_interface(session: Session, node_name: str, nic: NicSpec) -> Interface:
    node = get_node(session, node_name)
    _check_macs_free(session, [nic.mac])
    if nic.boot:
        for iface in node.interfaces:
            iface.is_boot = False
        session.flush()  # the one-boot-NIC index must see the old flag cleared first
    iface = Interface(mac=nic.mac, name=nic.name, is_boot=nic.boot or not node.interfaces)
    node.interfaces.append(iface)
    session.flush()
    return iface


def set_boot_interface(session: Session, node_name: str, mac: str) -> None:
    node = get_node(session, node_name)
    mac = normalize_mac(mac)
    if mac not in {i.mac for i in node.interfaces}:
        raise InventoryError(f"node {node_name!r} has no interface {mac}")
    for iface in node.interfaces:
        iface.is_boot = False
    session.flush()
    for iface in node.interfaces:
        iface.is_boot = iface.mac == mac


def remove_interface(session: Session, node_name: str, mac: str) -> None:
    node = get_node(session, node_name)
    mac = normalize_mac(mac)
    iface = next((i for i in node.interfaces if i.mac == mac), None)
    if iface is None:
        raise InventoryError(f"node {node_name!r} has no interface {mac}")
    node.interfaces.remove(iface)
    session.flush()
    if iface.is_boot and node.interfaces:
        node.interfaces[0].is_boot = True


# ---- what a node boots ------------------------------------------------------------

BootLevel = str  # "default" | "temp" | "next"
LEVELS: tuple[BootLevel, ...] = ("default", "temp", "next")


def set_boot(
    session: Session, node_name: str, level: BootLevel, action: BootAction | None,
    profile: str | None = None,
) -> Node:
    """Set (or with ``action=None`` clear) one level of a node's boot decision."""
    if level not in LEVELS:
        raise InventoryError(f"boot level must be one of {', '.join(LEVELS)}")
    node = get_node(session, node_name)
    prof = get_profile(session, profile) if profile else None
    if action is BootAction.PROFILE and prof is None:
        raise InventoryError("booting a profile needs --profile NAME")
    if action is not BootAction.PROFILE and prof is not None:
        action = BootAction.PROFILE
    if level == "default" and action is None:
        raise InventoryError("the default boot cannot be cleared; set it to local or wait")
    setattr(node, f"{level}_action", action)
    setattr(node, f"{level}_profile_id", prof.id if prof else None)
    return node


# ---- boot profiles ---------------------------------------------------------------


def get_profile(session: Session, name: str) -> BootProfile:
    prof = session.scalar(select(BootProfile).where(BootProfile.name == name))
    if prof is None:
        raise NotFound(f"no boot profile named {name!r}; `fleetboot profile list` shows them")
    return prof


def add_profile(
    session: Session, name: str, *, kernel: str | None = None, initrd: str | None = None,
    cmdline: str = "", script: str | None = None,
) -> BootProfile:
    if session.scalar(select(BootProfile.id).where(BootProfile.name == name)) is not None:
        raise InventoryError(f"boot profile {name!r} exists; profiles are immutable, "
                             "register the new version under a new name")
    if script is None and kernel is None:
        raise InventoryError("a profile needs a kernel (with optional initrd and cmdline) "
                             "or a whole iPXE script")
    if script is not None and kernel is not None:
        raise InventoryError("give either a kernel or an iPXE script, not both")
    kind = ProfileKind.IPXE if script is not None else ProfileKind.KERNEL
    prof = BootProfile(name=name, kind=kind, kernel=kernel, initrd=initrd, cmdline=cmdline,
                       script=script)
    session.add(prof)
    session.flush()
    return prof


def list_profiles(session: Session) -> list[BootProfile]:
    return list(session.scalars(select(BootProfile).order_by(BootProfile.name)))


def remove_profile(session: Session, name: str) -> None:
    prof = get_profile(session, name)
    users = session.scalars(select(Node.name).where(
        (Node.default_profile_id == prof.id) | (Node.temp_profile_id == prof.id)
        | (Node.next_profile_id == prof.id))).all()
    if users:
        raise InventoryError(f"profile {name!r} is used by node(s) {', '.join(users)}; "
                             "point them at another profile first")
    session.delete(prof)


# ---- subnets, pools, reservations ----------------------------------------------------------


def get_subnet(session: Session, name: str) -> Subnet:
    subnet = session.scalar(select(Subnet).where(Subnet.name == name))
    if subnet is None:
        raise NotFound(f"no subnet named {name!r}; `fleetboot subnet list` shows them")
    return subnet


def _check_in(net: ipaddress.IPv4Network, addr: ipaddress.IPv4Address, what: str) -> None:
    if addr not in net or addr in (net.network_address, net.broadcast_address):
        raise InventoryError(f"{what} {addr} is not a host address of {net}")


def add_subnet(
    session: Session, name: str, cidr: str, *, router: str | None = None,
    dns: Sequence[str] = (), domain: str | None = None, lease_seconds: int = 3600,
    next_server: str | None = None, mtu: int | None = None,
) -> Subnet:
    net = parse_network(cidr)
    if session.scalar(select(Subnet.id).where(Subnet.name == name)) is not None:
        raise InventoryError(f"subnet {name!r} exists")
    for other in session.scalars(select(Subnet)):
        if net.overlaps(ipaddress.IPv4Network(other.cidr)):
            raise InventoryError(f"{net} overlaps subnet {other.name!r} ({other.cidr})")
    if router:
        _check_in(net, parse_ipv4(router), "router")
    if lease_seconds < 60:
        raise InventoryError("lease time must be at least 60 seconds")
    subnet = Subnet(
        name=name, cidr=str(net), router=router, dns_servers=[str(parse_ipv4(d)) for d in dns],
        domain=domain, lease_seconds=lease_seconds,
        next_server=str(parse_ipv4(next_server)) if next_server else None, mtu=mtu,
    )
    session.add(subnet)
    session.flush()
    return subnet


def list_subnets(session: Session) -> list[Subnet]:
    return list(session.scalars(select(Subnet).options(
        selectinload(Subnet.pools), selectinload(Subnet.reservations)).order_by(Subnet.name)))


def remove_subnet(session: Session, name: str) -> None:
    session.delete(get_subnet(session, name))


def add_pool(session: Session, subnet_name: str, start: str, end: str) -> Pool:
    subnet = get_subnet(session, subnet_name)
    net = ipaddress.IPv4Network(subnet.cidr)
    first, last = parse_ipv4(start), parse_ipv4(end)
    _check_in(net, first, "pool start")
    _check_in(net, last, "pool end")
    if last < first:
        raise InventoryError(f"pool end {last} is before its start {first}")
    for pool in subnet.pools:
        if not (last < parse_ipv4(pool.start) or first > parse_ipv4(pool.end)):
            raise InventoryError(f"pool {first}-{last} overlaps pool {pool.start}-{pool.end}")
    pool = Pool(start=str(first), end=str(last))
    subnet.pools.append(pool)
    session.flush()
    return pool


def add_reservation(
    session: Session, subnet_name: str, mac: str, address: str, hostname: str | None = None,
) -> Reservation:
    subnet = get_subnet(session, subnet_name)
    addr, mac = parse_ipv4(address), normalize_mac(mac)
    _check_in(ipaddress.IPv4Network(subnet.cidr), addr, "reserved address")
    if session.scalar(select(Reservation.id).where(Reservation.mac == mac)) is not None:
        raise InventoryError(f"MAC {mac} already has a reservation")
    if session.scalar(select(Reservation.id).where(Reservation.address == str(addr))):
        raise InventoryError(f"address {addr} is already reserved")
    res = Reservation(mac=mac, address=str(addr), hostname=hostname)
    subnet.reservations.append(res)
    session.flush()
    return res


def remove_reservation(session: Session, mac: str) -> None:
    res = session.scalar(select(Reservation).where(Reservation.mac == normalize_mac(mac)))
    if res is None:
        raise NotFound(f"no reservation for {mac}")
    session.delete(res)


# --- leases (read-only: the DHCP server's journal writes them) -------------------------


@dataclass(frozen=True)
class LeaseView:
    address: str
    mac: str
    hostname: str | None
    node: str | None  # the registered node owning this MAC, if any
    subnet: str | None
    starts: float  # Unix seconds
    expires: float


def list_leases(session: Session, *, now: float, subnet: str | None = None,
                include_expired: bool = False) -> list[LeaseView]:
    """Leases as the DHCP server last made them durable, in address order."""
    query = (select(Lease.address, Lease.mac, Lease.hostname, Node.name, Subnet.name,
                    Lease.starts, Lease.expires)
             .outerjoin(Subnet, Subnet.id == Lease.subnet_id)
             .outerjoin(Interface, Interface.mac == Lease.mac)
             .outerjoin(Node, Node.id == Interface.node_id))
    if subnet is not None:
        query = query.where(Lease.subnet_id == get_subnet(session, subnet).id)
    views = [LeaseView(address, mac, hostname, node, subnet_name, epoch_seconds(starts),
                       epoch_seconds(expires))
             for address, mac, hostname, node, subnet_name, starts, expires
             in session.execute(query)]
    if not include_expired:
        views = [v for v in views if v.expires > now]
    return sorted(views, key=lambda v: ipaddress.IPv4Address(v.address))
