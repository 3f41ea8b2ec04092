"""HTTP routes: the node API (``/v1/self/...``) and the admin API (``/v1/admin/...``).

The node API identifies the caller like the fast path does (``ConfigResponder``);
these routes serve the same answers when no fast path sits in front, plus the
state report and the shell client. Every admin route needs
``Authorization: Bearer <security.admin_token>``; without a configured admin
token the admin API refuses everything.
"""

from __future__ import annotations

import asyncio
import hmac
import importlib.resources
import json
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from fleetboot.errors import FleetbootError
from fleetboot.inventory.service import NotFound, get_node
from fleetboot.nodeconfig import cloudinit, store
from fleetboot.nodeconfig.responder import TOKEN_HEADER, Denied, Reply, client_address
from fleetboot.nodeconfig.sections import APPLIED
from fleetboot.nodeconfig.states import REPORTABLE, State
from fleetboot.nodeconfig.timeline import EventRecord, boots, read_timeline

if TYPE_CHECKING:
    from fleetboot.nodeconfig.service import NodeConfigService

MAX_REPORT_BYTES = 4096
REPORT_PATH = "/v1/self/report"
_RESULT = re.compile(r"\s*(ok|failed)\b[\s:]*(.*)", re.S)
Handler = Callable[[Request], Awaitable[Response]]


def client_script() -> bytes:
    """The shell client shipped to nodes."""
    ref = importlib.resources.files("fleetboot.nodeconfig").joinpath(
        "client/fleetboot-client.sh")
    return ref.read_bytes()


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _reply(reply: Reply, head_only: bool = False) -> Response:
    return Response(b"" if head_only else reply.body, status_code=reply.status,
                    headers={k.decode(): v.decode() for k, v in reply.asgi_headers()})


def _event_doc(e: EventRecord) -> dict[str, Any]:
    return {"at": e.at, "source": e.source, "kind": e.kind, "mac": e.mac, "address": e.address,
            "state": e.state, "detail": e.detail}


async def _form(request: Request) -> dict[str, str]:
    raw = await request.body()
    if len(raw) > MAX_REPORT_BYTES:
        raise ValueError(f"the report is larger than {MAX_REPORT_BYTES} bytes")
    text = raw.decode("utf-8", "replace").strip()
    if request.headers.get("content-type", "").startswith("application/json"):
        doc = json.loads(text or "{}")
        if not isinstance(doc, dict):
            raise ValueError("the JSON body must be an object like {\"state\": \"UP\"}")
        return {k: str(v) for k, v in doc.items()}
    if "=" not in text:  # a bare "UP"
        return {"state": text}
    return {k: v[-1] for k, v in parse_qs(text).items()}


def parse_results(form: dict[str, str]) -> dict[str, tuple[bool, str]]:
    """``{"mounts": "failed: no route"}`` -> ``{"mounts": (False, "no route")}``."""
    results: dict[str, tuple[bool, str]] = {}
    for section, text in form.items():
        if section not in APPLIED:
            raise ValueError(f"{section!r} is not a section the node applies; send "
                             f"SECTION=ok or SECTION=failed: REASON for {', '.join(APPLIED)}")
        found = _RESULT.fullmatch(text)
        if found is None:
            raise ValueError(f"{section}={text!r}: the result is 'ok' or 'failed: REASON'")
        results[section] = (found[1] == "ok", found[2].strip()[:300])
    return results


class NodeConfigApi:
    def __init__(self, service: NodeConfigService) -> None:
        self.service = service
        self._script = client_script()

    def routes(self) -> list[BaseRoute]:
        admin = self._admin
        return [
            Route("/v1/self/config", self.self_config, methods=["GET", "HEAD"]),
            Route("/v1/self/config/{section}", self.self_config, methods=["GET", "HEAD"]),
            Route("/v1/self/state", self.self_state, methods=["POST"]),
            Route(REPORT_PATH, self.self_report, methods=["POST"]),
            Route(cloudinit.NOCLOUD_PATH + "{token}/{file}", self.nocloud,
                  methods=["GET", "HEAD"]),
            Route("/v1/self/client.sh", self.client, methods=["GET", "HEAD"]),
            Route("/v1/admin/nodes", admin(self.nodes), methods=["GET"]),
            Route("/v1/admin/nodes/{name}", admin(self.node), methods=["GET"]),
            Route("/v1/admin/nodes/{name}/state", admin(self.set_state),
                  methods=["PUT", "POST"]),
            Route("/v1/admin/nodes/{name}/timeline", admin(self.timeline), methods=["GET"]),
            Route("/v1/admin/nodes/{name}/config", admin(self.node_document), methods=["GET"]),
            Route("/v1/admin/nodes/{name}/config/{section}", admin(self.section),
                  methods=["GET", "PUT", "DELETE"]),
            Route("/v1/admin/defaults/config/{section}", admin(self.section),
                  methods=["GET", "PUT", "DELETE"]),
            Route("/v1/admin/nodeconfig/stats", admin(self.stats), methods=["GET"]),
        ]

    # --- node API ------------------------------------------------------------------------

    async def self_config(self, request: Request) -> Response:
        reply = self.service.responder.answer(_peer(request), request.url.path.encode(),
                                              request.headers.raw)
        if reply is None:
            return _error(404, "not found")
        return _reply(reply, request.method == "HEAD")

    async def self_state(self, request: Request) -> Response:
        peer = _peer(request)
        try:
            docs, trusted, _ = self.service.responder.identify(peer, request.headers.raw)
        except Denied as denied:
            return _reply(denied.reply)
        if not trusted:
            return _error(401, "reporting a state needs the per-boot token (X-Fleetboot-Token)")
        try:
            form = await _form(request)
            state = State(form.get("state", "").strip().upper())
        except ValueError as exc:
            return _error(400, f"{exc}; send state=UP (or FAILED, RELOADING, DEPLOYING, "
                               "DEPLOY_FAILED, OFF, "
                               "CONFIGURING, WAITING) and optionally message=...")
        if state not in REPORTABLE:
            return _error(400, f"a node cannot report {state}; it may report "
                               f"{', '.join(sorted(REPORTABLE))}")
        self.service.report(docs.node_id, client_address(peer), state.value,
                            form.get("message", "")[:500])
        return JSONResponse({"node": docs.name, "state": state.value}, status_code=202)

    async def self_report(self, request: Request) -> Response:
        """What the node agent did with each section: ``interfaces=ok&mounts=failed: why``.

        One request per boot carries every section's result; each becomes a
        ``config/<section>`` event on the node's timeline (no state change: the
        agent reports UP or FAILED itself, after weighing the required sections).
        """
        peer = _peer(request)
        try:
            docs, trusted, _ = self.service.responder.identify(peer, request.headers.raw)
        except Denied as denied:
            return _reply(denied.reply)
        if not trusted:
            return _error(401, "reporting results needs the per-boot token (X-Fleetboot-Token)")
        try:
            results = parse_results(await _form(request))
        except ValueError as exc:
            return _error(400, str(exc))
        self.service.section_results(docs.node_id, client_address(peer), results)
        return JSONResponse({"node": docs.name, "sections": sorted(results)}, status_code=202)

    async def nocloud(self, request: Request) -> Response:
        """cloud-init's NoCloud-net files, the per-boot token in the path (``s=`` cannot
        carry a header): the same identity check as the configuration document."""
        name = request.path_params["file"]
        if name not in cloudinit.FILES:
            return _error(404, f"no NoCloud file {name!r}; there are {', '.join(cloudinit.FILES)}")
        token = request.path_params["token"]
        headers = [(k, v) for k, v in request.headers.raw if k != TOKEN_HEADER]
        headers.append((TOKEN_HEADER, token.encode("latin-1")))
        peer = _peer(request)
        try:
            docs, _, _ = self.service.responder.identify(peer, headers)
        except Denied as denied:
            return _reply(denied.reply)
        body = cloudinit.render(name, json.loads(docs.full.body), self.service.settings.base_url,
                                token) or b""
        self.service.nocloud_fetched(docs.node_id, client_address(peer), name, len(body))
        return Response(b"" if request.method == "HEAD" else body, media_type="text/plain",
                        headers={"content-length": str(len(body)),
                                 "cache-control": "private, no-store"})

    async def client(self, request: Request) -> Response:
        body = b"" if request.method == "HEAD" else self._script
        if body:
            self.service.client_fetched(_peer(request), len(body))
        return Response(body, media_type="text/x-shellscript",
                        headers={"content-length": str(len(self._script))})

    # --- admin API -----------------------------------------------------------------------

    def _admin(self, handler: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            expected = self.service.admin_token
            if not expected:
                return _error(403, "the admin API is disabled: set security.admin_token_file "
                                   "(or admin_token) in fleetboot.yaml")
            sent = request.headers.get("authorization", "")
            scheme, _, token = sent.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                    token.strip().encode(), expected.encode()):
                return _error(401, "send Authorization: Bearer <admin token>")
            try:
                return await handler(request)
            except NotFound as exc:
                return _error(404, str(exc))
            except FleetbootError as exc:
                return _error(400, str(exc))

        return guarded

    def _node_doc(self, node_id: int, name: str) -> dict[str, Any]:
        st = self.service.statuses.get(node_id)
        doc: dict[str, Any] = {"name": name, "state": State.OFF.value}
        if st is not None:
            doc.update(state=st.state.value, since=st.since, boot=st.boot,
                       address=st.address, last_boot_s=st.last_boot_s, stuck=st.stuck,
                       message=st.message)
        return doc

    async def nodes(self, request: Request) -> Response:
        self.service.process_pending()
        view = self.service.view
        return JSONResponse([self._node_doc(d.node_id, d.name)
                             for d in sorted(view.by_id.values(), key=lambda d: d.name)])

    def _docs(self, name: str) -> Any:
        docs = self.service.view.by_name.get(name)
        if docs is None:
            raise NotFound(f"no node named {name!r}")
        return docs

    async def node(self, request: Request) -> Response:
        self.service.process_pending()
        docs = self._docs(request.path_params["name"])
        return JSONResponse(self._node_doc(docs.node_id, docs.name))

    async def set_state(self, request: Request) -> Response:
        docs = self._docs(request.path_params["name"])
        try:
            form = await _form(request)
            state = State(form.get("state", "").strip().upper())
        except ValueError as exc:
            return _error(400, f"{exc}; states are {', '.join(s.value for s in State)}")
        self.service.report(docs.node_id, "", state.value, form.get("message", ""), "admin")
        await self.service.settle()
        return JSONResponse(self._node_doc(docs.node_id, docs.name))

    async def timeline(self, request: Request) -> Response:
        name = request.path_params["name"]
        boot_param = request.query_params.get("boot")
        boot = int(boot_param) if boot_param and boot_param.isdigit() else None
        await self.service.settle()

        def read() -> dict[str, Any]:
            with self.service.db.session() as s:
                node = get_node(s, name)
                events = read_timeline(s, node.id, boot)
                return {"node": name, "boot": events[0].boot if events else boot,
                        "boots": [{"boot": b, "first": lo, "last": hi, "events": n}
                                  for b, lo, hi, n in boots(s, node.id)],
                        "events": [_event_doc(e) for e in events]}

        return JSONResponse(await asyncio.to_thread(read))

    async def node_document(self, request: Request) -> Response:
        docs = self._docs(request.path_params["name"])
        return Response(docs.full.body, media_type="application/json",
                        headers={"etag": f'"{docs.full.etag}"'})

    async def section(self, request: Request) -> Response:
        name: str | None = request.path_params.get("name")
        section = request.path_params["section"]
        if request.method == "PUT":
            try:
                value = json.loads(await request.body())
            except ValueError as exc:
                return _error(400, f"the body must be JSON: {exc}")
        db = self.service.db

        def run() -> Any:
            with db.session() as s:
                if request.method == "PUT":
                    return store.set_section(s, name, section, value)
                if request.method == "DELETE":
                    store.unset_section(s, name, section)
                    return None
                return store.stored_sections(s, name).get(section)

        result = await asyncio.to_thread(run)
        if request.method != "GET":
            await self.service.reload()  # do not wait for the runtime's revision poll
        return JSONResponse({"node": name, "section": section, "value": result})

    async def stats(self, request: Request) -> Response:
        svc = self.service
        return JSONResponse({
            "nodes": len(svc.view.by_id), "tokens": len(svc.tokens), "fetches": svc.fetches,
            "render_s": round(svc.view.render_s, 3), "denied": svc.responder.denied,
            "events": dict(svc.counters), "timeline_written": svc.writer.written,
            "timeline_dropped": svc.writer.dropped, "timeline_failures": svc.writer.failures,
        })


def _peer(request: Request) -> str:
    return request.client.host if request.client else ""
