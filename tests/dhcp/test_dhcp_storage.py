"""The parts that touch the database, on SQLite and PostgreSQL: the inventory view,
the lease journal (group commit, upsert, delete) and reloading leases."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from dhcp_helpers import Inventory, NodeSpec

from fleetboot.inventory.db import Database
from fleetboot.protocols.dhcp import options as o
from fleetboot.protocols.dhcp.engine import LeaseRecord
from fleetboot.protocols.dhcp.leases import LeaseTable
from fleetboot.server.dhcp_view import load_view
from fleetboot.server.leases import LeaseJournal, load_leases
from fleetboot.server.metrics import Metrics, RateLimitedLog

MAC = bytes.fromhex("525400aabb01")
NOW = time.time()


def test_load_view_reads_the_inventory_in_one_go(db: Database) -> None:
    Inventory(reservations=[("52:54:00:00:00:ee", "10.77.0.50", "printer")],
              nodes=[NodeSpec("n1", ["52:54:00:00:01:00", "52:54:00:00:01:01"], 1)]).write(db)
    view = load_view(db, revision=7)
    assert view.revision == 7 and not view.problems
    (subnet,) = view.subnets
    assert subnet.pools == ((o.ip_int("10.77.0.100"), o.ip_int("10.77.0.199")),)
    assert subnet.domain == "lab.test" and subnet.next_server == o.ip_int("10.77.0.1")
    boot = view.hosts[bytes.fromhex("525400000101")]
    assert boot.is_boot and boot.node == "n1" and boot.interface == "eth1"
    assert not view.hosts[bytes.fromhex("525400000100")].is_boot
    assert view.reservations[bytes.fromhex("5254000000ee")].hostname == "printer"
    assert view.reserved == frozenset({o.ip_int("10.77.0.50")})


def _journal(db: Database) -> LeaseJournal:
    return LeaseJournal(db, lambda tokens, ok: None, metrics=Metrics())


def test_journal_upserts_deletes_and_leases_reload(db: Database) -> None:
    Inventory().write(db)
    journal = _journal(db)
    a, b = o.ip_int("10.77.0.100"), o.ip_int("10.77.0.101")
    journal.write([
        LeaseRecord("bind", a, MAC, NOW + 600, NOW, 1, b"\x01abc", "host-a"),
        LeaseRecord("bind", b, MAC[:5] + b"\x02", NOW + 600, NOW, 1),
        LeaseRecord("bind", a, MAC, NOW + 900, NOW, 1, b"\x01abc", "host-a"),  # renewal
    ])
    journal.write([LeaseRecord("free", b, MAC[:5] + b"\x02"),
                   LeaseRecord("free", a, MAC[:5] + b"\x09")])  # wrong MAC: kept
    journal.write([LeaseRecord("bind", a, MAC[:5] + b"\x03", NOW + 50, NOW, 1)])  # reassigned
    rows = load_leases(db)
    assert len(rows) == 1
    (lease,) = rows
    assert lease.addr == a and lease.mac == MAC[:5] + b"\x03"
    # SQLite keeps seconds (rounded up), PostgreSQL microseconds
    assert NOW + 50 - 1e-3 <= lease.expires < NOW + 51
    table = LeaseTable()
    table.load(rows)
    info = table.lease_by_address("10.77.0.100")
    assert info is not None and info.mac == "52:54:00:aa:bb:03"
    journal.stop()


def test_journal_survives_a_deleted_subnet(db: Database) -> None:
    journal = _journal(db)
    journal.write([LeaseRecord("bind", o.ip_int("10.9.0.9"), MAC, NOW + 60, NOW, 4242)])
    assert [lease.addr for lease in load_leases(db)] == [o.ip_int("10.9.0.9")]
    journal.stop()


async def test_journal_commits_in_batches_before_handing_back_tokens(db: Database) -> None:
    Inventory().write(db)
    done: list[tuple[list[int], bool]] = []
    metrics = Metrics()
    journal = LeaseJournal(db, lambda tokens, ok: done.append((tokens, ok)),
                           window_s=0.01, max_batch=1000, metrics=metrics)
    journal.start()
    base = o.ip_int("10.77.0.100")
    for i in range(300):
        journal.submit(LeaseRecord("bind", base + i % 100, bytes([2, 0, 0, 0, 1, i % 100]),
                                   NOW + 60, NOW, 1), token=i)
    for _ in range(200):
        if sum(len(t) for t, _ in done) == 300:
            break
        await asyncio.sleep(0.02)
    assert sorted(t for tokens, _ in done for t in tokens) == list(range(300))
    assert all(ok for _, ok in done)
    # Whatever was handed back is on disk (the tokens come only after the commit).
    assert len(load_leases(db)) == 100
    assert metrics.get("dhcp.journal.batches") < 300
    await asyncio.to_thread(journal.stop)


def test_rate_limited_log_says_how_many_it_held_back(caplog: pytest.LogCaptureFixture) -> None:
    clock = [0.0]
    rlog = RateLimitedLog(logging.getLogger("t"), interval=10, clock=lambda: clock[0])
    with caplog.at_level(logging.WARNING):
        assert rlog.warning("bad", "bad packet")
        for _ in range(5):
            assert not rlog.warning("bad", "bad packet")
        assert rlog.warning("other", "another kind")
        clock[0] = 11
        assert rlog.warning("bad", "bad packet")
    assert [r.getMessage() for r in caplog.records] == [
        "bad packet", "another kind", "bad packet (5 more like this in the last 10s)"]


def test_metrics_registry_merges_sources() -> None:
    m = Metrics()
    m.inc("tftp.sessions")
    counters = {"rx": 3}
    m.register("dhcp", counters)
    counters["rx"] += 1
    assert m.snapshot() == {"dhcp.rx": 4, "tftp.sessions": 1}
    assert m.get("dhcp.rx") == 4 and "fleetboot_dhcp_rx 4" in m.render_text()
