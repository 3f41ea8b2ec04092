"""Request heads with bounds: one client must not stall the loop every protocol shares.

httptools (llhttp) has no limit on a request head, and its Python binding
joins the pieces of a header value or URL with ``bytes +=``, so a header sent
in many reads costs quadratic time: one connection sending a 160 MiB header
held the event loop for seconds, and DHCP, TFTP and configuration answers
waited behind it. uvicorn's h11 path bounds the head (16 KiB); its httptools
path does not, and neither times out a head that never ends (slowloris).

:class:`HeaderLimits` are the bounds (``http:`` settings, defaults like nginx's
``large_client_header_buffers``): bytes per line (request line or header),
bytes of the whole head, number of headers, and seconds to send a head.
:class:`HeadMeter` is the pure part: it counts the bytes of the head being
received and says whether a chunk may go to the parser. :func:`guarded_protocol`
puts both in front of an httptools-based uvicorn protocol class:

* before a chunk reaches the parser its head bytes are counted; past the
  limit the client gets ``431`` and the connection is closed, so the parser
  never sees more than ``max_header_bytes`` of one head (the work per
  connection is linear and bounded);
* a request line longer than ``max_line_bytes`` gets ``414``, a header line
  that long or header number ``max_headers + 1`` gets ``431``;
* a connection that does not complete a head within ``header_timeout_s`` of
  its first byte (or of connecting) gets ``408`` and is closed. Between
  requests uvicorn's keep-alive timeout applies, as before;
* a request body not complete within ``body_timeout_s`` of its head is given up:
  the connection is closed (the application sees a disconnect), so a body
  trickled in a byte at a time cannot hold a request open for ever.

After such an answer the connection is closed the way nginx does it
("lingering close"): the answer is sent, our side shuts down for writing,
and whatever the client still sends is read and dropped unparsed for up to
``LINGER_S`` (and ``LINGER_BYTES``) before the socket is closed. Closing at once with unread bytes
would make the kernel send a reset, and the client would often lose the
answer. Counters: ``http_heads_*`` in ``/metrics``.
"""

from __future__ import annotations

import asyncio
import http
import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

LINGER_S = 2.0  # reading and dropping what a rejected client still sends, at most this long
LINGER_BYTES = 256 << 10  # ...and at most this much (a polite client sent little more)

# Process-wide counters (every HTTP service of the process), registered as ``http_heads``.
head_stats: dict[str, int] = {"rejected_431": 0, "rejected_414": 0, "timed_out_408": 0,
                              "idle_closed": 0, "body_timed_out": 0}


@dataclass(frozen=True)
class HeaderLimits:
    max_line_bytes: int = 8 << 10  # request line or one header line (nginx: 8k)
    max_header_bytes: int = 64 << 10  # the whole head (nginx: 4 x 8k; h11: 16k)
    max_headers: int = 100  # uvicorn/h11 and Go take 100 too
    header_timeout_s: float = 10.0  # nginx's client_header_timeout is 60 s
    body_timeout_s: float = 60.0  # the whole request body (nginx: 60 s between two reads)

    @classmethod
    def from_config(cls, cfg: Any) -> HeaderLimits:
        return cls(cfg.max_header_line_bytes, cfg.max_header_bytes, cfg.max_headers,
                   cfg.header_timeout_s, cfg.body_timeout_s)


class HeadRejected(Exception):
    """Raised in a parser callback: the head breaks a limit; answer ``status``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# The end of a head: an empty line. llhttp also accepts a bare LF as line end.
_HEAD_ENDS = (b"\r\n\r\n", b"\n\r\n", b"\n\n")


class HeadMeter:
    """Bytes of the request head received so far on one connection. Pure.

    ``in_head`` is True from the connection's start and after each request's
    end (the parser says so) until its head is complete; body bytes are never
    counted. :meth:`admit` decides on a chunk before the parser sees it.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.in_head = True
        self.count = 0
        self._tail = b""  # the last bytes counted, to find an end split across chunks

    def admit(self, data: bytes) -> bool:
        """Whether ``data`` may be parsed: False if the head grows past the limit
        without ending within it."""
        if not self.in_head:
            return True
        room = self.max_bytes - self.count
        if len(data) > room and not self._ends_within(data, room):
            return False
        self.count += len(data)
        self._tail = (self._tail + data[-3:])[-3:]
        return True

    def _ends_within(self, data: bytes, room: int) -> bool:
        window = self._tail + data[:max(room, 0)]
        return any(end in window for end in _HEAD_ENDS)

    def head_complete(self) -> None:
        self.in_head, self.count, self._tail = False, 0, b""

    def message_complete(self) -> None:
        self.in_head, self.count, self._tail = True, 0, b""

    @property
    def started(self) -> bool:
        """Bytes of a head have arrived (a request is being sent)."""
        return self.in_head and self.count > 0


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a request with these (lower-cased) headers carries a body."""
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length"
                                            and value.strip() not in (b"0", b"")):
            return True
    return False


def error_response(status: int, message: str, default_headers: list[tuple[bytes, bytes]]
                   ) -> bytes:
    """A complete ``connection: close`` response with a plain-text body."""
    body = (message + "\n").encode("latin-1", "replace")
    phrase = http.HTTPStatus(status).phrase.encode()
    head = [b"HTTP/1.1 %d %s\r\n" % (status, phrase)]
    head += [b"%s: %s\r\n" % kv for kv in default_headers]
    head += [b"content-type: text/plain; charset=utf-8\r\n",
             b"content-length: %d\r\n" % len(body), b"connection: close\r\n\r\n"]
    return b"".join(head) + body


def guarded_protocol(base: type[asyncio.Protocol], limits: HeaderLimits
                     ) -> type[asyncio.Protocol]:
    """``base`` (uvicorn's ``HttpToolsProtocol`` or a subclass) with ``limits`` enforced."""
    parent: Any = base  # uvicorn's protocol is untyped for mypy's purposes here

    class HeaderGuard(parent):
        header_limits = limits
        _meter: HeadMeter
        _rejected: HeadRejected | None = None
        # One lazy timer per connection, not one per request (node-config's fast path
        # answers tens of thousands a second): arming sets a deadline; the timer, when
        # it fires, re-arms itself only while a head is still due.
        _head_timer: asyncio.TimerHandle | None = None
        _head_deadline: float | None = None
        _lingering: asyncio.TimerHandle | None = None
        _body_timer: asyncio.TimerHandle | None = None
        _head_begun = False  # the parser has seen the start of a request, not its end
        _dropped = 0

        def connection_made(self, transport: asyncio.Transport) -> None:
            self._meter = HeadMeter(self.header_limits.max_header_bytes)
            super().connection_made(transport)
            self._arm_head_timer()  # a connection that never says anything is closed too

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_head_timer()
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            self._disarm_body_timer()
            if self._lingering is not None:
                self._lingering.cancel()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._lingering is not None:  # answered and closing: dropped unparsed
                self._dropped += len(data)
                if self._dropped > LINGER_BYTES:
                    self.transport.close()
                return
            meter = self._meter
            if meter.in_head and not meter.started:
                self._arm_head_timer()
            if not meter.admit(data):
                self._reject(HeadRejected(431, "request header fields too large: at most "
                                          f"{meter.max_bytes} bytes"))
                return
            super().data_received(data)

        # --- parser callbacks (they raise; uvicorn turns that into send_400_response) ---

        def on_message_begin(self) -> None:
            super().on_message_begin()
            # A request pipelined behind another in the same read starts here, not in
            # data_received: its head is timed from its first byte too.
            self._head_begun = True
            self._arm_head_timer()

        def on_url(self, url: bytes) -> None:
            if len(self.url) + len(url) > self.header_limits.max_line_bytes:
                raise self._rejecting(414, "request line too long: at most "
                                      f"{self.header_limits.max_line_bytes} bytes")
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            lim = self.header_limits
            if len(name) + len(value) + 2 > lim.max_line_bytes:
                raise self._rejecting(431, f"a header line is longer than {lim.max_line_bytes}"
                                      " bytes")
            if len(self.headers) >= lim.max_headers:
                raise self._rejecting(431, f"more than {lim.max_headers} header fields")
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._head_begun = False
            self._meter.head_complete()
            self._disarm_head_timer()
            if _has_body(self.headers):
                self._body_timer = self.loop.call_later(self.header_limits.body_timeout_s,
                                                        self._body_timed_out)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._meter.message_complete()
            self._disarm_body_timer()
            super().on_message_complete()

        def send_400_response(self, msg: str) -> None:
            rejected, self._rejected = self._rejected, None
            if rejected is None:
                super().send_400_response(msg)
            else:
                self._reject(rejected)

        # --- answering ---------------------------------------------------------------------

        def _rejecting(self, status: int, reason: str) -> HeadRejected:
            self._rejected = HeadRejected(status, reason)
            return self._rejected

        def _reject(self, rejected: HeadRejected) -> None:
            """Answer ``rejected`` and close; nothing more of this connection is parsed."""
            self._disarm_head_timer()
            client = self.client[0] if self.client else "?"
            log.info("HTTP %d to %s: %s", rejected.status, client, rejected.reason)
            key = f"rejected_{rejected.status}" if rejected.status != 408 else "timed_out_408"
            head_stats[key] = head_stats.get(key, 0) + 1
            if self.transport.is_closing() or self._lingering is not None:
                return
            if self.cycle is None or self.cycle.response_complete:
                self.transport.write(error_response(
                    rejected.status, rejected.reason, self.server_state.default_headers))
                self._linger()
            else:  # a response is on its way: let it finish, then close, parse nothing more
                self.cycle.keep_alive = False
                self.flow.pause_reading()

        def _linger(self) -> None:
            """Close after the answer, without a reset: see the module docstring."""
            transport = self.transport
            if not transport.can_write_eof():
                transport.close()
                return
            transport.write_eof()
            self._lingering = self.loop.call_later(LINGER_S, transport.close)

        def _arm_head_timer(self) -> None:
            """A head is due within header_timeout_s from now (unless one already is)."""
            if self._head_deadline is None:
                self._head_deadline = self.loop.time() + self.header_limits.header_timeout_s
            if self._head_timer is None:
                self._head_timer = self.loop.call_at(self._head_deadline, self._head_check)

        def _disarm_head_timer(self) -> None:
            self._head_deadline = None  # the timer finds nothing due and lapses

        def _head_check(self) -> None:
            self._head_timer = None
            deadline = self._head_deadline
            if deadline is None or self.transport.is_closing():
                return
            if self.loop.time() < deadline:
                self._head_timer = self.loop.call_at(deadline, self._head_check)
                return
            self._head_deadline = None
            if not self._meter.in_head:
                return
            if self.cycle is not None and not self.cycle.response_complete:
                self._arm_head_timer()  # a pipelined head behind a long response: wait on
                return
            if self._meter.started or self._head_begun:
                self._reject(HeadRejected(408, "the request head took longer than "
                                          f"{self.header_limits.header_timeout_s:g} s"))
            else:
                head_stats["idle_closed"] += 1
                self.transport.close()

        def _disarm_body_timer(self) -> None:
            if self._body_timer is not None:
                self._body_timer.cancel()
                self._body_timer = None

        def _body_timed_out(self) -> None:
            self._body_timer = None
            if self.transport.is_closing():
                return
            client = self.client[0] if self.client else "?"
            log.info("HTTP: closing %s: its request body took longer than %g s", client,
                     self.header_limits.body_timeout_s)
            head_stats["body_timed_out"] += 1
            self.transport.close()

    HeaderGuard.__name__ = HeaderGuard.__qualname__ = f"HeaderGuard{base.__name__}"
    return HeaderGuard
