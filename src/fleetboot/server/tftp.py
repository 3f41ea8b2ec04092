"""The TFTP server: a thin asyncio adapter around the pure session machine.

One UDP socket listens on port 69; each transfer gets its own socket bound to
an ephemeral port and *connected* to the client (the kernel then filters
foreign packets, and ``send`` skips address handling). Sockets are driven with
``loop.add_reader`` and plain ``recv``/``send``: no protocol objects, no
futures per packet. Timeouts are checked by one sweeper task for all sessions,
so an ACK costs one float assignment instead of rescheduling a timer.

Everything runs in the caller's event loop (uvloop recommended); nothing forks.
Per-session events go to an :data:`~fleetboot.server.events.EventSink`:
kinds ``start``, ``options``, ``done`` and ``error`` (a UEFI tsize probe ends
as ``error`` with ``detail["outcome"] == "probe"``).

Run standalone (tests, benchmarks)::

    python -m fleetboot.server.tftp --root /srv/tftp --host 10.0.0.1 --port 69
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import random
import resource
import signal
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fleetboot.boot.files import (
    BootFile,
    BootFileError,
    BootFileNotFound,
    BootFileSource,
    BootPathRefused,
    MemoryBootFile,
    RequestContext,
)
from fleetboot.protocols.tftp.codec import (
    ErrorCode,
    Opcode,
    OptionAck,
    Request,
    TftpDecodeError,
    TftpError,
    data_header,
    decode,
    encode,
    error_packet,
    to_netascii,
)
from fleetboot.protocols.tftp.options import (
    Negotiated,
    OptionPolicy,
    TftpQuirk,
    blksize_for_mtu,
    negotiate,
    policy_for,
)
from fleetboot.protocols.tftp.session import (
    Outcome,
    ReadSession,
    SendError,
    TimerPolicy,
    Window,
)
from fleetboot.server.directory import LeaseDirectory
from fleetboot.server.events import BootEvent, EventSink, discard
from fleetboot.server.metrics import RateLimitedLog
from fleetboot.server.runtime import freeze_startup_objects, tune_gc_for_packets

log = logging.getLogger(__name__)

# Linux socket constants Python's socket module does not export.
IP_PKTINFO = 8
IP_MTU = 14
IPV6_MTU = 24  # linux/in6.h; the socket module does not export it
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33

_PKTINFO = struct.Struct("=I4s4s")
_RECV_BATCH = 64  # datagrams drained per readiness callback, to stay fair to other sockets
_PREFETCH_AHEAD = 512 * 1024
_HEADERS = tuple(data_header(block) for block in range(0x10000))


@dataclass
class TftpSettings:
    """The ``tftp:`` section of the configuration file."""

    root: Path | None = None  # boot root, used when no BootFileSource is passed in
    host: str = "0.0.0.0"
    port: int = 69
    mtu: int = 1500  # of the boot network; gives the default max_blksize (1500 -> 1468)
    max_blksize: int | None = None  # None: derived from ``mtu``
    max_windowsize: int = 64
    options_enabled: bool = True
    timeout: float = 1.0  # first retransmission timeout (s); a client's ``timeout`` option wins
    max_timeout: float = 8.0  # backoff cap (s)
    retries: int = 6  # retransmissions of one window before the session is dropped
    max_sessions: int = 4096
    quirks: list[TftpQuirk] = field(default_factory=list)
    backslash_is_separator: bool = True  # Windows-style firmware asks for "boot\\x64\\wdsnbp.com"
    session_ports: tuple[int, int] | None = None  # inclusive range; None: kernel's ephemeral ports
    socket_buffer: int = 4 << 20  # bytes for the listening socket's receive buffer
    netascii_max_bytes: int = 64 << 20

    def option_policy(self) -> OptionPolicy:
        max_blksize = self.max_blksize or blksize_for_mtu(self.mtu)
        return OptionPolicy(options_enabled=self.options_enabled, max_blksize=max_blksize,
                            max_windowsize=self.max_windowsize)

    def timer_policy(self) -> TimerPolicy:
        return TimerPolicy(timeout=self.timeout, max_timeout=self.max_timeout,
                           retries=self.retries)


@dataclass
class TftpServerStats:
    """Per-server counters (bad input is counted here, never fatal)."""

    requests: int = 0
    sessions_started: int = 0
    sessions_done: int = 0
    sessions_failed: int = 0
    probes: int = 0
    duplicate_requests: int = 0
    bad_packets: int = 0
    illegal_operations: int = 0
    wrq_refused: int = 0
    not_found: int = 0
    refused_paths: int = 0
    option_errors: int = 0
    busy_drops: int = 0
    errors_sent: int = 0
    bytes_sent: int = 0
    packets_sent: int = 0
    retransmitted_packets: int = 0
    timeouts: int = 0
    active: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


Address = tuple[str, int]


class _Session:
    """One transfer: a connected socket, a :class:`ReadSession` and the file."""

    def __init__(self, server: TftpServer, key: Address, request: Request, file: BootFile,
                 machine: ReadSession, sock: socket.socket, oack: bytes | None,
                 mac: str | None) -> None:
        self.server = server
        self.key = key
        self.request = request
        self.file = file
        self.machine = machine
        self.sock = sock
        self.fd = sock.fileno()
        self._recv = sock.recv
        self._on_ack = machine.on_ack
        self._send = sock.send
        self._reader = file.reader()  # holds its chunks: a busy cache cannot evict them
        self._view = self._reader.view
        self._now = server.loop.time
        self.oack = oack
        self.mac = mac
        self.blksize = machine.blksize
        self.size = machine.size
        self._pending: Window | None = None  # blocks waiting for a disk read or buffer space
        self._loader: asyncio.Task[None] | None = None
        self._writer = False
        self._prefetch_at = 0
        self._closed = False

    # --- receiving --------------------------------------------------------------

    def on_readable(self) -> None:
        # One datagram per callback: the loop calls again while more are queued,
        # and a lock-step transfer never has more, so no failing recv() per ACK.
        try:
            packet = self._recv(2048)
        except BlockingIOError:
            return
        except OSError as exc:  # ICMP port unreachable: the client is gone
            self._peer_gone(exc)
            return
        if len(packet) >= 4 and packet[1] == 4 and packet[0] == 0:  # ACK, inlined ack_block()
            window = self._on_ack((packet[2] << 8) | packet[3], self._now())
            if window is not None:  # (a window means the transfer goes on)
                block = window[0]
                if block == window[1] and self._pending is None:
                    # Lock-step: one block, sent from here without the general loop.
                    offset = (block - 1) * self.blksize
                    if offset < self._prefetch_at:
                        length = self.size - offset
                        data = self._view(offset, length if length < self.blksize else self.blksize)
                        if data is not None:
                            try:
                                self._send(_HEADERS[block & 0xFFFF] + data)
                                return
                            except OSError:
                                pass  # the general path below deals with it
                self.send_window(window)
                return
        else:
            self._act(self.machine.on_packet(packet, self._now()))
        if self.machine.outcome is not Outcome.RUNNING:
            self.server.finish(self)

    def _act(self, action: Window | SendError | None) -> None:
        if isinstance(action, SendError):
            self._send_raw(error_packet(action.code, action.message))
            self.server.stats.errors_sent += 1
        elif action is not None:
            self.send_window(action)

    def on_timeout(self, now: float) -> None:
        self._act(self.machine.on_timeout(now))
        if self.machine.finished:
            self.server.finish(self)

    def on_duplicate_request(self, now: float) -> None:
        window = self.machine.on_duplicate_request(now)
        if window is not None:
            self.send_window(window)

    # --- sending ----------------------------------------------------------------

    def send_window(self, window: Window) -> None:
        if self._closed:
            return
        if self._pending is not None:  # a read or a full buffer is in the way: queue behind it
            self._pending = (min(self._pending[0], window[0]), max(self._pending[1], window[1]))
            return
        first, last = window
        if first == 0:
            if self.oack is not None:
                self._send_raw(self.oack)
            return
        send, view, bs, size = self._send, self._view, self.blksize, self.size
        block = first
        try:
            while block <= last:
                offset = (block - 1) * bs
                data = view(offset, bs if offset + bs <= size else size - offset)
                if data is None:
                    self._wait_for_data(block, last)
                    return
                send(_HEADERS[block & 0xFFFF] + data)
                block += 1
        except BlockingIOError:
            self._wait_for_buffer(block, last)
            return
        except OSError as exc:
            self._peer_gone(exc)
            return
        if last * bs >= self._prefetch_at:
            self._reader.prefetch(last * bs + _PREFETCH_AHEAD)
            self._prefetch_at = last * bs + _PREFETCH_AHEAD // 2

    def _send_raw(self, packet: bytes) -> None:
        with contextlib.suppress(OSError):
            self.sock.send(packet)

    def _wait_for_data(self, first: int, last: int) -> None:
        self._pending = (first, last)
        self._loader = self.server.loop.create_task(self._load(first))

    async def _load(self, first: int) -> None:
        try:
            offset = (first - 1) * self.blksize
            await self._reader.load(offset, min(self.blksize, self.size - offset))
        except (BootFileError, OSError) as exc:
            self.server.rate_log.warning("read", "TFTP %s: reading %s failed: %s",
                                         self.key[0], self.file.name, exc)
            self.machine.abort(self.server.loop.time())
            self._send_raw(error_packet(ErrorCode.NOT_DEFINED, "read error on the server"))
            self.server.finish(self)
            return
        self._resume()

    def _wait_for_buffer(self, first: int, last: int) -> None:
        self._pending = (first, last)
        if not self._writer:
            self._writer = True
            self.server.loop.add_writer(self.fd, self._on_writable)

    def _on_writable(self) -> None:
        self.server.loop.remove_writer(self.fd)
        self._writer = False
        self._resume()

    def _resume(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None and not self.machine.finished:
            self.send_window(pending)

    def _peer_gone(self, exc: OSError) -> None:
        self.machine.abort(self.server.loop.time())
        self.machine.stats.client_error = (-1, f"client unreachable: {exc.strerror or exc}")
        self.server.finish(self)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop = self.server.loop
        loop.remove_reader(self.fd)
        if self._writer:
            loop.remove_writer(self.fd)
        if self._loader is not None and not self._loader.done():
            self._loader.cancel()
        self.sock.close()


class TftpServer:
    """Serves files from a :class:`BootFileSource` over TFTP. Read-only."""

    name = "tftp"

    def __init__(self, settings: TftpSettings, source: BootFileSource | None = None, *,
                 events: EventSink = discard, directory: LeaseDirectory | None = None) -> None:
        if source is None:
            if settings.root is None:
                raise BootFileError("TFTP needs a boot root: set tftp.root in the configuration")
            source = BootFileSource(settings.root)
        self.settings = settings
        self.source = source
        self.events = events
        self.directory = directory
        self.policy = settings.option_policy()
        self.timers = settings.timer_policy()
        self.stats = TftpServerStats()
        self.sessions: dict[Address, _Session] = {}
        self.rate_log = RateLimitedLog(log)
        self._starting: dict[Address, Request] = {}
        self._sock: socket.socket | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.address: Address = (settings.host, settings.port)

    # --- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        _raise_fd_limit(self.settings.max_sessions + 1024)
        ipv6 = ":" in self.settings.host  # "::": a second, IPv6-only server beside 0.0.0.0
        sock = socket.socket(socket.AF_INET6 if ipv6 else socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if ipv6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)  # learn which address was asked
        _set_buffer(sock, socket.SO_RCVBUF, SO_RCVBUFFORCE, self.settings.socket_buffer)
        sock.bind((self.settings.host, self.settings.port))
        self._sock = sock
        self.address = sock.getsockname()[:2]
        self.loop.add_reader(sock.fileno(), self._on_listen_readable)
        self._sweeper = self.loop.create_task(self._sweep())
        log.info("TFTP serving %s on %s:%d", self.source.root, *self.address)

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for task in list(self._tasks):
            task.cancel()
        now = self.loop.time() if self._sock else 0.0
        for session in list(self.sessions.values()):
            session.machine.abort(now)
            self.finish(session)
        if self._sock is not None:
            self.loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    async def __aenter__(self) -> TftpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- the listening socket ------------------------------------------------------

    def _on_listen_readable(self) -> None:
        assert self._sock is not None
        for _ in range(_RECV_BATCH):
            try:
                data, anc, _flags, client = self._sock.recvmsg(65536, socket.CMSG_SPACE(20))
            except BlockingIOError:
                return
            except OSError as exc:
                self.rate_log.warning("listen", "TFTP listening socket: %s", exc)
                return
            # IPv6: (host%scope, port) is enough to answer, also for link-local clients.
            self._on_request(data, client[:2], _local_address(anc))

    def _on_request(self, data: bytes, client: Address, local: str | None) -> None:
        self.stats.requests += 1
        if len(data) >= 2 and data[0] == 0 and data[1] == Opcode.ERROR:
            self.stats.bad_packets += 1  # never answer an ERROR with an ERROR
            return
        try:
            packet = decode(data)
        except TftpDecodeError as exc:
            self._refuse(client, local, exc.code, exc.message, bad=True)
            return
        if not isinstance(packet, Request):
            self.stats.illegal_operations += 1
            self._refuse(client, local, ErrorCode.ILLEGAL_OPERATION,
                         "only RRQ is accepted on this port", bad=True)
            return
        if packet.opcode == Opcode.WRQ:
            self.stats.wrq_refused += 1
            self._refuse(client, local, ErrorCode.ACCESS_VIOLATION, "this server is read-only")
            return
        if packet.mode == "mail":  # RFC 1350: mail mode only ever meant writing to a user
            self._refuse(client, local, ErrorCode.ILLEGAL_OPERATION, "mail mode is not served",
                         bad=True)
            return
        self._on_rrq(packet, client, local)

    def _on_rrq(self, request: Request, client: Address, local: str | None) -> None:
        existing = self.sessions.get(client)
        if existing is not None:
            if existing.request == request:
                self.stats.duplicate_requests += 1
                existing.on_duplicate_request(self.loop.time())
                return
            # Same client port, new request: the client gave up on the old transfer.
            existing.machine.abort(self.loop.time())
            self.finish(existing)
        if client in self._starting:
            self.stats.duplicate_requests += 1
            return
        if len(self.sessions) + len(self._starting) >= self.settings.max_sessions:
            # Dropped, not refused: firmware retries an RRQ but gives up on an error.
            self.stats.busy_drops += 1
            self.rate_log.warning("busy", "TFTP busy: %d sessions, dropping RRQ from %s",
                                  len(self.sessions), client[0])
            return
        self._starting[client] = request
        task = self.loop.create_task(self._start_session(request, client, local))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _refuse(self, client: Address, local: str | None, code: int, message: str,
                bad: bool = False) -> None:
        if bad:
            self.stats.bad_packets += 1
            self.rate_log.warning("bad", "TFTP bad packet from %s:%d: %s", *client, message)
        self.stats.errors_sent += 1
        self._send_from_listener(error_packet(code, message), client, local)

    def _send_from_listener(self, packet: bytes, client: Address, local: str | None) -> None:
        assert self._sock is not None
        try:
            if local is not None and self.settings.host in ("0.0.0.0", ""):
                pktinfo = _PKTINFO.pack(0, socket.inet_aton(local), b"\0\0\0\0")
                self._sock.sendmsg([packet], [(socket.IPPROTO_IP, IP_PKTINFO, pktinfo)], 0,
                                   client)
            else:
                self._sock.sendto(packet, client)
        except OSError as exc:
            self.rate_log.warning("reply", "TFTP reply to %s:%d failed: %s", *client, exc)

    # --- starting a session ----------------------------------------------------------

    async def _start_session(self, request: Request, client: Address, local: str | None) -> None:
        started = self.loop.time()
        mac = self._mac_for(client[0])
        name = request.filename
        if self.settings.backslash_is_separator:
            name = name.replace("\\", "/")
        try:
            file = await self._open(name, request.mode, client, mac)
            policy = policy_for(self.policy, self.settings.quirks, client[0], mac)
            sock = self._session_socket(local, client)
            try:
                policy = _clamp_to_path_mtu(policy, sock)
                negotiated = negotiate(request.options, file.size, policy)
            except BaseException:
                sock.close()
                raise
        except TftpError as exc:
            self._fail_start(request, client, local, mac, exc.code, exc.message, started)
            return
        except BootFileError as exc:
            code = (ErrorCode.ACCESS_VIOLATION if isinstance(exc, BootPathRefused)
                    else ErrorCode.FILE_NOT_FOUND if isinstance(exc, BootFileNotFound)
                    else ErrorCode.NOT_DEFINED)
            self._fail_start(request, client, local, mac, code, str(exc), started)
            return
        except OSError as exc:
            self._fail_start(request, client, local, mac, ErrorCode.NOT_DEFINED,
                             f"server cannot open a session socket: {exc.strerror}", started)
            return
        except Exception as exc:  # a bug must cost one request, not the server
            log.exception("TFTP request %r from %s failed", request.filename, client[0])
            self._fail_start(request, client, local, mac, ErrorCode.NOT_DEFINED,
                             f"internal error ({exc.__class__.__name__})", started)
            return
        finally:
            self._starting.pop(client, None)
        self._run_session(request, client, file, negotiated, sock, mac, started)

    def _mac_for(self, address: str) -> str | None:
        if self.directory is None:
            return None
        try:
            return self.directory.mac_for_address(address)
        except Exception:  # a lease-table bug must not stop booting
            log.exception("TFTP: looking up the MAC of %s failed", address)
            return None

    async def _open(self, name: str, mode: str, client: Address, mac: str | None) -> BootFile:
        file = await self.source.open(name, RequestContext(client[0], mac, "tftp"))
        if mode != "netascii":
            return file
        if file.size > self.settings.netascii_max_bytes:
            raise TftpError(ErrorCode.ILLEGAL_OPERATION, "file too large for netascii; use octet")
        return MemoryBootFile(file.name, to_netascii(await file.read(0, file.size)),
                              generated=file.generated)

    def _session_socket(self, local: str | None, client: Address) -> socket.socket:
        family = socket.AF_INET6 if ":" in client[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            host = local or (self.settings.host if self.settings.host not in ("0.0.0.0", "::")
                             else "")
            _bind_session(sock, host, self.settings.session_ports)
            sock.connect(client)
        except BaseException:
            sock.close()
            raise
        return sock

    def _run_session(self, request: Request, client: Address, file: BootFile,
                     negotiated: Negotiated, sock: socket.socket, mac: str | None,
                     started: float) -> None:
        machine = ReadSession(file.size, negotiated, self.timers, started)
        oack = encode(OptionAck(negotiated.oack)) if negotiated.oack else None
        session = _Session(self, client, request, file, machine, sock, oack, mac)
        self.sessions[client] = session
        self.stats.sessions_started += 1
        self.stats.active = len(self.sessions)
        self.loop.add_reader(session.fd, session.on_readable)
        self._emit("start", client, mac, file=file.name, size=file.size,
                   generated=file.generated, options=dict(request.options))
        if negotiated.oack:
            self._emit("options", client, mac, file=file.name, options=dict(negotiated.oack))
        session.send_window(machine.start(started))

    def _fail_start(self, request: Request, client: Address, local: str | None,
                    mac: str | None, code: int, message: str, started: float) -> None:
        if code == ErrorCode.FILE_NOT_FOUND:
            self.stats.not_found += 1
        elif code == ErrorCode.ACCESS_VIOLATION:
            self.stats.refused_paths += 1
            self.rate_log.warning("refused", "TFTP refused %r from %s: %s", request.filename,
                                  client[0], message)
        elif code == ErrorCode.OPTION_NEGOTIATION:
            self.stats.option_errors += 1
        self.stats.errors_sent += 1
        self._send_from_listener(error_packet(code, message), client, local)
        self._emit("error", client, mac, file=request.filename, error_code=int(code),
                   error=message, outcome="refused", duration=self.loop.time() - started)

    # --- ending a session ------------------------------------------------------------

    def finish(self, session: _Session) -> None:
        if self.sessions.get(session.key) is session:
            del self.sessions[session.key]
        elif session._closed:
            return
        session.close()
        machine, st = session.machine, session.machine.stats
        if st.finished_at is None:
            machine.abort(self.loop.time())
        self.stats.active = len(self.sessions)
        self.stats.bytes_sent += st.bytes_sent
        self.stats.packets_sent += st.packets_sent
        self.stats.retransmitted_packets += st.retransmitted_packets
        self.stats.timeouts += st.timeouts
        detail: dict[str, Any] = {
            "file": session.file.name, "size": session.size, "bytes": machine.bytes_acked,
            "duration": round(st.duration, 6), "blksize": machine.blksize,
            "windowsize": machine.windowsize, "outcome": machine.outcome.value,
            "retransmits": st.retransmitted_packets, "timeouts": st.timeouts,
        }
        if machine.outcome is Outcome.DONE:
            self.stats.sessions_done += 1
            self._emit("done", session.key, session.mac, **detail)
            return
        if machine.outcome is Outcome.PROBE:
            self.stats.probes += 1
        else:
            self.stats.sessions_failed += 1
        if st.client_error is not None:
            detail["error_code"], detail["error"] = st.client_error
        self._emit("error", session.key, session.mac, **detail)

    async def _sweep(self) -> None:
        tick = max(0.01, min(0.1, self.timers.timeout / 5))
        while True:
            await asyncio.sleep(tick)
            now = self.loop.time()
            for session in list(self.sessions.values()):
                if session.machine.deadline <= now:
                    session.on_timeout(now)

    def _emit(self, kind: str, client: Address, mac: str | None, **detail: Any) -> None:
        try:
            self.events(BootEvent(at=time.time(), source="tftp", kind=kind, mac=mac,
                                  address=client[0], detail={"port": client[1], **detail}))
        except Exception:  # a broken listener must not break transfers
            log.exception("TFTP event sink failed")


# --- socket helpers ------------------------------------------------------------------------


def _local_address(ancillary: list[tuple[int, int, bytes]]) -> str | None:
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
            return socket.inet_ntoa(data[4:8])  # ipi_spec_dst: our address the client used
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(data) >= 16:
            local = socket.inet_ntop(socket.AF_INET6, data[:16])
            return None if local.startswith("fe80") else local  # link-local needs a scope
    return None


def _bind_session(sock: socket.socket, host: str, ports: tuple[int, int] | None) -> None:
    if ports is None:
        sock.bind((host, 0))
        return
    low, high = ports
    for _ in range(64):
        try:
            sock.bind((host, random.randint(low, high)))
            return
        except OSError:
            continue
    raise OSError(98, f"no free port in tftp.session_ports {low}-{high}")


def _clamp_to_path_mtu(policy: OptionPolicy, sock: socket.socket) -> OptionPolicy:
    """Never offer blocks that would fragment on the route to this client."""
    try:
        if sock.family == socket.AF_INET6:  # an IPv6 header is 20 bytes longer
            mtu = sock.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU) - 20
        else:
            mtu = sock.getsockopt(socket.IPPROTO_IP, IP_MTU)
    except OSError:
        return policy
    limit = blksize_for_mtu(mtu)
    if limit >= policy.max_blksize:
        return policy
    return OptionPolicy(policy.options_enabled, limit, policy.max_windowsize, policy.tsize,
                        policy.timeout_option)


def _set_buffer(sock: socket.socket, option: int, force: int, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)  # root may exceed rmem_max
    except OSError:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, size)


def _raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


# --- standalone ----------------------------------------------------------------------------


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Fleetboot's TFTP server, standalone")
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=69)
    parser.add_argument("--max-blksize", type=int, default=None)
    parser.add_argument("--max-windowsize", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--max-sessions", type=int, default=4096)
    parser.add_argument("--no-uvloop", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


async def _serve(settings: TftpSettings) -> None:
    server = TftpServer(settings)
    await server.start()
    freeze_startup_objects()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    print(f"ready {server.address[0]}:{server.address[1]}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop()
        print(f"stats {json.dumps(server.stats.as_dict())}", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    tune_gc_for_packets()  # as `fleetboot serve` does
    ipaddress.ip_address(args.host)  # fail early on a typo
    settings = TftpSettings(root=args.root, host=args.host, port=args.port,
                            max_blksize=args.max_blksize, max_windowsize=args.max_windowsize,
                            timeout=args.timeout, max_sessions=args.max_sessions)
    runner: Any = asyncio.run
    if not args.no_uvloop:
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:
            pass
    with contextlib.suppress(KeyboardInterrupt):
        runner(_serve(settings))


if __name__ == "__main__":
    main()
