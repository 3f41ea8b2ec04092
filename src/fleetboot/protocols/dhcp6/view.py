"""The immutable picture of the IPv6 inventory the DHCPv6 path reads.

Subnets, pools and reservations come from the ``subnets6``/``pools6``/
``reservations6`` tables; hosts (node interfaces by MAC) are the very same
ones the DHCPv4 view uses, so a node entered once is known in both families.
Addresses are 128-bit integers. Bad rows are skipped and described in
``problems``, never fatal.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from fleetboot.protocols.dhcp.view import HostInfo, build_view

ALL_ONES = (1 << 128) - 1


@dataclass(frozen=True, slots=True)
class Subnet6Info:
    id: int
    name: str
    network: int
    prefix: int
    dns: tuple[int, ...] = ()
    domains: tuple[str, ...] = ()
    preferred_seconds: int = 3000
    valid_seconds: int = 3600
    pools: tuple[tuple[int, int], ...] = ()

    @property
    def mask(self) -> int:
        return ALL_ONES ^ (ALL_ONES >> self.prefix)

    def contains(self, addr: int) -> bool:
        return (addr & self.mask) == self.network

    def in_pool(self, addr: int) -> bool:
        for start, end in self.pools:  # noqa: SIM110 - a loop: no generator per packet
            if start <= addr <= end:
                return True
        return False

    def describe(self) -> str:
        return f"{self.name} ({ipaddress.IPv6Address(self.network)}/{self.prefix})"


@dataclass(frozen=True, slots=True)
class Reservation6Info:
    address: int
    subnet_id: int
    duid: bytes | None = None
    mac: bytes | None = None
    hostname: str | None = None


@dataclass(frozen=True)
class Dhcp6View:
    subnets: tuple[Subnet6Info, ...] = ()
    hosts: Mapping[bytes, HostInfo] = field(default_factory=lambda: MappingProxyType({}))
    by_duid: Mapping[bytes, Reservation6Info] = field(
        default_factory=lambda: MappingProxyType({}))
    by_mac: Mapping[bytes, Reservation6Info] = field(default_factory=lambda: MappingProxyType({}))
    reserved: frozenset[int] = frozenset()
    revision: int | None = None
    problems: tuple[str, ...] = ()

    def subnet_for(self, addr: int) -> Subnet6Info | None:
        for subnet in self.subnets:  # sorted longest prefix first
            if (addr & subnet.mask) == subnet.network:
                return subnet
        return None

    def reservation(self, duid: bytes, mac: bytes | None) -> Reservation6Info | None:
        res = self.by_duid.get(duid)
        if res is None and mac is not None:
            res = self.by_mac.get(mac)
        return res


def _addr(text: str) -> int:
    return int(ipaddress.IPv6Address(text.strip()))


def _subnet(row: Mapping[str, Any]) -> Subnet6Info:
    net = ipaddress.IPv6Network(row["prefix"], strict=True)
    valid = int(row.get("valid_seconds") or 3600)
    preferred = int(row.get("preferred_seconds") or valid * 5 // 6)
    return Subnet6Info(
        id=int(row["id"]), name=str(row["name"]), network=int(net.network_address),
        prefix=net.prefixlen, dns=tuple(_addr(d) for d in row.get("dns_servers") or ()),
        domains=tuple(str(d) for d in row.get("domains") or ()),
        preferred_seconds=min(preferred, valid), valid_seconds=valid)


def _pools(subnet: Subnet6Info, rows: Iterable[Mapping[str, Any]],
           problems: list[str]) -> tuple[tuple[int, int], ...]:
    pools = []
    for row in rows:
        try:
            start, end = _addr(row["start"]), _addr(row["end"])
        except (ValueError, KeyError, AttributeError):
            problems.append(f"IPv6 pool {row!r} of subnet {subnet.name}: bad address, skipped")
            continue
        start = max(start, subnet.network + 1)  # never the subnet-router anycast address
        if start > end or not (subnet.contains(start) and subnet.contains(end)):
            problems.append(f"IPv6 pool {row.get('start')}-{row.get('end')} is empty or outside"
                            f" subnet {subnet.describe()}, skipped")
            continue
        pools.append((start, end))
    return tuple(sorted(pools))


def _reservation(row: Mapping[str, Any]) -> Reservation6Info:
    duid = row.get("duid")
    mac = row.get("mac")
    if not duid and not mac:
        raise ValueError("names neither a DUID nor a MAC")
    return Reservation6Info(
        _addr(row["address"]), int(row["subnet_id"]),
        bytes.fromhex(duid.replace(":", "")) if duid else None,
        bytes.fromhex(mac.replace(":", "").replace("-", "")) if mac else None,
        row.get("hostname") or None)


def build_view6(
    subnets: Iterable[Mapping[str, Any]],
    pools: Iterable[Mapping[str, Any]],
    reservations: Iterable[Mapping[str, Any]],
    interfaces: Iterable[Mapping[str, Any]],
    revision: int | None = None,
) -> Dhcp6View:
    """Turn inventory rows (text addresses, as stored) into a view. Never raises on bad rows."""
    problems: list[str] = []
    pools_by_subnet: dict[int, list[Mapping[str, Any]]] = {}
    for row in pools:
        pools_by_subnet.setdefault(int(row["subnet_id"]), []).append(row)
    infos: list[Subnet6Info] = []
    for row in subnets:
        try:
            info = _subnet(row)
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(f"IPv6 subnet {row.get('name')!r}: {exc}; skipped")
            continue
        pools_of = _pools(info, pools_by_subnet.get(info.id, ()), problems)
        infos.append(Subnet6Info(info.id, info.name, info.network, info.prefix, info.dns,
                                 info.domains, info.preferred_seconds, info.valid_seconds,
                                 pools_of))
    infos.sort(key=lambda s: -s.prefix)
    known = {s.id: s for s in infos}
    by_duid: dict[bytes, Reservation6Info] = {}
    by_mac: dict[bytes, Reservation6Info] = {}
    for row in reservations:
        try:
            res = _reservation(row)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            problems.append(f"IPv6 reservation {row.get('address')!r}: {exc}; skipped")
            continue
        subnet = known.get(res.subnet_id)
        if subnet is None or not subnet.contains(res.address):
            problems.append(f"IPv6 reservation {row['address']} is outside its subnet; skipped")
            continue
        if res.duid is not None:
            by_duid[res.duid] = res
        if res.mac is not None:
            by_mac[res.mac] = res
    hosts = build_view((), (), (), interfaces)
    problems.extend(hosts.problems)
    reserved = frozenset(r.address for r in (*by_duid.values(), *by_mac.values()))
    return Dhcp6View(tuple(infos), hosts.hosts, MappingProxyType(by_duid),
                     MappingProxyType(by_mac), reserved, revision, tuple(problems))
