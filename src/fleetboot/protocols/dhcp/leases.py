"""The in-memory lease table and address allocator. Pure: time is a parameter.

One address belongs to at most one MAC at a time: ``by_addr`` is the single
source of truth, ``by_mac`` an index to each client's current lease. A lease
whose ``expires`` is in the past may be handed to another client; until then
it is kept so a returning client gets its old address back.

Allocation is O(1) amortised without listing every address of a large pool:
each pool has a cursor over never-used addresses, then a queue of released
ones, and only when both are empty a sweep collects expired leases (at most
once per ``SWEEP_INTERVAL`` while the pool stays full).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import NamedTuple

from fleetboot.protocols.dhcp.options import ip_int, ip_text, mac_text
from fleetboot.protocols.dhcp.view import SubnetInfo

OFFERED = 1
BOUND = 2
DECLINED = 3
NOBODY = b""  # owner of a declined address: equal to no client's MAC
SWEEP_INTERVAL = 5.0


class Lease:
    __slots__ = ("addr", "client_id", "expires", "hostname", "mac", "starts", "state",
                 "subnet_id")

    def __init__(self, addr: int, mac: bytes, state: int, expires: float, subnet_id: int | None,
                 starts: float = 0.0, client_id: bytes | None = None,
                 hostname: str | None = None) -> None:
        self.addr = addr
        self.mac = mac
        self.state = state
        self.expires = expires
        self.subnet_id = subnet_id
        self.starts = starts
        self.client_id = client_id
        self.hostname = hostname

    def __repr__(self) -> str:
        return (f"Lease({ip_text(self.addr)}, {mac_text(self.mac)}, state={self.state}, "
                f"expires={self.expires:.0f})")


class LeaseInfo(NamedTuple):
    """What other parts of Fleetboot learn about an address (e.g. the HTTP app)."""

    address: str
    mac: str
    expires: float
    hostname: str | None
    node: str | None = None


class _Pool:
    __slots__ = ("cursor", "end", "free", "start")

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end, self.cursor = start, end, start
        self.free: deque[int] = deque()


class LeaseTable:
    def __init__(self) -> None:
        self.by_addr: dict[int, Lease] = {}
        self.by_mac: dict[bytes, Lease] = {}
        self._pools: dict[int, list[_Pool]] = {}
        self._excluded: frozenset[int] = frozenset()
        self._next_sweep: dict[int, float] = {}

    # --- configuration -------------------------------------------------------------------

    def configure(self, subnets: Iterable[SubnetInfo], excluded: Iterable[int]) -> None:
        """Adopt the pools of a new inventory view, keeping cursors of unchanged pools."""
        old = {(sid, p.start, p.end): p for sid, pools in self._pools.items() for p in pools}
        self._pools = {
            s.id: [old.get((s.id, start, end)) or _Pool(start, end) for start, end in s.pools]
            for s in subnets
        }
        self._excluded = frozenset(excluded)
        self._next_sweep.clear()

    def load(self, leases: Iterable[Lease]) -> None:
        """Add leases read back from the database after a restart."""
        for lease in leases:
            self.by_addr[lease.addr] = lease
            current = self.by_mac.get(lease.mac)
            if current is None or current.expires < lease.expires:
                self.by_mac[lease.mac] = lease

    # --- queries ---------------------------------------------------------------------------

    def get(self, mac: bytes) -> Lease | None:
        return self.by_mac.get(mac)

    def usable(self, addr: int, mac: bytes, now: float) -> bool:
        """May ``mac`` have ``addr`` now (free, its own, or someone's expired lease)?"""
        lease = self.by_addr.get(addr)
        return lease is None or lease.mac == mac or lease.expires <= now

    def excluded(self, addr: int) -> bool:
        return addr in self._excluded

    def lease_by_address(self, ip: str | int) -> LeaseInfo | None:
        """The bound lease of ``ip`` (dotted text or integer), or None. One dict lookup."""
        try:
            addr = ip if isinstance(ip, int) else ip_int(ip)
        except ValueError:
            return None
        lease = self.by_addr.get(addr)
        if lease is None or lease.state != BOUND:
            return None
        return LeaseInfo(ip_text(addr), mac_text(lease.mac), lease.expires, lease.hostname)

    def __len__(self) -> int:
        return len(self.by_addr)

    # --- allocation ------------------------------------------------------------------------

    def allocate(self, subnet_id: int, mac: bytes, now: float) -> int | None:
        """A free pool address of the subnet for ``mac``, or None when the pool is exhausted."""
        pools = self._pools.get(subnet_id)
        if not pools:
            return None
        addr = self._from_cursor(pools, mac, now)
        if addr is None:
            addr = self._from_free(pools, mac, now)
        if addr is None and now >= self._next_sweep.get(subnet_id, 0.0):
            if self._sweep(pools, now):
                addr = self._from_free(pools, mac, now)
            if addr is None:
                self._next_sweep[subnet_id] = now + SWEEP_INTERVAL
        return addr

    def _from_cursor(self, pools: list[_Pool], mac: bytes, now: float) -> int | None:
        by_addr, excluded = self.by_addr, self._excluded
        for pool in pools:
            while pool.cursor <= pool.end:
                addr = pool.cursor
                pool.cursor += 1
                if addr in excluded:
                    continue
                lease = by_addr.get(addr)
                if lease is None or lease.mac == mac or lease.expires <= now:
                    return addr
        return None

    def _from_free(self, pools: list[_Pool], mac: bytes, now: float) -> int | None:
        for pool in pools:
            while pool.free:
                addr = pool.free.popleft()
                if addr not in self._excluded and self.usable(addr, mac, now):
                    return addr
        return None

    def _sweep(self, pools: list[_Pool], now: float) -> bool:
        found = False
        for addr, lease in self.by_addr.items():
            if lease.expires <= now:
                for pool in pools:
                    if pool.start <= addr <= pool.end:
                        pool.free.append(addr)
                        found = True
                        break
        return found

    def _recycle(self, addr: int) -> None:
        for pools in self._pools.values():
            for pool in pools:
                if pool.start <= addr <= pool.end:
                    pool.free.append(addr)
                    return

    # --- state changes ----------------------------------------------------------------------

    def _take(self, addr: int, mac: bytes, subnet_id: int) -> Lease:
        """Make ``addr`` belong to ``mac`` (the caller checked it is usable)."""
        current = self.by_mac.get(mac)
        # A pending offer of another address is withdrawn. A bound lease elsewhere
        # stays until it expires: the database still holds it too.
        if (current is not None and current.addr != addr and current.state == OFFERED
                and self.by_addr.get(current.addr) is current):
            del self.by_addr[current.addr]
            self._recycle(current.addr)
        lease = self.by_addr.get(addr)
        if lease is None:
            lease = Lease(addr, mac, OFFERED, 0.0, subnet_id)
            self.by_addr[addr] = lease
        elif lease.mac != mac:
            if self.by_mac.get(lease.mac) is lease:
                del self.by_mac[lease.mac]
            lease.mac, lease.client_id, lease.hostname, lease.state = mac, None, None, OFFERED
            lease.expires = 0.0
        lease.subnet_id = subnet_id
        self.by_mac[mac] = lease
        return lease

    def offer(self, mac: bytes, addr: int, subnet_id: int, now: float, hold: float) -> Lease:
        lease = self._take(addr, mac, subnet_id)
        if lease.state != BOUND or lease.expires <= now:
            lease.state = OFFERED
            lease.expires = max(lease.expires, now + hold)
        return lease

    def bind(self, mac: bytes, addr: int, subnet_id: int, now: float, seconds: int,
             client_id: bytes | None = None, hostname: str | None = None) -> Lease:
        lease = self._take(addr, mac, subnet_id)
        if lease.state != BOUND or lease.expires <= now:
            lease.starts = now
        lease.state = BOUND
        lease.expires = now + seconds
        lease.client_id = client_id
        if hostname:
            lease.hostname = hostname
        return lease

    def release(self, mac: bytes, addr: int) -> bool:
        lease = self.by_addr.get(addr)
        if lease is None or lease.mac != mac:
            return False
        del self.by_addr[addr]
        if self.by_mac.get(mac) is lease:
            del self.by_mac[mac]
        self._recycle(addr)
        return True

    def decline(self, mac: bytes, addr: int, now: float, hold: float) -> bool:
        """The client found ``addr`` in use by someone else: park it for ``hold`` seconds."""
        lease = self.by_addr.get(addr)
        if lease is None or lease.mac != mac:
            return False
        if self.by_mac.get(mac) is lease:
            del self.by_mac[mac]
        lease.mac, lease.state, lease.expires = NOBODY, DECLINED, now + hold
        lease.client_id = lease.hostname = None
        return True

    def withdraw_offer(self, mac: bytes) -> None:
        """The client chose another server: its pending offer is free again."""
        lease = self.by_mac.get(mac)
        if lease is not None and lease.state == OFFERED:
            self.release(mac, lease.addr)
