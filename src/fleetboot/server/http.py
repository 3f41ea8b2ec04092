"""HTTP boot: per-node iPXE scripts and boot files, served in the server's asyncio loop.

The runtime builds the app once and runs it with :class:`HttpService` (or
:func:`serve_http`) beside DHCP and TFTP (see ``server/assemble.py``)::

    source = BootFileSource(settings.boot_root)          # shared with TFTP
    app = create_app(settings, db, leases, sink, source=source,
                     extra_routes=nodeconfig.routes(),
                     cmdline_hook=nodeconfig.cmdline_hook, node_status=probe)
    scripts = app.state.fleetboot.scripts                # a Service and a reload hook
    scripts.follow_runtime()
    runtime.services += [scripts, HttpService.from_settings(app, settings)]
    runtime.reload_hooks.append(scripts.reload)

Routes (GET and HEAD; nothing else, and never a redirect, which UEFI HTTP
boot cannot follow):

* ``/boot/script.ipxe``: the iPXE script of whoever asks. The node is found by
  the request's TCP source address through the lease table (address -> MAC ->
  node); nothing in the request (query, headers) can name another node, and
  requests carrying proxy headers are refused. Scripts come from an in-memory
  view of the inventory (``server/scripts.py``): no database access, except a
  batched write when a one-shot ``next`` boot is served (cleared once, even
  when a firmware retries). Admission control may answer WAIT instead of
  starting a boot while the server is saturated (``server/admission.py``).
* ``/boot/files/{path}``: files from the shared :class:`BootFileSource`
  (static files under the boot root and generated files), with Range, HEAD and
  exact Content-Length; static files go out with sendfile(2) where the loop
  supports it. Large files wait for a transfer slot (``admission.max_transfers``).
* ``/metrics`` (GET): every counter and gauge of the process in the Prometheus
  text format (typed families, ``server/exposition.py``), for loopback peers or
  with the admin token.
* ``/healthz`` (GET, HEAD): for a supervisor or load balancer. 200 once the
  inventory view is loaded (and the event loop answered, so it is not stuck),
  503 while starting; no secrets, open to all.

Every response that completes (or is cut off) emits a :class:`BootEvent`
(``source="http"``, ``kind`` "script" or "file") with its size and duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import ipaddress
import logging
import socket
import time
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from sqlalchemy.exc import OperationalError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from fleetboot.boot import ipxe
from fleetboot.boot.files import (
    BootFileNotFound,
    BootFileSource,
    BootPathRefused,
    MemoryBootFile,
    RequestContext,
)
from fleetboot.config import Settings, admin_token
from fleetboot.errors import FleetbootError
from fleetboot.inventory.db import Database
from fleetboot.server.admission import (
    AdmissionLimits,
    BootAdmission,
    GateBusy,
    StatusProbe,
    TransferGate,
    TransferLimits,
)
from fleetboot.server.directory import LeaseDirectory
from fleetboot.server.events import BootEvent, EventSink, discard
from fleetboot.server.exposition import CONTENT_TYPE as EXPOSITION_TYPE
from fleetboot.server.exposition import Exposition, LiveSources
from fleetboot.server.httpfiles import (
    BootFileResponse,
    Transfer,
    ZeroCopyHttpToolsProtocol,
    etag_matches,
)
from fleetboot.server.httpguard import HeaderLimits, guarded_protocol, head_stats
from fleetboot.server.metrics import registry
from fleetboot.server.scripts import CmdlineHook, ScriptRefused, ScriptService, ServedScript

__all__ = ["CmdlineHook", "HttpContext", "HttpError", "HttpService", "ScriptRefused",
           "ScriptService", "ServedScript", "create_app", "http_protocol", "serve_http"]

log = logging.getLogger(__name__)

SCRIPT_FILE = "script.ipxe"  # the script's name in the boot-file source (TFTP, /boot/files/)
PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip", "x-forwarded-host")
METRICS_PATH = "/metrics"
HEALTH_PATH = "/healthz"


class HttpError(FleetbootError):
    pass


# --- the app --------------------------------------------------------------------------------


@dataclass
class HttpContext:
    """What the routes share; reachable as ``app.state.fleetboot``."""

    settings: Settings
    directory: LeaseDirectory
    events: EventSink
    source: BootFileSource
    scripts: ScriptService
    gate: TransferGate
    admin_token: str | None = None
    started: float = field(default_factory=time.monotonic)

    def who(self, request: Request) -> tuple[str, str | None]:
        """The TCP peer's address and the MAC leased to it (never from headers).

        A directory with ``identify`` (``fleetboot.identity``) also checks the MAC
        iPXE put in the URL (``?mac=``) against what the server sees of the peer."""
        address = request.client.host if request.client else ""
        if not address:
            return address, None
        identify = getattr(self.directory, "identify", None)
        if identify is not None:
            return address, identify(address, request.query_params.get("mac")).mac
        return address, self.directory.mac_for_address(address)

    def emit(self, kind: str, address: str, mac: str | None, detail: dict[str, Any]) -> None:
        try:
            self.events(BootEvent(time.time(), "http", kind, mac, address or None, detail))
        except Exception:  # the sink is best effort; serving goes on
            log.exception("boot event sink failed")


def _proxied(request: Request) -> bool:
    return any(h in request.headers for h in PROXY_HEADERS)


def _error(ctx: HttpContext, status: int, message: str, kind: str, address: str,
           mac: str | None, detail: dict[str, Any], started: float) -> Response:
    ctx.emit(kind, address, mac, {**detail, "status": status, "error": message,
                                  "duration_s": round(time.monotonic() - started, 6)})
    return PlainTextResponse(message + "\n", status_code=status)


def _transfer_detail(t: Transfer) -> dict[str, Any]:
    return {"status": t.status, "size": t.size, "bytes": t.sent, "complete": t.complete,
            "duration_s": round(t.duration_s, 6), "zero_copy": t.zero_copy,
            **({"too_slow": True} if t.too_slow else {}),
            "range": f"{t.byte_range.start}-{t.byte_range.end - 1}" if t.byte_range else None}


async def _script(request: Request) -> Response:
    ctx: HttpContext = request.app.state.fleetboot
    started = time.monotonic()
    address, mac = ctx.who(request)
    base = {"path": ipxe.SCRIPT_PATH, "method": request.method}
    if _proxied(request):
        return _error(ctx, 400, "requests through proxies are refused: nodes must ask directly",
                      "script", address, mac, base, started)
    try:
        served = await ctx.scripts.script(mac, address, consume=request.method == "GET")
    except ScriptRefused as exc:
        return _error(ctx, 403, str(exc), "script", address, mac, base, started)
    except (FleetbootError, OperationalError) as exc:
        log.warning("cannot render the script for %s (%s): %s", address, mac, exc)
        return _error(ctx, 503, "the boot script cannot be rendered now; try again",
                      "script", address, mac, base, started)
    file = MemoryBootFile(SCRIPT_FILE, served.text.encode())

    def done(t: Transfer) -> None:
        ctx.emit("script", address, mac, {**base, **served.detail(), **_transfer_detail(t)})

    return BootFileResponse(file, started=started, on_done=done,
                            media_type="text/plain; charset=utf-8",
                            extra_headers={"cache-control": "no-store"})


async def _file(request: Request) -> Response:
    ctx: HttpContext = request.app.state.fleetboot
    started = time.monotonic()
    address, mac = ctx.who(request)
    name: str = request.path_params["path"]
    base = {"path": name[:256], "method": request.method}
    if _proxied(request):
        return _error(ctx, 400, "requests through proxies are refused", "file", address, mac,
                      base, started)
    if name.startswith("/"):
        return _error(ctx, 400, "absolute file names are refused", "file", address, mac,
                      base, started)
    if name.endswith(("/", "/.")):  # names a directory, never the file before the slash
        return _error(ctx, 404, f"{name[:256]}: no such boot file (a directory name)",
                      "file", address, mac, base, started)
    if name == SCRIPT_FILE:
        return await _script(request)  # same answer (and HEAD semantics) as /boot/script.ipxe
    try:
        file = await ctx.source.open(name, RequestContext(address, mac, "http"))
    except BootPathRefused as exc:
        return _error(ctx, 403, str(exc), "file", address, mac, base, started)
    except BootFileNotFound as exc:
        return _error(ctx, 404, str(exc), "file", address, mac, base, started)
    except FleetbootError as exc:
        return _error(ctx, 500, str(exc), "file", address, mac, base, started)

    gated = request.method == "GET" and ctx.gate.applies(file.size) \
        and not etag_matches(request.headers.get("if-none-match"), file.etag)
    if gated:
        try:
            await ctx.gate.acquire(address)
        except GateBusy as exc:
            return _busy(ctx, exc.reason, address, mac, base, started, exc.retry_after_s)
    queued_s = round(time.monotonic() - started, 6)

    def done(t: Transfer) -> None:
        if t.too_slow:
            ctx.gate.penalize(address)
        ctx.emit("file", address, mac, {**base, **_transfer_detail(t),
                                        "generated": file.generated, "queued_s": queued_s})

    headers = {"cache-control": "no-store"} if file.generated else None
    return BootFileResponse(file, started=started, on_done=done, extra_headers=headers,
                            zero_copy=ctx.settings.http.zero_copy,
                            on_close=functools.partial(ctx.gate.release, address)
                            if gated else None,
                            rate_floor=ctx.gate.limits.floor if gated else None)


def _busy(ctx: HttpContext, reason: str, address: str, mac: str | None,
          detail: dict[str, Any], started: float, retry_after_s: int | None = None) -> Response:
    """503 + Retry-After: iPXE waits that long and asks again on its own."""
    retry = retry_after_s or ctx.gate.limits.retry_after_s
    response = _error(ctx, 503, f"the boot server is busy ({reason}); retry in {retry} s",
                      "file", address, mac, detail, started)
    response.headers["retry-after"] = str(retry)
    return response


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


async def _health(request: Request) -> Response:
    ctx: HttpContext = request.app.state.fleetboot
    revision = ctx.scripts.loaded_revision
    body = {"status": "ok" if revision is not None else "starting",
            "inventory_revision": revision,
            "uptime_s": round(time.monotonic() - ctx.started, 1)}
    return JSONResponse(body, status_code=200 if revision is not None else 503,
                        headers={"cache-control": "no-store"})


async def _metrics(request: Request) -> Response:
    """Every counter and gauge of the process, in the Prometheus text format.

    Open to loopback peers (a local Prometheus or node exporter) and to anyone
    sending ``Authorization: Bearer <security.admin_token>``; nodes get 403.
    """
    ctx: HttpContext = request.app.state.fleetboot
    address = request.client.host if request.client else ""
    if _proxied(request) or not (_is_loopback(address) or _bearer_ok(request, ctx.admin_token)):
        return PlainTextResponse("metrics are for loopback or the admin token\n",
                                 status_code=403)
    ctx.scripts.sweep()  # boots that ended since the last script request
    exposition: Exposition = request.app.state.exposition
    return Response(exposition.render(), media_type=EXPOSITION_TYPE,
                    headers={"cache-control": "no-store"})


def _bearer_ok(request: Request, token: str | None) -> bool:
    if not token:
        return False
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                              token.encode())


def create_app(
    settings: Settings,
    db: Database,
    directory: LeaseDirectory,
    events: EventSink = discard,
    *,
    extra_routes: Iterable[BaseRoute] = (),
    source: BootFileSource | None = None,
    cmdline_hook: CmdlineHook | None = None,
    node_status: StatusProbe | None = None,
) -> Starlette:
    """The HTTP boot app. See the module docstring for routes.

    ``source`` should be the one the TFTP server uses (one chunk cache); the
    app registers the per-node script in it as ``script.ipxe``. ``extra_routes``
    (e.g. a ``Mount("/v1", ...)`` of the node-config API) are appended after
    the boot routes; they bring their own authentication. ``node_status``
    (node id -> (state, since)) tells admission control when a boot has ended;
    without it a boot slot is freed only by ``admission.boot_timeout_s``.
    """
    source = source if source is not None else BootFileSource(settings.boot_root)
    admission = BootAdmission(AdmissionLimits.from_config(settings.admission))
    scripts = ScriptService(db, settings, cmdline_hook, admission=admission,
                            status_probe=node_status)
    scripts.register_metrics()
    gate = TransferGate(TransferLimits.from_config(settings.admission))
    registry.register("transfers", gate.counters)
    registry.register("http_heads", head_stats)
    if not any(p.pattern == SCRIPT_FILE for p in source.providers):
        # ttl 0: the script service shares and reuses renders itself.
        source.add_provider(SCRIPT_FILE, scripts.provide, ttl=0)
    else:
        log.warning("the boot-file source already serves %s; not registering it again",
                    SCRIPT_FILE)
    routes: list[BaseRoute] = [
        Route(ipxe.SCRIPT_PATH, _script, methods=["GET", "HEAD"]),
        Route(ipxe.FILES_PATH + "{path:path}", _file, methods=["GET", "HEAD"]),
        Route(METRICS_PATH, _metrics, methods=["GET"]),
        Route(HEALTH_PATH, _health, methods=["GET", "HEAD"]),
        *extra_routes,
    ]
    app = Starlette(routes=routes)
    app.router.redirect_slashes = False  # UEFI HTTP boot cannot follow a redirect
    app.state.fleetboot = HttpContext(settings, directory, events, source, scripts, gate,
                                      admin_token(settings))
    # Typed Prometheus families, read at scrape time (assemble adds DHCP, TFTP, node states).
    app.state.exposition = Exposition(live=LiveSources(gate=gate, admission=admission))
    return app


# --- serving in the runtime's loop ---------------------------------------------------------------


class _EmbeddedServer(uvicorn.Server):
    """uvicorn inside someone else's loop: the runtime owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:  # beside an IPv4 socket on the same port
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise HttpError(f"cannot listen for HTTP on {host}:{port}: {exc.strerror}; "
                        "free the port or set http.port") from None
    return sock


def http_protocol(extra: type[asyncio.Protocol] | str | None = None, *,
                  zero_copy: bool = True,
                  header_limits: HeaderLimits | None = None) -> type[asyncio.Protocol] | str:
    """The ``uvicorn.Config(http=...)`` value: our zero-copy protocol, combined with
    another httptools-based protocol class (e.g. node-config's fast path) if given,
    behind the request-head limits (``server/httpguard.py``)."""
    chosen = _stacked_protocol(extra, zero_copy)
    limits = header_limits or HeaderLimits()
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # no httptools: uvicorn's h11 bounds the head itself (see _config)
        return chosen
    if isinstance(chosen, str) and chosen in ("auto", "httptools"):
        chosen = HttpToolsProtocol
    if isinstance(chosen, type) and issubclass(chosen, HttpToolsProtocol):
        return guarded_protocol(chosen, limits)
    log.warning("%s is not an httptools protocol; request heads are bounded only by it",
                chosen if isinstance(chosen, str) else chosen.__name__)
    return chosen


def _stacked_protocol(extra: type[asyncio.Protocol] | str | None,
                      zero_copy: bool) -> type[asyncio.Protocol] | str:
    zc = ZeroCopyHttpToolsProtocol if zero_copy else None
    if extra is None or isinstance(extra, str):
        return zc or extra or "auto"
    if zc is None:
        return extra
    base = zc.__mro__[1]  # uvicorn's HttpToolsProtocol
    if issubclass(extra, base):
        # Both override different hooks of the same class, so they stack cleanly.
        return type(f"{extra.__name__}ZeroCopy", (extra, zc), {})
    log.warning("%s is not an httptools protocol; serving without sendfile", extra.__name__)
    return extra


class HttpService:
    """Runs an app with uvicorn as a task of the current loop (the runtime's Service).

    ``protocol``: another uvicorn protocol class to combine with the zero-copy one
    (node-config's ``http_protocol()``); see :func:`http_protocol`.
    """

    name = "http"

    def __init__(self, app: Any, host: str = "0.0.0.0", port: int = 8080, *,
                 zero_copy: bool = True, keep_alive_s: float = 15.0,
                 access_log: bool = False,
                 protocol: type[asyncio.Protocol] | str | None = None,
                 header_limits: HeaderLimits | None = None) -> None:
        self.app, self.host, self.requested_port = app, host, port
        self.zero_copy = zero_copy and ZeroCopyHttpToolsProtocol is not None
        self.header_limits = header_limits or HeaderLimits()
        self.protocol = http_protocol(protocol, zero_copy=self.zero_copy,
                                      header_limits=self.header_limits)
        self.keep_alive_s = keep_alive_s
        self.access_log = access_log
        self.server: uvicorn.Server | None = None
        self.task: asyncio.Task[None] | None = None
        self.port = port
        self.extra_hosts: tuple[str, ...] = ()  # more addresses on the same port ("::")

    @classmethod
    def from_settings(cls, app: Any, settings: Settings,
                      protocol: type[asyncio.Protocol] | str | None = None) -> HttpService:
        http = settings.http
        return cls(app, http.host, http.port, zero_copy=http.zero_copy,
                   keep_alive_s=http.keep_alive_s, access_log=http.access_log,
                   protocol=protocol, header_limits=HeaderLimits.from_config(http))

    def _config(self) -> uvicorn.Config:
        return uvicorn.Config(
            self.app,
            http=self.protocol,
            ws="none", lifespan="off", interface="asgi3",
            # Identity is the TCP peer: never let X-Forwarded-For rewrite it.
            proxy_headers=False, server_header=False,
            timeout_keep_alive=int(self.keep_alive_s), access_log=self.access_log,
            h11_max_incomplete_event_size=self.header_limits.max_header_bytes,
            log_config=None,  # the process's logging belongs to the runtime
        )

    async def start(self) -> None:
        sock = _listen(self.host, self.requested_port)
        self.port = sock.getsockname()[1]
        socks = [sock]
        try:
            socks += [_listen(host, self.port) for host in self.extra_hosts]
        except BaseException:
            for opened in socks:
                opened.close()
            raise
        self.server = _EmbeddedServer(self._config())
        self.task = asyncio.get_running_loop().create_task(self.server.serve(sockets=socks))
        while not self.server.started:
            if self.task.done():
                self.task.result()  # re-raise why it stopped
                raise HttpError("the HTTP server stopped while starting")
            await asyncio.sleep(0.005)

    async def wait(self) -> None:
        if self.task is not None:
            await asyncio.shield(self.task)

    async def stop(self) -> None:
        if self.server is None or self.task is None:
            return
        self.server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self.task), 10)
        except TimeoutError:
            self.server.force_exit = True
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.server = self.task = None


async def serve_http(app: Any, host: str, port: int, **options: Any) -> None:
    """Serve ``app`` until cancelled (a task the runtime can run and cancel)."""
    svc = HttpService(app, host, port, **options)
    await svc.start()
    try:
        await svc.wait()
    finally:
        await svc.stop()
