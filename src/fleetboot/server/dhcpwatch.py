"""Proxy mode: watch the site DHCP server's replies on the link (OFFER, ACK, NAK).

In proxy mode another server hands out addresses. Its replies go to the
clients' port 68, which Fleetboot's port-67 socket never sees, so a packet
socket on each serving interface, with a kernel filter passing only UDP from
port 67 to port 68, reads them passively (nothing is taken from any other
socket). What it sees becomes node identity evidence (``LinkBook``: this MAC
was acknowledged this address by that server) and timeline events ("ACK seen
from 10.0.0.1"). It sees broadcast replies, and unicast ones only where they
pass this host (the site server runs here, or the switch floods them); the
clients' own REQUESTs, which the proxy sees on port 67, carry the rest.

Needs CAP_NET_RAW (the systemd unit has it); without it the watch is off and
says so once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

from fleetboot.identity.core import ACKNOWLEDGED, LinkBook
from fleetboot.protocols.dhcp import options as o
from fleetboot.protocols.dhcp.codec import DhcpDecodeError, decode
from fleetboot.server.events import BootEvent, EventSink

log = logging.getLogger("fleetboot.dhcp.watch")

ETH_P_IP = 0x0800
ETH_P_ALL = 0x0003  # only "all protocols" sockets also see frames this host sends
SO_ATTACH_FILTER = 26
BURST = 256
# Classic BPF: IPv4, UDP, not a fragment, source port 67, destination port 68.
_FILTER = (
    (0x28, 0, 0, 12), (0x15, 0, 10, ETH_P_IP),  # ethertype
    (0x30, 0, 0, 23), (0x15, 0, 8, 17),  # protocol UDP
    (0x28, 0, 0, 20), (0x45, 6, 0, 0x1FFF),  # fragment offset: drop fragments
    (0xB1, 0, 0, 14),  # x = IP header length
    (0x48, 0, 0, 14), (0x15, 0, 3, 67),  # source port
    (0x48, 0, 0, 16), (0x15, 0, 1, 68),  # destination port
    (0x06, 0, 0, 0x40000), (0x06, 0, 0, 0),
)
REPLY_KINDS = {o.OFFER: "OFFER", o.ACK: "ACK", o.NAK: "NAK"}


@dataclass(frozen=True, slots=True)
class SiteReply:
    kind: str  # OFFER | ACK | NAK
    mac: str
    address: str | None  # yiaddr
    server: str  # option 54, else the IP source
    xid: int
    lease_s: int
    boot_file: str


def parse_frame(frame: bytes) -> SiteReply | None:
    """An Ethernet frame -> the DHCP reply it carries (None: not one; never raises)."""
    if len(frame) < 14 + 20 + 8 or frame[12:14] != b"\x08\x00":
        return None
    ihl = (frame[14] & 0x0F) * 4
    if ihl < 20 or len(frame) < 14 + ihl + 8 or frame[23] != 17:
        return None
    source = socket.inet_ntoa(frame[26:30])
    udp = 14 + ihl
    length = struct.unpack_from("!H", frame, udp + 4)[0]
    payload = frame[udp + 8: udp + max(length, 8)]
    try:
        pkt = decode(payload)
    except DhcpDecodeError:
        return None
    kind_raw = pkt.options.get(o.MESSAGE_TYPE)
    if pkt.op != o.BOOTREPLY or kind_raw is None or len(kind_raw) != 1 \
            or kind_raw[0] not in REPLY_KINDS or pkt.hlen != 6:
        return None
    sid = pkt.options.get(o.SERVER_ID)
    server = socket.inet_ntoa(sid) if sid is not None and len(sid) == 4 else source
    lease = pkt.options.get(o.LEASE_TIME)
    lease_s = struct.unpack("!I", lease)[0] if lease is not None and len(lease) == 4 else 0
    return SiteReply(REPLY_KINDS[kind_raw[0]], o.mac_text(pkt.chaddr[:6]),
                     o.ip_text(pkt.yiaddr) if pkt.yiaddr else None, server, pkt.xid, lease_s,
                     (pkt.options.get(o.BOOTFILE_NAME) or pkt.file).decode("latin-1"))


def apply_reply(book: LinkBook, reply: SiteReply, now: float) -> bool:
    """Record what a site reply proves; False for replies that say nothing of addresses."""
    if reply.kind == "ACK" and reply.address is not None:
        book.saw(ACKNOWLEDGED, reply.mac, reply.address, now, reply.server, reply.lease_s)
        return True
    if reply.kind == "NAK":
        book.drop(reply.mac)
        return True
    return reply.address is not None  # an OFFER: for the timeline only


def reply_event(reply: SiteReply, now: float) -> BootEvent:
    detail: dict[str, object] = {"dir": "seen", "server": reply.server, "xid": reply.xid}
    if reply.lease_s:
        detail["lease_s"] = reply.lease_s
    if reply.boot_file:
        detail["file"] = reply.boot_file
    return BootEvent(now, "dhcp", reply.kind, reply.mac, reply.address, detail)


def _filter_program() -> tuple[ctypes.Array[ctypes.c_char], bytes]:
    code = b"".join(struct.pack("=HBBI", *insn) for insn in _FILTER)
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("=HxxxxxxQ", len(_FILTER), ctypes.addressof(buf))
    return buf, fprog


def watch_socket(ifname: str) -> socket.socket:
    """A packet socket on ``ifname`` passing only DHCP replies (filter before bind)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        buf, fprog = _filter_program()
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        del buf  # the kernel copied the program
        # ETH_P_ALL, not ETH_P_IP: a site server on this host sends its replies out of
        # the interface, and the kernel shows outgoing frames to ETH_P_ALL sockets only.
        sock.bind((ifname, ETH_P_ALL))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class SiteServerWatch:
    """Reads the site server's replies on the serving interfaces (proxy mode)."""

    def __init__(self, interfaces: Sequence[str], book: LinkBook,
                 events: EventSink | None = None) -> None:
        self.interfaces = list(interfaces)
        self.book = book
        self.events = events
        self.socks: list[socket.socket] = []
        self.counters: dict[str, int] = {"seen": 0, "offers": 0, "acks": 0, "naks": 0,
                                         "ignored": 0}

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for name in self.interfaces:
            try:
                sock = watch_socket(name)
            except OSError as exc:
                log.warning("cannot watch the site DHCP server's replies on %s (%s): node "
                            "identity in proxy mode relies on the clients' REQUESTs alone; "
                            "give fleetboot CAP_NET_RAW", name, exc.strerror)
                continue
            self.socks.append(sock)
            loop.add_reader(sock.fileno(), self._readable, sock)

    def stop(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self.socks:
            with contextlib.suppress(Exception):
                loop.remove_reader(sock.fileno())
            sock.close()
        self.socks = []

    def _readable(self, sock: socket.socket) -> None:
        now = time.time()
        for _ in range(BURST):
            try:
                frame = sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("reading DHCP replies failed: %s", exc)
                return
            reply = parse_frame(frame)
            # Proxy answers (ours or another proxy's) carry no address: not the site's part.
            if reply is None or (reply.kind != "NAK" and reply.address is None):
                self.counters["ignored"] += 1
                continue
            self.counters["seen"] += 1
            self.counters[reply.kind.lower() + "s"] += 1
            apply_reply(self.book, reply, now)
            if self.events is not None:
                self.events(reply_event(reply, now))
