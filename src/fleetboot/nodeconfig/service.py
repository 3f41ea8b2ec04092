"""The node-configuration service as the server runtime runs it.

One object ties the parts together: the rendered documents, the per-boot
tokens, the state machine over every node, the batching writer for states and
timelines, and the HTTP routes. The runtime

* starts and stops it (it is a ``fleetboot.server.runtime.Service``),
* calls ``reload`` when the inventory revision moves (a reload hook),
* hands ``sink`` to DHCP, TFTP and HTTP as their ``EventSink``,
* passes ``cmdline_hook`` to the iPXE script renderer,
* mounts ``routes()`` in the HTTP app, wraps the app with ``wrap`` and runs
  uvicorn with ``http=http_protocol()`` (the fast path for the hottest route).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.routing import BaseRoute
from starlette.types import ASGIApp

from fleetboot.inventory.db import Database
from fleetboot.nodeconfig import cloudinit
from fleetboot.nodeconfig.documents import DocumentCache, View
from fleetboot.nodeconfig.fastpath import ConfigFastPath, uvicorn_protocol
from fleetboot.nodeconfig.phases import PhaseTimes
from fleetboot.nodeconfig.render import NodeDocuments
from fleetboot.nodeconfig.responder import ConfigResponder, Reply, client_address
from fleetboot.nodeconfig.states import (
    DEFAULT_TIMEOUTS,
    NodeStatus,
    State,
    check_timeout,
    classify,
    step,
)
from fleetboot.nodeconfig.timeline import (
    BatchWriter,
    EventRecord,
    Retention,
    read_states,
    read_tokens,
)
from fleetboot.nodeconfig.tokens import TokenRecord, TokenStore
from fleetboot.server.directory import LeaseDirectory
from fleetboot.server.events import BootEvent

log = logging.getLogger("fleetboot.nodeconfig")

CLIENT_PATH = "/v1/self/client.sh"


def json_safe(detail: Mapping[str, Any]) -> dict[str, Any]:
    """The detail as JSON can store it: producers may put bytes or objects in there."""
    try:
        json.dumps(detail, allow_nan=False)
        return dict(detail)
    except (TypeError, ValueError):
        # bytes and objects as text; NaN and infinities (no JSON for them) as null
        text = json.dumps(detail, default=str)
        return dict(json.loads(text, parse_constant=lambda _: None))


class _HasId(Protocol):
    id: int


@dataclass
class NodeConfigSettings:
    """Tuning of the service; every default works for a lab."""

    base_url: str = "http://127.0.0.1:8080"  # what nodes are told to reach
    base_url6: str | None = None  # the same for nodes booted over IPv6 (dhcp6.server_address)
    require_token: bool = False  # True: no document at all without the per-boot token
    token_ttl_s: float = 7 * 86400.0
    token_grace_s: float = 300.0  # the previous boot's token lives on this long
    add_client_hook: bool = True  # put fleetboot.hook=<client URL> on the command line
    # Point cloud-init at Fleetboot (ds=nocloud-net;s=...) on every node's command line;
    # without it, only nodes whose attributes say cloud_init: true get it.
    cloud_init: bool = False
    fleet_hosts: bool = False  # add every reserved node to each document's hosts
    timeouts: Mapping[State, float] = field(default_factory=lambda: dict(DEFAULT_TIMEOUTS))
    retention: Retention = field(default_factory=Retention)
    flush_interval_s: float = 0.25
    pump_interval_s: float = 0.05
    # Repeated fetches by one node within this window make one timeline event.
    fetch_event_interval_s: float = 2.0
    # Poll the inventory revision ourselves (standalone use; the runtime polls otherwise).
    poll_revision_s: float | None = None

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> NodeConfigSettings:
        """From ``fleetboot.config.Settings``: nodes reach us where the iPXE scripts say."""
        http = settings.http
        base = getattr(http, "public_url", None) or (
            f"http://{settings.server_address}:{http.port}")
        v6 = getattr(getattr(settings, "dhcp6", None), "server_address", None)
        overrides.setdefault("base_url6", f"http://[{v6}]:{http.port}" if v6 else None)
        return cls(base_url=base.rstrip("/"), **overrides)


class NodeConfigService:
    name = "nodeconfig"

    def __init__(self, db: Database, directory: LeaseDirectory,
                 settings: NodeConfigSettings | None = None, *, admin_token: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.directory = directory
        self.settings = settings or NodeConfigSettings()
        self.admin_token = admin_token
        self.clock = clock
        s = self.settings
        self.documents = DocumentCache(db, s.fleet_hosts)
        self.tokens = TokenStore(s.token_ttl_s, s.token_grace_s)
        self.writer = BatchWriter(db, s.retention, s.flush_interval_s)
        self.responder = ConfigResponder(self.documents, self.tokens, directory, self._fetched,
                                         clock, s.require_token, s.fetch_event_interval_s)
        self.statuses: dict[int, NodeStatus] = {}
        self.counters: Counter[str] = Counter()
        self.phases = PhaseTimes()  # time spent per boot phase (metrics)
        self._pending: list[tuple[int | None, BootEvent]] = []
        self._seq = itertools.count(int(clock() * 1_000_000))  # grows across restarts
        self._token_lock = threading.Lock()  # the iPXE renderer may call from a thread
        self._reload_lock = asyncio.Lock()
        self._dirty = False
        self._tasks: list[asyncio.Task[None]] = []
        self._revision = -1
        self._last_timeouts = 0.0
        self._last_expiry = 0.0

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        await self.reload()
        statuses, tokens = await asyncio.to_thread(self._read_saved)
        self.statuses = {n: st for n, st in statuses.items() if n in self.view.by_id}
        self.tokens.load(tokens)
        await self.writer.start()
        self._tasks.append(asyncio.create_task(self._pump(), name="nodeconfig-pump"))
        if self.settings.poll_revision_s:
            self._tasks.append(asyncio.create_task(self._poll(), name="nodeconfig-poll"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self.process_pending()
        await self.writer.stop()

    def _read_saved(self) -> tuple[dict[int, NodeStatus], list[TokenRecord]]:
        with self.db.session() as session:
            return read_states(session), read_tokens(session, self.clock())

    async def reload(self) -> None:
        """Re-render the documents that changed (the runtime's reload hook).

        Requests that arrive while a reload runs are served by one more reload
        after it, not by one each: a burst of inventory changes costs two.
        """
        self._dirty = True
        async with self._reload_lock:
            if not self._dirty:
                return  # a reload that started after our request has just finished
            self._dirty = False
            first = not self.view.by_id
            try:
                self._revision = await asyncio.to_thread(self.db.revision)
                view = await asyncio.to_thread(self.documents.reload)
            except Exception as exc:
                if first:
                    raise
                # Nodes keep getting the documents they had; the next revision retries.
                log.error("re-rendering node documents failed, keeping the current ones: %s",
                          exc)
                return
        alive = set(view.by_id)
        with self._token_lock:
            self.tokens.forget_nodes(alive)
        for node_id in [n for n in self.statuses if n not in alive]:
            del self.statuses[node_id]
        log.info("%d node documents, %d rendered, in %.2f s", len(view.by_id),
                 self.documents.rendered, view.render_s)

    @property
    def view(self) -> View:
        return self.documents.view

    async def settle(self) -> None:
        """Apply every queued event and write everything (tests, shutdown)."""
        self.process_pending()
        await self.writer.flush()

    async def _pump(self) -> None:
        while True:
            await asyncio.sleep(self.settings.pump_interval_s)
            try:
                self.process_pending()
            except Exception:  # one bad event must not stop the state machine
                log.exception("processing boot events failed")

    async def _poll(self) -> None:
        interval = self.settings.poll_revision_s or 1.0
        while True:
            await asyncio.sleep(interval)
            try:
                revision = await asyncio.to_thread(self.db.revision)
            except Exception:
                log.warning("cannot read the inventory revision; keeping the current documents")
                continue
            if revision != self._revision:
                await self.reload()

    # --- events in -----------------------------------------------------------------------

    def sink(self, event: BootEvent) -> None:
        """The ``EventSink`` for DHCP, TFTP and HTTP: appends, never blocks."""
        self._pending.append((None, event))

    def process_pending(self) -> None:
        batch, self._pending = self._pending, []
        for node_id, event in batch:
            try:
                self._apply(node_id, event)
            except Exception:  # a malformed event is counted, the rest still count
                self.counters["events_failed"] += 1
                if self.counters["events_failed"] == 1:
                    log.exception("a boot event could not be applied: %r", event)
        now = self.clock()
        if now - self._last_timeouts >= 1.0:
            self._last_timeouts = now
            self.check_timeouts(now)
        if now - self._last_expiry >= 60.0:
            self._last_expiry = now
            with self._token_lock:
                expired = self.tokens.expire(now)
            if expired:
                self.writer.expired_tokens(expired)

    def _node_for(self, event: BootEvent) -> int | None:
        view = self.view
        mac = event.mac
        if mac is None and event.address:
            mac = self.directory.mac_for_address(event.address)
        docs = view.by_mac.get(mac) if mac else None
        return docs.node_id if docs else None

    def _apply(self, node_id: int | None, event: BootEvent) -> None:
        node_id = node_id if node_id is not None else self._node_for(event)
        if node_id is None or node_id not in self.view.by_id:
            self.counters["events_unknown_node"] += 1
            return
        old = self.statuses.get(node_id, NodeStatus())
        signal = classify(event)
        new = step(old, signal, event.at) if signal else old
        if event.address and event.address != new.address:
            new = replace(new, address=event.address)
        if new != old:
            if new.state is not old.state and old.since:
                self.phases.observe(old.state.value, new.since - old.since)
            self.statuses[node_id] = new
            self.writer.state(node_id, new)
        self.counters[f"events_{event.source}"] += 1
        self.writer.event(EventRecord(node_id, new.boot, event.at, next(self._seq), event.source,
                                      event.kind, event.mac, event.address, new.state.value,
                                      json_safe(event.detail)))

    def check_timeouts(self, now: float) -> list[int]:
        """Flag nodes past their state's timeout; returns the newly flagged node ids."""
        flagged = []
        for node_id, st in list(self.statuses.items()):
            stuck = check_timeout(st, now, self.settings.timeouts)
            if stuck is None:
                continue
            self.statuses[node_id] = stuck
            self.writer.state(node_id, stuck)
            self.writer.event(EventRecord(
                node_id, stuck.boot, now, next(self._seq), "fleetboot", "timeout", None,
                stuck.address, stuck.state.value,
                {"state": st.state.value, "after_s": round(now - st.since, 1),
                 "timeout_s": self.settings.timeouts.get(st.state)}))
            flagged.append(node_id)
        return flagged

    def _fetched(self, docs: NodeDocuments, address: str, reply: Reply, section: str,
                 repeats: int) -> None:
        detail: dict[str, Any] = {"status": reply.status, "section": section or "*",
                                  "bytes": len(reply.body), "etag": reply.etag}
        if repeats:
            detail["repeats_before"] = repeats
        self._pending.append((docs.node_id, BootEvent(self.clock(), "config", "config", None,
                                                      address, detail)))

    def client_fetched(self, address: str, size: int) -> None:
        """The shell client was downloaded: on the timeline of the node at ``address``."""
        event = BootEvent(self.clock(), "config", "client", None, client_address(address),
                          {"file": CLIENT_PATH, "bytes": size})
        node_id = self._node_for(event)
        if node_id is not None:  # strangers may download it too; not on any timeline
            self._pending.append((node_id, event))

    @property
    def fetches(self) -> int:
        """Configuration requests answered (200 or 304)."""
        return self.responder.fetches

    def report(self, node_id: int, address: str, state: str, message: str,
               source: str = "node") -> None:
        """A state reported by a node (``POST /v1/self/state``) or set by an operator."""
        event = BootEvent(self.clock(), source, "state", None, address or None,
                          {"state": state, "message": message})
        self._pending.append((node_id, event))

    def nocloud_fetched(self, node_id: int, address: str, name: str, size: int) -> None:
        """cloud-init read a NoCloud file: a configuration fetch on the node's timeline."""
        self._pending.append((node_id, BootEvent(
            self.clock(), "config", "config", None, address or None,
            {"status": 200, "section": f"nocloud/{name}", "bytes": size})))

    def section_results(self, node_id: int, address: str,
                        results: Mapping[str, tuple[bool, str]]) -> None:
        """The node agent's verdict per section: one ``config/<section>`` event each."""
        at = self.clock()
        for section, (ok, reason) in results.items():
            detail = {"result": "ok" if ok else "failed"}
            if reason:
                detail["reason"] = reason
            self._pending.append((node_id, BootEvent(at, "node", f"config/{section}", None,
                                                     address or None, detail)))

    # --- the iPXE script's kernel command line -------------------------------------------

    def cmdline_hook(self, node: _HasId | None, mac: str | None, address: str) -> str:
        """Kernel arguments for a node's next boot: the config URL and a new per-boot token."""
        if node is None:
            return ""
        with self._token_lock:
            raw, changes = self.tokens.issue(node.id, self.clock(), mac, address)
        self.writer.tokens(changes)
        v6 = self.settings.base_url6
        base = (v6 if v6 and ":" in address else self.settings.base_url).rstrip("/")
        args = [f"fleetboot.url={base}", f"fleetboot.token={raw}"]
        if self.settings.add_client_hook:
            args.append(f"fleetboot.hook={base}{CLIENT_PATH}")
        if self.settings.cloud_init or self._wants_cloud_init(node.id):
            args.append(cloudinit.kernel_arg(base, raw))
        return " ".join(args)

    def _wants_cloud_init(self, node_id: int) -> bool:
        docs = self.view.by_id.get(node_id)
        raw = docs.raw.get("attributes") if docs is not None else None
        return raw is not None and json.loads(raw).get("cloud_init") is True

    # --- HTTP ----------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        from fleetboot.nodeconfig.api import NodeConfigApi

        return NodeConfigApi(self).routes()

    def wrap(self, app: ASGIApp) -> ASGIApp:
        """The ASGI fast path in front of an app (for servers other than uvicorn+httptools)."""
        return ConfigFastPath(app, self.responder)

    def http_protocol(self) -> type[asyncio.Protocol] | str:
        """``uvicorn.Config(http=...)``: answers the configuration GET below ASGI."""
        return uvicorn_protocol(self.responder)

    def asgi_app(self) -> ASGIApp:
        """A standalone app with only this service's routes (tests, benchmarks)."""
        return self.wrap(Starlette(routes=self.routes()))
