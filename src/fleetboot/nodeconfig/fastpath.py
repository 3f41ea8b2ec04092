"""Serving ``/v1/self/config`` without the framework: two fast paths in front of Starlette.

1. ``uvicorn_protocol(responder)``: a subclass of uvicorn's httptools protocol
   that answers a GET/HEAD of the configuration right when the request's
   headers are parsed: no ASGI scope, no task, one ``write`` of prepared
   bytes. Measured here (bench/config.py) it is what puts the Python server
   near nginx; through ASGI the same answer costs about three times as much.
   It relies on a few uvicorn internals (``url``, ``headers``, ``parser``,
   ``cycle``, ``on_response_complete``); ``uvicorn_protocol`` checks they exist
   and otherwise returns ``"httptools"`` (plain uvicorn), so an upgrade can only
   make it slower, never wrong.
2. ``ConfigFastPath``: an ASGI wrapper doing the same for any ASGI server.

Everything else (other paths, pipelined requests queued behind a slow one,
upgrades, other methods) goes the normal way to the application.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from fleetboot.nodeconfig.responder import CONFIG_PATH, ConfigResponder

log = logging.getLogger("fleetboot.nodeconfig.fastpath")

_REQUIRED = ("on_message_begin", "on_headers_complete", "on_response_complete", "on_url",
             "on_header", "connection_made", "connection_lost", "shutdown",
             "_unset_keepalive_if_required")


class _NoEvent:
    def set(self) -> None:
        """uvicorn wakes a cycle's reader on disconnect; an answered request has none."""


class _Answered:
    """Stands in for uvicorn's request cycle of a request answered on the fast path."""

    response_complete = True
    disconnected = False
    keep_alive = True
    more_body = False
    message_event = _NoEvent()


_ANSWERED = _Answered()


def uvicorn_protocol(responder: ConfigResponder) -> type[asyncio.Protocol] | str:
    """The protocol class to pass as ``uvicorn.Config(http=...)``."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools missing: uvicorn will use h11
        log.warning("httptools is not installed; the configuration fast path is off")
        return "auto"
    if not all(hasattr(HttpToolsProtocol, name) for name in _REQUIRED):
        log.warning("this uvicorn's protocol differs from what the fast path knows; it is off")
        return "httptools"

    class FleetbootHttpToolsProtocol(HttpToolsProtocol):
        fleetboot = responder
        # uvicorn swaps in a new default-header list (Date) once a second; render it once.
        _defaults_of: Any = None
        _defaults: bytes = b""

        def _fleetboot_defaults(self) -> bytes:
            cls = type(self)
            current = self.server_state.default_headers
            if current is not cls._defaults_of:
                cls._defaults = b"".join(b"%s: %s\r\n" % kv for kv in current)
                cls._defaults_of = current
            return cls._defaults

        def on_message_begin(self) -> None:
            # uvicorn builds a whole ASGI scope here; the fast path needs none, so it is
            # built only for requests that go on to the application.
            self.url = b""
            self.expect_100_continue = False
            self.headers = []
            self.scope = None  # type: ignore[assignment]

        def on_headers_complete(self) -> None:
            if (self.url.startswith(CONFIG_PATH)
                    and (self.cycle is None or self.cycle.response_complete)
                    and self._fleetboot_answer()):
                return
            url, headers, expect = self.url, self.headers, self.expect_100_continue
            super().on_message_begin()  # the scope, as uvicorn would have built it
            self.url, self.headers, self.expect_100_continue = url, headers, expect
            self.scope["headers"] = headers
            super().on_headers_complete()

        def _fleetboot_answer(self) -> bool:
            method = self.parser.get_method()
            if method not in (b"GET", b"HEAD") or self.parser.should_upgrade():
                return False
            client = self.client[0] if self.client else ""
            reply = self.fleetboot.answer(client, self.url, self.headers)
            if reply is None:
                return False
            keep_alive = (self.parser.get_http_version() != "1.0"
                          and self.parser.should_keep_alive())
            out = [reply.status_line(), self._fleetboot_defaults(), reply.head]
            if not keep_alive:
                out.append(b"connection: close\r\n")
            out.append(b"\r\n")
            if method == b"GET":
                out.append(reply.body)
            self.cycle = _ANSWERED  # type: ignore[assignment]
            self.transport.write(b"".join(out))
            if not keep_alive:
                self.transport.close()
            self._fleetboot_done()
            return True

        # uvicorn arms a new keep-alive timer after every response and cancels it when the
        # next request arrives; for answers this cheap that costs more than the answer.
        # One idle timer per connection does the same job: it closes a connection idle
        # for timeout_keep_alive since its last fast answer.
        _fb_timer: asyncio.TimerHandle | None = None
        _fb_last: float = 0.0

        def _fleetboot_done(self) -> None:
            """uvicorn's on_response_complete, with the idle timer instead."""
            self.server_state.total_requests += 1
            if self.transport.is_closing():
                return
            self.flow.resume_reading()
            self._fb_last = self.loop.time()
            if self._fb_timer is None:
                self._fb_timer = self.loop.call_later(self.timeout_keep_alive,
                                                      self._fleetboot_idle)

        def _fleetboot_idle(self) -> None:
            self._fb_timer = None
            if self.transport.is_closing() or not (self.cycle is None
                                                   or self.cycle.response_complete):
                return  # closed, or the application is answering: uvicorn's timer follows
            idle = self.loop.time() - self._fb_last
            if idle >= self.timeout_keep_alive:
                self.transport.close()
            else:
                self._fb_timer = self.loop.call_later(self.timeout_keep_alive - idle,
                                                      self._fleetboot_idle)

        def connection_lost(self, exc: Exception | None) -> None:
            if self._fb_timer is not None:
                self._fb_timer.cancel()
                self._fb_timer = None
            super().connection_lost(exc)

    return FleetbootHttpToolsProtocol


class ConfigFastPath:
    """ASGI middleware: answers the configuration GETs itself, passes the rest on."""

    def __init__(self, app: ASGIApp, responder: ConfigResponder) -> None:
        self.app = app
        self.responder = responder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            raw: bytes = scope.get("raw_path") or scope["path"].encode()
            if raw.startswith(CONFIG_PATH):
                client = scope.get("client") or ("", 0)
                reply = self.responder.answer(client[0], raw, scope["headers"])
                if reply is not None:
                    await _send_reply(send, reply.status, reply.asgi_headers(),
                                      b"" if scope["method"] == "HEAD" else reply.body)
                    return
        await self.app(scope, receive, send)


async def _send_reply(send: Send, status: int, headers: list[tuple[bytes, bytes]],
                      body: bytes) -> None:
    start: dict[str, Any] = {"type": "http.response.start", "status": status,
                             "headers": headers}
    await send(start)
    await send({"type": "http.response.body", "body": body})
