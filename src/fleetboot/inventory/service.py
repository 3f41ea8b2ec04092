"""Inventory operations used by the CLI, the admin API and YAML import.

Every function takes an open ``Session`` (one transaction, see
``Database.session``) and raises ``InventoryError`` with a message that tells
the user what to do, never an SQL error.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from fleetboot.errors import FleetbootError
from fleetboot.inventory.addr import normalize_mac, parse_ipv4, parse_network, unicast_mac
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
from fleetboot.protocols.dhcp.options import (
    MAX_LEASE_SECONDS,
    MAX_MTU,
    MAX_OPTION_LEN,
    MIN_LEASE_SECONDS,
    MIN_MTU,
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
    return NicSpec(unicast_mac(mac), name, boot)


# A node name becomes a host name (DHCP option 12, iPXE ${hostname}) and a path
# segment: letters, digits, '-', '_' and '.', starting with a letter or digit.
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
# What `--arch` may say: the kernel's names (uname -m) of the architectures
# Fleetboot boots, and the Debian/iPXE names people also type for them.
ARCHES = ("x86_64", "amd64", "i386", "i686", "aarch64", "arm64", "armv7l", "armhf",
          "riscv64", "ppc64le", "ppc64el", "s390x", "loongarch64")


def check_node_name(name: str) -> str:
    if not _NODE_NAME.fullmatch(name):
        raise InventoryError(f"node name {name!r} is not valid: use 1 to 63 letters, digits, "
                             "'-', '_' or '.', starting with a letter or digit (no spaces)")
    return name


def check_arch(arch: str) -> str:
    if arch not in ARCHES:
        close = difflib.get_close_matches(arch, ARCHES, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise InventoryError(f"unknown architecture {arch!r}; {hint}use one of "
                             f"{', '.join(ARCHES)}")
    return arch


def _choose_boot(nics: Sequence[NicSpec]) -> list[NicSpec]:
    seen: set[str] = set()
    for nic in nics:
        unicast_mac(nic.mac)
        if nic.mac in seen:
            raise InventoryError(f"MAC {nic.mac} is given twice; each interface needs its own")
        seen.add(nic.mac)
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
    check_node_name(name)
    check_arch(arch)
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
    unicast_mac(nic.mac)
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


def check_boot_file(what: str, value: str, boot_root: str | Path | None) -> None:
    """A profile's kernel or initrd: a URL, or a file under the boot root (a leading
    '/' means the root itself). With ``boot_root`` the file must exist there."""
    if "://" in value:
        return
    if not value.strip("/") or ".." in PurePosixPath(value).parts:
        raise InventoryError(f"{what} {value!r} must be a file under the boot root (no '..'), "
                             "like images/<digest>/vmlinuz, or a URL")
    if boot_root is None:
        return
    root = Path(boot_root)
    if not root.is_dir():
        raise InventoryError(f"the boot root {root} does not exist; create it or set "
                             "boot_root in fleetboot.yaml")
    if not (root / value.lstrip("/")).is_file():
        raise InventoryError(f"{what} {value!r} is not a file under the boot root {root}; "
                             "store it with `fleetboot image add FILE` and use the path it prints")


def add_profile(
    session: Session, name: str, *, kernel: str | None = None, initrd: str | None = None,
    cmdline: str = "", script: str | None = None, boot_root: str | Path | None = None,
) -> BootProfile:
    """Register a profile; with ``boot_root`` its kernel and initrd must exist there."""
    if session.scalar(select(BootProfile.id).where(BootProfile.name == name)) is not None:
        raise InventoryError(f"boot profile {name!r} exists; profiles are immutable, "
                             "register the new version under a new name")
    if script is None and kernel is None:
        raise InventoryError("a profile needs a kernel (with optional initrd and cmdline) "
                             "or a whole iPXE script")
    if script is not None and kernel is not None:
        raise InventoryError("give either a kernel or an iPXE script, not both")
    for what, value in (("kernel", kernel), ("initrd", initrd)):
        if value is not None:
            check_boot_file(what, value, boot_root)
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


# Stored values a DHCP reply carries are checked against their wire ranges
# (protocols.dhcp.options); a domain is a DNS name of at most 253 characters.
_DOMAIN = re.compile(r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+")


@dataclass(frozen=True)
class SubnetOptions:
    """What a subnet tells its clients; every field is checked against its wire range."""

    router: str | None = None
    dns: tuple[str, ...] = ()
    domain: str | None = None
    lease_seconds: int = 3600
    next_server: str | None = None
    mtu: int | None = None

    def checked(self, net: ipaddress.IPv4Network) -> SubnetOptions:
        if self.router:
            _check_in(net, parse_ipv4(self.router), "router")
        if not MIN_LEASE_SECONDS <= self.lease_seconds <= MAX_LEASE_SECONDS:
            raise InventoryError(f"lease time {self.lease_seconds} is out of range; give "
                                 f"{MIN_LEASE_SECONDS} to {MAX_LEASE_SECONDS} seconds")
        if self.mtu is not None and not MIN_MTU <= self.mtu <= MAX_MTU:
            raise InventoryError(f"MTU {self.mtu} is out of range; give {MIN_MTU} to {MAX_MTU} "
                                 "(1500 for plain Ethernet, 9000 for jumbo frames)")
        if 4 * len(self.dns) > MAX_OPTION_LEN:
            raise InventoryError(f"{len(self.dns)} DNS servers do not fit in one DHCP option; "
                                 f"give at most {MAX_OPTION_LEN // 4}")
        if self.domain and not (self.domain.isascii() and _DOMAIN.fullmatch(self.domain)):
            raise InventoryError(f"domain {self.domain!r} is not a DNS name like lab.example.com")
        return SubnetOptions(
            router=str(parse_ipv4(self.router)) if self.router else None,
            dns=tuple(str(parse_ipv4(d)) for d in self.dns), domain=self.domain or None,
            lease_seconds=self.lease_seconds,
            next_server=str(parse_ipv4(self.next_server)) if self.next_server else None,
            mtu=self.mtu)

    def apply(self, subnet: Subnet) -> None:
        subnet.router, subnet.dns_servers = self.router, list(self.dns)
        subnet.domain, subnet.lease_seconds = self.domain, self.lease_seconds
        subnet.next_server, subnet.mtu = self.next_server, self.mtu

    @classmethod
    def of(cls, subnet: Subnet) -> SubnetOptions:
        return cls(subnet.router, tuple(subnet.dns_servers), subnet.domain,
                   subnet.lease_seconds, subnet.next_server, subnet.mtu)


def add_subnet(
    session: Session, name: str, cidr: str, *, router: str | None = None,
    dns: Sequence[str] = (), domain: str | None = None, lease_seconds: int = 3600,
    next_server: str | None = None, mtu: int | None = None,
) -> Subnet:
    net = parse_network(cidr)
    if session.scalar(select(Subnet.id).where(Subnet.name == name)) is not None:
        raise InventoryError(f"subnet {name!r} exists; change it with "
                             f"`fleetboot subnet set {name} ...`")
    _check_no_overlap(session, net, None)
    options = SubnetOptions(router, tuple(dns), domain, lease_seconds, next_server,
                            mtu).checked(net)
    subnet = Subnet(name=name, cidr=str(net))
    options.apply(subnet)
    session.add(subnet)
    session.flush()
    return subnet


def _check_no_overlap(session: Session, net: ipaddress.IPv4Network, own: Subnet | None) -> None:
    for other in session.scalars(select(Subnet)):
        if other is not own and net.overlaps(ipaddress.IPv4Network(other.cidr)):
            raise InventoryError(f"{net} overlaps subnet {other.name!r} ({other.cidr})")


def set_subnet(session: Session, name: str, options: SubnetOptions,
               cidr: str | None = None) -> Subnet:
    """Change a subnet in place (its id, so its leases, pools and reservations, stay).
    A new CIDR must still hold every pool, reservation and the router."""
    subnet = get_subnet(session, name)
    net = parse_network(cidr) if cidr else ipaddress.IPv4Network(subnet.cidr)
    if str(net) != subnet.cidr:
        _check_no_overlap(session, net, subnet)
        for pool in subnet.pools:
            _check_in(net, parse_ipv4(pool.start), "pool start")
            _check_in(net, parse_ipv4(pool.end), "pool end")
        for res in subnet.reservations:
            _check_in(net, parse_ipv4(res.address), "reserved address")
        subnet.cidr = str(net)
    options.checked(net).apply(subnet)
    session.flush()
    return subnet


def list_subnets(session: Session) -> list[Subnet]:
    return list(session.scalars(select(Subnet).options(
        selectinload(Subnet.pools), selectinload(Subnet.reservations)).order_by(Subnet.name)))


@dataclass(frozen=True)
class SubnetContents:
    """What removing a subnet takes with it."""

    pools: int
    reservations: int
    leases: int

    def describe(self) -> str:
        parts = [f"{n} {what}{'' if n == 1 else 's'}" for n, what in (
            (self.pools, "pool"), (self.reservations, "reservation"),
            (self.leases, "lease")) if n]
        return ", ".join(parts)


def subnet_contents(session: Session, name: str) -> SubnetContents:
    subnet = get_subnet(session, name)
    leases = session.scalars(select(Lease.id).where(Lease.subnet_id == subnet.id)).all()
    return SubnetContents(len(subnet.pools), len(subnet.reservations), len(leases))


def remove_subnet(session: Session, name: str) -> None:
    """Remove a subnet with its pools and reservations (its leases keep no subnet)."""
    session.delete(get_subnet(session, name))


def remove_pool(session: Session, subnet_name: str, start: str, end: str) -> None:
    subnet = get_subnet(session, subnet_name)
    first, last = str(parse_ipv4(start)), str(parse_ipv4(end))
    pool = next((p for p in subnet.pools if (p.start, p.end) == (first, last)), None)
    if pool is None:
        raise NotFound(f"subnet {subnet_name!r} has no pool {first}-{last}; "
                       f"`fleetboot subnet show {subnet_name}` lists its pools")
    subnet.pools.remove(pool)
    session.flush()


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
    for res in subnet.reservations:
        if first <= parse_ipv4(res.address) <= last:
            raise InventoryError(f"pool {first}-{last} holds {res.address}, reserved for "
                                 f"{res.mac}; end the pool before it or start it after it")
    pool = Pool(start=str(first), end=str(last))
    subnet.pools.append(pool)
    session.flush()
    return pool


def add_reservation(
    session: Session, subnet_name: str, mac: str, address: str, hostname: str | None = None,
) -> Reservation:
    subnet = get_subnet(session, subnet_name)
    addr, mac = parse_ipv4(address), unicast_mac(mac)
    _check_in(ipaddress.IPv4Network(subnet.cidr), addr, "reserved address")
    for pool in subnet.pools:
        if parse_ipv4(pool.start) <= addr <= parse_ipv4(pool.end):
            raise InventoryError(f"{addr} is inside the dynamic pool {pool.start}-{pool.end}, "
                                 "which may hand it to another client; reserve an address "
                                 "outside the pools")
    if hostname is not None and not _NODE_NAME.fullmatch(hostname):
        raise InventoryError(f"host name {hostname!r} is not valid: use letters, digits, '-', "
                             "'_' or '.', starting with a letter or digit (no spaces)")
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
