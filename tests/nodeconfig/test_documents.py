"""Rendering from the database: once per change, and only what changed."""

from __future__ import annotations

import asyncio

import pytest
from nodeconfig_helpers import make_fleet

from fleetboot.inventory import service as inventory
from fleetboot.inventory.db import Database
from fleetboot.inventory.models import BootAction
from fleetboot.nodeconfig import store
from fleetboot.nodeconfig.documents import DocumentCache
from fleetboot.nodeconfig.service import NodeConfigService


def test_only_changed_documents_are_rendered_again(db: Database) -> None:
    fleet = make_fleet(db, ("a", "b", "c"))
    cache = DocumentCache(db)
    first = cache.reload()
    assert cache.rendered == 3 and set(first.by_name) == {"a", "b", "c"}
    with db.session() as s:  # a boot decision is no part of any document
        inventory.set_boot(s, "a", "next", BootAction.WAIT)
    again = cache.reload()
    assert cache.rendered == 0 and again.by_id[fleet["a"].id] is first.by_id[fleet["a"].id]
    with db.session() as s:
        store.set_section(s, "b", "mounts", [{"source": "x:/y", "target": "/y"}])
    cache.reload()
    assert cache.rendered == 1
    assert cache.view.by_id[fleet["b"].id].full.etag != first.by_id[fleet["b"].id].full.etag
    with db.session() as s:  # a default touches everyone
        store.set_section(s, None, "routes", [])
    cache.reload()
    assert cache.rendered == 3
    with db.session() as s:
        inventory.remove_node(s, "c")
        inventory.add_interface(s, "a", inventory.NicSpec("52:54:00:00:09:09"))
    view = cache.reload()
    assert set(view.by_name) == {"a", "b"} and cache.rendered == 1
    assert view.by_mac["52:54:00:00:09:09"] is view.by_id[fleet["a"].id]
    assert fleet["c"].mac not in view.by_mac


async def test_a_burst_of_reload_requests_costs_two_reloads(
        sqlite_db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = make_fleet(sqlite_db)
    service = NodeConfigService(sqlite_db, fleet.directory())
    await service.start()
    calls = 0
    real = service.documents.reload

    def counting() -> object:
        nonlocal calls
        calls += 1
        return real()

    monkeypatch.setattr(service.documents, "reload", counting)
    await asyncio.gather(*(service.reload() for _ in range(10)))
    assert calls == 2
    await service.stop()
