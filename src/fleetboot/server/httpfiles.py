"""Sending boot files over HTTP: Range, HEAD, exact Content-Length, and sendfile(2).

Three parts:

* :func:`parse_range`: the pure Range/If-Range logic (RFC 9110 section 14).
  One range is served as 206; several ranges are answered with the whole file
  (200), which the RFC allows and every boot client handles.
* :class:`BootFileResponse`: an ASGI response for a :class:`BootFile` that
  reports how the transfer ended (bytes, duration) when it is complete.
* :class:`ZeroCopyHttpToolsProtocol`: uvicorn's httptools protocol plus the
  ASGI *zero-copy send* extension (``http.response.zerocopysend``). uvicorn
  itself has no sendfile: every body byte is read into Python and written to
  the socket. With this protocol a static file's bytes go from the page cache
  to the socket through ``loop.sendfile`` (``os.sendfile`` on asyncio's
  selector loop); uvloop has no ``loop.sendfile``, so there the extension is not
  offered and responses stream through the shared chunk cache instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import mimetypes
import os
import re
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

import anyio
from starlette.background import BackgroundTask
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from fleetboot.boot.files import BootFile, DiskBootFile
from fleetboot.server.admission import RateFloor, RateWatch

log = logging.getLogger(__name__)

ZEROCOPY = "http.response.zerocopysend"
STREAM_CHUNK = 1 << 20  # matches the chunk cache, so each piece is one cached chunk
STALL_TIMEOUT_S = 60.0  # a transfer without progress this long is given up

_RANGE = re.compile(r"^[ \t]*bytes[ \t]*=[ \t]*([0-9]*)[ \t]*-[ \t]*([0-9]*)[ \t]*\Z",
                    re.IGNORECASE | re.ASCII)
# No file is 10**19 bytes long (2**63 is 19 digits): a longer number is malformed, and
# int() of a number over 4,300 digits even raises (Python's conversion limit).
MAX_RANGE_DIGITS = 19


class ClientDisconnected(OSError):
    """The zero-copy send found the connection closed (ASGI 2.4's OSError on send)."""


class TransferTooSlow(ConnectionError):
    """The client took less than the transfer's :class:`RateFloor`: it is cut off."""

    def __init__(self, floor: RateFloor) -> None:
        super().__init__(f"the client read less than {floor.describe()}")


class RangeNotSatisfiable(Exception):
    """416: the range lies wholly past the end of the file."""


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # exclusive

    @property
    def length(self) -> int:
        return self.end - self.start

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end - 1}/{size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The one byte range asked for, or None for "send the whole file". Pure.

    Malformed headers (numbers of more than 19 digits included) and multi-range
    requests are ignored (the RFC lets a server ignore Range); a syntactically
    valid range that starts at or past the end raises :class:`RangeNotSatisfiable`.
    """
    if header is None or "," in header:
        return None
    match = _RANGE.match(header)
    if match is None:
        return None
    first, last = _significant(match.group(1)), _significant(match.group(2))
    if not first and not last:
        return None
    if len(first) > MAX_RANGE_DIGITS or len(last) > MAX_RANGE_DIGITS:
        return None  # malformed: no such offset, so the whole file
    if not first:  # suffix range: the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable
        return ByteRange(max(0, size - suffix), size)
    start = int(first)
    end = size if not last else int(last) + 1
    if last and end <= start:
        return None  # last < first: invalid, so ignored
    if start >= size:
        raise RangeNotSatisfiable
    return ByteRange(start, min(end, size))


def _significant(digits: str) -> str:
    """``digits`` without leading zeros ("000" -> "0", "" stays "")."""
    return digits.lstrip("0") or digits[:1]


def if_range_matches(if_range: str | None, etag: str, last_modified: str) -> bool:
    """If-Range: serve the range only while the file is the one the client has."""
    if if_range is None:
        return True
    if if_range.startswith("W/"):
        return False  # weak validators never match (RFC 9110 13.1.5)
    return if_range in (etag, last_modified)


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    if if_none_match is None:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


@dataclass
class Transfer:
    """How a response ended, handed to the ``on_done`` callback."""

    status: int
    size: int  # the whole file
    length: int  # the body promised by Content-Length (0 for HEAD)
    sent: int | None  # body bytes handed to the socket; None if unknown
    complete: bool
    duration_s: float
    byte_range: ByteRange | None
    zero_copy: bool
    too_slow: bool = False  # cut off: slower than the transfer's rate floor


OnDone = Callable[[Transfer], None]


@dataclass
class _Progress:
    sent: int = 0
    finished: bool = False  # the last body byte was handed to the server
    disconnected: bool = False
    too_slow: bool = False


async def _watch_disconnect(receive: Receive, progress: _Progress,
                            scope: anyio.CancelScope) -> None:
    """uvicorn speaks ASGI 2.3: a vanished client shows only in receive(), not in
    send(); stop reading the file for nobody."""
    while (await receive())["type"] != "http.disconnect":
        pass
    if not progress.finished:
        progress.disconnected = True
        scope.cancel()


class BootFileResponse(Response):
    """Serve a :class:`BootFile`; see the module docstring."""

    def __init__(self, file: BootFile, *, started: float, on_done: OnDone | None = None,
                 media_type: str | None = None, zero_copy: bool = True,
                 extra_headers: dict[str, str] | None = None,
                 on_close: Callable[[], None] | None = None,
                 rate_floor: RateFloor | None = None) -> None:
        self.file = file
        # The slowest this transfer may go before it is cut off (transfers holding a slot).
        self.rate_floor = rate_floor if rate_floor is not None and rate_floor.enabled else None
        self.started = started
        self.on_done = on_done
        self.on_close = on_close  # always called once the response is over (slot release)
        self.zero_copy = zero_copy
        self.status_code = 200
        self.media_type = media_type or mimetypes.guess_type(file.name)[0] \
            or "application/octet-stream"
        self.background: BackgroundTask | None = None
        self.body = b""
        self.init_headers(extra_headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._respond(scope, receive, send)
        finally:
            if self.on_close is not None:
                on_close, self.on_close = self.on_close, None
                on_close()

    async def _respond(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Headers(scope=scope)
        head = scope["method"] == "HEAD"
        size = self.file.size
        last_modified = formatdate(self.file.mtime, usegmt=True)
        headers: dict[str, str] = {"accept-ranges": "bytes", "etag": self.file.etag,
                                   "last-modified": last_modified}
        if etag_matches(request.get("if-none-match"), self.file.etag):
            await self._finish(send, 304, headers, None, size, head=True)
            return
        try:
            rng = parse_range(request.get("range"), size) if if_range_matches(
                request.get("if-range"), self.file.etag, last_modified) else None
        except RangeNotSatisfiable:
            headers["content-range"] = f"bytes */{size}"
            await self._finish(send, 416, headers, None, size, head=True, length=0)
            return
        if rng is not None:
            headers["content-range"] = rng.content_range(size)
        length = rng.length if rng else size
        status = 206 if rng else 200
        if head or length == 0:
            await self._finish(send, status, headers, rng, size, head=True, length=length)
            return
        await self._send_start(send, status, headers, length)
        await self._send_body(scope, receive, send, rng or ByteRange(0, size), status)

    def _raw_headers(self, headers: dict[str, str],
                     length: int | None) -> list[tuple[bytes, bytes]]:
        raw = [(b"content-type", (self.media_type or "").encode("latin-1"))]
        if length is not None:
            raw.append((b"content-length", str(length).encode()))
        raw += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        raw += [(k, v) for k, v in self.raw_headers if k not in (b"content-length",
                                                                  b"content-type")]
        return raw

    async def _send_start(self, send: Send, status: int, headers: dict[str, str],
                          length: int | None) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": self._raw_headers(headers, length)})

    async def _finish(self, send: Send, status: int, headers: dict[str, str],
                      rng: ByteRange | None, size: int, *, head: bool,
                      length: int | None = None) -> None:
        """A response without body bytes: HEAD, 304, 416, or an empty file."""
        await self._send_start(send, status, headers, length)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        self._report(Transfer(status, size, 0 if head else (length or 0), 0, True,
                              time.monotonic() - self.started, rng, False))

    async def _send_body(self, scope: Scope, receive: Receive, send: Send, rng: ByteRange,
                         status: int) -> None:
        zero_copy = (self.zero_copy and isinstance(self.file, DiskBootFile)
                     and ZEROCOPY in scope.get("extensions", {}))
        progress = _Progress()
        if zero_copy:
            # sendfile itself notices a vanished client (EPIPE, or the idle timeout):
            # no disconnect watcher, which would cost a task per response.
            await self._send_zero_copy(send, rng, progress)
            self._report(Transfer(status, self.file.size, rng.length,
                                  rng.length if progress.finished else None,
                                  progress.finished and not progress.disconnected,
                                  time.monotonic() - self.started, rng, True,
                                  progress.too_slow))
            return
        async with anyio.create_task_group() as group:
            group.start_soon(_watch_disconnect, receive, progress, group.cancel_scope)
            try:
                await self._send_stream(send, rng, progress)
            finally:
                group.cancel_scope.cancel()
        self._report(Transfer(status, self.file.size, rng.length, progress.sent,
                              progress.finished and not progress.disconnected,
                              time.monotonic() - self.started, rng, False, progress.too_slow))

    async def _send_zero_copy(self, send: Send, rng: ByteRange, progress: _Progress) -> None:
        assert isinstance(self.file, DiskBootFile)
        # The descriptor belongs to the shared source; borrow it without closing it.
        with io.FileIO(self.file.fd, "rb", closefd=False) as fileobj:
            try:
                await send({"type": ZEROCOPY, "file": fileobj, "offset": rng.start,
                            "count": rng.length, "more_body": False,
                            "rate_floor": self.rate_floor})
            except ClientDisconnected as exc:
                progress.disconnected = True
                progress.too_slow = isinstance(exc.__cause__, TransferTooSlow)
                return
        progress.sent = rng.length
        progress.finished = True

    async def _send_stream(self, send: Send, rng: ByteRange, progress: _Progress) -> None:
        # Pieces aligned to the chunk cache go out as views of the cached chunks:
        # no copy in Python (BootFile.iter_bytes would copy every piece).
        reader = self.file.reader()
        offset = rng.start
        while offset < rng.end:
            length = min(STREAM_CHUNK - offset % STREAM_CHUNK, rng.end - offset)
            reader.prefetch(offset + length)
            piece = reader.view(offset, length)
            if piece is None:
                await reader.load(offset, length)
                piece = reader.view(offset, length)
            if piece is None or len(piece) != length:
                raise OSError(f"{self.file.name}: could not read {length} bytes at {offset}")
            if not await self._send_piece(send, piece, progress):
                return
            offset += length
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        progress.finished = True

    async def _send_piece(self, send: Send, piece: bytes | memoryview,
                          progress: _Progress) -> bool:
        """Send one piece; False if the client was given up (uvicorn then closes the
        connection of the unfinished response)."""
        # A client that takes nothing for a minute has gone (powered off mid-boot): give
        # up, so it does not hold a transfer slot for ever. With a rate floor, each slice
        # of one window's worth of bytes must leave within the window.
        floor = self.rate_floor
        step = floor.window_bytes if floor else len(piece)
        timeout = min(floor.window_s, STALL_TIMEOUT_S) if floor else STALL_TIMEOUT_S
        view = memoryview(piece)
        for start in range(0, len(view), step):
            part = view[start:start + step]
            try:
                await asyncio.wait_for(send({"type": "http.response.body", "body": part,
                                             "more_body": True}), timeout)
            except TimeoutError:
                progress.disconnected = True
                progress.too_slow = floor is not None and timeout == floor.window_s
                return False
            progress.sent += len(part)
        return True

    def _report(self, transfer: Transfer) -> None:
        if self.on_done is None:
            return
        try:
            self.on_done(transfer)
        except Exception:  # a broken event sink must not break file serving
            log.exception("HTTP transfer callback failed")


# --- uvicorn: the zero-copy send extension ---------------------------------------------------


@dataclass
class ZeroCopyStats:
    responses: int = 0
    bytes: int = 0
    fallbacks: int = 0  # loop.sendfile fell back to read+write (e.g. TLS)


zero_copy_stats = ZeroCopyStats()


def loop_has_native_sendfile(loop: asyncio.AbstractEventLoop) -> bool:
    """asyncio's selector loop implements loop.sendfile with os.sendfile; uvloop does not."""
    from asyncio.selector_events import BaseSelectorEventLoop

    return isinstance(loop, BaseSelectorEventLoop)


def _zero_copy_classes() -> tuple[type[Any], type[Any]] | None:
    """Build the protocol subclasses, or None if this uvicorn's internals differ."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
    except ImportError:  # httptools not installed
        return None
    if not hasattr(HttpToolsProtocol, "_start_asgi_task"):
        return None  # a uvicorn whose internals moved: serve without sendfile

    class ZeroCopyCycle(RequestResponseCycle):
        async def send(self, message: Any) -> None:
            if message["type"] != ZEROCOPY:
                await super().send(message)
                return
            await self._send_file(message)

        async def _send_file(self, message: Message) -> None:
            if not self.response_started or self.response_complete or self.chunked_encoding:
                raise RuntimeError("zero-copy send needs a started response with Content-Length")
            if self.flow.write_paused and not self.disconnected:
                await self.flow.drain()
            if self.disconnected:
                raise ClientDisconnected("the client has gone")
            offset, count = int(message.get("offset") or 0), int(message["count"])
            if count > self.expected_content_length:
                raise RuntimeError("Response content longer than Content-Length")
            if self.scope["method"] != "HEAD" and count:
                try:
                    await _sendfile(self.transport, message["file"], offset, count,
                                    message.get("rate_floor"))
                except (ConnectionError, RuntimeError, OSError) as exc:
                    # The peer went away (or the transport closed under us). ASGI 2.4
                    # says: raise an OSError subclass, so the app knows it stopped short.
                    self.disconnected = True
                    if isinstance(exc, TransferTooSlow):
                        _reset(self.transport)
                    else:
                        self.transport.close()
                    self.message_event.set()
                    raise ClientDisconnected(f"client gone during sendfile: {exc}") from exc
            self.expected_content_length -= count
            # Let uvicorn's own code finish the response (keep-alive, pipelining).
            await super().send({"type": "http.response.body", "body": b"",
                                "more_body": bool(message.get("more_body", False))})

    class ZeroCopyHttpToolsProtocol(HttpToolsProtocol):
        def _start_asgi_task(self, cycle: Any, app: Any) -> None:
            if loop_has_native_sendfile(self.loop) or pump_can_serve(self.transport):
                # uvicorn builds the cycle itself; give it the zero-copy send before
                # the application runs (nothing has called send yet).
                cycle.__class__ = ZeroCopyCycle
                cycle.scope.setdefault("extensions", {})[ZEROCOPY] = {}
            super()._start_asgi_task(cycle, app)

    return ZeroCopyHttpToolsProtocol, ZeroCopyCycle


async def _sendfile(transport: asyncio.BaseTransport, fileobj: Any, offset: int,
                    count: int, floor: RateFloor | None = None) -> None:
    loop = asyncio.get_running_loop()
    if not loop_has_native_sendfile(loop):
        await sendfile_pump().send(transport, fileobj.fileno(), offset, count, floor)
        zero_copy_stats.responses += 1
        zero_copy_stats.bytes += count
        return
    # loop.sendfile shows no progress until it returns: with a rate floor, send one
    # window's worth of bytes at a time, each within the window.
    step = floor.window_bytes if floor else count
    end = offset + count
    while offset < end:
        length = min(step, end - offset)
        try:
            await asyncio.wait_for(_loop_sendfile(loop, transport, fileobj, offset, length),
                                   floor.window_s if floor else None)
        except TimeoutError:
            assert floor is not None
            raise TransferTooSlow(floor) from None
        offset += length
    zero_copy_stats.responses += 1
    zero_copy_stats.bytes += count


async def _loop_sendfile(loop: asyncio.AbstractEventLoop, transport: asyncio.BaseTransport,
                         fileobj: Any, offset: int, count: int) -> None:
    transport_ = transport  # type: Any  # loop.sendfile wants a WriteTransport
    try:
        sent = await loop.sendfile(transport_, fileobj, offset, count, fallback=False)
    except asyncio.SendfileNotAvailableError:
        # e.g. a TLS transport: asyncio copies through a buffer instead.
        zero_copy_stats.fallbacks += 1
        sent = await loop.sendfile(transport_, fileobj, offset, count, fallback=True)
    if sent != count:
        raise ConnectionError(f"sendfile sent {sent} of {count} bytes")


def _reset(transport: Any) -> None:
    """Close with a reset: what the kernel still holds for a too-slow reader is dropped
    at once instead of trickling out to it (memory a crowd of slow readers would hold)."""
    sock = transport.get_extra_info("socket")
    with contextlib.suppress(OSError, AttributeError, ValueError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


# --- sendfile(2) for loops without loop.sendfile (uvloop) ------------------------------------


def pump_can_serve(transport: Any) -> bool:
    """A plain TCP transport whose socket we can hand to sendfile(2) (not TLS)."""
    if not hasattr(select, "epoll") or transport is None:
        return False
    if transport.get_extra_info("sslcontext") is not None:
        return False
    sock = transport.get_extra_info("socket")
    return sock is not None and hasattr(sock, "fileno") and sock.fileno() >= 0


@dataclass(eq=False)
class _Job:
    out_fd: int  # our dup of the connection's socket
    in_fd: int
    offset: int
    remaining: int
    future: asyncio.Future[None]
    loop: asyncio.AbstractEventLoop
    last_progress: float
    watch: RateWatch | None = None  # the transfer's rate floor, if it has one
    closed: bool = False
    sending: bool = False  # the pump is in sendfile(2) on out_fd: only it may close it


class SendfilePump:
    """sendfile(2) from the page cache to sockets, for loops that lack ``loop.sendfile``.

    uvloop streams response bodies through Python: every byte is copied into
    the process and out again, on the event loop. Here one helper thread
    waits for the sockets' writability with its own epoll and calls
    non-blocking ``os.sendfile`` (the GIL is released during the syscall);
    the loop only registers the transfer and awaits its end. The connection's socket is
    used through a ``dup`` of its descriptor, closed when the transfer ends, so
    a connection closed meanwhile can never have its descriptor number reused
    under us. The HTTP layer writes nothing while a transfer runs (it awaits
    it), and the headers are flushed before the first byte.
    """

    def __init__(self, idle_timeout_s: float = STALL_TIMEOUT_S) -> None:
        self.idle_timeout_s = idle_timeout_s
        self._lock = threading.Lock()
        self._jobs: dict[int, _Job] = {}
        self._epoll: Any = None
        self._thread: threading.Thread | None = None
        self.handoffs = 0  # transfers handed to the helper thread

    async def send(self, transport: Any, in_fd: int, offset: int, count: int,
                   floor: RateFloor | None = None) -> None:
        loop = asyncio.get_running_loop()
        await _flushed(transport, self.idle_timeout_s)
        try:
            out_fd = os.dup(transport.get_extra_info("socket").fileno())
        except OSError as exc:
            raise ConnectionError(f"the connection is gone: {exc}") from exc
        # Every sendfile call runs on the helper thread, even the first: on a veth or
        # loopback link the syscall also runs the receiver's network stack, which is
        # time the event loop should spend on other requests.
        now = time.monotonic()
        job = _Job(out_fd, in_fd, offset, count, loop.create_future(), loop, now,
                   RateWatch(floor, now, offset) if floor is not None and floor.enabled
                   else None)
        self._start(job)
        try:
            await job.future
        except asyncio.CancelledError:
            self._close(job)  # the request went away: stop sending for nobody
            raise

    def _start(self, job: _Job) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._epoll = select.epoll()
                self._thread = threading.Thread(target=self._run, name="sendfile-pump",
                                                daemon=True)
                self._thread.start()
            self._jobs[job.out_fd] = job
            self.handoffs += 1
            self._epoll.register(job.out_fd, select.EPOLLOUT | select.EPOLLONESHOT)

    def _close(self, job: _Job, exc: BaseException | None = None) -> None:
        """End ``job`` (either thread). A descriptor in the middle of a sendfile is
        closed by the pump when the call returns, so its number cannot be reused
        under the call; the lock is never held across a syscall that moves data."""
        with self._lock:
            if job.closed:
                return
            job.closed = True
            self._jobs.pop(job.out_fd, None)
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(job.out_fd)
            if not job.sending:
                os.close(job.out_fd)
        with contextlib.suppress(RuntimeError):  # the loop is gone (shutdown)
            job.loop.call_soon_threadsafe(_settle, job.future, exc)

    def _run(self) -> None:
        epoll = self._epoll
        while True:
            events = epoll.poll(0.5)
            now = time.monotonic()
            for fd, _mask in events:
                self._advance(fd, now)
            self._expire(now)

    def _advance(self, fd: int, now: float) -> None:
        with self._lock:
            job = self._jobs.get(fd)
            if job is None or job.closed:
                return
            job.sending = True
        # Outside the lock: on veth or loopback one call can run the receiver's whole
        # network stack for a socket buffer's worth, and the event loop must not wait
        # for that to register the next transfer.
        error: BaseException | None = None
        try:
            sent = _send_some(job.out_fd, job.in_fd, job.offset, job.remaining)
        except OSError as exc:
            sent, error = 0, ConnectionError(f"sendfile failed: {exc}")
        with self._lock:
            job.sending = False
            if job.closed:  # ended meanwhile (the request was cancelled): ours to close
                os.close(job.out_fd)
                return
            job.offset += sent
            job.remaining -= sent
            if sent:
                job.last_progress = now
            if error is None and job.remaining:
                self._epoll.modify(fd, select.EPOLLOUT | select.EPOLLONESHOT)
                return
        self._close(job, error)

    def _expire(self, now: float) -> None:
        with self._lock:
            stalled = [j for j in self._jobs.values()
                       if now - j.last_progress > self.idle_timeout_s]
            slow = [j for j in self._jobs.values() if j.watch is not None and j not in stalled
                    and j.watch.too_slow(now, j.offset)]
        for job in stalled:
            self._close(job, ConnectionError(
                f"the client took nothing for {self.idle_timeout_s:.0f} s"))
        for job in slow:
            assert job.watch is not None
            self._close(job, TransferTooSlow(job.watch.floor))


def _send_some(out_fd: int, in_fd: int, offset: int, count: int) -> int:
    """sendfile until done or the socket is full; the bytes sent."""
    sent = 0
    while sent < count:
        try:
            n = os.sendfile(out_fd, in_fd, offset + sent, count - sent)
        except BlockingIOError:
            break
        except InterruptedError:
            continue
        if n == 0:
            raise ConnectionError("sendfile sent nothing: the file is shorter than promised")
        sent += n
    return sent


def _settle(future: asyncio.Future[None], exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is None:
        future.set_result(None)
    else:
        future.set_exception(exc)


async def _flushed(transport: Any, timeout_s: float) -> None:
    """Wait until everything written through the transport (the headers) is on the wire."""
    deadline = time.monotonic() + timeout_s
    while transport.get_write_buffer_size():
        if transport.is_closing() or time.monotonic() > deadline:
            raise ConnectionError("the client stopped reading")
        await asyncio.sleep(0.002)


_pump: SendfilePump | None = None


def sendfile_pump() -> SendfilePump:
    """The process's pump (one helper thread serves every transfer)."""
    global _pump
    if _pump is None:
        _pump = SendfilePump()
    return _pump


_classes = _zero_copy_classes()
ZeroCopyHttpToolsProtocol: type[asyncio.Protocol] | None = _classes[0] if _classes else None
