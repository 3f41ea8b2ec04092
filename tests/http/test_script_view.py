"""The in-memory script view and one-shot consumption in batches (server/scripts.py)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from httpboot_helpers import A_IP, A_MAC, B_IP, B_MAC, Boot
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import event

from fleetboot.boot.decision import decide
from fleetboot.inventory import service
from fleetboot.inventory.changes import current_revision
from fleetboot.inventory.db import Database
from fleetboot.inventory.models import BootAction, BootProfile, Node, ProfileKind
from fleetboot.server.scripts import (
    Level,
    NodeBoot,
    NodeRow,
    ProfileRow,
    ScriptService,
    build_view,
    load_view,
)


def _scripts(boot: Boot) -> ScriptService:
    return boot.app.state.fleetboot.scripts


async def _get(boot: Boot, address: str) -> str:
    async with boot.client(address) as client:
        resp = await client.get("/boot/script.ipxe")
        assert resp.status_code == 200, resp.text
        return resp.text


@contextmanager
def count_statements(db: Database) -> Iterator[list[str]]:
    """Every SQL statement the engine runs meanwhile."""
    seen: list[str] = []

    def before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(db.engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(db.engine, "before_cursor_execute", before)


# --- the pure view ----------------------------------------------------------------------

_actions = st.sampled_from(list(BootAction))
_levels = st.none() | st.tuples(_actions, st.sampled_from([None, 1, 2]))


@given(default=st.tuples(_actions, st.sampled_from([None, 1, 2])), temp=_levels, nxt=_levels)
def test_choose_matches_boot_decision(default: tuple[BootAction, int | None],
                                      temp: tuple[BootAction, int | None] | None,
                                      nxt: tuple[BootAction, int | None] | None) -> None:
    """The view decides exactly like ``boot.decision.decide`` on the ORM node."""
    profiles = {1: BootProfile(id=1, name="p1"), 2: BootProfile(id=2, name="p2")}
    orm = Node(name="n", default_action=default[0], default_profile_id=default[1],
               temp_action=temp[0] if temp else None, temp_profile_id=temp[1] if temp else None,
               next_action=nxt[0] if nxt else None, next_profile_id=nxt[1] if nxt else None)
    for level in ("default", "temp", "next"):
        pid = getattr(orm, f"{level}_profile_id")
        setattr(orm, f"{level}_profile", profiles.get(pid) if pid else None)
    expected = decide(orm)
    kernel = ProfileKind.KERNEL
    rows: list[ProfileRow] = [(1, "p1", kernel, "k", None, "", None),
                              (2, "p2", kernel, "k", None, "", None)]
    node_row: NodeRow = (7, "n", "x86_64", default[0], default[1],
                         *(temp or (None, None)), *(nxt or (None, None)))
    view = build_view(3, rows, [node_row], [("52:54:00:00:00:01", True, 7)])
    got = view.nics["52:54:00:00:00:01"].node.choose()
    assert (got.action, got.rule, got.one_shot) == (expected.action, expected.rule,
                                                    expected.one_shot)
    assert (got.profile.name if got.profile else None) == (
        expected.profile.name if expected.profile else None)


def test_view_skips_interfaces_of_unknown_nodes() -> None:
    view = build_view(1, [], [(1, "a", "x86_64", BootAction.LOCAL, None, None, None, None,
                               None)], [("aa:00:00:00:00:01", True, 1),
                                        ("aa:00:00:00:00:02", False, 2)])
    assert list(view.nics) == ["aa:00:00:00:00:01"] and view.revision == 1
    node = view.nodes[1]
    assert node == NodeBoot(1, "a", "x86_64", Level(BootAction.LOCAL))


def test_load_view_reads_the_whole_inventory(make_boot: Callable[..., Boot]) -> None:
    boot = make_boot()
    with boot.db.session() as s:
        service.set_boot(s, "b", "next", BootAction.PROFILE, "rescue")
        revision = current_revision(s)
    with boot.db.session() as s:
        view = load_view(s)
    assert view.revision == revision
    assert set(view.profiles) == {"deb", "rescue"}
    a, b = view.nics[A_MAC].node, view.nics[B_MAC].node
    assert view.nics[A_MAC].is_boot and a.default.profile is not None
    assert a.default.profile.kernel == "images/k1/vmlinuz" and a.next is None
    assert b.default.action is BootAction.LOCAL and b.next is not None
    assert b.next.profile is not None and b.next.profile.cmdline == "rescue"
    assert len([n for n in view.nics.values() if not n.is_boot]) == 1  # a's second NIC


# --- no database on the hot path ------------------------------------------------------


async def test_a_script_request_touches_no_database(make_boot: Callable[..., Boot]) -> None:
    boot = make_boot()
    scripts = _scripts(boot)
    scripts.follow_runtime()  # as inside `fleetboot serve`
    await scripts.start()
    with count_statements(boot.db) as seen:
        for _ in range(3):
            scripts.invalidate()
            assert "node a" in await _get(boot, A_IP)
            assert "node b" in await _get(boot, B_IP)
    assert seen == []


async def test_reload_hook_picks_up_changes(make_boot: Callable[..., Boot]) -> None:
    boot = make_boot()
    scripts = _scripts(boot)
    scripts.follow_runtime()
    scripts.ttl = 0
    await scripts.start()
    with boot.db.session() as s:
        service.set_boot(s, "b", "temp", BootAction.PROFILE, "rescue")
    assert "sanboot" in await _get(boot, B_IP)  # not reloaded yet: the old view
    await scripts.reload()  # what the runtime does when the revision moves
    assert "vmlinuz rescue" in await _get(boot, B_IP)


# --- one-shot boots -------------------------------------------------------------------------


def _next_of(db: Database, name: str) -> BootAction | None:
    with db.session() as s:
        return service.get_node(s, name).next_action


async def test_one_shots_of_many_nodes_go_in_few_batches(make_boot: Callable[..., Boot]) -> None:
    boot = make_boot()
    with boot.db.session() as s:
        for i in range(20):
            service.add_node(s, f"m{i}", [service.NicSpec(f"52:54:00:00:0c:{i:02x}", boot=True)])
            service.set_boot(s, f"m{i}", "next", BootAction.PROFILE, "rescue")
        before = current_revision(s)
    directory = boot.app.state.fleetboot.directory
    for i in range(20):
        directory.mapping[f"10.9.1.{i}"] = f"52:54:00:00:0c:{i:02x}"
    scripts = _scripts(boot)
    scripts.follow_runtime()
    await scripts.start()
    texts = await asyncio.gather(*[_get(boot, f"10.9.1.{i}") for i in range(20)])
    assert all("vmlinuz rescue" in t for t in texts)
    writer = scripts.writer.counters
    assert writer["written"] == 20 and writer["lost"] == 0
    assert writer["batches"] < 20  # grouped: one transaction for many nodes
    with boot.db.session() as s:
        assert all(service.get_node(s, f"m{i}").next_action is None for i in range(20))
        assert current_revision(s) == before + writer["batches"]
    # In memory at once: the next ask gets the default level without a reload.
    scripts.invalidate()
    assert "initrd" not in await _get(boot, "10.9.1.3") and "local disk" in \
        await _get(boot, "10.9.1.3")


async def test_consumed_one_shot_survives_a_restart(make_boot: Callable[..., Boot]) -> None:
    boot = make_boot()
    with boot.db.session() as s:
        service.set_boot(s, "a", "next", BootAction.PROFILE, "rescue")
    first = _scripts(boot)
    first.follow_runtime()
    await first.start()
    assert "vmlinuz rescue" in await _get(boot, A_IP)
    await first.stop()
    # A new process on the same database: the one-shot is gone for good.
    second = ScriptService(boot.db, first.settings)
    await second.start()
    served = await second.script(A_MAC, A_IP)
    assert served.profile == "deb" and not served.consumed
    assert _next_of(boot.db, "a") is None


async def test_changed_one_shot_is_decided_again(make_boot: Callable[..., Boot]) -> None:
    """The view still says `rescue`, the database already says `local`: the
    compare-and-set loses, the service re-reads and serves `local`, once."""
    boot = make_boot()
    with boot.db.session() as s:
        service.set_boot(s, "a", "next", BootAction.PROFILE, "rescue")
    scripts = _scripts(boot)
    scripts.follow_runtime()
    await scripts.start()
    with boot.db.session() as s:
        service.set_boot(s, "a", "next", BootAction.LOCAL)
    served = await scripts.script(A_MAC, A_IP)
    assert served.kind == "local" and served.consumed
    assert scripts.counters["one_shot_lost"] == 1
    assert _next_of(boot.db, "a") is None


@contextmanager
def locked(db: Database) -> Iterator[None]:
    """Another process holds SQLite's write lock (reads still work under WAL)."""
    path = db.url.removeprefix("sqlite:///")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def _impatient(db: Database) -> Database:
    """The same SQLite file, giving up on a locked database after 50 ms."""
    other = Database(db.url)

    @event.listens_for(other.engine, "connect")
    def _short(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA busy_timeout=50")

    return other


async def test_failed_write_keeps_memory_and_retries(make_files_boot: Callable[..., Boot]
                                                     ) -> None:
    boot = make_files_boot()
    with boot.db.session() as s:
        service.set_boot(s, "a", "next", BootAction.PROFILE, "rescue")
    scripts = ScriptService(_impatient(boot.db), _scripts(boot).settings)
    scripts.follow_runtime()
    scripts.writer.retry_s = 0.05
    await scripts.start()
    with locked(boot.db):
        served = await scripts.script(A_MAC, A_IP)
        assert served.profile == "rescue" and served.consumed  # served from memory
        assert scripts.writer.counters["write_errors"] >= 1
        assert scripts.counters["one_shot_unwritten_served"] == 1
        assert _next_of(boot.db, "a") is BootAction.PROFILE  # not in the database yet
        await scripts.reload()  # the rows still say rescue: the reload must not revive it
        scripts.invalidate()
        assert (await scripts.script(A_MAC, A_IP)).profile == "deb"
    for _ in range(100):  # the writer retries in the background
        if scripts.writer.counters["written"]:
            break
        await asyncio.sleep(0.05)
    assert _next_of(boot.db, "a") is None
    assert scripts.writer.counters["unwritten"] == 0
    await scripts.reload()
    scripts.invalidate()
    assert (await scripts.script(A_MAC, A_IP)).profile == "deb"
    await scripts.stop()
