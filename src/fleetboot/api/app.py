"""The management API: ``/api/v1`` on the process's HTTP server (a FastAPI sub-application,
so the OpenAPI document comes from the same pydantic models that validate requests).

Every route calls the service layer the CLI calls (``inventory.service``,
``nodeconfig.store``, ``api.tokens``, ``api.views``); nothing here decides a rule
of the inventory. Database work runs in worker threads (sync routes; at most
``API_THREADS`` at once, so the API never crowds out the event loop that answers
booting nodes), never on the loop. Each request runs as its caller (:mod:`fleetboot.api.audit`), so
every change lands in the audit log in the same transaction.

Authentication: ``Authorization: Bearer <token>`` (a named token of ``fleetboot
token create`` or ``security.admin_token``); the web view may send the token as
the ``fleetboot_token`` cookie, accepted for reads only (no cross-site writes).
Viewers read, operators change, admins also manage tokens.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Literal, TypeVar

import anyio.to_thread
from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.routing import BaseRoute, Mount

from fleetboot.api import audit, tokens, views
from fleetboot.api.feed import Snapshot, StateFeed, live_snapshot
from fleetboot.api.tokens import Caller
from fleetboot.boot.images import ImageStore
from fleetboot.boot.why import explain
from fleetboot.errors import FleetbootError
from fleetboot.inventory import service as inventory
from fleetboot.inventory.db import Database
from fleetboot.inventory.models import BootAction, Node
from fleetboot.nodeconfig import store
from fleetboot.nodeconfig.states import NodeStatus, State
from fleetboot.nodeconfig.timeline import boots, read_timeline
from fleetboot.nodeconfig.waterfall import duration_of
from fleetboot.version import version

PREFIX = "/api/v1"
COOKIE = "fleetboot_token"
TOKEN_CACHE_S = 2.0  # a revoked token stops working within this long
SSE_MAX_S = 25.0  # a stream ends after this; EventSource reconnects by itself
API_THREADS = 1  # worker threads for API requests (see _limit_threads)
PAGE_CACHE = 4096  # pages of nodes kept per inventory view
T = TypeVar("T")


@dataclass
class ApiContext:
    db: Database
    admin_token: str | None = None
    boot_root: str | None = None
    nodeconfig: Any = None  # a running NodeConfigService, or None (read stored states)
    settings: Any = None  # fleetboot.config.Settings (the vm: section), or None: defaults
    feed: StateFeed | None = None  # the live view's state changes (made on first use)
    _cache: dict[str, tuple[Caller | None, float]] = field(default_factory=dict)
    _pages: dict[Any, tuple[Any, tuple[int, list[views.InventoryRow]]]] = field(
        default_factory=dict)

    def cached_caller(self, secret: str) -> tuple[bool, Caller | None]:
        """(known, caller) without touching the database: the admin token or a secret
        checked within the last ``TOKEN_CACHE_S``."""
        if tokens.matches_admin_token(secret, self.admin_token):
            return True, Caller("admin-token", "admin")
        cached = self._cache.get(secret)
        if cached is not None and cached[1] > time.monotonic():
            return True, cached[0]
        return False, None

    def caller_for(self, secret: str) -> Caller | None:
        known, caller = self.cached_caller(secret)
        if known:
            return caller
        now = time.monotonic()
        with self.db.session() as s:
            caller = tokens.verify(s, secret)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[secret] = (caller, now + TOKEN_CACHE_S)
        return caller

    def statuses(self, session: Session) -> views.StatusLookup:
        nc = self.nodeconfig
        if nc is None:
            return views.stored_statuses(session)
        live: Mapping[int, NodeStatus] = nc.statuses
        return lambda ids: {i: live[i] for i in ids if i in live}

    def inventory_page(self, s: Session, limit: int, offset: int,
                       filters: views.NodeFilter) -> tuple[int, list[views.InventoryRow]]:
        """A page of nodes without states; with the server running, kept until the
        inventory view changes (an operator's poller then costs no query). A state
        filter needs the stored states, so it is never cached."""
        nc = self.nodeconfig
        if nc is None or filters.state:
            return views.inventory_page(s, limit=limit, offset=offset, filters=filters)
        key = (limit, offset, filters)
        hit = self._pages.get(key)
        if hit is not None and hit[0] is nc.view:
            return hit[1]
        view = nc.view  # taken before the query: a reload meanwhile makes this entry stale
        found = views.inventory_page(s, limit=limit, offset=offset, filters=filters)
        if len(self._pages) >= PAGE_CACHE:
            self._pages.clear()
        self._pages[key] = (view, found)
        return found

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self.db.session() as s:
            yield s

    @contextmanager
    def change(self, caller: Caller, request: Request) -> Iterator[Session]:
        """A transaction whose changes are audited as ``caller``'s."""
        actor = audit.Actor(_actor_name(caller), f"{request.method} {request.url.path}")
        with audit.acting_as(actor), self.db.session() as s:
            yield s
        self._pages.clear()  # our own change shows at once, before the view reloads


def _actor_name(caller: Caller) -> str:
    return caller.name if caller.name == "admin-token" else f"token:{caller.name}"


# --- errors -------------------------------------------------------------------------------


class ErrorOut(BaseModel):
    error: str = Field(description="what is wrong and how to fix it")


_NOT_FOUND_NAMES = ("NotFound", "TokenNotFound", "NotFoundError", "ImageNotFound")


def _status_of(exc: FleetbootError) -> int:
    return 404 if any(c.__name__ in _NOT_FOUND_NAMES for c in type(exc).__mro__) else 400


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) + " (see /api/v1/openapi.json for the schema)"


def _install_errors(app: FastAPI) -> None:
    async def fleetboot_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, FleetbootError)
        return JSONResponse({"error": str(exc)}, status_code=_status_of(exc))

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code,
                            headers=exc.headers)

    async def invalid(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return JSONResponse({"error": _validation_message(exc),
                             "detail": json.loads(json.dumps(exc.errors(), default=str))},
                            status_code=422)

    app.add_exception_handler(FleetbootError, fleetboot_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)


# --- request and response models ------------------------------------------------------------

Name = Annotated[str, Field(min_length=1, max_length=63)]


class NicIn(BaseModel):
    mac: str = Field(description="52:54:00:12:34:56 (any common notation)")
    name: str = Field("", max_length=32)
    boot: bool = Field(False, description="the node's one PXE interface (default: the first)")


class NodeIn(BaseModel):
    name: Name
    arch: str = "x86_64"
    interfaces: list[NicIn] = Field(min_length=1)
    attributes: dict[str, Any] = Field(default_factory=dict)


class NodePatch(BaseModel):
    arch: str | None = None
    boot_interface: str | None = Field(None, description="MAC of the new boot NIC")


class BootIn(BaseModel):
    action: Literal["local", "wait", "profile"]
    profile: str | None = None


class StateIn(BaseModel):
    state: Literal[tuple(s.value for s in State)]  # type: ignore[valid-type]
    message: str = Field("", max_length=500)


class NodePage(BaseModel):
    total: int
    limit: int
    offset: int
    counts: dict[str, int] = Field(description="nodes per state over the whole fleet")
    items: list[dict[str, Any]]


class PoolIn(BaseModel):
    start: str
    end: str


class SubnetIn(BaseModel):
    name: Name
    cidr: str
    router: str | None = None
    dns: list[str] = Field(default_factory=list)
    domain: str | None = None
    lease_seconds: int = 3600
    next_server: str | None = None
    mtu: int | None = None
    pools: list[PoolIn] = Field(default_factory=list)


class ReservationIn(BaseModel):
    mac: str
    address: str
    hostname: str | None = None


class ProfileIn(BaseModel):
    name: Name
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str = ""
    script: str | None = None


class TokenIn(BaseModel):
    name: Name
    role: Literal["viewer", "operator", "admin"]


class TokenCreated(BaseModel):
    name: str
    role: str
    secret: str = Field(description="shown once; only its hash is stored")


class Deleted(BaseModel):
    deleted: str


# --- authentication -------------------------------------------------------------------------


def _secret(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if request.method in ("GET", "HEAD"):
        return request.cookies.get(COOKIE) or None
    return None


def _limit_threads() -> None:
    """At most ``API_THREADS`` API requests touch the database at once (FastAPI runs sync
    routes on anyio's default thread limiter). Forty CPU-bound threads would each take
    the GIL as often as the event loop that answers booting nodes; a queue of API
    requests waiting here costs the nodes nothing."""
    limiter = anyio.to_thread.current_default_thread_limiter()
    if limiter.total_tokens != API_THREADS:
        limiter.total_tokens = API_THREADS


def need(role: str) -> Callable[[Request], Awaitable[Caller]]:
    async def check(request: Request) -> Caller:
        _limit_threads()
        ctx: ApiContext = request.app.state.api
        secret = _secret(request)
        if secret is None:
            raise HTTPException(401, "send Authorization: Bearer <token>; create one with "
                                     "`fleetboot token create NAME --role viewer`",
                                headers={"www-authenticate": "Bearer"})
        known, caller = ctx.cached_caller(secret)  # most requests: no thread, no database
        if not known:
            caller = await asyncio.to_thread(ctx.caller_for, secret)
        if caller is None:
            raise HTTPException(401, "unknown or revoked token; `fleetboot token list` "
                                     "shows the active ones",
                                headers={"www-authenticate": "Bearer"})
        if not caller.may(role):
            raise HTTPException(403, f"token {caller.name!r} is a {caller.role}; this needs "
                                     f"the {role} role")
        return caller

    return check


Viewer = Annotated[Caller, Depends(need("viewer"))]
Operator = Annotated[Caller, Depends(need("operator"))]
Admin = Annotated[Caller, Depends(need("admin"))]
Limit = Annotated[int, Query(ge=1, le=1000, description="page size")]
Offset = Annotated[int, Query(ge=0)]
E: dict[int | str, dict[str, Any]] = {code: {"model": ErrorOut}
                                      for code in (400, 401, 403, 404, 422)}


def _ctx(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.api
    return ctx


def _node_out(ctx: ApiContext, s: Session, name: str) -> dict[str, Any]:
    node = inventory.get_node(s, name)
    st = ctx.statuses(s)([node.id]).get(node.id)
    return views.node_doc(node, st)


# --- the app --------------------------------------------------------------------------------


def create_api(ctx: ApiContext) -> FastAPI:
    app = FastAPI(title="Fleetboot management API", version=version(),
                  description=__doc__, openapi_url="/openapi.json", docs_url=None,
                  redoc_url=None, responses=E)
    app.state.api = ctx
    _install_errors(app)
    _node_routes(app)
    _inventory_routes(app)
    _config_routes(app)
    _admin_routes(app)
    _live_routes(app)
    _vm_routes(app)
    return app


def _node_routes(app: FastAPI) -> None:
    @app.get("/nodes", response_model=NodePage, tags=["nodes"])
    def list_nodes(request: Request, _: Viewer, limit: Limit = 100, offset: Offset = 0,
                   q: str | None = None, state: str | None = None, arch: str | None = None,
                   mac: str | None = None) -> dict[str, Any]:
        """Nodes in name order, with state; filters combine (AND)."""
        ctx = _ctx(request)
        if state is not None and state.upper() not in State.__members__.values():
            raise HTTPException(400, f"unknown state {state!r}; states are "
                                     f"{', '.join(s.value for s in State)}")
        filters = views.NodeFilter(q, state, arch, mac)
        with ctx.read() as s:
            total, page = ctx.inventory_page(s, limit, offset, filters)
            items = views.with_states(page, ctx.statuses(s))
            counts = _counts(ctx, s)
        return {"total": total, "limit": limit, "offset": offset, "counts": counts,
                "items": items}

    @app.post("/nodes", status_code=201, tags=["nodes"])
    def create_node(request: Request, body: NodeIn, caller: Operator) -> dict[str, Any]:
        ctx = _ctx(request)
        with ctx.change(caller, request) as s:
            nics = [inventory.NicSpec(inventory.parse_nic(n.mac).mac, n.name, n.boot)
                    for n in body.interfaces]
            node = inventory.add_node(s, body.name, nics, arch=body.arch,
                                      attributes=body.attributes)
            return views.node_doc(node, None)

    @app.get("/nodes/{name}", tags=["nodes"])
    def get_node(request: Request, name: str, _: Viewer) -> dict[str, Any]:
        ctx = _ctx(request)
        with ctx.read() as s:
            return _node_out(ctx, s, name)

    @app.patch("/nodes/{name}", tags=["nodes"])
    def patch_node(request: Request, name: str, body: NodePatch,
                   caller: Operator) -> dict[str, Any]:
        ctx = _ctx(request)
        with ctx.change(caller, request) as s:
            if body.boot_interface:
                inventory.set_boot_interface(s, name, body.boot_interface)
            if body.arch:
                inventory.get_node(s, name).arch = body.arch
            s.flush()
            return _node_out(ctx, s, name)

    @app.delete("/nodes/{name}", tags=["nodes"], response_model=Deleted)
    def delete_node(request: Request, name: str, caller: Operator) -> dict[str, str]:
        with _ctx(request).change(caller, request) as s:
            inventory.remove_node(s, name)
        return {"deleted": name}

    @app.post("/nodes/{name}/interfaces", status_code=201, tags=["nodes"])
    def add_interface(request: Request, name: str, body: NicIn,
                      caller: Operator) -> dict[str, Any]:
        ctx = _ctx(request)
        with ctx.change(caller, request) as s:
            nic = inventory.parse_nic(body.mac)
            inventory.add_interface(s, name, inventory.NicSpec(nic.mac, body.name, body.boot))
            return _node_out(ctx, s, name)

    @app.delete("/nodes/{name}/interfaces/{mac}", tags=["nodes"])
    def remove_interface(request: Request, name: str, mac: str,
                         caller: Operator) -> dict[str, Any]:
        ctx = _ctx(request)
        with ctx.change(caller, request) as s:
            inventory.remove_interface(s, name, mac)
            return _node_out(ctx, s, name)

    @app.put("/nodes/{name}/boot/{level}", tags=["nodes"])
    def set_boot(request: Request, name: str, level: Literal["default", "temp", "next"],
                 body: BootIn, caller: Operator) -> dict[str, Any]:
        """What the node boots at one level (``next`` is used once)."""
        ctx = _ctx(request)
        with ctx.change(caller, request) as s:
            inventory.set_boot(s, name, level, BootAction(body.action), body.profile)
            s.flush()
            return _node_out(ctx, s, name)

    @app.delete("/nodes/{name}/boot/{level}", tags=["nodes"])
    def clear_boot(request: Request, name: str, level: Literal["default", "temp", "next"],
                   caller: Operator) -> dict[str, Any]:
        ctx = _ctx(request)
        with ctx.change(caller, request) as s:
            inventory.set_boot(s, name, level, None)
            s.flush()
            return _node_out(ctx, s, name)

    @app.get("/nodes/{name}/why", tags=["nodes"])
    def why(request: Request, name: str, _: Viewer) -> dict[str, Any]:
        """What the node boots next and which rule decided (``fleetboot why``)."""
        with _ctx(request).read() as s:
            return explain(inventory.get_node(s, name)).as_dict()

    @app.get("/nodes/{name}/timeline", tags=["nodes"])
    def timeline(request: Request, name: str, _: Viewer,
                 boot: Annotated[int | None, Query(ge=0)] = None) -> dict[str, Any]:
        """One boot's events (default: the latest), each with its offset and duration."""
        with _ctx(request).read() as s:
            node = inventory.get_node(s, name)
            events = read_timeline(s, node.id, boot)
            all_boots = boots(s, node.id)
        first = events[0].at if events else 0.0
        return {"node": name, "boot": events[0].boot if events else boot,
                "boots": [{"boot": b, "first": lo, "last": hi, "events": n}
                          for b, lo, hi, n in all_boots],
                "events": [{"at": e.at, "offset_s": round(e.at - first, 6),
                            "duration_s": duration_of(e.detail), "source": e.source,
                            "kind": e.kind, "state": e.state, "mac": e.mac,
                            "address": e.address, "detail": e.detail} for e in events]}

    @app.put("/nodes/{name}/state", tags=["nodes"])
    async def set_state(request: Request, name: str, body: StateIn,
                        caller: Operator) -> dict[str, Any]:
        """Set a node's state as an operator (it goes through the state machine and onto
        the timeline like a node's own report). Needs the running server."""
        ctx = _ctx(request)
        nc = ctx.nodeconfig
        if nc is None:
            raise HTTPException(409, "states are kept by the running server; this API runs "
                                     "without one")
        docs = nc.view.by_name.get(name)
        if docs is None:
            raise HTTPException(404, f"no node named {name!r}")
        before = views.status_doc(nc.statuses.get(docs.node_id))
        nc.report(docs.node_id, "", body.state, body.message, "admin")
        await nc.settle()
        after = views.status_doc(nc.statuses.get(docs.node_id))
        await asyncio.to_thread(_audit_state, ctx, caller, request, name, before, after)
        return {"name": name, **after}


def _audit_state(ctx: ApiContext, caller: Caller, request: Request, name: str,
                 before: dict[str, Any], after: dict[str, Any]) -> None:
    actor = audit.Actor(_actor_name(caller), f"{request.method} {request.url.path}")
    with ctx.db.session() as s:
        audit.record(s, actor, "update", "node_states", name, before, after)


def _counts(ctx: ApiContext, s: Session) -> dict[str, int]:
    """Nodes per state over the fleet: the running state machine's own, or as stored."""
    nc = ctx.nodeconfig
    if nc is not None:
        return views.state_counts(list(nc.view.by_id), nc.statuses)
    return views.db_state_counts(s)


def _subnet_doc(sub: Any) -> dict[str, Any]:
    return {"name": sub.name, "cidr": sub.cidr, "router": sub.router, "dns": sub.dns_servers,
            "domain": sub.domain, "lease_seconds": sub.lease_seconds,
            "next_server": sub.next_server, "mtu": sub.mtu,
            "pools": [{"start": p.start, "end": p.end} for p in sub.pools],
            "reservations": [{"mac": r.mac, "address": r.address, "hostname": r.hostname}
                             for r in sub.reservations]}


def _profile_doc(p: Any) -> dict[str, Any]:
    return {"name": p.name, "kind": p.kind.value, "kernel": p.kernel, "initrd": p.initrd,
            "cmdline": p.cmdline, "script": p.script}


def _inventory_routes(app: FastAPI) -> None:
    @app.get("/subnets", tags=["subnets"])
    def list_subnets(request: Request, _: Viewer) -> list[dict[str, Any]]:
        with _ctx(request).read() as s:
            return [_subnet_doc(sub) for sub in inventory.list_subnets(s)]

    @app.post("/subnets", status_code=201, tags=["subnets"])
    def create_subnet(request: Request, body: SubnetIn, caller: Operator) -> dict[str, Any]:
        with _ctx(request).change(caller, request) as s:
            inventory.add_subnet(s, body.name, body.cidr, router=body.router, dns=body.dns,
                                 domain=body.domain, lease_seconds=body.lease_seconds,
                                 next_server=body.next_server, mtu=body.mtu)
            for pool in body.pools:
                inventory.add_pool(s, body.name, pool.start, pool.end)
            return _subnet_doc(inventory.get_subnet(s, body.name))

    @app.get("/subnets/{name}", tags=["subnets"])
    def get_subnet(request: Request, name: str, _: Viewer) -> dict[str, Any]:
        with _ctx(request).read() as s:
            return _subnet_doc(inventory.get_subnet(s, name))

    @app.delete("/subnets/{name}", tags=["subnets"], response_model=Deleted)
    def delete_subnet(request: Request, name: str, caller: Operator) -> dict[str, str]:
        with _ctx(request).change(caller, request) as s:
            inventory.remove_subnet(s, name)
        return {"deleted": name}

    @app.post("/subnets/{name}/pools", status_code=201, tags=["subnets"])
    def add_pool(request: Request, name: str, body: PoolIn, caller: Operator) -> dict[str, Any]:
        with _ctx(request).change(caller, request) as s:
            inventory.add_pool(s, name, body.start, body.end)
            return _subnet_doc(inventory.get_subnet(s, name))

    @app.post("/subnets/{name}/reservations", status_code=201, tags=["subnets"])
    def reserve(request: Request, name: str, body: ReservationIn,
                caller: Operator) -> dict[str, Any]:
        with _ctx(request).change(caller, request) as s:
            inventory.add_reservation(s, name, body.mac, body.address, body.hostname)
            return _subnet_doc(inventory.get_subnet(s, name))

    @app.delete("/reservations/{mac}", tags=["subnets"], response_model=Deleted)
    def unreserve(request: Request, mac: str, caller: Operator) -> dict[str, str]:
        with _ctx(request).change(caller, request) as s:
            inventory.remove_reservation(s, mac)
        return {"deleted": mac}

    @app.get("/pools", tags=["subnets"])
    def pools(request: Request, _: Viewer) -> list[dict[str, Any]]:
        """Every pool: size, active leases, percent used."""
        with _ctx(request).read() as s:
            return [{**asdict(p), "percent": p.percent} for p in views.pool_use(s, time.time())]

    @app.get("/leases", tags=["subnets"])
    def leases(request: Request, _: Viewer, limit: Limit = 100, offset: Offset = 0,
               subnet: str | None = None, node: str | None = None,
               expired: bool = False) -> dict[str, Any]:
        """DHCP leases as the server made them durable, in address order."""
        with _ctx(request).read() as s:
            rows = inventory.list_leases(s, now=time.time(), subnet=subnet,
                                         include_expired=expired)
        if node is not None:
            rows = [r for r in rows if r.node == node]
        return {"total": len(rows), "limit": limit, "offset": offset,
                "items": [asdict(r) for r in rows[offset:offset + limit]]}

    @app.get("/profiles", tags=["profiles"])
    def list_profiles(request: Request, _: Viewer) -> list[dict[str, Any]]:
        with _ctx(request).read() as s:
            return [_profile_doc(p) for p in inventory.list_profiles(s)]

    @app.post("/profiles", status_code=201, tags=["profiles"])
    def create_profile(request: Request, body: ProfileIn, caller: Operator) -> dict[str, Any]:
        with _ctx(request).change(caller, request) as s:
            return _profile_doc(inventory.add_profile(
                s, body.name, kernel=body.kernel, initrd=body.initrd, cmdline=body.cmdline,
                script=body.script))

    @app.get("/profiles/{name}", tags=["profiles"])
    def get_profile(request: Request, name: str, _: Viewer) -> dict[str, Any]:
        with _ctx(request).read() as s:
            return _profile_doc(inventory.get_profile(s, name))

    @app.delete("/profiles/{name}", tags=["profiles"], response_model=Deleted)
    def delete_profile(request: Request, name: str, caller: Operator) -> dict[str, str]:
        with _ctx(request).change(caller, request) as s:
            inventory.remove_profile(s, name)
        return {"deleted": name}

    @app.get("/images", tags=["images"])
    def images(request: Request, _: Viewer) -> list[dict[str, Any]]:
        """Images in the boot root's content-addressed store."""
        ctx = _ctx(request)
        if not ctx.boot_root:
            return []
        return [{"name": i.name, "digest": i.digest, "size": i.size, "path": i.path}
                for i in ImageStore(ctx.boot_root).list()]


def _config_routes(app: FastAPI) -> None:
    @app.get("/nodes/{name}/config", tags=["config"])
    def node_config(request: Request, name: str, _: Viewer,
                    stored: bool = False) -> dict[str, Any]:
        """The sections set for this node itself (``stored=true``) or the whole document
        it gets (fleet defaults included)."""
        with _ctx(request).read() as s:
            if stored:
                return store.stored_sections(s, name)
            node = inventory.get_node(s, name)
            facts, fleet = store.load_facts(s, only=node.id)
        from fleetboot.nodeconfig.render import render_node

        return json.loads(render_node(facts[0], fleet).full.body)

    @app.put("/nodes/{name}/config/{section}", tags=["config"])
    def set_section(request: Request, name: str, section: str, value: Annotated[Any, Body()],
                    caller: Operator) -> dict[str, Any]:
        with _ctx(request).change(caller, request) as s:
            return {"node": name, "section": section,
                    "value": store.set_section(s, name, section, value)}

    @app.delete("/nodes/{name}/config/{section}", tags=["config"])
    def unset_section(request: Request, name: str, section: str,
                      caller: Operator) -> dict[str, Any]:
        with _ctx(request).change(caller, request) as s:
            store.unset_section(s, name, section)
        return {"node": name, "section": section, "value": None}

    @app.get("/defaults/config", tags=["config"])
    def defaults(request: Request, _: Viewer) -> dict[str, Any]:
        """The fleet default sections."""
        with _ctx(request).read() as s:
            return store.stored_sections(s, None)

    @app.put("/defaults/config/{section}", tags=["config"])
    def set_default(request: Request, section: str, value: Annotated[Any, Body()],
                    caller: Operator) -> dict[str, Any]:
        with _ctx(request).change(caller, request) as s:
            return {"node": None, "section": section,
                    "value": store.set_section(s, None, section, value)}

    @app.delete("/defaults/config/{section}", tags=["config"])
    def unset_default(request: Request, section: str, caller: Operator) -> dict[str, Any]:
        with _ctx(request).change(caller, request) as s:
            store.unset_section(s, None, section)
        return {"node": None, "section": section, "value": None}


def _admin_routes(app: FastAPI) -> None:
    @app.get("/tokens", tags=["admin"])
    def list_tokens(request: Request, _: Admin,
                    revoked: bool = False) -> list[dict[str, Any]]:
        with _ctx(request).read() as s:
            return [asdict(t) for t in tokens.list_tokens(s, include_revoked=revoked)]

    @app.post("/tokens", status_code=201, response_model=TokenCreated, tags=["admin"])
    def create_token(request: Request, body: TokenIn, caller: Admin) -> dict[str, Any]:
        with _ctx(request).change(caller, request) as s:
            view, secret = tokens.create_token(s, body.name, body.role, _actor_name(caller))
        return {"name": view.name, "role": view.role, "secret": secret}

    @app.delete("/tokens/{name}", tags=["admin"], response_model=Deleted)
    def revoke_token(request: Request, name: str, caller: Admin) -> dict[str, str]:
        ctx = _ctx(request)
        with ctx.change(caller, request) as s:
            tokens.revoke_token(s, name)
        ctx._cache.clear()  # revoked here: effective at once, not after the cache time
        return {"deleted": name}

    @app.get("/audit", tags=["admin"])
    def audit_log(request: Request, _: Operator, limit: Limit = 100, offset: Offset = 0,
                  actor: str | None = None, kind: str | None = None,
                  since: float | None = None) -> list[dict[str, Any]]:
        """Every change (newest first): who, through what, when, the row before and after."""
        with _ctx(request).read() as s:
            return [asdict(e) for e in audit.list_audit(s, limit=limit, offset=offset,
                                                        actor=actor, kind=kind, since=since)]

    @app.get("/whoami", tags=["admin"])
    def whoami(caller: Viewer) -> dict[str, str]:
        return {"name": caller.name, "role": caller.role}


def _vm_doc(view: Any, with_slots: bool = False) -> dict[str, Any]:
    from fleetboot.vm import planner

    doc: dict[str, Any] = {
        "name": view.name, "status": view.status.value, "family": view.family.value,
        "machine_type": view.machine_type, "firmware": view.firmware.value,
        "vcpus": view.vcpus, "memory_mib": view.memory_mib,
        "slot_map": planner.render(view.layout), "last_error": view.last_error,
        "nics": [{"device": n.device, "mac": n.mac} for n in view.nics]}
    if with_slots:
        doc["slots"] = [{**asdict(r), "pool": r.pool.value}
                        for r in planner.slot_rows(view.layout)]
    return doc


class VmIn(BaseModel):
    name: Name
    machine: Literal["q35", "pc"] = "q35"
    vcpus: int = 1
    memory_mib: int = 256
    nics: list[str] = Field(default_factory=list, description=(
        "NIC specs as for `fleetboot vm create --nic`: model=..,mac=..,backend=..,boot"))
    disks: list[str] = Field(default_factory=list, description=(
        "disk specs as for `--disk`: size=2G,bus=virtio-blk|virtio-scsi,path=..,boot"))
    firmware: Literal["bios", "uefi"] | None = None
    accel: str = "tcg"


class HotplugIn(BaseModel):
    nic: str | None = Field(None, description="a NIC spec, as for create")
    disk: str | None = Field(None, description="a disk spec, as for create")


def _vm_service(ctx: ApiContext) -> Any:
    from fleetboot.vm.service import VmService, default_settings, vm_settings

    settings = vm_settings(ctx.settings) if ctx.settings is not None else default_settings()
    return VmService(ctx.db, settings)


async def _vm_call(ctx: ApiContext, caller: Caller, request: Request,
                   call: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
    """Run a VM operation (QMP, QEMU, disk images: seconds, not milliseconds) on its own
    loop in a thread of its own, outside the API's thread limit, as ``caller`` (its
    database changes are audited)."""
    actor = audit.Actor(_actor_name(caller), f"{request.method} {request.url.path}")

    def run() -> T:
        with audit.acting_as(actor):
            return asyncio.run(call(_vm_service(ctx)))

    return await asyncio.to_thread(run)


def _vm_routes(app: FastAPI) -> None:
    @app.get("/vms", tags=["vms"])
    def list_vms(request: Request, _: Viewer) -> list[dict[str, Any]]:
        """VMs as stored (status, machine, the one-line slot map)."""
        return [_vm_doc(v) for v in _vm_service(_ctx(request)).list_instances()]

    @app.get("/vms/{name}", tags=["vms"])
    def get_vm(request: Request, name: str, _: Viewer) -> dict[str, Any]:
        """One VM with its PCI slot map: every slot of every pool, what holds it."""
        return _vm_doc(_vm_service(_ctx(request)).read(name), True)

    @app.post("/vms", status_code=201, tags=["vms"])
    async def create_vm(request: Request, body: VmIn, caller: Operator) -> dict[str, Any]:
        """Define a VM: machine type, firmware and PCI layout are pinned now."""
        from fleetboot.vm import planner
        from fleetboot.vm.firmware import parse_firmware
        from fleetboot.vm.specs import CreateSpec, parse_disk, parse_nic

        spec = CreateSpec(name=body.name, family=planner.parse_family(body.machine),
                          vcpus=body.vcpus, memory_mib=body.memory_mib,
                          nics=tuple(parse_nic(n) for n in body.nics),
                          disks=tuple(parse_disk(d) for d in body.disks), accel=body.accel,
                          firmware=parse_firmware(body.firmware) if body.firmware else None)
        view = await _vm_call(_ctx(request), caller, request, lambda svc: svc.create(spec))
        return _vm_doc(view, True)

    @app.delete("/vms/{name}", tags=["vms"], response_model=Deleted)
    async def delete_vm(request: Request, name: str, caller: Operator,
                        images: bool = False) -> dict[str, str]:
        await _vm_call(_ctx(request), caller, request,
                       lambda svc: svc.delete(name, images=images))
        return {"deleted": name}

    @app.post("/vms/{name}/start", tags=["vms"])
    async def start_vm(request: Request, name: str, caller: Operator) -> dict[str, Any]:
        view = await _vm_call(_ctx(request), caller, request, lambda svc: svc.start(name))
        return _vm_doc(view, True)

    @app.post("/vms/{name}/stop", tags=["vms"])
    async def stop_vm(request: Request, name: str, caller: Operator) -> dict[str, Any]:
        view = await _vm_call(_ctx(request), caller, request, lambda svc: svc.stop(name))
        return _vm_doc(view, True)

    @app.post("/vms/{name}/hotplug", tags=["vms"])
    async def hotplug(request: Request, name: str, body: HotplugIn,
                      caller: Operator) -> dict[str, Any]:
        """Add a NIC or a disk at its planned slot (to the definition if the VM is stopped)."""
        from fleetboot.vm.specs import SpecError, parse_disk, parse_nic

        if (body.nic is None) == (body.disk is None):
            raise SpecError("give exactly one of nic or disk")
        if body.nic is not None:
            nic = parse_nic(body.nic)
            result = await _vm_call(_ctx(request), caller, request,
                                    lambda svc: svc.hotplug_nic(name, nic))
        else:
            disk = parse_disk(body.disk or "")
            result = await _vm_call(_ctx(request), caller, request,
                                    lambda svc: svc.hotplug_disk(name, disk))
        return asdict(result)

    @app.post("/vms/{name}/unplug/{device}", tags=["vms"])
    async def unplug(request: Request, name: str, device: str,
                     caller: Operator) -> dict[str, Any]:
        result = await _vm_call(_ctx(request), caller, request,
                                lambda svc: svc.unplug(name, device))
        return asdict(result)

    @app.post("/vms/{name}/migrate", tags=["vms"])
    async def migrate(request: Request, name: str, caller: Operator) -> dict[str, Any]:
        """Live-migrate the VM to a new QEMU on this host (the layout is kept)."""
        result = await _vm_call(_ctx(request), caller, request, lambda svc: svc.migrate(name))
        return {"uri": result.uri, "seconds": result.seconds, "pid": result.pid}

    @app.get("/hosts", tags=["vms"])
    def hosts(request: Request, _: Viewer) -> list[dict[str, Any]]:
        """Passthrough hosts and their devices."""
        from fleetboot.passthrough.hosts import list_hosts

        with _ctx(request).read() as s:
            return [{"name": h.name, "scanned_at": _plain_time(h.scanned_at),
                     "devices": [{"address": d.address, "vendor_id": d.vendor_id,
                                  "product_id": d.product_id, "driver": d.driver,
                                  "state": d.state.value, "present": d.present}
                                 for d in h.devices]} for h in list_hosts(s)]

    @app.get("/flavors", tags=["vms"])
    def flavors(request: Request, _: Viewer) -> list[dict[str, Any]]:
        from fleetboot.passthrough.catalog import list_flavors

        with _ctx(request).read() as s:
            return [json.loads(json.dumps(asdict(f), default=str)) for f in list_flavors(s)]


def _plain_time(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _live_routes(app: FastAPI) -> None:
    @app.get("/events", tags=["live"], response_class=StreamingResponse)
    async def events(request: Request, _: Viewer) -> StreamingResponse:
        """Server-sent events: ``state`` (one node changed state) and ``counts`` (nodes
        per state). The stream ends after a while; EventSource reconnects by itself."""
        ctx = _ctx(request)
        return StreamingResponse(_state_stream(ctx, request), media_type="text/event-stream",
                                 headers={"cache-control": "no-store",
                                          "x-accel-buffering": "no"})


def _stored_snapshot(ctx: ApiContext) -> Callable[[], Snapshot]:
    def take() -> Snapshot:
        with ctx.db.session() as s:
            names = dict(s.execute(select(Node.id, Node.name)).tuples().all())
            return Snapshot(views.stored_statuses(s)(list(names)), names)
    return take


def _feed(ctx: ApiContext) -> StateFeed:
    if ctx.feed is None:
        if ctx.nodeconfig is not None:
            ctx.feed = StateFeed(live_snapshot(ctx.nodeconfig), interval_s=0.25,
                                 in_thread=False)
        else:
            ctx.feed = StateFeed(_stored_snapshot(ctx), interval_s=1.0, in_thread=True)
    return ctx.feed


def _sse(kind: str, data: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


async def _state_stream(ctx: ApiContext, request: Request) -> AsyncIterator[bytes]:
    feed = _feed(ctx)
    queue = await feed.subscribe()
    started = time.monotonic()
    try:
        yield b"retry: 500\n\n"
        while time.monotonic() - started < SSE_MAX_S:
            try:
                kind, data = await asyncio.wait_for(queue.get(), 1.0)
            except TimeoutError:
                if await request.is_disconnected():
                    return
                continue
            yield _sse(kind, data)
    finally:
        feed.unsubscribe(queue)


def routes(ctx: ApiContext) -> list[BaseRoute]:
    """The API and the web view, for ``create_app(extra_routes=...)``."""
    from fleetboot.api.web import web_routes

    audit.install()
    return [Mount(PREFIX, app=create_api(ctx)), *web_routes()]
