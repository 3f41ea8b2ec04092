"""A small HTTP/1.1 client for a thousand simulated iPXEs at once.

Kernels and initrds are counted, not kept: the protocol reads every
connection into one shared scratch buffer (the loop is single-threaded, so
this is safe), so a storm moving gigabytes allocates almost nothing. Small
bodies (scripts, configuration documents) are kept. Connections are
persistent like iPXE's. The response parser is a pure incremental state
machine, fed arbitrary slices of bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import urlsplit

from fleetboot.errors import FleetbootError

MAX_HEAD = 64 * 1024
MAX_KEPT_BODY = 16 * 1024 * 1024
_SCRATCH = memoryview(bytearray(256 * 1024))


class HttpError(FleetbootError):
    pass


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lowercased names; repeated headers joined with ", "
    size: int  # body bytes received
    body: bytes = b""  # empty unless the body was kept
    will_close: bool = False
    connect_s: float = 0.0  # time spent opening a TCP connection for this request (0: reused)
    head_s: float = 0.0  # from sending the request to the end of the response head


@dataclass
class ResponseParser:
    """Incremental parser of one response. ``feed`` returns it when complete."""

    keep_body: bool = False
    head_only: bool = False  # the answer to a HEAD request has no body
    _head: bytearray = field(default_factory=bytearray)
    _body: bytearray = field(default_factory=bytearray)
    _response: Response | None = None
    _remaining: int = -1  # bytes left of a sized body; -1: not sized
    _chunked: bool = False
    _chunk_state: str = "size"  # size | data | data-crlf | trailer
    _line: bytearray = field(default_factory=bytearray)
    _until_close: bool = False
    done: bool = False

    def feed(self, data: bytes | memoryview) -> tuple[Response | None, int]:
        """Consume bytes; returns (response when complete, bytes used)."""
        used = 0
        if self._response is None:
            used = self._feed_head(data)
            if self._response is None:
                return None, used
            if self.done:
                return self._response, used
        used += self._feed_body(data[used:])
        return (self._response if self.done else None), used

    @property
    def has_head(self) -> bool:
        return self._response is not None

    def eof(self) -> Response:
        """The connection closed: complete a read-until-close body, or fail."""
        if self._response is not None and self._until_close and not self.done:
            self._finish()
            return self._response
        raise HttpError("connection closed before the response was complete")

    def _feed_head(self, data: bytes | memoryview) -> int:
        start = max(0, len(self._head) - 3)
        self._head += data
        end = self._head.find(b"\r\n\r\n", start)
        if end < 0:
            if len(self._head) > MAX_HEAD:
                raise HttpError("response head larger than 64 KiB")
            return len(data)
        used = len(data) - (len(self._head) - end - 4)
        self._parse_head(bytes(self._head[:end]))
        return used

    def _parse_head(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise HttpError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon:
                raise HttpError(f"bad header line {line[:80]!r}")
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        status = int(parts[1])
        close = "close" in headers.get("connection", "").lower() or parts[0] == "HTTP/1.0"
        self._response = Response(status, headers, 0, will_close=close)
        self._setup_body(status, headers)

    def _setup_body(self, status: int, headers: dict[str, str]) -> None:
        if self.head_only or status in (204, 304) or 100 <= status < 200:
            self._finish()
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._chunked = True
        elif "content-length" in headers:
            try:
                self._remaining = int(headers["content-length"])
            except ValueError:
                raise HttpError(f"bad Content-Length {headers['content-length']!r}") from None
            if self._remaining < 0:
                raise HttpError("negative Content-Length")
            if self._remaining == 0:
                self._finish()
        else:
            self._until_close = True
            assert self._response is not None
            self._response.will_close = True

    def _feed_body(self, data: bytes | memoryview) -> int:
        if self._chunked:
            return self._feed_chunked(data)
        take = len(data) if self._remaining < 0 else min(len(data), self._remaining)
        self._take(data[:take])
        if self._remaining >= 0:
            self._remaining -= take
            if self._remaining == 0:
                self._finish()
        return take

    def _take(self, data: bytes | memoryview) -> None:
        assert self._response is not None
        self._response.size += len(data)
        if self.keep_body:
            if len(self._body) + len(data) > MAX_KEPT_BODY:
                raise HttpError("kept response body larger than 16 MiB")
            self._body += data

    def _feed_chunked(self, data: bytes | memoryview) -> int:
        pos = 0
        while pos < len(data) and not self.done:
            if self._chunk_state == "data":
                take = min(len(data) - pos, self._remaining)
                self._take(data[pos : pos + take])
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._chunk_state = "data-crlf"
                continue
            nl = bytes(data[pos : pos + 4097]).find(b"\n")
            if nl < 0:
                self._line += data[pos:]
                if len(self._line) > 4096:
                    raise HttpError("chunk line too long")
                return len(data)
            self._line += data[pos : pos + nl]
            pos += nl + 1
            self._chunk_line(bytes(self._line).rstrip(b"\r"))
            self._line.clear()
        return pos

    def _chunk_line(self, line: bytes) -> None:
        if self._chunk_state == "size":
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise HttpError(f"bad chunk size line {line[:40]!r}") from None
            if size < 0:
                raise HttpError("negative chunk size")
            self._remaining = size
            self._chunk_state = "data" if size else "trailer"
        elif self._chunk_state == "data-crlf":
            if line:
                raise HttpError("chunk data not followed by CRLF")
            self._chunk_state = "size"
        elif not line:  # the empty line ending the trailer
            self._finish()

    def _finish(self) -> None:
        assert self._response is not None
        self.done = True
        self._response.body = bytes(self._body)


class _Protocol(asyncio.BufferedProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser: ResponseParser | None = None
        self.waiter: asyncio.Future[Response] | None = None
        self.closed = False
        self.last_progress = 0.0
        self.head_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _SCRATCH

    def buffer_updated(self, nbytes: int) -> None:
        self.last_progress = asyncio.get_running_loop().time()
        if self.parser is None or self.waiter is None or self.waiter.done():
            self._fail(HttpError("unexpected bytes from the server"))
            return
        try:
            response, _used = self.parser.feed(_SCRATCH[:nbytes])
        except HttpError as exc:
            self._fail(exc)
            return
        if self.head_at == 0.0 and self.parser.has_head:
            self.head_at = self.last_progress
        if response is not None:
            self.waiter.set_result(response)

    def eof_received(self) -> bool:
        self.closed = True
        self._complete_or_fail(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._complete_or_fail(exc)

    def _complete_or_fail(self, exc: Exception | None) -> None:
        if self.parser is None or self.waiter is None or self.waiter.done():
            return
        try:
            self.waiter.set_result(self.parser.eof())
        except HttpError as err:
            reason = f"{err}" + (f" ({exc})" if exc else "")
            self.waiter.set_exception(HttpError(reason))

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()


class HttpClient:
    """One persistent connection per (host, port), from a fixed source address."""

    def __init__(self, source_ip: str, idle_timeout_s: float, user_agent: str = "iPXE/1.21.1"):
        self.source_ip = source_ip
        self.idle_timeout_s = idle_timeout_s
        self.user_agent = user_agent
        self._conn: tuple[str, int, _Protocol] | None = None
        self.connections = 0  # TCP connections opened
        self.last: Response | None = None  # the last complete response

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        keep_body: bool = False,
    ) -> Response:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise HttpError(f"cannot fetch {url!r}: only http:// URLs are supported")
        host, port = parts.hostname, parts.port or 80
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        loop = asyncio.get_running_loop()
        started = loop.time()
        proto = await self._connection(host, port)
        connected = loop.time()
        lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}",
                 f"User-Agent: {self.user_agent}", "Connection: keep-alive"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body or method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(body)}")
        proto.parser = ResponseParser(keep_body=keep_body, head_only=method == "HEAD")
        proto.waiter = loop.create_future()
        proto.head_at = 0.0
        assert proto.transport is not None
        proto.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        try:
            response = await self._wait(proto)
        except BaseException:
            self.close()
            raise
        response.connect_s = connected - started
        response.head_s = (proto.head_at or loop.time()) - connected
        self.last = response
        if response.will_close:
            self.close()
        return response

    async def _connection(self, host: str, port: int) -> _Protocol:
        if self._conn is not None:
            chost, cport, proto = self._conn
            if (chost, cport) == (host, port) and not proto.closed:
                return proto
            self.close()
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.bind((self.source_ip, 0))
            await asyncio.wait_for(loop.sock_connect(sock, (host, port)), self.idle_timeout_s)
        except (OSError, TimeoutError) as exc:
            sock.close()
            raise HttpError(f"cannot connect to {host}:{port}: {exc or 'timed out'}") from None
        _, proto = await loop.create_connection(_Protocol, sock=sock)
        self.connections += 1
        self._conn = (host, port, proto)
        return proto

    async def _wait(self, proto: _Protocol) -> Response:
        assert proto.waiter is not None
        loop = asyncio.get_running_loop()
        proto.last_progress = loop.time()
        while True:
            idle = loop.time() - proto.last_progress
            remaining = self.idle_timeout_s - idle
            if remaining <= 0:
                raise HttpError(f"no progress for {self.idle_timeout_s:g} s")
            done, _ = await asyncio.wait({proto.waiter}, timeout=remaining)
            if done:
                return proto.waiter.result()

    def close(self) -> None:
        if self._conn is not None:
            transport = self._conn[2].transport
            if transport is not None:
                transport.close()
            self._conn = None

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.close()
