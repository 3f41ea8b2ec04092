"""The DHCP endpoint: UDP sockets on the event loop around the pure ``DhcpEngine``.

One socket per listening interface, bound to 0.0.0.0:67 with SO_BINDTODEVICE:
it receives broadcasts, tells us which interface (and so which server address
and subnet) a packet came in on without per-packet ancillary data, and sends
broadcast replies out of the right interface. Sockets are read with
``add_reader`` and drained in bursts, so one loop wake-up serves many packets.

Unicast to a client that has no address yet (RFC 2131 4.1: broadcast flag clear,
no ciaddr, no relay) needs the client's MAC for the ARP step. Like dnsmasq we
install the neighbour entry with the SIOCSARP ioctl and then send normally;
this costs one ioctl and keeps the kernel's UDP/IP path (a raw packet socket
would mean building Ethernet/IP/UDP headers and checksums in Python). If the
ioctl fails the reply is broadcast instead, which the RFC allows.

ACKs wait for the lease journal: the engine returns the lease record with the
reply, the journal commits a batch on its thread and hands the batch's replies
back to the loop, which only then sends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from fleetboot.errors import FleetbootError
from fleetboot.identity.core import LinkBook, Verdict
from fleetboot.identity.neighbours import NeighbourTable
from fleetboot.identity.resolver import IdentityResolver
from fleetboot.inventory.db import Database
from fleetboot.protocols.dhcp.codec import MAX_PACKET
from fleetboot.protocols.dhcp.engine import BROADCAST, DhcpEngine, Reply
from fleetboot.protocols.dhcp.leases import LeaseInfo, LeaseTable
from fleetboot.protocols.dhcp.options import ip_int, ip_text
from fleetboot.protocols.dhcp.settings import ArchBoot, DhcpSettings
from fleetboot.protocols.dhcp.view import DhcpView
from fleetboot.server import standalone
from fleetboot.server.dhcp_view import load_view
from fleetboot.server.dhcpwatch import SiteServerWatch
from fleetboot.server.events import EventSink
from fleetboot.server.histogram import Histogram
from fleetboot.server.instance_lock import claim_interfaces, release
from fleetboot.server.leases import LeaseJournal, load_leases
from fleetboot.server.metrics import Metrics, RateLimitedLog, registry

if TYPE_CHECKING:
    from fleetboot.config import Settings

__all__ = ["DhcpService", "DhcpServiceError", "DhcpSettings", "settings_from_config"]

log = logging.getLogger("fleetboot.dhcp")

SIOCGIFADDR = 0x8915
SIOCSARP = 0x8955
ATF_COM = 0x02
ARPHRD_ETHER = 1
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
SOCKET_BUFFER = 8 << 20  # absorbs bursts while the loop is busy with a batch of ACKs
BURST = 256  # datagrams read per wake-up before yielding to other tasks


class DhcpServiceError(FleetbootError):
    pass


@dataclass
class Listener:
    sock: socket.socket
    ifname: str | None
    local: int  # our address on that interface: server id and subnet selection
    proxy_port: bool = False


def interface_address(ifname: str) -> int:
    """The primary IPv4 address of ``ifname`` (SIOCGIFADDR); 0 if it has none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            raw = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", ifname.encode()[:15]))
        except OSError:
            return 0
    return int(struct.unpack_from("!I", raw, 20)[0])


def all_interfaces() -> list[str]:
    """Every non-loopback interface with an IPv4 address, for ``interfaces: []``."""
    return [name for _, name in socket.if_nameindex()
            if name != "lo" and interface_address(name)]


def set_arp(sock: socket.socket, ifname: str, addr: int, mac: bytes) -> None:
    """Install a neighbour entry ``addr -> mac`` on ``ifname`` (struct arpreq, SIOCSARP)."""
    req = struct.pack("=HH4s8sH14si16s16s", socket.AF_INET, 0, addr.to_bytes(4, "big"),
                      b"", ARPHRD_ETHER, mac, ATF_COM, b"", ifname.encode()[:15])
    fcntl.ioctl(sock.fileno(), SIOCSARP, req)


def udp_socket(address: str, port: int, device: str | None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF),
                             (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
            except OSError:  # not root: the kernel caps the plain option at rmem_max
                sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)
        if device:
            sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, device.encode())
        sock.bind((address, port))
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        where = f"{address}:{port}" + (f" on {device}" if device else "")
        raise DhcpServiceError(f"cannot listen for DHCP on {where}: {exc.strerror}; is another "
                               "DHCP server running, and are we root?") from None
    return sock


def serving_interfaces(settings: DhcpSettings) -> list[str]:
    """The interfaces DHCP listens on (none: one unicast socket on a fixed address)."""
    names = list(settings.interfaces)
    if not names and settings.address == "0.0.0.0":
        names = all_interfaces()
        if not names:
            raise DhcpServiceError("no interface with an IPv4 address to serve DHCP on; "
                                   "set dhcp.interfaces")
    return names


def open_listeners(settings: DhcpSettings) -> list[Listener]:
    names = serving_interfaces(settings)
    ports = [(settings.port, False)]
    if settings.proxy:
        ports.append((settings.proxy_port, True))
    out: list[Listener] = []
    try:
        if not names:  # one unicast-only socket on a fixed address (relays, tests)
            for port, proxy in ports:
                sock = udp_socket(settings.address, port, None)
                out.append(Listener(sock, None, ip_int(settings.address), proxy))
            return out
        for name in names:
            local = interface_address(name)
            if not local and not settings.server_id:
                raise DhcpServiceError(_no_address(name))
            for port, proxy in ports:
                out.append(Listener(udp_socket("0.0.0.0", port, name), name, local, proxy))
    except BaseException:
        for listener in out:
            listener.sock.close()
        raise
    return out


def _no_address(name: str) -> str:
    """Why an interface in ``dhcp.interfaces`` cannot be served, and what to do."""
    if not os.path.exists(f"/sys/class/net/{name}"):
        return (f"dhcp.interfaces names {name}, which does not exist on this host; "
                "list the interfaces with `ip -br addr` and fix dhcp.interfaces")
    return (f"interface {name} (in dhcp.interfaces) has no IPv4 address; give it one "
            f"(ip addr add 10.0.0.1/24 dev {name}) or remove it from dhcp.interfaces")
ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Pacer:
    """A token bucket for outgoing replies (``rate`` 0: unlimited)."""

    tick = 0.001

    def __init__(self, rate: int, burst: int) -> None:
        self.rate, self.burst = float(rate), float(max(burst, 1))
        self.tokens = self.burst
        self.last = time.monotonic()
        self.queue: deque[tuple[Listener, Reply]] = deque()
        self.scheduled = False

    def take(self) -> bool:
        if not self.rate:
            return True
        if self.tokens < 1.0:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
            if self.tokens < 1.0:
                return False
        self.tokens -= 1.0
        return True


class DhcpService:
    """The runtime's DHCP service: ``await start()``, ``await reload()``, ``await stop()``."""

    name = "dhcp"

    def __init__(self, settings: DhcpSettings, db: Database,
                 view_loader: Callable[[], DhcpView] | None = None,
                 events: EventSink | None = None, metrics: Metrics = registry) -> None:
        self.settings = settings
        self.db = db
        self.view_loader = view_loader or (lambda: load_view(db))
        self._events = events
        self.metrics = metrics
        # Seconds from a REQUEST's arrival to its ACK (after the lease is durable).
        self.ack_seconds = Histogram(ACK_BUCKETS)
        self.leases = LeaseTable()
        self.engine: DhcpEngine | None = None
        self.journal: LeaseJournal | None = None
        self.listeners: list[Listener] = []
        self._claims: list[socket.socket] = []  # one per interface, see instance_lock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rlog = RateLimitedLog(log)
        self._pacer = Pacer(settings.tx_pace_per_s, settings.tx_burst)
        # Node identity (fleetboot.identity): what the link shows, checked per request.
        self.book = LinkBook()
        self.neighbours: NeighbourTable | None = None
        self.resolver: IdentityResolver | None = None
        self.watch: SiteServerWatch | None = None

    @property
    def events(self) -> EventSink | None:
        return self._events

    @events.setter
    def events(self, sink: EventSink | None) -> None:
        """The event sink may be attached after construction, even while running."""
        self._events = sink
        if self.engine is not None:
            self.engine.events = sink
        if self.watch is not None:
            self.watch.events = sink

    # --- life cycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        # First: ports are shared (SO_REUSEADDR), interfaces are not.
        self._claims = claim_interfaces(serving_interfaces(self.settings))
        try:
            view = await asyncio.to_thread(self.view_loader)
            rows = await asyncio.to_thread(load_leases, self.db)
            if self.settings.proxy:
                # Proxy mode gives no addresses: leases from an earlier normal-mode run
                # are not Fleetboot's any more and must never identify a node. Start clean.
                if rows:
                    log.warning("proxy mode: ignoring %d leases left from serving addresses;"
                                " nodes are identified by what is seen on the link", len(rows))
                rows = []
            self.leases.load(rows)
            self.listeners = open_listeners(self.settings)
            self.engine = DhcpEngine(
                self.settings, view, self.leases, events=self.events, on_drop=self._on_drop,
                server_addresses=tuple(lst.local for lst in self.listeners if lst.local),
                book=self.book if self.settings.proxy else None)
            self._start_identity()
            self._report_view(view)
            self.metrics.register("dhcp", self.engine.counters)
            self.journal = LeaseJournal(
                self.db, self._committed, loop=loop,
                window_s=self.settings.journal_window_ms / 1000,
                max_batch=self.settings.journal_max_batch, metrics=self.metrics)
            self.journal.start()
            for listener in self.listeners:
                loop.add_reader(listener.sock.fileno(), self._readable, listener)
        except BaseException:
            await self.stop()
            raise
        log.info("DHCP%s serving on %s with %d subnets, %d leases loaded",
                 " (proxy)" if self.settings.proxy else "",
                 ", ".join(f"{lst.ifname or '*'}/{ip_text(lst.local)}:{lst.sock.getsockname()[1]}"
                           for lst in self.listeners), len(view.subnets), len(rows))

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        if self.watch is not None:
            self.watch.stop()
            self.watch = None
        if self.neighbours is not None:
            self.neighbours.close()
        for listener in self.listeners:
            with contextlib.suppress(Exception):
                loop.remove_reader(listener.sock.fileno())
        if self.journal is not None:
            await asyncio.to_thread(self.journal.stop)
            await asyncio.sleep(0)  # let the last batch's ACKs go out
        while self._pacer.queue:  # and whatever pacing still holds back
            self._send(*self._pacer.queue.popleft())
        for listener in self.listeners:
            listener.sock.close()
        self.listeners = []
        release(self._claims)
        self.metrics.unregister("dhcp")
        for prefix in ("identity", "dhcp_watch"):
            self.metrics.unregister(prefix)

    def _start_identity(self) -> None:
        names = list(dict.fromkeys(lst.ifname for lst in self.listeners if lst.ifname))
        self.neighbours = NeighbourTable(names)
        own = {ip_text(lst.local) for lst in self.listeners if lst.local}
        self.resolver = IdentityResolver(
            proxy=self.settings.proxy, leases=OwnLeases(self.leases), book=self.book,
            neighbours=self.neighbours, local_addresses=lambda: own)
        self.metrics.register("identity", self.resolver.counters)
        if self.settings.proxy:
            self.watch = SiteServerWatch(names, self.book, self.events)
            self.watch.start()
            self.metrics.register("dhcp_watch", self.watch.counters)

    async def reload(self) -> None:
        """Reload the inventory view (the runtime calls this when the revision changes)."""
        try:
            view = await asyncio.to_thread(self.view_loader)
        except Exception as exc:
            log.error("reloading the DHCP view failed, keeping the current one: %s", exc)
            return
        self.set_view(view)

    def set_view(self, view: DhcpView) -> None:
        if self.engine is not None:
            self.engine.set_view(view)
            self._report_view(view)

    def _report_view(self, view: DhcpView) -> None:
        for problem in view.problems:
            log.warning("inventory: %s", problem)

    # --- lookups for other services ---------------------------------------------------------

    def lease_by_address(self, ip: str | int) -> LeaseInfo | None:
        """The bound lease on ``ip`` with its MAC and node name (dict lookups only)."""
        if self.engine is None:
            return self.leases.lease_by_address(ip)
        return self.engine.lease_by_address(ip)

    def mac_for_address(self, address: str) -> str | None:
        """``LeaseDirectory`` for every node-facing endpoint: the MAC of whoever asks from
        ``address``, only when the identity holds (``fleetboot.identity``)."""
        return self.identify(address).mac

    def identify(self, address: str, claimed: str | None = None) -> Verdict:
        """The identity verdict for a peer (``claimed``: the MAC a URL names)."""
        if self.resolver is None:
            return Verdict(None, "starting", "the DHCP service has not started")
        return self.resolver.identify(address, claimed)

    def explain(self, address: str) -> str:
        if self.resolver is None:
            return "the DHCP service has not started"
        return self.resolver.explain(address)

    @property
    def counters(self) -> dict[str, int]:
        return self.engine.counters if self.engine is not None else {}

    # --- packet path -----------------------------------------------------------------------------

    def _readable(self, listener: Listener) -> None:
        engine, sock, journal = self.engine, listener.sock, self.journal
        assert engine is not None and journal is not None
        now = time.time()
        for _ in range(BURST):
            try:
                data, source = sock.recvfrom(MAX_PACKET + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._rlog.warning("recv", "DHCP receive failed: %s", exc)
                return
            try:
                reply = engine.handle(data, listener.local, now,
                                      proxy_port=listener.proxy_port, source=source)
            except Exception:  # never let one packet stop the server
                self.metrics.inc("dhcp.internal_errors")
                self._rlog.log("internal", logging.ERROR, "DHCP packet from %s raised; dropped",
                               source, exc_info=True)
                continue
            if reply is None:
                continue
            if reply.record is not None:
                # Durable first: the journal hands the reply back once committed.
                # ``now`` (the burst's receive time) rides along: the ACK's answer time.
                journal.submit(reply.record, (listener, reply, now) if reply.data else None)
            elif reply.data is not None:
                self._paced(listener, reply)

    def _committed(self, tokens: list[tuple[Listener, Reply, float]], ok: bool) -> None:
        if not ok:
            self.metrics.inc("dhcp.ack_not_sent", len(tokens))
            return
        done, answered = time.time(), self.ack_seconds.observe
        for listener, reply, received in tokens:
            answered(done - received)  # request in to durable ACK out (the group commit)
            self._paced(listener, reply)

    def _paced(self, listener: Listener, reply: Reply) -> None:
        """Send now if the token bucket allows, else queue behind earlier replies.

        After a stall (a slow commit, the process descheduled) hundreds of replies
        are due at once; sent back to back they overflow small receive queues: a
        relay's, a load generator's, a PXE ROM's few receive descriptors. The bucket
        lets ``tx_burst`` go at once, then ``tx_pace_per_s``; far above the steady rate.
        """
        pacer = self._pacer
        if not pacer.queue and pacer.take():
            self._send(listener, reply)
            return
        pacer.queue.append((listener, reply))
        if not pacer.scheduled and self._loop is not None:
            pacer.scheduled = True
            self._loop.call_later(pacer.tick, self._drain)

    def _drain(self) -> None:
        pacer = self._pacer
        pacer.scheduled = False
        queue = pacer.queue
        while queue and pacer.take():
            listener, reply = queue.popleft()
            self._send(listener, reply)
        if queue and self._loop is not None and not self._loop.is_closed():
            pacer.scheduled = True
            self._loop.call_later(pacer.tick, self._drain)

    def _send(self, listener: Listener, reply: Reply) -> None:
        dest = reply.dest
        if reply.arp is not None:
            if listener.ifname is None:
                dest = (BROADCAST, dest[1])
            else:
                try:
                    set_arp(listener.sock, listener.ifname, *reply.arp)
                except OSError as exc:
                    self._rlog.warning("arp", "cannot add ARP entry (%s); broadcasting", exc)
                    dest = (BROADCAST, dest[1])
        data = reply.data
        if data is None or listener.sock.fileno() < 0:
            return
        try:
            listener.sock.sendto(data, dest)
        except OSError as exc:  # full send buffer or unreachable: DHCP clients retransmit
            self.metrics.inc("dhcp.tx_errors")
            self._rlog.warning("send", "DHCP send to %s failed: %s", dest, exc)
            return
        if reply.event is not None and self.events is not None:
            self.events(reply.event)

    def _on_drop(self, reason: str, detail: str) -> None:
        self._rlog.warning(reason, "DHCP message dropped (%s): %s", reason, detail)


class OwnLeases:
    """Fleetboot's own current leases: bound and unexpired (identity evidence)."""

    def __init__(self, leases: LeaseTable) -> None:
        self.leases = leases

    def mac_for_address(self, address: str) -> str | None:
        info = self.leases.lease_by_address(address)
        return info.mac if info is not None and info.expires > time.time() else None


# --- configuration ------------------------------------------------------------------------------

def settings_from_config(cfg: Settings) -> DhcpSettings:
    """Map the config file's sections (``dhcp``, ``http``, ``architectures``) to settings."""
    d = cfg.dhcp
    arches = {code: ArchBoot(a.name, a.tftp_file, a.http_file)
              for code, a in cfg.architectures.items()}
    server = cfg.server_address if cfg.server_address not in ("0.0.0.0", "") else None
    return DhcpSettings(
        interfaces=tuple(d.interfaces), port=d.port, proxy=d.proxy,
        unknown_clients="serve" if d.unknown_clients == "serve" else "ignore",
        non_boot_interfaces=d.non_boot_interfaces, journal_window_ms=d.journal_window_ms,
        tx_pace_per_s=int(d.tx_pace_per_s),
        next_server=server, http_host=server, http_port=cfg.http.port, architectures=arches)


def settings_from_json(text: str) -> DhcpSettings:
    data: dict[str, Any] = json.loads(text) if text else {}
    known = {f.name for f in fields(DhcpSettings)}
    unknown = set(data) - known
    if unknown:
        raise DhcpServiceError(f"unknown DHCP settings {sorted(unknown)}; known: {sorted(known)}")
    if "interfaces" in data:
        data["interfaces"] = tuple(data["interfaces"])
    if "architectures" in data:
        data["architectures"] = {int(k): ArchBoot(**v) for k, v in data["architectures"].items()}
    return DhcpSettings(**data)


# --- standalone runner (tests and bench; production uses ``fleetboot serve``) -------------

def main(argv: list[str] | None = None) -> None:
    standalone.run(lambda text, db, events: DhcpService(
        settings_from_json(text), db, events=events),
                   "DHCP", "DhcpSettings", argv)


if __name__ == "__main__":
    main()
