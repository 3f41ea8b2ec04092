"""The DHCPv6 endpoint and router advertisements around the pure ``Dhcp6Engine``.

One UDP socket per served interface, bound to ``[::]:547`` with SO_BINDTODEVICE
and joined to ff02::1:2 (All_DHCP_Relay_Agents_and_Servers) on that interface,
so we know the link (and so the subnet) a message came from without ancillary
data. Replies go back to the sender: a direct client on its link-local address
(port 546, with the interface's scope id), a relay on its address (port 547).
Sockets are read with ``add_reader`` in bursts, like DHCPv4.

REPLYs that bind leases wait for the lease journal (``Lease6Journal``: the
IPv4 journal's group commit writing ``leases6``), so a lease is durable before
the client hears of it.

Router advertisements (``router_advertisements: true``): a raw ICMPv6 socket
per interface sends an RA with the managed flag and the served prefixes every
``ra_interval_s`` and in answer to router solicitations.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import random
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetboot.errors import FleetbootError
from fleetboot.inventory.db import Database
from fleetboot.protocols.dhcp.leases import LeaseInfo, LeaseTable
from fleetboot.protocols.dhcp.settings import ArchBoot
from fleetboot.protocols.dhcp6 import options as o
from fleetboot.protocols.dhcp6.codec import MAX_PACKET, duid_ll
from fleetboot.protocols.dhcp6.engine import Dhcp6Engine, Reply6
from fleetboot.protocols.dhcp6.ra import is_router_solicitation, router_advertisement
from fleetboot.protocols.dhcp6.settings import Dhcp6Settings
from fleetboot.protocols.dhcp6.view import Dhcp6View
from fleetboot.server import standalone
from fleetboot.server.dhcp import Pacer
from fleetboot.server.dhcp6_view import load_view6
from fleetboot.server.events import EventSink
from fleetboot.server.leases6 import Lease6Journal, load_leases6
from fleetboot.server.metrics import Metrics, RateLimitedLog, registry

if TYPE_CHECKING:
    from fleetboot.config import Settings

__all__ = ["Dhcp6Service", "Dhcp6ServiceError", "settings6_from_config"]

log = logging.getLogger("fleetboot.dhcp6")

SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
SO_RCVBUFFORCE = 33
SOCKET_BUFFER = 8 << 20
BURST = 256
ALL_NODES = "ff02::1"
ALL_ROUTERS = "ff02::2"
RA_ANSWER_DELAY_S = 0.3  # RFC 4861 6.2.6 lets a router wait up to 0.5 s before answering


class Dhcp6ServiceError(FleetbootError):
    pass


Token = tuple["Listener6", Reply6, tuple[str, int, int, int]]  # a reply and where it goes


@dataclass
class Listener6:
    sock: socket.socket
    ifname: str
    ifindex: int
    local: tuple[int, ...]  # our global addresses on the link (subnet selection, boot URLs)
    mac: bytes | None


def interface_addresses6(path: str = "/proc/net/if_inet6") -> dict[str, list[tuple[int, int]]]:
    """Interface name -> its global (not link-local) IPv6 addresses with prefix lengths."""
    out: dict[str, list[tuple[int, int]]] = {}
    with contextlib.suppress(OSError), open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) != 6:
                continue
            addr, _index, length, scope, _flags, name = parts
            if int(scope, 16) & 0x20 or int(scope, 16) & 0x10:  # link-local, loopback
                continue
            out.setdefault(name, []).append((int(addr, 16), int(length, 16)))
    return out


def interface_mac(ifname: str) -> bytes | None:
    try:
        text = Path(f"/sys/class/net/{ifname}/address").read_text().strip()
        raw = bytes.fromhex(text.replace(":", ""))
    except (OSError, ValueError):
        return None
    return raw if len(raw) == 6 and any(raw) else None


def udp6_socket(port: int, ifname: str, ifindex: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, SOCKET_BUFFER)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, ifname.encode())
        sock.bind(("::", port))
        mreq = socket.inet_pton(socket.AF_INET6, o.ALL_SERVERS_AND_RELAYS) + struct.pack(
            "@I", ifindex)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise Dhcp6ServiceError(f"cannot listen for DHCPv6 on [::]:{port} on {ifname}: "
                                f"{exc.strerror}; is another DHCPv6 server running, and are "
                                "we root (or given CAP_NET_BIND_SERVICE, CAP_NET_RAW)?") from None
    return sock


def icmp6_socket(ifname: str, ifindex: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, ifname.encode())
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
        mreq = socket.inet_pton(socket.AF_INET6, ALL_ROUTERS) + struct.pack("@I", ifindex)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise Dhcp6ServiceError(f"cannot send router advertisements on {ifname}: "
                                f"{exc.strerror}; this needs root or CAP_NET_RAW") from None
    return sock


def _source_int(host: str) -> int:
    try:
        return int(ipaddress.IPv6Address(host.split("%", 1)[0]))
    except ValueError:
        return 0


class Dhcp6Service:
    """The runtime's DHCPv6 service: ``await start()``, ``await reload()``, ``await stop()``."""

    name = "dhcp6"

    def __init__(self, settings: Dhcp6Settings, db: Database,
                 view_loader: Callable[[], Dhcp6View] | None = None,
                 events: EventSink | None = None, metrics: Metrics = registry) -> None:
        self.settings = settings
        self.db = db
        self.view_loader = view_loader or (lambda: load_view6(db))
        self._events = events
        self.metrics = metrics
        self.leases = LeaseTable()
        self.engine: Dhcp6Engine | None = None
        self.journal: Lease6Journal | None = None
        self.listeners: list[Listener6] = []
        self._ra_socks: list[tuple[Listener6, socket.socket]] = []
        self._ra_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rlog = RateLimitedLog(log)
        # DHCPv4's token bucket; replies wait in our own queue when it is empty.
        self._pacer = Pacer(settings.tx_pace_per_s, settings.tx_burst)
        self._queue: deque[Token] = deque()
        self._drain_scheduled = False

    @property
    def events(self) -> EventSink | None:
        return self._events

    @events.setter
    def events(self, sink: EventSink | None) -> None:
        self._events = sink
        if self.engine is not None:
            self.engine.events = sink

    # --- life cycle ------------------------------------------------------------------------------

    def _open(self) -> list[Listener6]:
        addresses = interface_addresses6()
        names = list(self.settings.interfaces) or sorted(n for n in addresses if n != "lo")
        if not names:
            raise Dhcp6ServiceError("no interface with a global IPv6 address to serve DHCPv6 "
                                    "on; set dhcp6.interfaces")
        out: list[Listener6] = []
        try:
            for name in names:
                try:
                    index = socket.if_nametoindex(name)
                except OSError:
                    raise Dhcp6ServiceError(f"dhcp6 interface {name!r} does not exist") from None
                local = tuple(addr for addr, _ in addresses.get(name, ()))
                out.append(Listener6(udp6_socket(self.settings.port, name, index), name, index,
                                     local, interface_mac(name)))
        except BaseException:
            for listener in out:
                listener.sock.close()
            raise
        return out

    def _server_duid(self) -> bytes:
        if self.settings.server_duid:
            return bytes.fromhex(self.settings.server_duid.replace(":", ""))
        for listener in self.listeners:
            if listener.mac is not None:
                return duid_ll(listener.mac)
        # No Ethernet interface: a DUID-EN (RFC 8415 11.3) under a private enterprise number.
        return b"\x00\x02" + o.U32.pack(32473) + socket.gethostname().encode()[:64]

    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        view = await asyncio.to_thread(self.view_loader)
        rows = await asyncio.to_thread(load_leases6, self.db)
        self.leases.load(rows)
        self.listeners = self._open()
        try:
            self.engine = Dhcp6Engine(
                self.settings, view, self._server_duid(), self.leases, events=self.events,
                on_drop=self._on_drop,
                server_addresses=tuple(a for lst in self.listeners for a in lst.local))
            self._report_view(view)
            self.metrics.register("dhcp6", self.engine.counters)
            self.journal = Lease6Journal(
                self.db, self._committed, loop=loop,
                window_s=self.settings.journal_window_ms / 1000,
                max_batch=self.settings.journal_max_batch, metrics=self.metrics)
            self.journal.start()
            for listener in self.listeners:
                loop.add_reader(listener.sock.fileno(), self._readable, listener)
            if self.settings.router_advertisements:
                self._start_ra(loop)
        except BaseException:
            await self.stop()
            raise
        log.info("DHCPv6 serving on %s with %d subnets, %d leases loaded%s",
                 ", ".join(f"{lst.ifname}/{'/'.join(o.ip6_text(a) for a in lst.local) or '-'}"
                           for lst in self.listeners), len(view.subnets), len(rows),
                 "; sending router advertisements" if self._ra_socks else "")

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._ra_task is not None:
            self._ra_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ra_task
            self._ra_task = None
        for _listener, sock in self._ra_socks:
            with contextlib.suppress(Exception):
                loop.remove_reader(sock.fileno())
            sock.close()
        self._ra_socks = []
        for listener in self.listeners:
            with contextlib.suppress(Exception):
                loop.remove_reader(listener.sock.fileno())
        if self.journal is not None:
            await asyncio.to_thread(self.journal.stop)
            await asyncio.sleep(0)
        while self._queue:  # what pacing still holds back
            self._send(*self._queue.popleft())
        for listener in self.listeners:
            listener.sock.close()
        self.listeners = []
        self.metrics.unregister("dhcp6")

    async def reload(self) -> None:
        try:
            view = await asyncio.to_thread(self.view_loader)
        except Exception as exc:
            log.error("reloading the DHCPv6 view failed, keeping the current one: %s", exc)
            return
        if self.engine is not None:
            self.engine.set_view(view)
            self._report_view(view)

    def _report_view(self, view: Dhcp6View) -> None:
        for problem in view.problems:
            log.warning("inventory: %s", problem)

    # --- lookups for other services ---------------------------------------------------------

    def mac_for_address(self, address: str) -> str | None:
        """``LeaseDirectory``: the MAC of an unexpired IPv6 lease on ``address``."""
        addr = _source_int(address) if ":" in address else 0
        if not addr or self.engine is None:
            return None
        mac = self.engine.mac_for_address(addr, time.time())
        return o.mac_text(mac) if mac else None

    def lease_by_address(self, ip: str) -> LeaseInfo | None:
        addr = _source_int(ip)
        lease = self.leases.by_addr.get(addr) if addr else None
        if lease is None:
            return None
        mac = o.mac_text(lease.client_id) if lease.client_id else ""
        return LeaseInfo(o.ip6_text(addr), mac, lease.expires, lease.hostname)

    @property
    def counters(self) -> dict[str, int]:
        return self.engine.counters if self.engine is not None else {}

    # --- packet path -----------------------------------------------------------------------------

    def _readable(self, listener: Listener6) -> None:
        engine, journal, sock = self.engine, self.journal, listener.sock
        assert engine is not None and journal is not None
        now = time.time()
        for _ in range(BURST):
            try:
                data, source = sock.recvfrom(MAX_PACKET + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._rlog.warning("recv", "DHCPv6 receive failed: %s", exc)
                return
            try:
                reply = engine.handle(data, listener.local, _source_int(source[0]), now)
            except Exception:  # never let one packet stop the server
                self.metrics.inc("dhcp6.internal_errors")
                self._rlog.log("internal", logging.ERROR, "DHCPv6 packet from %s raised; "
                               "dropped", source, exc_info=True)
                continue
            if reply is None:
                continue
            # Back to the sender: its address and scope, at the port the engine names.
            token = (listener, reply, (source[0], reply.dest[1], 0, source[3]))
            if reply.records:
                for record in reply.records[:-1]:
                    journal.submit(record)
                journal.submit(reply.records[-1], token if reply.data else None)
            elif reply.data is not None:
                self._paced(token)

    def _committed(self, tokens: list[Token], ok: bool) -> None:
        if not ok:
            self.metrics.inc("dhcp6.reply_not_sent", len(tokens))
            return
        for token in tokens:
            self._paced(token)

    def _paced(self, token: Token) -> None:
        """Send now if the bucket allows, else behind earlier replies (see DHCPv4's
        ``DhcpService._paced``: a burst after a stall overruns small receive queues)."""
        if not self._queue and self._pacer.take():
            self._send(*token)
            return
        self._queue.append(token)
        if not self._drain_scheduled and self._loop is not None:
            self._drain_scheduled = True
            self._loop.call_later(Pacer.tick, self._drain)

    def _drain(self) -> None:
        self._drain_scheduled = False
        while self._queue and self._pacer.take():
            self._send(*self._queue.popleft())
        if self._queue and self._loop is not None and not self._loop.is_closed():
            self._drain_scheduled = True
            self._loop.call_later(Pacer.tick, self._drain)

    def _send(self, listener: Listener6, reply: Reply6, dest: tuple[str, int, int, int]) -> None:
        if reply.data is None or listener.sock.fileno() < 0:
            return
        try:
            listener.sock.sendto(reply.data, dest)
        except OSError as exc:
            self.metrics.inc("dhcp6.tx_errors")
            self._rlog.warning("send", "DHCPv6 send to %s failed: %s", dest[0], exc)
            return
        if reply.event is not None and self.events is not None:
            self.events(reply.event)

    def _on_drop(self, reason: str, detail: str) -> None:
        self._rlog.warning(reason, "DHCPv6 message dropped (%s): %s", reason, detail)

    # --- router advertisements ---------------------------------------------------------------

    def _start_ra(self, loop: asyncio.AbstractEventLoop) -> None:
        for listener in self.listeners:
            sock = icmp6_socket(listener.ifname, listener.ifindex)
            self._ra_socks.append((listener, sock))
            loop.add_reader(sock.fileno(), self._solicited, listener, sock)
        self._ra_task = loop.create_task(self._ra_loop())

    def _advertisement(self, listener: Listener6) -> bytes:
        s = self.settings
        view = self.engine.view if self.engine is not None else None
        prefixes = {(sub.network, sub.prefix) for sub in (view.subnets if view else ())
                    for addr in listener.local if sub.contains(addr)}
        return router_advertisement(sorted(prefixes), listener.mac,
                                    router_lifetime=s.ra_router_lifetime_s,
                                    autonomous=s.ra_autonomous)

    def _advertise(self, listener: Listener6, sock: socket.socket,
                   solicitor: str | None = None) -> None:
        """To all nodes, and to a soliciting host itself: firmware (UEFI SNP) may not
        receive multicast."""
        data = self._advertisement(listener)
        for dest in (ALL_NODES, solicitor) if solicitor else (ALL_NODES,):
            try:
                sock.sendto(data, (dest.split("%", 1)[0], 0, 0, listener.ifindex))
                self.metrics.inc("dhcp6.ra.sent")
            except OSError as exc:  # e.g. before the link-local address passed DAD
                self._rlog.warning("ra", "router advertisement on %s failed: %s",
                                   listener.ifname, exc)

    async def _ra_loop(self) -> None:
        while True:
            for listener, sock in self._ra_socks:
                self._advertise(listener, sock)
            interval = self.settings.ra_interval_s
            await asyncio.sleep(interval * random.uniform(0.75, 1.0))

    def _solicited(self, listener: Listener6, sock: socket.socket) -> None:
        for _ in range(BURST):
            try:
                data, source = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if is_router_solicitation(data) and self._loop is not None:
                self.metrics.inc("dhcp6.ra.solicited")
                solicitor = source[0] if source[0] not in ("::", "") else None
                self._loop.call_later(RA_ANSWER_DELAY_S * random.random(),
                                      self._advertise, listener, sock, solicitor)


# --- configuration ------------------------------------------------------------------------------

def settings6_from_config(cfg: Settings) -> Dhcp6Settings:
    """Map the config file's ``dhcp6`` section (plus ``http`` and ``architectures``)."""
    d = cfg.dhcp6
    arches = {code: ArchBoot(a.name, a.tftp_file, a.http_file)
              for code, a in cfg.architectures.items()}
    return Dhcp6Settings(
        interfaces=tuple(d.interfaces), server_address=d.server_address,
        unknown_clients="serve" if cfg.dhcp.unknown_clients == "serve" else "ignore",
        non_boot_interfaces=cfg.dhcp.non_boot_interfaces, rapid_commit=d.rapid_commit,
        journal_window_ms=cfg.dhcp.journal_window_ms, http_port=cfg.http.port,
        tx_pace_per_s=int(cfg.dhcp.tx_pace_per_s),
        architectures=arches, router_advertisements=d.router_advertisements,
        ra_interval_s=d.ra_interval_s, ra_router_lifetime_s=d.ra_router_lifetime_s,
        ra_autonomous=d.ra_autonomous, boot_file_params=tuple(d.boot_file_params))


def settings6_from_json(text: str) -> Dhcp6Settings:
    data: dict[str, Any] = json.loads(text) if text else {}
    known = {f.name for f in fields(Dhcp6Settings)}
    unknown = set(data) - known
    if unknown:
        raise Dhcp6ServiceError(f"unknown DHCPv6 settings {sorted(unknown)}; known: "
                                f"{sorted(known)}")
    if "interfaces" in data:
        data["interfaces"] = tuple(data["interfaces"])
    if "architectures" in data:
        data["architectures"] = {int(k): ArchBoot(**v) for k, v in data["architectures"].items()}
    if "boot_file_params" in data:
        data["boot_file_params"] = tuple(data["boot_file_params"])
    return Dhcp6Settings(**data)


# --- standalone runner (tests and bench; production uses ``fleetboot serve``) -------------

def main(argv: list[str] | None = None) -> None:
    standalone.run(lambda text, db, events: Dhcp6Service(
        settings6_from_json(text), db, events=events),
                   "DHCPv6", "Dhcp6Settings", argv)


if __name__ == "__main__":
    main()
