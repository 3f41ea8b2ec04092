"""The in-memory documents every node is served: rendered once per inventory change.

``DocumentCache.reload`` (run on a worker thread) reads the facts, renders
every node and swaps in a new immutable ``View`` in one assignment, so the
request path reads a consistent view without locks and without the database.
ETags are hashes of the bytes, so a reload that does not change a node's
document does not change its ETag either.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from fleetboot.inventory.db import Database
from fleetboot.nodeconfig.render import (
    FleetFacts,
    NodeDocuments,
    NodeFacts,
    SectionBytes,
    render_node,
)
from fleetboot.nodeconfig.store import load_facts


@dataclass(frozen=True)
class View:
    by_mac: Mapping[str, NodeDocuments] = field(default_factory=dict)
    by_id: Mapping[int, NodeDocuments] = field(default_factory=dict)
    by_name: Mapping[str, NodeDocuments] = field(default_factory=dict)
    macs: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    rendered_at: float = 0.0
    render_s: float = 0.0


class DocumentCache:
    def __init__(self, db: Database, fleet_hosts: bool = False) -> None:
        self.db = db
        self.fleet_hosts = fleet_hosts
        self.view = View()
        # What the current view was rendered from: unchanged nodes are not rendered again.
        self._facts: dict[int, NodeFacts] = {}
        self._fleet: FleetFacts | None = None
        self.rendered = 0  # nodes rendered by the last reload

    def reload(self) -> View:
        """Read everything, render what changed; blocking (call it with ``asyncio.to_thread``).

        Most inventory changes (a one-shot boot consumed, a profile added) touch
        no node's document: comparing the facts costs far less than rendering.
        """
        started = time.perf_counter()
        with self.db.session() as session:
            nodes, fleet = load_facts(session, self.fleet_hosts)
        same_fleet = fleet == self._fleet
        old = self.view.by_id
        cache = SectionBytes()
        by_mac: dict[str, NodeDocuments] = {}
        by_id: dict[int, NodeDocuments] = {}
        macs: dict[int, tuple[str, ...]] = {}
        self.rendered = 0
        for node in nodes:
            docs = old.get(node.node_id) if same_fleet else None
            if docs is None or self._facts.get(node.node_id) != node:
                docs = render_node(node, fleet, cache)
                self.rendered += 1
            by_id[node.node_id] = docs
            macs[node.node_id] = tuple(n.mac for n in node.nics)
            for nic in node.nics:
                by_mac[nic.mac] = docs
        self._facts = {n.node_id: n for n in nodes}
        self._fleet = fleet
        self.view = View(by_mac, by_id, {d.name: d for d in by_id.values()}, macs, time.time(),
                         time.perf_counter() - started)
        return self.view
