"""The immutable in-memory picture of the inventory that the DHCP path reads.

Built once from plain rows (``fleetboot.server.dhcp_view.load_view`` reads them
from the database) and swapped whole when the inventory changes, so a packet
never waits for the database and never sees half an update. Addresses are
integers and MACs 6-byte strings: that is what packets carry.

Bad inventory rows (a pool outside its subnet, a reservation with a broken
address) are skipped and described in ``problems`` rather than stopping the server.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from fleetboot.protocols.dhcp import options as o
from fleetboot.protocols.dhcp.options import ip_int, ip_text


@dataclass(frozen=True, slots=True)
class SubnetInfo:
    id: int
    name: str
    network: int
    mask: int
    prefix: int
    router: int | None = None
    dns: tuple[int, ...] = ()
    domain: str | None = None
    lease_seconds: int = 3600
    next_server: int | None = None
    mtu: int | None = None
    pools: tuple[tuple[int, int], ...] = ()

    @property
    def broadcast(self) -> int:
        return self.network | (~self.mask & 0xFFFFFFFF)

    def contains(self, addr: int) -> bool:
        return (addr & self.mask) == self.network

    def in_pool(self, addr: int) -> bool:
        for start, end in self.pools:  # noqa: SIM110 - a loop: no generator per packet
            if start <= addr <= end:
                return True
        return False

    def describe(self) -> str:
        return f"{self.name} ({ip_text(self.network)}/{self.prefix})"


@dataclass(frozen=True, slots=True)
class HostInfo:
    """One NIC of a node in the inventory."""

    mac: bytes
    node_id: int
    node: str
    arch: str
    is_boot: bool
    interface: str = ""


@dataclass(frozen=True, slots=True)
class ReservationInfo:
    mac: bytes
    address: int
    subnet_id: int
    hostname: str | None = None


@dataclass(frozen=True)
class DhcpView:
    subnets: tuple[SubnetInfo, ...] = ()
    hosts: Mapping[bytes, HostInfo] = field(default_factory=lambda: MappingProxyType({}))
    reservations: Mapping[bytes, ReservationInfo] = field(
        default_factory=lambda: MappingProxyType({}))
    reserved: frozenset[int] = frozenset()  # addresses no pool may hand out
    revision: int | None = None
    problems: tuple[str, ...] = ()

    def subnet_for(self, addr: int) -> SubnetInfo | None:
        """The most specific subnet containing ``addr`` (subnets are few: a scan is fastest)."""
        for subnet in self.subnets:  # sorted longest prefix first
            if (addr & subnet.mask) == subnet.network:
                return subnet
        return None

    def subnet_by_id(self, subnet_id: int) -> SubnetInfo | None:
        return next((s for s in self.subnets if s.id == subnet_id), None)


def _mac(text: str) -> bytes:
    raw = bytes.fromhex(text.replace(":", "").replace("-", ""))
    if len(raw) != 6:
        raise ValueError(f"{text!r} is not a MAC address")
    return raw


def _subnet(row: Mapping[str, Any]) -> SubnetInfo:
    net = ipaddress.IPv4Network(row["cidr"], strict=True)
    return SubnetInfo(
        id=int(row["id"]), name=str(row["name"]), network=int(net.network_address),
        mask=int(net.netmask), prefix=net.prefixlen,
        router=ip_int(row["router"]) if row.get("router") else None,
        dns=tuple(ip_int(d) for d in row.get("dns_servers") or ()),
        domain=row.get("domain") or None,
        lease_seconds=int(row.get("lease_seconds") or 3600),
        next_server=ip_int(row["next_server"]) if row.get("next_server") else None,
        mtu=int(row["mtu"]) if row.get("mtu") else None,
    )


def _fit_to_wire(info: SubnetInfo, problems: list[str]) -> SubnetInfo:
    """Rows stored before the inventory checked wire ranges: leave out (MTU, domain) or
    clamp (lease time, DNS list) what would not fit its option, and say so."""
    fixes: dict[str, Any] = {}
    if info.mtu is not None and not o.MIN_MTU <= info.mtu <= o.MAX_MTU:
        fixes["mtu"] = None
    if info.lease_seconds > o.MAX_LEASE_SECONDS:
        fixes["lease_seconds"] = o.MAX_LEASE_SECONDS
    elif info.lease_seconds < 1:  # (short leases are the inventory's policy, not the wire's)
        fixes["lease_seconds"] = o.MIN_LEASE_SECONDS
    if len(info.dns) * 4 > o.MAX_OPTION_LEN:
        fixes["dns"] = info.dns[:o.MAX_OPTION_LEN // 4]
    if info.domain is not None and len(info.domain.encode()) > o.MAX_OPTION_LEN:
        fixes["domain"] = None
    for key, value in fixes.items():
        problems.append(f"subnet {info.name}: {key} {getattr(info, key)!r} does not fit its "
                        f"DHCP option, using {value!r}; fix it with `fleetboot subnet set`")
    return replace(info, **fixes) if fixes else info


def _pools(subnet: SubnetInfo, rows: Iterable[Mapping[str, Any]],
           problems: list[str]) -> tuple[tuple[int, int], ...]:
    pools = []
    for row in rows:
        try:
            start, end = ip_int(row["start"]), ip_int(row["end"])
        except (ValueError, KeyError, AttributeError):
            problems.append(f"pool {row!r} of subnet {subnet.name}: bad address, skipped")
            continue
        # Never hand out the network or broadcast address, even if the pool says so.
        start, end = max(start, subnet.network + 1), min(end, subnet.broadcast - 1)
        if start > end or not (subnet.contains(start) and subnet.contains(end)):
            problems.append(f"pool {row.get('start')}-{row.get('end')} is empty or outside "
                            f"subnet {subnet.describe()}, skipped")
            continue
        pools.append((start, end))
    return tuple(sorted(pools))


def build_view(
    subnets: Iterable[Mapping[str, Any]],
    pools: Iterable[Mapping[str, Any]],
    reservations: Iterable[Mapping[str, Any]],
    interfaces: Iterable[Mapping[str, Any]],
    revision: int | None = None,
) -> DhcpView:
    """Turn inventory rows (text addresses, as stored) into a view. Never raises on bad rows."""
    problems: list[str] = []
    pools_by_subnet: dict[int, list[Mapping[str, Any]]] = {}
    for row in pools:
        pools_by_subnet.setdefault(int(row["subnet_id"]), []).append(row)
    infos: list[SubnetInfo] = []
    for row in subnets:
        try:
            info = _subnet(row)
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(f"subnet {row.get('name')!r}: {exc}; skipped")
            continue
        info = _fit_to_wire(info, problems)
        infos.append(replace(info, pools=_pools(info, pools_by_subnet.get(info.id, ()), problems)))
    infos.sort(key=lambda s: -s.prefix)
    known = {s.id: s for s in infos}
    res: dict[bytes, ReservationInfo] = {}
    for row in reservations:
        try:
            r = ReservationInfo(_mac(row["mac"]), ip_int(row["address"]), int(row["subnet_id"]),
                                row.get("hostname") or None)
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(f"reservation {row.get('mac')!r}: {exc}; skipped")
            continue
        subnet = known.get(r.subnet_id)
        if subnet is None or not subnet.contains(r.address):
            problems.append(f"reservation {row['mac']} -> {row['address']} is outside its "
                            "subnet; skipped")
            continue
        res[r.mac] = r
    hosts: dict[bytes, HostInfo] = {}
    for row in interfaces:
        try:
            mac = _mac(row["mac"])
        except (ValueError, KeyError) as exc:
            problems.append(f"interface of node {row.get('node')!r}: {exc}; skipped")
            continue
        hosts[mac] = HostInfo(mac, int(row["node_id"]), str(row["node"]),
                              str(row.get("arch") or ""), bool(row["is_boot"]),
                              str(row.get("interface") or ""))
    reserved = {r.address for r in res.values()}
    return DhcpView(tuple(infos), MappingProxyType(hosts), MappingProxyType(res),
                    frozenset(reserved), revision, tuple(problems))

