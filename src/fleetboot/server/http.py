"""HTTP boot: per-node iPXE scripts and boot files, served in the server's asyncio loop.

The runtime builds the app once and runs it with :class:`HttpService` (or
:func:`serve_http`) beside DHCP and TFTP::

    source = BootFileSource(settings.boot_root)          # shared with TFTP
    app = create_app(settings, db, leases, sink, source=source,
                     extra_routes=[Mount("/v1", nodeconfig_app)],
                     cmdline_hook=nodeconfig.kernel_args)
    runtime.services.append(HttpService(app, settings.http.host, settings.http.port))

Routes (GET and HEAD; nothing else, and never a redirect, which UEFI HTTP
boot cannot follow):

* ``/boot/script.ipxe``: the iPXE script of whoever asks. The node is found by
  the request's TCP source address through the lease table (address -> MAC ->
  node); nothing in the request (query, headers) can name another node, and
  requests carrying proxy headers are refused. Serving a one-shot ``next``
  boot clears it in the database, once, even when a firmware retries.
* ``/boot/files/{path}``: files from the shared :class:`BootFileSource`
  (static files under the boot root and generated files), with Range, HEAD and
  exact Content-Length; static files go out with sendfile(2) where the loop
  supports it.

Every response that completes (or is cut off) emits a :class:`BootEvent`
(``source="http"``, ``kind`` "script" or "file") with its size and duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from fleetboot.boot import ipxe
from fleetboot.boot.decision import BootDecision, decide
from fleetboot.boot.files import (
    BootFileNotFound,
    BootFileSource,
    BootPathRefused,
    MemoryBootFile,
    RequestContext,
)
from fleetboot.config import Settings
from fleetboot.errors import FleetbootError
from fleetboot.inventory import service
from fleetboot.inventory.addr import normalize_mac
from fleetboot.inventory.db import Database
from fleetboot.inventory.models import BootAction, BootProfile, InventoryRevision, Node
from fleetboot.server.directory import LeaseDirectory
from fleetboot.server.events import BootEvent, EventSink, discard
from fleetboot.server.httpfiles import BootFileResponse, Transfer, ZeroCopyHttpToolsProtocol

log = logging.getLogger(__name__)

SCRIPT_FILE = "script.ipxe"  # the script's name in the boot-file source (TFTP, /boot/files/)
PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip", "x-forwarded-host")

# (node, mac, address) -> extra kernel arguments for this boot (e.g. a per-boot token
# and the configuration URL). Called in a worker thread inside the transaction that
# serves the script, only for GET requests of known nodes booting a profile.
CmdlineHook = Callable[[Node, str, str], str]


class HttpError(FleetbootError):
    pass


class ScriptRefused(HttpError):
    """The asking address may not have a script (e.g. it is not the node's boot NIC)."""


class _Raced(Exception):
    """The one-shot boot changed between reading and consuming it: decide again."""


# --- scripts ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServedScript:
    text: str
    kind: str  # "profile" | "local" | "wait" | "menu"
    node: str | None = None
    profile: str | None = None
    rule: str | None = None
    consumed: bool = False  # this render cleared the node's one-shot boot

    def detail(self) -> dict[str, Any]:
        return {"node": self.node, "boot": self.kind, "profile": self.profile,
                "rule": self.rule, "one_shot_consumed": self.consumed}


@dataclass
class ScriptService:
    """Renders scripts from the inventory; one render per client at a time.

    GET renders are shared by concurrent requests of the same client and reused
    for ``ttl`` seconds (at most half the WAIT interval), so a firmware that
    retries (or probes, then fetches, as UEFI does over TFTP) gets the same
    script and a one-shot boot is consumed exactly once.
    """

    db: Database
    settings: Settings
    hook: CmdlineHook | None = None
    ttl: float = 2.0
    _inflight: dict[str, asyncio.Task[ServedScript]] = field(default_factory=dict)
    _recent: dict[str, tuple[float, ServedScript]] = field(default_factory=dict)

    @property
    def urls(self) -> ipxe.Urls:
        http = self.settings.http
        return ipxe.Urls(http.public_url or f"http://{self.settings.server_address}:{http.port}")

    async def script(self, mac: str | None, address: str, *, consume: bool = True) -> ServedScript:
        """The script for the client at ``address`` (``mac`` from its lease, if any).

        ``consume=False`` (HEAD) renders without clearing a one-shot boot and
        without calling the hook.
        """
        if not consume:
            return await asyncio.to_thread(self._build, mac, address, False)
        key = mac or address
        recent = self._recent.get(key)
        if recent is not None and recent[0] > time.monotonic():
            return recent[1]
        task = self._inflight.get(key)
        if task is None:
            # Its own task: a client that hangs up must not cancel the shared render.
            task = asyncio.get_running_loop().create_task(self._render_shared(key, mac, address))
            self._inflight[key] = task
        return await asyncio.shield(task)

    async def _render_shared(self, key: str, mac: str | None, address: str) -> ServedScript:
        try:
            served = await asyncio.to_thread(self._build, mac, address, True)
            self._forget_expired()
            # Shorter than a WAIT round, so a waiting node's next ask gets a fresh answer.
            ttl = min(self.ttl, self.settings.http.wait_seconds / 2)
            self._recent[key] = (time.monotonic() + ttl, served)
            return served
        finally:
            self._inflight.pop(key, None)

    def _forget_expired(self) -> None:
        if len(self._recent) > 1024:
            now = time.monotonic()
            for key in [k for k, (until, _) in self._recent.items() if until <= now]:
                del self._recent[key]

    def invalidate(self) -> None:
        """Forget reused renders (tests). Not a reload hook: consuming a one-shot bumps
        the revision, and forgetting then would hand a retrying firmware the next boot."""
        self._recent.clear()

    async def provide(self, name: str, ctx: RequestContext) -> bytes:
        """A :class:`BootFileSource` provider: the same script over TFTP."""
        try:
            return (await self.script(ctx.client_mac, ctx.client_ip)).text.encode()
        except ScriptRefused as exc:
            raise BootPathRefused(str(exc)) from None  # TFTP error 2 / HTTP 403

    # --- in a worker thread ---

    def _build(self, mac: str | None, address: str, consume: bool) -> ServedScript:
        for attempt in range(5):
            try:
                with self.db.session() as session:
                    return self._build_in(session, mac, address, consume)
            except _Raced:
                continue
            except OperationalError:
                # SQLite refuses to upgrade a stale read transaction when another
                # writer (the CLI) committed meanwhile: start over on fresh data.
                if attempt == 4:
                    raise
                time.sleep(0.01 * (attempt + 1))
        raise HttpError("the node's boot setting kept changing; try again")

    def _build_in(self, session: Session, mac: str | None, address: str,
                  consume: bool) -> ServedScript:
        mac = normalize_mac(mac) if mac else None
        node = service.node_by_mac(session, mac) if mac else None
        if node is None:
            return self._unknown(session, mac, address)
        iface = next(i for i in node.interfaces if i.mac == mac)
        if not iface.is_boot:
            raise ScriptRefused(f"{mac} is not the boot interface of node {node.name}")
        decision = decide(node)
        extra = ""
        if consume and self.hook is not None and decision.action is BootAction.PROFILE:
            extra = self.hook(node, iface.mac, address)
        who = ipxe.Who(node.name, iface.mac, address)
        text = ipxe.render_decision(decision, self.urls, who, extra_args=extra,
                                    wait_seconds=self.settings.http.wait_seconds)
        consumed = consume and decision.one_shot
        if consumed and not _consume_one_shot(session, node, decision):
            raise _Raced
        return ServedScript(text, decision.action.value, node.name,
                            decision.profile.name if decision.profile else None,
                            decision.rule, consumed)

    def _unknown(self, session: Session, mac: str | None, address: str) -> ServedScript:
        http = self.settings.http
        who = ipxe.Who(None, mac, address)
        if http.unknown_menu:
            profiles = _profiles_by_name(session, http.unknown_menu)
            text = ipxe.render_menu([ipxe.ProfileSpec.of(p) for p in profiles], self.urls, who,
                                    wait_seconds=http.wait_seconds,
                                    timeout_s=http.menu_timeout_s, default=http.menu_default)
            return ServedScript(text, "menu", rule="menu for unknown machines")
        decision = decide(None, BootAction(http.unknown_action))
        text = ipxe.render_decision(decision, self.urls, who, wait_seconds=http.wait_seconds)
        return ServedScript(text, decision.action.value, rule=decision.rule)


def _profiles_by_name(session: Session, names: Sequence[str]) -> list[BootProfile]:
    found = {p.name: p for p in session.scalars(
        select(BootProfile).where(BootProfile.name.in_(list(names))))}
    missing = [n for n in names if n not in found]
    if missing:
        log.warning("http.unknown_menu names unknown profiles: %s", ", ".join(missing))
    return [found[n] for n in names if n in found]


def _consume_one_shot(session: Session, node: Node, decision: BootDecision) -> bool:
    """Clear the node's ``next`` boot if it is still the one just decided (compare-and-set)."""
    profile_id = decision.profile.id if decision.profile else None
    same_profile = (Node.next_profile_id.is_(None) if profile_id is None
                    else Node.next_profile_id == profile_id)
    result = session.execute(
        update(Node)
        .where(Node.id == node.id, Node.next_action == decision.action, same_profile)
        .values(next_action=None, next_profile_id=None)
        .execution_options(synchronize_session=False))
    if getattr(result, "rowcount", 0) != 1:
        return False
    # A Core UPDATE skips the ORM flush hook that bumps the inventory revision;
    # bump it here so running servers (DHCP's view) notice the cleared boot.
    session.execute(update(InventoryRevision).where(InventoryRevision.id == 1)
                    .values(value=InventoryRevision.value + 1))
    return True


# --- the app --------------------------------------------------------------------------------


@dataclass
class HttpContext:
    """What the routes share; reachable as ``app.state.fleetboot``."""

    settings: Settings
    directory: LeaseDirectory
    events: EventSink
    source: BootFileSource
    scripts: ScriptService

    def who(self, request: Request) -> tuple[str, str | None]:
        """The TCP peer's address and the MAC leased to it (never from headers)."""
        address = request.client.host if request.client else ""
        return address, self.directory.mac_for_address(address) if address else None

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

    def done(t: Transfer) -> None:
        ctx.emit("file", address, mac, {**base, **_transfer_detail(t),
                                        "generated": file.generated})

    headers = {"cache-control": "no-store"} if file.generated else None
    return BootFileResponse(file, started=started, on_done=done, extra_headers=headers,
                            zero_copy=ctx.settings.http.zero_copy)


def create_app(
    settings: Settings,
    db: Database,
    directory: LeaseDirectory,
    events: EventSink = discard,
    *,
    extra_routes: Iterable[BaseRoute] = (),
    source: BootFileSource | None = None,
    cmdline_hook: CmdlineHook | None = None,
) -> Starlette:
    """The HTTP boot app. See the module docstring for routes.

    ``source`` should be the one the TFTP server uses (one chunk cache); the
    app registers the per-node script in it as ``script.ipxe``. ``extra_routes``
    (e.g. a ``Mount("/v1", ...)`` of the node-config API) are appended after
    the boot routes; they bring their own authentication.
    """
    source = source if source is not None else BootFileSource(settings.boot_root)
    scripts = ScriptService(db, settings, cmdline_hook)
    if not any(p.pattern == SCRIPT_FILE for p in source.providers):
        # ttl 0: the script service shares and reuses renders itself.
        source.add_provider(SCRIPT_FILE, scripts.provide, ttl=0)
    else:
        log.warning("the boot-file source already serves %s; not registering it again",
                    SCRIPT_FILE)
    routes: list[BaseRoute] = [
        Route(ipxe.SCRIPT_PATH, _script, methods=["GET", "HEAD"]),
        Route(ipxe.FILES_PATH + "{path:path}", _file, methods=["GET", "HEAD"]),
        *extra_routes,
    ]
    app = Starlette(routes=routes)
    app.router.redirect_slashes = False  # UEFI HTTP boot cannot follow a redirect
    app.state.fleetboot = HttpContext(settings, directory, events, source, scripts)
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
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise HttpError(f"cannot listen for HTTP on {host}:{port}: {exc.strerror}; "
                        "free the port or set http.port") from None
    return sock


def http_protocol(extra: type[asyncio.Protocol] | str | None = None, *,
                  zero_copy: bool = True) -> type[asyncio.Protocol] | str:
    """The ``uvicorn.Config(http=...)`` value: our zero-copy protocol, combined with
    another httptools-based protocol class (e.g. node-config's fast path) if given."""
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
                 protocol: type[asyncio.Protocol] | str | None = None) -> None:
        self.app, self.host, self.requested_port = app, host, port
        self.zero_copy = zero_copy and ZeroCopyHttpToolsProtocol is not None
        self.protocol = http_protocol(protocol, zero_copy=self.zero_copy)
        self.keep_alive_s = keep_alive_s
        self.access_log = access_log
        self.server: uvicorn.Server | None = None
        self.task: asyncio.Task[None] | None = None
        self.port = port

    @classmethod
    def from_settings(cls, app: Any, settings: Settings,
                      protocol: type[asyncio.Protocol] | str | None = None) -> HttpService:
        http = settings.http
        return cls(app, http.host, http.port, zero_copy=http.zero_copy,
                   keep_alive_s=http.keep_alive_s, access_log=http.access_log,
                   protocol=protocol)

    def _config(self) -> uvicorn.Config:
        return uvicorn.Config(
            self.app,
            http=self.protocol,
            ws="none", lifespan="off", interface="asgi3",
            # Identity is the TCP peer: never let X-Forwarded-For rewrite it.
            proxy_headers=False, server_header=False,
            timeout_keep_alive=int(self.keep_alive_s), access_log=self.access_log,
            log_config=None,  # the process's logging belongs to the runtime
        )

    async def start(self) -> None:
        sock = _listen(self.host, self.requested_port)
        self.port = sock.getsockname()[1]
        self.server = _EmbeddedServer(self._config())
        self.task = asyncio.get_running_loop().create_task(self.server.serve(sockets=[sock]))
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
