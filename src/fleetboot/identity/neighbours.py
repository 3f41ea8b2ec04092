"""The kernel's neighbour table: which link-layer address answers for a peer.

An ``RTM_GETNEIGH`` get (netlink, answered synchronously by the kernel inside
``send``) per interface on a cache miss, an ``RTM_GETROUTE`` get to know whether
the peer is on the link at all; answers are cached and kept coherent by the
kernel's change notifications (see :class:`NeighbourTable`). Never a wait on the
loop. The codec (requests, replies, notifications) is pure; :class:`NeighbourTable`
owns the sockets. Where netlink gets are not supported (kernels before 5.0) it
falls back to reading ``/proc/net/arp``, cached for ``PROC_TTL_S``.
"""

from __future__ import annotations

import fcntl
import ipaddress
import itertools
import logging
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

NETLINK_ROUTE = 0
RTM_NEWNEIGH, RTM_GETNEIGH = 28, 30
RTM_NEWROUTE, RTM_GETROUTE = 24, 26
RTM_DELNEIGH = 29
ROUTE_EVENTS = (20, 21, 24, 25)  # RTM_NEWADDR, RTM_DELADDR, RTM_NEWROUTE, RTM_DELROUTE
# Multicast groups: neighbour, IPv4 address and IPv4 route changes.
RTMGRP_NEIGH, RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE = 0x4, 0x10, 0x40
CACHE_LIMIT = 65536
RTA_DST, RTA_OIF, RTA_GATEWAY = 1, 4, 5
RTN_UNICAST = 1
RTMSG = struct.Struct("=BBBBBBBBI")
NLMSG_ERROR = 2
NLM_F_REQUEST = 1
NDA_DST, NDA_LLADDR = 1, 2
# Entry states with a link-layer address the kernel believes (uapi/linux/neighbour.h).
NUD_INCOMPLETE, NUD_FAILED = 0x01, 0x20
USABLE = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80  # REACHABLE STALE DELAY PROBE NOARP PERMANENT
NLMSGHDR = struct.Struct("=IHHII")
NDMSG = struct.Struct("=BBHiHBB")
RTATTR = struct.Struct("=HH")
SIOCGIFADDR, SIOCGIFNETMASK = 0x8915, 0x891B
PROC_ARP = Path("/proc/net/arp")
PROC_TTL_S = 0.5


class NeighbourDecodeError(ValueError):
    pass


def get_request(seq: int, ifindex: int, address: str) -> bytes:
    """An ``RTM_GETNEIGH`` get for one IPv4 ``address`` on ``ifindex``."""
    attr = RTATTR.pack(8, NDA_DST) + socket.inet_aton(address)
    body = NDMSG.pack(socket.AF_INET, 0, 0, ifindex, 0, 0, 0) + attr
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), RTM_GETNEIGH, NLM_F_REQUEST, seq, 0) + body


def route_request(seq: int, address: str) -> bytes:
    """An ``RTM_GETROUTE`` get: how would the kernel reach ``address``?"""
    attr = RTATTR.pack(8, RTA_DST) + socket.inet_aton(address)
    body = RTMSG.pack(socket.AF_INET, 32, 0, 0, 0, 0, 0, 0, 0) + attr
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), RTM_GETROUTE, NLM_F_REQUEST, seq, 0) + body


@dataclass(frozen=True, slots=True)
class Route:
    kind: int  # rtm_type: RTN_UNICAST for a peer reached through an interface
    oif: int
    gateway: str | None  # None: the peer is on the link of ``oif``

    def direct_on(self, indexes: Sequence[int]) -> bool:
        return self.kind == RTN_UNICAST and self.gateway is None and self.oif in indexes


def parse_route(data: bytes, seq: int) -> Route | None:
    """The route in a reply to :func:`route_request` (None: unreachable)."""
    body = _answer(data, seq, RTM_NEWROUTE)
    if body is None:
        return None
    if len(body) < RTMSG.size:
        raise NeighbourDecodeError("short rtmsg")
    kind = RTMSG.unpack_from(body)[7]
    oif, gateway = 0, None
    for attr, value in _attributes(body, RTMSG.size):
        if attr == RTA_OIF and len(value) == 4:
            oif = struct.unpack("=I", value)[0]
        elif attr == RTA_GATEWAY and len(value) == 4:
            gateway = socket.inet_ntoa(value)
    return Route(kind, oif, gateway)


def _answer(data: bytes, seq: int, kind_wanted: int) -> bytes | None:
    """The body of the answer to request ``seq`` (None for ENOENT/unreachable)."""
    pos = 0
    while pos + NLMSGHDR.size <= len(data):
        length, kind, _flags, got_seq, _pid = NLMSGHDR.unpack_from(data, pos)
        if length < NLMSGHDR.size or pos + length > len(data):
            raise NeighbourDecodeError(f"netlink message length {length} out of range")
        body = data[pos + NLMSGHDR.size: pos + length]
        pos += (length + 3) & ~3
        if got_seq != seq:
            continue
        if kind == NLMSG_ERROR:
            if len(body) < 4:
                raise NeighbourDecodeError("short netlink error message")
            errno = -struct.unpack_from("=i", body)[0]
            if errno == 0:
                continue
            if errno in (2, 101, 113):  # ENOENT, ENETUNREACH, EHOSTUNREACH
                return None
            raise OSError(errno, f"netlink get failed ({errno})")
        if kind == kind_wanted:
            return body
    raise NeighbourDecodeError("no answer to the request in the reply")


def _attributes(body: bytes, pos: int) -> list[tuple[int, bytes]]:
    out = []
    while pos + RTATTR.size <= len(body):
        size, kind = RTATTR.unpack_from(body, pos)
        if size < RTATTR.size or pos + size > len(body):
            raise NeighbourDecodeError(f"attribute length {size} out of range")
        out.append((kind, body[pos + RTATTR.size: pos + size]))
        pos += (size + 3) & ~3
    return out


@dataclass(frozen=True, slots=True)
class Entry:
    address: str
    mac: str | None  # None when the entry holds no usable link-layer address
    state: int


def parse_reply(data: bytes, seq: int) -> Entry | None:
    """The entry in a reply to :func:`get_request` (None: the kernel has none).

    Raises :class:`NeighbourDecodeError` on anything malformed or unexpected.
    """
    body = _answer(data, seq, RTM_NEWNEIGH)
    if body is None:
        return None
    return _neigh(body)[1]


def _neigh(body: bytes) -> tuple[int, Entry]:
    """(interface index, entry) of an ndmsg body."""
    if len(body) < NDMSG.size:
        raise NeighbourDecodeError("short ndmsg")
    family, _, _, ifindex, state, _, _ = NDMSG.unpack_from(body)
    if family != socket.AF_INET:
        raise NeighbourDecodeError(f"neighbour entry of address family {family}")
    dst = lladdr = None
    for kind, value in _attributes(body, NDMSG.size):
        if kind == NDA_DST and len(value) == 4:
            dst = socket.inet_ntoa(value)
        elif kind == NDA_LLADDR and len(value) == 6:
            lladdr = value.hex(":")
    if dst is None:
        raise NeighbourDecodeError("neighbour entry without an IPv4 destination")
    usable = lladdr is not None and state & USABLE and lladdr != "00:00:00:00:00:00"
    return ifindex, Entry(dst, lladdr if usable else None, state)


def parse_events(data: bytes) -> list[tuple[str, int, Entry | None]]:
    """Change notifications (a multicast read) -> ("neigh", ifindex, entry) for IPv4
    neighbour changes (entry.mac None once deleted or unusable) and ("route", 0, None)
    for any route or address change. Malformed or foreign messages are skipped."""
    out: list[tuple[str, int, Entry | None]] = []
    pos = 0
    while pos + NLMSGHDR.size <= len(data):
        length, kind = NLMSGHDR.unpack_from(data, pos)[:2]
        if length < NLMSGHDR.size or pos + length > len(data):
            break
        body = data[pos + NLMSGHDR.size: pos + length]
        pos += (length + 3) & ~3
        if kind in (RTM_NEWNEIGH, RTM_DELNEIGH):
            try:
                ifindex, entry = _neigh(body)
            except NeighbourDecodeError:
                continue
            if kind == RTM_DELNEIGH:
                entry = Entry(entry.address, None, 0)
            out.append(("neigh", ifindex, entry))
        elif kind in ROUTE_EVENTS:
            out.append(("route", 0, None))
    return out


def parse_proc_arp(text: str, devices: Sequence[str] | None = None) -> dict[str, str]:
    """``/proc/net/arp`` -> address -> MAC for complete entries (ATF_COM) on ``devices``."""
    out: dict[str, str] = {}
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 6:
            continue
        address, flags, mac, device = parts[0], parts[2], parts[3].lower(), parts[5]
        try:
            complete = int(flags, 16) & 0x2
        except ValueError:
            continue
        if complete and mac != "00:00:00:00:00:00" and (not devices or device in devices):
            out[address] = mac
    return out


def interface_network(ifname: str) -> ipaddress.IPv4Network | None:
    """The primary IPv4 network of ``ifname`` (SIOCGIFADDR + SIOCGIFNETMASK)."""
    req = struct.pack("256s", ifname.encode()[:15])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            addr = fcntl.ioctl(s.fileno(), SIOCGIFADDR, req)[20:24]
            mask = fcntl.ioctl(s.fileno(), SIOCGIFNETMASK, req)[20:24]
        except OSError:
            return None
    return ipaddress.IPv4Network(f"{socket.inet_ntoa(addr)}/{socket.inet_ntoa(mask)}",
                                 strict=False)


class NeighbourTable:
    """Lookups in the kernel's neighbour table of the serving interfaces.

    Answers are cached and kept coherent with the kernel by its own change
    notifications: a netlink socket subscribed to neighbour, address and route
    changes is drained (one non-blocking ``recv``) before every answer, so a
    change the kernel made before the request (a gratuitous ARP taking an
    address over) is always applied first. A lost notification (the socket's
    buffer overflowed) empties the cache. Without notifications every lookup
    asks the kernel.
    """

    def __init__(self, interfaces: Sequence[str], *, cache: bool = True) -> None:
        self.interfaces = list(interfaces)
        self._indexes: list[int] = []
        self._networks: list[ipaddress.IPv4Network] = []
        self._sock: socket.socket | None = None
        self._events: socket.socket | None = None
        self._seq = itertools.count(1)
        self._proc: tuple[float, dict[str, str]] = (0.0, {})
        self._macs: dict[str, str | None] = {}
        self._direct: dict[str, bool] = {}
        self.counters = {"lookups": 0, "netlink_errors": 0, "proc_reads": 0, "cached": 0,
                         "events": 0, "overflows": 0}
        self.refresh()
        if cache:
            self._events = _subscribe()

    def _drain(self) -> bool:
        """Apply pending change notifications; False when there is no coherent cache."""
        events = self._events
        if events is None:
            return False
        while True:
            try:
                data = events.recv(1 << 16, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:  # ENOBUFS: notifications were lost; start over
                self.counters["overflows"] += 1
                self._macs.clear()
                self._direct.clear()
                continue
            for what, ifindex, entry in parse_events(data):
                self.counters["events"] += 1
                if what == "route":
                    self._direct.clear()
                elif entry is not None and ifindex in self._indexes:
                    self._macs[entry.address] = entry.mac

    def refresh(self) -> None:
        """Re-read interface indexes and networks (start, reload)."""
        self._indexes, self._networks = [], []
        for name in self.interfaces:
            try:
                self._indexes.append(socket.if_nametoindex(name))
            except OSError:
                log.warning("neighbour table: no interface %s", name)
                continue
            net = interface_network(name)
            if net is not None:
                self._networks.append(net)

    def on_link(self, address: str) -> bool:
        """Does the kernel reach ``address`` directly through a serving interface (no
        gateway between)? Asked of the kernel's own routing (one netlink get); the
        serving interfaces' subnets answer where that fails."""
        try:
            socket.inet_aton(address)
        except OSError:
            return False
        coherent = self._drain()
        if coherent and address in self._direct:
            self.counters["cached"] += 1
            return self._direct[address]
        try:
            route = self._netlink(route_request, parse_route, address)
        except (OSError, NeighbourDecodeError):
            self.counters["netlink_errors"] += 1
            ip = ipaddress.IPv4Address(address)
            return any(ip in net for net in self._networks)
        direct = route is not None and route.direct_on(self._indexes)
        if coherent:
            _remember(self._direct, address, direct)
        return direct

    def lookup(self, address: str) -> str | None:
        """The MAC the kernel uses for ``address`` on a serving interface, if any."""
        self.counters["lookups"] += 1
        try:
            socket.inet_aton(address)
        except OSError:
            return None
        coherent = self._drain()
        if coherent and address in self._macs:
            self.counters["cached"] += 1
            return self._macs[address]
        found = None
        for index in self._indexes:
            try:
                entry = self._get(index, address)
            except (OSError, NeighbourDecodeError) as exc:
                self.counters["netlink_errors"] += 1
                log.debug("netlink neighbour get failed (%s); reading /proc/net/arp", exc)
                return self._from_proc(address)
            if entry is not None and entry.mac is not None:
                found = entry.mac
                break
        if coherent:
            _remember(self._macs, address, found)
        return found

    def _get(self, index: int, address: str) -> Entry | None:
        return self._netlink(lambda seq, addr: get_request(seq, index, addr), parse_reply,
                             address)

    def _netlink(self, build: Callable[[int, str], bytes], parse: Callable[[bytes, int], T],
                 address: str) -> T:
        sock = self._sock
        if sock is None:
            sock = self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
            sock.bind((0, 0))
        seq = next(self._seq) & 0xFFFFFFFF
        sock.send(build(seq, address))
        while True:
            # The kernel answered inside send(): the reply is already queued.
            data = sock.recv(65536, socket.MSG_DONTWAIT)
            try:
                return parse(data, seq)
            except NeighbourDecodeError:
                if len(data) < NLMSGHDR.size or NLMSGHDR.unpack_from(data)[3] == seq:
                    raise  # our own answer, malformed
                # a stale reply to an earlier get that failed: read on

    def _from_proc(self, address: str) -> str | None:
        at, table = self._proc
        now = time.monotonic()
        if now - at > PROC_TTL_S:
            try:
                text = PROC_ARP.read_text()
            except OSError:
                return None
            self.counters["proc_reads"] += 1
            table = parse_proc_arp(text, self.interfaces)
            self._proc = (now, table)
        return table.get(address)

    def close(self) -> None:
        for sock in (self._sock, self._events):
            if sock is not None:
                sock.close()
        self._sock = self._events = None


def _remember(cache: dict[str, T], key: str, value: T) -> None:
    if len(cache) >= CACHE_LIMIT:
        cache.clear()
    cache[key] = value


def _subscribe() -> socket.socket | None:
    """A netlink socket receiving the kernel's neighbour, address and route changes."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    except OSError:
        return None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((0, RTMGRP_NEIGH | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE))
    except OSError as exc:
        log.warning("cannot follow neighbour changes (%s): every lookup asks the kernel", exc)
        sock.close()
        return None
    return sock
