"""Per-node iPXE scripts from an in-memory view of the inventory.

A script request touches no database: :class:`ScriptView` holds, per MAC, the
interface's boot flag and its node (arch and the three boot levels with their
profiles), built with two Core queries whenever the inventory revision moves
(the runtime's reload hook). Rendering is a few dict lookups and string joins
on the event loop.

**One-shot ``next`` boots** are still consumed exactly once, by the same
compare-and-set ``UPDATE`` as before, but in batches off the loop:

1. the render clears the node's ``next`` level in memory at once, so a retry
   within the reuse window gets the same script and any later ask gets the
   next level;
2. :class:`OneShotWriter` collects the consumptions of a few milliseconds and
   clears them in one transaction on a worker thread (one ``UPDATE ...
   RETURNING`` per distinct one-shot, plus one bump of the inventory revision);
3. the request waits for that commit (a group commit: milliseconds, and the
   loop keeps serving meanwhile) before the script leaves, so when two servers
   share a database only the one whose compare-and-set wins serves the
   one-shot; the loser re-reads the inventory and serves the next level.

If the database cannot be written (or does not answer within
``oneshot_wait_s``), availability wins: the script is served, the memory
state is kept, the failure is logged and counted, and the writer retries in
the background. Until the write lands, every view reload re-applies the
consumption (so a reload never resurrects a served one-shot); a retry that
finds the ``next`` boot changed meanwhile drops it and re-reads the inventory.
In that failure case only, two servers sharing the database could both serve
the one-shot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from fleetboot.boot import ipxe
from fleetboot.boot.files import BootPathRefused, RequestContext
from fleetboot.config import Settings
from fleetboot.errors import FleetbootError
from fleetboot.inventory.addr import mac_or_none
from fleetboot.inventory.changes import current_revision
from fleetboot.inventory.db import Database
from fleetboot.inventory.models import (
    BootAction,
    BootProfile,
    Interface,
    InventoryRevision,
    Node,
    ProfileKind,
)
from fleetboot.server.admission import BootAdmission, StatusProbe
from fleetboot.server.metrics import RateLimitedLog, registry

log = logging.getLogger("fleetboot.server.scripts")
_ratelimited = RateLimitedLog(log, 10.0)


class ScriptServiceError(FleetbootError):
    pass


class ScriptRefused(ScriptServiceError):
    """The asking address may not have a script (e.g. it is not the node's boot NIC)."""


# --- the view (pure) ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Level:
    """One level of "what do I boot": an action and, for ``profile``, the profile."""

    action: BootAction
    profile_id: int | None = None
    profile: ipxe.ProfileSpec | None = None


@dataclass(frozen=True, slots=True)
class Choice:
    action: BootAction
    profile: ipxe.ProfileSpec | None
    profile_id: int | None
    rule: str  # which level decided, as `fleetboot why` says it
    one_shot: bool = False


@dataclass(slots=True)
class NodeBoot:
    """A node as the script renderer sees it. ``next`` is cleared in memory when a
    one-shot boot is served; everything else changes only by a reload."""

    id: int
    name: str
    arch: str
    default: Level
    temp: Level | None = None
    next: Level | None = None

    def choose(self) -> Choice:
        """One-shot beats temporary beats default (like ``boot.decision.decide``)."""
        if self.next is not None:
            return _choice(self.next, "one-shot next boot", True)
        if self.temp is not None:
            return _choice(self.temp, "temporary boot")
        return _choice(self.default, "node default")


def _choice(level: Level, rule: str, one_shot: bool = False) -> Choice:
    return Choice(level.action, level.profile, level.profile_id, rule, one_shot)


@dataclass(frozen=True, slots=True)
class Nic:
    mac: str
    is_boot: bool
    node: NodeBoot


@dataclass
class ScriptView:
    revision: int
    nics: dict[str, Nic] = field(default_factory=dict)
    nodes: dict[int, NodeBoot] = field(default_factory=dict)
    profiles: dict[str, ipxe.ProfileSpec] = field(default_factory=dict)  # by name

    def menu(self, names: Sequence[str]) -> list[ipxe.ProfileSpec]:
        missing = [n for n in names if n not in self.profiles]
        if missing:
            _ratelimited.warning("menu", "http.unknown_menu names unknown profiles: %s",
                                 ", ".join(missing))
        return [self.profiles[n] for n in names if n in self.profiles]


NodeRow = tuple[int, str, str, BootAction, int | None, BootAction | None, int | None,
                BootAction | None, int | None]
ProfileRow = tuple[int, str, ProfileKind, str | None, str | None, str | None, str | None]


def build_view(revision: int, profile_rows: Sequence[ProfileRow], node_rows: Sequence[NodeRow],
               nic_rows: Sequence[tuple[str, bool, int]]) -> ScriptView:
    """The view from plain rows. Pure."""
    by_id = {r[0]: ipxe.ProfileSpec(r[1], r[2], r[3], r[4], r[5] or "", r[6])
             for r in profile_rows}

    def level(action: BootAction | None, profile_id: int | None) -> Level | None:
        if action is None:
            return None
        return Level(action, profile_id, by_id.get(profile_id) if profile_id else None)

    view = ScriptView(revision, profiles={p.name: p for p in by_id.values()})
    for nid, name, arch, d_act, d_pid, t_act, t_pid, n_act, n_pid in node_rows:
        default = level(d_act, d_pid) or Level(BootAction.LOCAL)
        view.nodes[nid] = NodeBoot(nid, name, arch, default, level(t_act, t_pid),
                                   level(n_act, n_pid))
    for mac, is_boot, node_id in nic_rows:
        node = view.nodes.get(node_id)
        if node is not None:
            view.nics[mac] = Nic(mac, bool(is_boot), node)
    return view


def load_view(session: Session) -> ScriptView:
    """Everything a script needs, in three Core queries.

    The revision is read first: a change committed while the rows are read
    moves the revision past the view's, so the next poll reloads again. Nodes
    are read before profiles, so every profile a node names exists (profiles in
    use cannot be deleted).
    """
    revision = current_revision(session)
    node_rows = session.execute(select(
        Node.id, Node.name, Node.arch, Node.default_action, Node.default_profile_id,
        Node.temp_action, Node.temp_profile_id, Node.next_action, Node.next_profile_id)).all()
    nic_rows = session.execute(select(Interface.mac, Interface.is_boot, Interface.node_id)).all()
    profile_rows = session.execute(select(
        BootProfile.id, BootProfile.name, BootProfile.kind, BootProfile.kernel,
        BootProfile.initrd, BootProfile.cmdline, BootProfile.script)).all()
    return build_view(revision, [tuple(r) for r in profile_rows],  # type: ignore[misc]
                      [tuple(r) for r in node_rows],  # type: ignore[misc]
                      [(r[0], r[1], r[2]) for r in nic_rows])


# --- one-shot consumption, written in batches ----------------------------------------------


@dataclass(eq=False)
class Consumed:
    """A served one-shot boot not yet known to be in the database."""

    node_id: int
    action: BootAction
    profile_id: int | None
    commit: int | None = None  # the writer's commit number once written


@dataclass(eq=False)
class _Item:
    record: Consumed
    future: asyncio.Future[bool | None]


def write_consumed(db: Database, records: Sequence[Consumed]) -> list[bool]:
    """Clear the given one-shot boots where they are still what was served (CAS).

    One transaction: one ``UPDATE ... WHERE id IN (...) AND next = served
    RETURNING id`` per distinct served level, and one revision bump if anything
    changed (a Core UPDATE skips the ORM hook that bumps it; running servers
    must notice). Returns, per record, whether its compare-and-set won.
    """
    groups: dict[tuple[BootAction, int | None], list[int]] = {}
    for rec in records:
        groups.setdefault((rec.action, rec.profile_id), []).append(rec.node_id)
    won: dict[tuple[BootAction, int | None], set[int]] = {}
    with db.session() as session:
        for (action, profile_id), ids in groups.items():
            same_profile = (Node.next_profile_id.is_(None) if profile_id is None
                            else Node.next_profile_id == profile_id)
            stmt = (update(Node)
                    .where(Node.id.in_(sorted(set(ids))), Node.next_action == action,
                           same_profile)
                    .values(next_action=None, next_profile_id=None)
                    .returning(Node.id)
                    .execution_options(synchronize_session=False))
            won[(action, profile_id)] = set(session.scalars(stmt))
        if any(won.values()):
            session.execute(update(InventoryRevision).where(InventoryRevision.id == 1)
                            .values(value=InventoryRevision.value + 1))
    return [rec.node_id in won[(rec.action, rec.profile_id)] for rec in records]


class OneShotWriter:
    """Collects consumptions on the loop; writes them in batches on a worker thread.

    ``submit`` returns a future: True (written), False (the compare-and-set
    lost: the ``next`` boot changed or another server consumed it), None (the
    database failed; the record is retried every ``retry_s`` until it lands or
    loses).
    """

    def __init__(self, db: Database, *, window_s: float = 0.005, retry_s: float = 1.0,
                 on_lost: Callable[[Consumed], None] | None = None) -> None:
        self.db = db
        self.window_s = window_s
        self.retry_s = retry_s
        self.on_lost = on_lost
        self.commits = 0  # successful batches so far
        self._queue: list[_Item] = []
        self._retry: list[Consumed] = []
        self._task: asyncio.Task[None] | None = None
        self.counters: dict[str, int] = {"batches": 0, "written": 0, "lost": 0,
                                         "write_errors": 0, "unwritten": 0}

    def submit(self, record: Consumed) -> asyncio.Future[bool | None]:
        future: asyncio.Future[bool | None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(record, future))
        self._kick()
        return future

    def _kick(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                name="oneshot-writer")

    async def _run(self) -> None:
        while self._queue or self._retry:
            await asyncio.sleep(self.window_s if self._queue else self.retry_s)
            await self.flush()

    async def flush(self) -> None:
        """Write everything queued (and due for retry) now."""
        items, self._queue = self._queue, []
        retry, self._retry = self._retry, []
        records = [i.record for i in items] + retry
        if not records:
            return
        try:
            results = await asyncio.to_thread(write_consumed, self.db, records)
        except Exception as exc:  # the database is down or locked: serve from memory
            self.counters["write_errors"] += 1
            _ratelimited.warning("oneshot-write", "cannot clear %d served one-shot boots in "
                                 "the database (%s); retrying every %.0f s", len(records),
                                 exc, self.retry_s)
            self._retry.extend(records)
            self.counters["unwritten"] = len(self._retry)
            for item in items:
                if not item.future.done():
                    item.future.set_result(None)
            return
        self._settle(items, records, results)

    def _settle(self, items: list[_Item], records: list[Consumed], results: list[bool]) -> None:
        self.commits += 1
        self.counters["batches"] += 1
        self.counters["unwritten"] = len(self._retry)
        outcome = dict(zip(map(id, records), results, strict=True))
        for rec, ok in zip(records, results, strict=True):
            if ok:
                rec.commit = self.commits
                self.counters["written"] += 1
            else:
                self.counters["lost"] += 1
                if self.on_lost is not None:
                    self.on_lost(rec)
        for item in items:
            if not item.future.done():
                item.future.set_result(outcome[id(item.record)])

    async def stop(self) -> None:
        """Write what is left (one attempt); report what could not be written."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()
        if self._retry:
            log.error("%d served one-shot boots could not be cleared in the database; "
                      "they will be served again after a restart", len(self._retry))


# --- the service ----------------------------------------------------------------------------

# (node, mac, address) -> extra kernel arguments for this boot (e.g. a per-boot token
# and the configuration URL). Called on the event loop for GETs of known nodes booting
# a profile, after a one-shot is settled: it must not block (no database; queue writes).
# ``node`` has ``id``, ``name`` and ``arch`` (a NodeBoot).
CmdlineHook = Callable[[Any, str, str], str]


@dataclass(frozen=True)
class Decided:
    """What a render decided, for other boot programs to render the same decision
    (GRUB: :mod:`fleetboot.server.grubcfg`)."""

    action: BootAction
    profile: ipxe.ProfileSpec | None
    rule: str
    who: ipxe.Who
    wait_seconds: int
    extra_args: str = ""


@dataclass(frozen=True)
class ServedScript:
    text: str
    kind: str  # "profile" | "local" | "wait" | "menu"
    node: str | None = None
    profile: str | None = None
    rule: str | None = None
    consumed: bool = False  # this render cleared the node's one-shot boot
    deferred: bool = False  # admission control said wait (the server is saturated)
    decided: Decided | None = None  # None: a menu (only iPXE has one)

    def detail(self) -> dict[str, Any]:
        out = {"node": self.node, "boot": self.kind, "profile": self.profile,
               "rule": self.rule, "one_shot_consumed": self.consumed}
        if self.deferred:
            out["admission"] = "deferred"
        return out


class ScriptService:
    """Renders scripts from the in-memory view; one render per client at a time.

    GET renders are shared by concurrent requests of the same client and reused
    for ``ttl`` seconds (at most half the WAIT interval), so a firmware that
    retries (or probes, then fetches, as UEFI does over TFTP) gets the same
    script and a one-shot boot is consumed exactly once.

    Freshness: inside ``fleetboot serve`` the runtime calls :meth:`reload` when
    the inventory revision moves and :meth:`follow_runtime` turns the service's
    own check off. Standalone (tests, embedding), the service reads the
    revision itself at most every ``revision_check_s`` seconds (0: before every
    request), so a change made through the CLI is seen at once.
    """

    def __init__(self, db: Database, settings: Settings, hook: CmdlineHook | None = None, *,
                 ttl: float = 2.0, admission: BootAdmission | None = None,
                 status_probe: StatusProbe | None = None,
                 clock: Callable[[], float] = time.time,
                 revision_check_s: float | None = 0.0, oneshot_wait_s: float = 2.0) -> None:
        self.db = db
        self.settings = settings
        self.hook = hook
        self.ttl = ttl
        self.admission = admission
        self.status_probe = status_probe
        self.clock = clock
        self.revision_check_s = revision_check_s
        self.oneshot_wait_s = oneshot_wait_s
        self.writer = OneShotWriter(db, on_lost=self._lost)
        self._view: ScriptView | None = None
        self._checked = 0.0
        self._reload_lock = asyncio.Lock()
        self._dirty = False
        self._unsettled: dict[int, Consumed] = {}
        self._inflight: dict[str, asyncio.Task[ServedScript]] = {}
        self._recent: dict[str, tuple[float, ServedScript]] = {}
        self._last_sweep = 0.0
        self.counters: dict[str, int] = {
            "served": 0, "rendered": 0, "reused": 0, "one_shot_consumed": 0,
            "one_shot_lost": 0, "one_shot_unwritten_served": 0, "view_reloads": 0,
            "view_nodes": 0, "view_revision": 0, "view_errors": 0, "refused": 0,
        }

    @property
    def urls(self) -> ipxe.Urls:
        http = self.settings.http
        return ipxe.Urls(http.public_url or f"http://{self.settings.server_address}:{http.port}")

    def urls_for(self, address: str) -> ipxe.Urls:
        """An IPv6 client (booted by DHCPv6) gets URLs on our IPv6 address, if one is set."""
        v6 = self.settings.dhcp6.server_address
        if ":" in address and v6:
            return ipxe.Urls(f"http://[{v6}]:{self.settings.http.port}")
        return self.urls

    def register_metrics(self) -> None:
        registry.register("scripts", self.counters)
        registry.register("oneshot", self.writer.counters)
        if self.admission is not None:
            registry.register("admission", self.admission.counters)

    # --- lifecycle (a runtime Service) ---

    name = "scripts"

    @property
    def loaded_revision(self) -> int | None:
        """The inventory revision scripts are rendered from; None before the first load."""
        return self._view.revision if self._view is not None else None

    async def start(self) -> None:
        """Load the view before the first node asks (the runtime starts this before HTTP)."""
        await self.reload()

    async def stop(self) -> None:
        await self.writer.stop()

    def follow_runtime(self) -> None:
        """The runtime calls :meth:`reload` on revision changes: stop checking ourselves."""
        self.revision_check_s = None

    async def reload(self) -> None:
        """Rebuild the view (the runtime's reload hook). A burst of calls costs two loads."""
        self._dirty = True
        async with self._reload_lock:
            if not self._dirty:
                return
            self._dirty = False
            commits_before = self.writer.commits
            try:
                view = await asyncio.to_thread(self._load)
            except Exception as exc:
                self.counters["view_errors"] += 1
                if self._view is None:
                    raise ScriptServiceError(f"cannot read the inventory: {exc}") from exc
                _ratelimited.warning("reload", "cannot reload the script view (%s); "
                                     "serving revision %d", exc, self._view.revision)
                return
            self._overlay(view, commits_before)
            self._view = view
            self._checked = time.monotonic()
        c = self.counters
        c["view_reloads"] += 1
        c["view_nodes"] = len(view.nodes)
        c["view_revision"] = view.revision

    def _load(self) -> ScriptView:
        with self.db.session() as session:
            return load_view(session)

    def _overlay(self, view: ScriptView, commits_before: int) -> None:
        """Re-apply served one-shots the freshly read rows may not show yet."""
        for node_id, rec in list(self._unsettled.items()):
            if rec.commit is not None and rec.commit <= commits_before:
                del self._unsettled[node_id]  # written before this read began: in the rows
                continue
            node = view.nodes.get(node_id)
            if node is not None and node.next is not None and \
                    (node.next.action, node.next.profile_id) == (rec.action, rec.profile_id):
                node.next = None

    def _lost(self, rec: Consumed) -> None:
        # The database disagrees (changed by an operator or consumed by another server):
        # forget our version and re-read.
        if self._unsettled.get(rec.node_id) is rec:
            del self._unsettled[rec.node_id]
        self.counters["one_shot_lost"] += 1
        asyncio.get_running_loop().create_task(self._reload_quietly())

    async def _reload_quietly(self) -> None:
        with contextlib.suppress(ScriptServiceError):
            await self.reload()

    async def view(self) -> ScriptView:
        """The current view; loads it (or checks the revision, standalone) if needed."""
        view = self._view
        check = self.revision_check_s
        if view is not None and (check is None or time.monotonic() - self._checked < check):
            return view
        if view is not None:
            revision = await asyncio.to_thread(self.db.revision)
            self._checked = time.monotonic()
            if revision == view.revision:
                return view
        await self.reload()
        assert self._view is not None
        return self._view

    # --- serving ---

    async def script(self, mac: str | None, address: str, *, consume: bool = True) -> ServedScript:
        """The script for the client at ``address`` (``mac`` from its lease, if any).

        ``consume=False`` (HEAD) renders without clearing a one-shot boot, without
        taking a boot slot and without calling the hook.
        """
        self.counters["served"] += 1
        if not consume:
            return await self._render(mac, address, False)
        key = (mac or address) + ("/6" if ":" in address else "")  # URLs differ by family
        recent = self._recent.get(key)
        if recent is not None and recent[0] > time.monotonic():
            self.counters["reused"] += 1
            return recent[1]
        task = self._inflight.get(key)
        if task is None:
            # Its own task: a client that hangs up must not cancel the shared render.
            task = asyncio.get_running_loop().create_task(self._render_shared(key, mac, address))
            self._inflight[key] = task
        return await asyncio.shield(task)

    async def _render_shared(self, key: str, mac: str | None, address: str) -> ServedScript:
        try:
            served = await self._render(mac, address, True)
            self._forget_expired()
            # Shorter than a WAIT round, so a waiting node's next ask gets a fresh answer.
            ttl = min(self.ttl, self.settings.http.wait_seconds / 2)
            if served.deferred and self.admission is not None:
                ttl = min(ttl, self.admission.limits.wait_s / 2)
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

    async def _render(self, mac: str | None, address: str, consume: bool) -> ServedScript:
        self.counters["rendered"] += 1
        view = await self.view()
        mac = _clean_mac(mac)
        for _attempt in range(5):
            nic = view.nics.get(mac) if mac else None
            if nic is None:
                return self._unknown(view, mac, address)
            if not nic.is_boot:
                self.counters["refused"] += 1
                raise ScriptRefused(f"{mac} is not the boot interface of node {nic.node.name}")
            served = await self._known(nic, address, consume)
            if served is not None:
                return served
            # The one-shot changed under us (an operator, or another server consumed
            # it): read the inventory again and decide again.
            await self.reload()
            view = await self.view()
        raise ScriptServiceError("the node's boot setting kept changing; try again")

    async def _known(self, nic: Nic, address: str, consume: bool) -> ServedScript | None:
        node = nic.node
        choice = node.choose()
        booting = consume and choice.action is BootAction.PROFILE
        if booting and not self._admit(node):
            return self._deferred(nic, address)
        consumed = False
        if consume and choice.one_shot:
            won = await self._consume(node, choice)
            if won is False:
                if booting and self.admission is not None:
                    self.admission.forget(node.id)
                return None
            consumed = True
        extra = self.hook(node, nic.mac, address) if booting and self.hook else ""
        who = ipxe.Who(node.name, nic.mac, address)
        text = ipxe.render_choice(choice.action, choice.profile, choice.rule,
                                  self.urls_for(address), who,
                                  wait_seconds=self.settings.http.wait_seconds,
                                  extra_args=extra)
        decided = Decided(choice.action, choice.profile, choice.rule, who,
                          self.settings.http.wait_seconds, extra)
        return ServedScript(text, choice.action.value, node.name,
                            choice.profile.name if choice.profile else None, choice.rule,
                            consumed, decided=decided)

    async def _consume(self, node: NodeBoot, choice: Choice) -> bool | None:
        """Clear the one-shot in memory now and in the database in the next batch."""
        rec = Consumed(node.id, choice.action, choice.profile_id)
        node.next = None
        self._unsettled[node.id] = rec
        future = self.writer.submit(rec)
        try:
            won = await asyncio.wait_for(asyncio.shield(future), self.oneshot_wait_s)
        except TimeoutError:
            won = None  # the write goes on; serve from memory
        if won is None:
            self.counters["one_shot_unwritten_served"] += 1
        elif won:
            self.counters["one_shot_consumed"] += 1
        return won

    def _admit(self, node: NodeBoot) -> bool:
        adm = self.admission
        if adm is None:
            return True
        now = self.clock()
        # Full: look for finished boots now (O(boots in progress), a few µs per
        # hundred); otherwise now and then, to keep the gauges fresh.
        if adm.full or now - self._last_sweep >= 1.0:
            self._last_sweep = now
            adm.sweep(now, self.status_probe)
        return adm.admit(node.id, now)

    def sweep(self) -> None:
        """Release finished boots now (before metrics are read)."""
        if self.admission is not None:
            self._last_sweep = now = self.clock()
            self.admission.sweep(now, self.status_probe)

    def _deferred(self, nic: Nic, address: str) -> ServedScript:
        assert self.admission is not None
        seconds = self.admission.wait_seconds()
        who = ipxe.Who(nic.node.name, nic.mac, address)
        text = ipxe.render_wait(self.urls_for(address), who, wait_seconds=seconds,
                                why="(admission control: the server is busy)",
                                message="the boot server is busy with other boots")
        decided = Decided(BootAction.WAIT, None, "admission control", who, seconds)
        return ServedScript(text, BootAction.WAIT.value, nic.node.name,
                            rule="admission control", deferred=True, decided=decided)

    def _unknown(self, view: ScriptView, mac: str | None, address: str) -> ServedScript:
        http = self.settings.http
        who = ipxe.Who(None, mac, address)
        if http.unknown_menu:
            text = ipxe.render_menu(view.menu(http.unknown_menu), self.urls_for(address), who,
                                    wait_seconds=http.wait_seconds,
                                    timeout_s=http.menu_timeout_s, default=http.menu_default)
            return ServedScript(text, "menu", rule="menu for unknown machines")
        action = BootAction(http.unknown_action)
        rule = "policy for unknown machines"
        text = ipxe.render_choice(action, None, rule, self.urls_for(address), who,
                                  wait_seconds=http.wait_seconds)
        return ServedScript(text, action.value, rule=rule,
                            decided=Decided(action, None, rule, who, http.wait_seconds))


_clean_mac = mac_or_none
