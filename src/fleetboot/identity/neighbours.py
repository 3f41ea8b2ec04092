"""The kernel's neighbour table: which link-layer address answers for a peer.

One ``RTM_GETNEIGH`` get (netlink, answered synchronously by the kernel inside
``send``) per lookup and interface: a few microseconds, never a wait on the
loop. The codec (request building, reply parsing) is pure; :class:`NeighbourTable`
owns the socket. Where netlink gets are not supported (kernels before 5.0) it
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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

NETLINK_ROUTE = 0
RTM_NEWNEIGH, RTM_GETNEIGH = 28, 30
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


@dataclass(frozen=True, slots=True)
class Entry:
    address: str
    mac: str | None  # None when the entry holds no usable link-layer address
    state: int


def parse_reply(data: bytes, seq: int) -> Entry | None:
    """The entry in a reply to :func:`get_request` (None: the kernel has none).

    Raises :class:`NeighbourDecodeError` on anything malformed or unexpected.
    """
    pos = 0
    while pos + NLMSGHDR.size <= len(data):
        length, kind, _flags, got_seq, _pid = NLMSGHDR.unpack_from(data, pos)
        if length < NLMSGHDR.size or pos + length > len(data):
            raise NeighbourDecodeError(f"netlink message length {length} out of range")
        body = data[pos + NLMSGHDR.size: pos + length]
        pos += (length + 3) & ~3
        if got_seq != seq:
            continue  # a late answer to an earlier question
        if kind == NLMSG_ERROR:
            if len(body) < 4:
                raise NeighbourDecodeError("short netlink error message")
            errno = -struct.unpack_from("=i", body)[0]
            if errno == 0:
                continue
            if errno == 2:  # ENOENT: no entry
                return None
            raise OSError(errno, f"netlink neighbour get failed ({errno})")
        if kind == RTM_NEWNEIGH:
            return _entry(body)
    raise NeighbourDecodeError("no answer to the neighbour request in the reply")


def _entry(body: bytes) -> Entry:
    if len(body) < NDMSG.size:
        raise NeighbourDecodeError("short ndmsg")
    state = NDMSG.unpack_from(body)[4]
    dst = lladdr = None
    pos = NDMSG.size
    while pos + RTATTR.size <= len(body):
        size, kind = RTATTR.unpack_from(body, pos)
        if size < RTATTR.size or pos + size > len(body):
            raise NeighbourDecodeError(f"attribute length {size} out of range")
        value = body[pos + RTATTR.size: pos + size]
        if kind == NDA_DST and len(value) == 4:
            dst = socket.inet_ntoa(value)
        elif kind == NDA_LLADDR and len(value) == 6:
            lladdr = value.hex(":")
        pos += (size + 3) & ~3
    if dst is None:
        raise NeighbourDecodeError("neighbour entry without an IPv4 destination")
    usable = lladdr is not None and state & USABLE and lladdr != "00:00:00:00:00:00"
    return Entry(dst, lladdr if usable else None, state)


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
    """Lookups in the kernel's neighbour table of the serving interfaces."""

    def __init__(self, interfaces: Sequence[str]) -> None:
        self.interfaces = list(interfaces)
        self._indexes: list[int] = []
        self._networks: list[ipaddress.IPv4Network] = []
        self._sock: socket.socket | None = None
        self._seq = itertools.count(1)
        self._proc: tuple[float, dict[str, str]] = (0.0, {})
        self.counters = {"lookups": 0, "netlink_errors": 0, "proc_reads": 0}
        self.refresh()

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
        """Is ``address`` on the subnet of a serving interface (no router between)?"""
        try:
            ip = ipaddress.IPv4Address(address)
        except ValueError:
            return False
        return any(ip in net for net in self._networks)

    def lookup(self, address: str) -> str | None:
        """The MAC the kernel uses for ``address`` on a serving interface, if any."""
        self.counters["lookups"] += 1
        try:
            socket.inet_aton(address)
        except OSError:
            return None
        for index in self._indexes:
            try:
                entry = self._get(index, address)
            except (OSError, NeighbourDecodeError) as exc:
                self.counters["netlink_errors"] += 1
                log.debug("netlink neighbour get failed (%s); reading /proc/net/arp", exc)
                return self._from_proc(address)
            if entry is not None and entry.mac is not None:
                return entry.mac
        return None

    def _get(self, index: int, address: str) -> Entry | None:
        sock = self._sock
        if sock is None:
            sock = self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
            sock.bind((0, 0))
        seq = next(self._seq) & 0xFFFFFFFF
        sock.send(get_request(seq, index, address))
        while True:
            # The kernel answered inside send(): the reply is already queued.
            data = sock.recv(65536, socket.MSG_DONTWAIT)
            try:
                return parse_reply(data, seq)
            except NeighbourDecodeError:
                if NLMSGHDR.unpack_from(data)[3] == seq:
                    raise  # our own answer, malformed
                # a stale reply to an earlier get that timed out: read on

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
        if self._sock is not None:
            self._sock.close()
            self._sock = None
