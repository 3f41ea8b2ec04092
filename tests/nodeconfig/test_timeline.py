"""The batching writer and the timeline store, on SQLite and PostgreSQL."""

from __future__ import annotations

import time

from nodeconfig_helpers import make_fleet
from sqlalchemy import func, select

from fleetboot.inventory import service as inventory
from fleetboot.inventory.db import Database
from fleetboot.nodeconfig import store
from fleetboot.nodeconfig.models import BootToken, ConfigSection, TimelineEvent
from fleetboot.nodeconfig.states import NodeStatus, State
from fleetboot.nodeconfig.timeline import (
    BatchWriter,
    EventRecord,
    Retention,
    boots,
    read_states,
    read_timeline,
    read_tokens,
)
from fleetboot.nodeconfig.tokens import TokenStore


def _event(node_id: int, at: float, seq: int, kind: str = "DISCOVER", boot: int = 1,
           ) -> EventRecord:
    return EventRecord(node_id, boot, at, seq, "dhcp", kind, "52:54:00:00:01:0a", None,
                       "PXEBOOTING", {"xid": seq})


async def test_events_come_back_in_time_order(db: Database) -> None:
    a = make_fleet(db)["a"]
    writer = BatchWriter(db)
    await writer.start()
    # Out of order on arrival, and two at the same instant: time first, then arrival.
    for at, seq in ((5.0, 1), (1.0, 2), (3.0, 3), (3.0, 4), (2.0, 5)):
        writer.event(_event(a.id, at, seq))
    writer.event(_event(a.id, 0.5, 6, boot=2))
    await writer.stop()
    with db.session() as s:
        latest = read_timeline(s, a.id)
        first = read_timeline(s, a.id, boot=1)
        summary = boots(s, a.id)
    assert [e.seq for e in latest] == [6]
    assert [(e.at, e.seq) for e in first] == [(1.0, 2), (2.0, 5), (3.0, 3), (3.0, 4), (5.0, 1)]
    assert first[0].detail == {"xid": 2} and first[0].state == "PXEBOOTING"
    assert summary == [(1, 1.0, 5.0, 5), (2, 0.5, 0.5, 1)]


async def test_retention_per_node_and_in_total(db: Database) -> None:
    fleet = make_fleet(db, ("a", "b", "c"))
    writer = BatchWriter(db, Retention(per_node=10, total=25, slack=0.0))
    await writer.start()
    seq = 0
    for name in ("a", "b", "c"):
        for _ in range(15):
            seq += 1
            writer.event(_event(fleet[name].id, float(seq), seq))
        await writer.flush()
    await writer.stop()
    with db.session() as s:
        per_node = dict(s.execute(select(TimelineEvent.node_id, func.count())
                                  .group_by(TimelineEvent.node_id)).all())
        oldest_kept = s.scalar(select(func.min(TimelineEvent.seq)))
    assert sum(per_node.values()) <= 25 and all(n <= 10 for n in per_node.values())
    assert per_node[fleet["c"].id] == 10 and oldest_kept is not None and oldest_kept > 5


async def test_states_and_tokens_are_saved_and_read_back(db: Database) -> None:
    fleet = make_fleet(db)
    a, b = fleet["a"], fleet["b"]
    writer = BatchWriter(db)
    await writer.start()
    writer.state(a.id, NodeStatus(State.BOOTING, since=10.0, boot=1, boot_started=9.0))
    await writer.flush()
    writer.state(a.id, NodeStatus(State.UP, since=20.0, boot=1, boot_started=9.0,
                                  last_boot_s=11.0, address="10.0.0.5"))
    writer.state(b.id, NodeStatus(State.FAILED, since=3.0, boot=2, message="disk"))
    tokens = TokenStore(ttl_s=1000, grace_s=10)
    raw, first = tokens.issue(a.id, now=1.0)
    writer.tokens(first)
    _, second = tokens.issue(a.id, now=2.0)
    writer.tokens(second)
    await writer.stop()
    with db.session() as s:
        states = read_states(s)
        saved = read_tokens(s, now=5.0)
    assert states[a.id].state is State.UP and states[a.id].last_boot_s == 11.0
    assert states[a.id].address == "10.0.0.5" and states[b.id].message == "disk"
    assert {t.hash for t in saved} == {first.issued.hash, second.issued.hash}
    shortened = next(t for t in saved if t.hash == first.issued.hash)
    assert shortened.expires_at == 2.0 + tokens.grace_s
    again = TokenStore()
    again.load(saved)
    assert again.check(raw, a.id, 3.0)


async def test_a_deleted_node_does_not_break_a_batch(db: Database) -> None:
    fleet = make_fleet(db)
    writer = BatchWriter(db)
    await writer.start()
    writer.event(_event(fleet["a"].id, 1.0, 1))
    writer.event(_event(fleet["b"].id, 1.0, 2))
    writer.state(fleet["b"].id, NodeStatus(State.UP, since=1.0))
    _, changes = TokenStore().issue(fleet["b"].id, now=1.0)
    writer.tokens(changes)
    with db.session() as s:
        inventory.remove_node(s, "b")
    await writer.stop()
    assert writer.failures == 0
    with db.session() as s:
        assert [e.seq for e in read_timeline(s, fleet["a"].id)] == [1]
        assert s.scalar(select(func.count()).select_from(BootToken)) == 0


def test_sections_are_stored_per_node_and_as_defaults(db: Database) -> None:
    make_fleet(db)
    with db.session() as s:
        store.set_section(s, None, "routes", [{"destination": "10.9.0.0/16",
                                               "gateway": "127.0.0.1"}])
        store.set_section(s, None, "routes", [])  # replaces, no duplicate default
        store.unset_section(s, "a", "hostname")
    with db.session() as s:
        assert store.stored_sections(s, None)["routes"] == []
        assert "hostname" not in store.stored_sections(s, "a")
        assert s.scalar(select(func.count()).select_from(ConfigSection)
                        .where(ConfigSection.node_id.is_(None))) == 2
        nodes, fleet = store.load_facts(s)
    assert [n.name for n in nodes] == ["a", "b"] and fleet.defaults["routes"] == []
    assert nodes[1].sections["hostname"] == "host-b"


def test_section_writes_bump_the_inventory_revision(db: Database) -> None:
    make_fleet(db)
    before = db.revision()
    with db.session() as s:
        store.set_section(s, "a", "mounts", [])
    assert db.revision() > before


async def test_odd_event_details_are_stored_not_fatal(db: Database) -> None:
    from fleetboot.nodeconfig.service import NodeConfigService
    from fleetboot.server.events import BootEvent

    fleet = make_fleet(db)
    a = fleet["a"]
    service = NodeConfigService(db, fleet.directory())
    await service.start()
    try:
        now, pxe = time.time(), "PXEClient:Arch:00000:UNDI:002001"
        service.sink(BootEvent(now, "dhcp", "DISCOVER", a.mac, None,
                               {"vendor_class": pxe, "raw": b"\x01\x02", "nan": float("nan"),
                                "obj": object()}))
        service.sink(BootEvent(now, "dhcp", "DISCOVER", a.mac, None, None))  # type: ignore[arg-type]
        service.sink(BootEvent(now + 1, "tftp", "done", a.mac, None, {"file": "x"}))
        await service.settle()
        assert service.counters["events_failed"] == 1 and service.writer.failures == 0
        with db.session() as s:
            events = read_timeline(s, a.id)
        assert [e.kind for e in events] == ["DISCOVER", "done"]
        assert events[0].detail["raw"] == "b'\\x01\\x02'" and events[0].detail["nan"] is None
    finally:
        await service.stop()
