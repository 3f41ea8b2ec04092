"""The simulated machines' DHCP clients: PXE firmware, iPXE and the booted OS.

All simulated clients share one AF_PACKET socket on the client interface. A
BPF filter lets only UDP to port 68 through, so the storm's TFTP and HTTP
traffic is never copied into it. Frames go out with the node's own MAC and
source address 0.0.0.0, as firmware sends them; replies are handed to the
waiting client by transaction id (xid) and checked against its MAC.

Messages are built and read by the project's DHCP codec (through
``storm.dhcpwire``, which also holds the three client personalities); this
module holds the exchanges: DISCOVER/OFFER/REQUEST/ACK on a retransmission
schedule, a NAK starting over, retries counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from fleetboot.errors import FleetbootError
from fleetboot.inventory.addr import mac_to_bytes
from fleetboot.protocols.dhcp import options as o
from fleetboot.storm import dhcpwire
from fleetboot.storm.dhcpwire import Personality, Reply
from fleetboot.storm.frames import (
    BROADCAST_MAC,
    DHCP_CLIENT_PORT,
    DHCP_SERVER_PORT,
    UdpDatagram,
    bpf_instruction_count,
    dhcp_client_filter,
    parse_udp_frame,
    udp_frame,
)

T = TypeVar("T")

SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
SOL_PACKET = 263
PACKET_STATISTICS = 6


class DhcpClientError(FleetbootError):
    def __init__(self, message: str, retries: int = 0) -> None:
        super().__init__(message)
        self.retries = retries


@dataclass
class Lease:
    address: str
    server_id: str
    siaddr: str
    file: str  # boot file name (the BOOTP field or option 67)
    options: dict[int, bytes]
    retries: int = 0

    @property
    def boot_server(self) -> str:
        """Where to fetch the boot file: option 66, else siaddr, else the server."""
        name = self.options.get(o.TFTP_SERVER_NAME, b"").rstrip(b"\0").decode(errors="replace")
        if name:
            return name
        return self.siaddr if self.siaddr != "0.0.0.0" else self.server_id


@dataclass
class DhcpLink:
    """The shared raw socket of all simulated DHCP clients on one interface."""

    ifname: str
    sock: socket.socket
    waiters: dict[int, Callable[[UdpDatagram, Reply], None]] = field(default_factory=dict)
    unmatched: int = 0  # replies nobody was waiting for (late answers to retransmissions)
    malformed: int = 0
    _ident: int = 0

    @classmethod
    def open(cls, ifname: str, rcvbuf: int = 32 * 1024 * 1024) -> DhcpLink:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
            _attach_filter(sock)
            sock.bind((ifname, 0x0800))
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while True:  # frames queued before the filter was attached
                    sock.recv(65536)
        except OSError:
            sock.close()
            raise
        return cls(ifname, sock)

    def start(self) -> None:
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._readable)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()

    def drops(self) -> int:
        """Frames the kernel dropped because our socket buffer was full (since last call)."""
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        return int(struct.unpack("II", raw)[1])

    def send(self, frame: bytes) -> None:
        # A full interface queue loses the frame; the client's schedule covers that,
        # exactly as for a frame lost on the wire.
        with contextlib.suppress(BlockingIOError):
            self.sock.send(frame)

    def broadcast(self, mac: bytes, payload: bytes) -> None:
        self._ident = (self._ident + 1) & 0xFFFF
        self.send(udp_frame(mac, BROADCAST_MAC, "0.0.0.0", "255.255.255.255", DHCP_CLIENT_PORT,
                            DHCP_SERVER_PORT, payload, self._ident))

    def _readable(self) -> None:
        for _ in range(512):
            try:
                frame = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            dgram = parse_udp_frame(frame)
            if dgram is None or dgram.dport != DHCP_CLIENT_PORT or dgram.sport != DHCP_SERVER_PORT:
                continue
            reply = dhcpwire.read_reply(dgram.payload)
            if reply is None:
                self.malformed += 1
                continue
            waiter = self.waiters.get(reply.xid)
            if waiter is None:
                self.unmatched += 1
                continue
            waiter(dgram, reply)


def _attach_filter(sock: socket.socket) -> None:
    import ctypes  # only here: the one place a pointer is needed

    program = dhcp_client_filter()
    buffer = ctypes.create_string_buffer(program)
    fprog = struct.pack("HL", bpf_instruction_count(), ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


async def _exchange(
    link: DhcpLink,
    hw: bytes,
    xid: int,
    build: Callable[[int], bytes],
    accept: Callable[[Reply], T | None],
    schedule: tuple[float, ...],
    what: str,
    retries_before: int,
) -> tuple[T, int]:
    """Send ``build(secs)`` on ``schedule`` until ``accept`` takes a reply; (reply, retries)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def on_reply(_dgram: UdpDatagram, reply: Reply) -> None:
        if not fut.done():
            taken = accept(reply)
            if taken is not None:
                fut.set_result(taken)

    link.waiters[xid] = on_reply
    started = loop.time()
    try:
        for attempt, timeout in enumerate(schedule):
            link.broadcast(hw, build(int(loop.time() - started)))
            done, _ = await asyncio.wait({fut}, timeout=timeout)
            if done:
                return fut.result(), attempt
        raise DhcpClientError(f"no {what} after {len(schedule)} tries",
                              retries_before + len(schedule) - 1)
    finally:
        link.waiters.pop(xid, None)
        if not fut.done():
            fut.cancel()


async def obtain_lease(
    link: DhcpLink,
    mac: str,
    who: Personality,
    discover_schedule: tuple[float, ...],
    request_schedule: tuple[float, ...],
    rng: random.Random,
    proxy: bool = False,
) -> Lease:
    """DISCOVER, OFFER, REQUEST, ACK; a NAK starts over. Raises DhcpClientError.

    ``proxy``: the address comes from one server and the boot answer from a
    proxyDHCP server's OFFER (no address, PXEClient); wait for both, as PXE
    firmware and iPXE do, and take the boot file from the proxy offer.
    """
    hw = mac_to_bytes(mac)
    retries = 0
    for _round in range(len(discover_schedule)):
        xid = rng.getrandbits(32)
        boot: Reply | None = None
        if proxy:
            (offer, boot), r = await _exchange(
                link, hw, xid, partial(dhcpwire.discover, xid, hw, who=who),
                partial(_both_offers, hw=hw, found={}), discover_schedule,
                "address and proxy OFFER", retries)
        else:
            offer, r = await _exchange(link, hw, xid, partial(dhcpwire.discover, xid, hw, who=who),
                                       partial(_offer, hw=hw), discover_schedule, "OFFER",
                                       retries)
        retries += r
        answer, r = await _exchange(
            link, hw, xid, partial(dhcpwire.request, xid, hw, who=who, offer=offer),
            partial(_answer, hw=hw, offer=offer), request_schedule, "ACK", retries)
        retries += r
        if answer.msg_type == o.ACK and boot is not None:
            return Lease(answer.yiaddr, answer.server_id or offer.server_id, boot.siaddr,
                         boot.file, {**answer.options, **boot.options}, retries)
        if answer.msg_type == o.ACK:
            return Lease(answer.yiaddr, answer.server_id or offer.server_id, answer.siaddr,
                         answer.file, answer.options, retries)
        retries += 1  # NAK: the client starts over, a retransmission in all but name
    raise DhcpClientError("NAK after every REQUEST", retries)


def _offer(rep: Reply, hw: bytes) -> Reply | None:
    ok = rep.msg_type == o.OFFER and rep.chaddr == hw and rep.yiaddr != "0.0.0.0"
    return rep if ok else None


def _both_offers(rep: Reply, hw: bytes, found: dict[str, Reply]) -> tuple[Reply, Reply] | None:
    """(address offer, proxy boot offer) once both arrived for this DISCOVER."""
    if rep.msg_type != o.OFFER or rep.chaddr != hw:
        return None
    if rep.yiaddr != "0.0.0.0":
        found.setdefault("address", rep)
    elif rep.file and rep.options.get(o.VENDOR_CLASS, b"").startswith(o.PXE_CLIENT):
        found.setdefault("boot", rep)
    if "address" in found and "boot" in found:
        return found["address"], found["boot"]
    return None


def _answer(rep: Reply, hw: bytes, offer: Reply) -> Reply | None:
    """An ACK or NAK to our REQUEST, from the server whose offer we took."""
    if rep.chaddr != hw or rep.msg_type not in (o.ACK, o.NAK):
        return None
    same_server = not rep.server_id or not offer.server_id or rep.server_id == offer.server_id
    return rep if same_server else None
