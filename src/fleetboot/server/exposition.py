"""``GET /metrics`` in the Prometheus exposition format, through ``prometheus_client``.

The packet paths keep counting the way they always did (plain dict entries in
``server.metrics.registry``); nothing here runs on them. At scrape time one
custom collector reads those counters and the live state of the services
(node states, pools and leases, transfers, admission) and turns them into
typed families: HELP and TYPE on each, ``_total`` on counters, labels instead
of names where a dimension exists (``reason``, ``protocol``, ``state``,
``subnet``). Every family below is present from start-up, at 0 or without
samples, so dashboards and alerts never see a series appear from nowhere.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from fleetboot.nodeconfig.phases import PHASES, PhaseTimes
from fleetboot.nodeconfig.states import State
from fleetboot.server.dhcp import ACK_BUCKETS
from fleetboot.server.histogram import Histogram
from fleetboot.server.metrics import Metrics, registry

# Keys of the process registry that are levels, not counts.
GAUGES = frozenset({
    "admission.max_booting", "admission.booting", "admission.waiting",
    "transfers.max", "transfers.queue_max", "transfers.active", "transfers.queued",
    "scripts.view_nodes", "scripts.view_revision", "oneshot.unwritten",
    "dhcp.journal.last_batch", "dhcp.journal.last_commit_us", "dhcp.journal.commit_us_max",
})
# Counters present (at 0) before their first event.
KNOWN_COUNTERS = {
    "dhcp.rx": "DHCP packets received",
    "dhcp.tx": "DHCP replies sent",
    "dhcp.rx.retransmission": "DHCP requests a client sent again (same xid and type)",
    "dhcp.released": "DHCP leases released by their clients",
    "dhcp.internal_errors": "DHCP packets that raised inside the server (dropped)",
    "dhcp.ack_not_sent": "DHCP ACKs not sent because their lease could not be made durable",
    "dhcp.tx_errors": "DHCP replies the socket refused",
    "dhcp.journal.batches": "lease journal commits",
    "dhcp.journal.records": "lease records committed",
    "dhcp.journal.errors": "lease journal commits that failed",
    "nodeconfig.events_failed": "boot events the state machine could not apply",
    "nodeconfig.events_unknown_node": "boot events from machines not in the inventory",
}
# Counted in microseconds by the lease journal; exposed in the base unit, seconds.
IN_SECONDS = {
    "dhcp.journal.commit_us_total": "dhcp.journal.commit_seconds_total",
    "dhcp.journal.commit_us_max": "dhcp.journal.commit_seconds_max",
    "dhcp.journal.last_commit_us": "dhcp.journal.last_commit_seconds",
}
GAUGES = GAUGES | {IN_SECONDS[k] for k in GAUGES & IN_SECONDS.keys()}
# (prefix of a dotted key) -> (family, label): "dhcp.drop.malformed" is
# fleetboot_dhcp_dropped_total{reason="malformed"}.
LABELLED = {
    "dhcp.drop.": ("dhcp_dropped", "reason", "DHCP packets dropped as malformed or foreign"),
    "dhcp.ignored.": ("dhcp_ignored", "reason", "DHCP packets deliberately not answered"),
    "dhcp.tx.nak.": ("dhcp_naks", "reason", "DHCP NAKs sent"),
    "nodeconfig.events_": ("boot_events", "protocol",
                           "boot events (DHCP, TFTP, HTTP, config fetches, reports) per source"),
}
BOOT_EVENT_SOURCES = ("dhcp", "tftp", "http", "config", "node", "admin", "fleetboot")
NODE_STATES = tuple(s.value for s in State)
BOOT_BUCKETS = (5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0)

_NAME = re.compile(r"[^a-zA-Z0-9_]")


def _family_name(key: str) -> str:
    return "fleetboot_" + _NAME.sub("_", key.replace(".", "_"))


def _help(key: str) -> str:
    return KNOWN_COUNTERS.get(key) or key.replace(".", " ").replace("_", " ")


@dataclass
class BootTimes:
    """Histogram of boot durations (first DHCP to UP), fed at scrape time from the node
    state machine: each (node, boot number) that reached UP is observed once."""

    histogram: Histogram = field(default_factory=lambda: Histogram(BOOT_BUCKETS))
    seen: dict[int, int] = field(default_factory=dict)  # node id -> boot number observed
    primed: bool = False  # boots finished before the process started are not counted

    def observe_statuses(self, statuses: Iterable[tuple[int, Any]]) -> None:
        for node_id, st in statuses:
            if st.last_boot_s is None or self.seen.get(node_id) == st.boot:
                continue
            self.seen[node_id] = st.boot
            if self.primed:
                self.histogram.observe(st.last_boot_s)
        self.primed = True

    def family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily("fleetboot_boot_duration_seconds",
                                     "time from a node's first DHCP packet to UP, per boot",
                                     buckets=self.histogram.cumulative(),
                                     sum_value=self.histogram.total)


@dataclass
class LiveSources:
    """The running services the collector reads at scrape time (all optional)."""

    nodeconfig: Any = None  # NodeConfigService: statuses, view
    dhcp: Any = None  # DhcpService: engine.view.subnets, leases.by_addr
    tftp: Any = None  # TftpServer: sessions
    gate: Any = None  # TransferGate of the HTTP app: active, counters
    admission: Any = None  # BootAdmission: waiting, booting
    boot_times: BootTimes = field(default_factory=BootTimes)


class FleetbootCollector(Collector):
    def __init__(self, metrics: Metrics, live: LiveSources,
                 clock: Callable[[], float] = time.time) -> None:
        self.metrics, self.live, self.clock = metrics, live, clock

    def collect(self) -> Iterator[Metric]:
        yield from self._registry_families()
        yield from self._node_families()
        yield from self._pool_families()
        yield from self._transfer_families()

    # --- the counters every component keeps -------------------------------------------

    def _registry_families(self) -> Iterator[Metric]:
        raw = {**dict.fromkeys(KNOWN_COUNTERS, 0), **dict.fromkeys(IN_SECONDS, 0),
               **self.metrics.snapshot()}
        snap: dict[str, float] = {IN_SECONDS.get(k, k): v / 1e6 if k in IN_SECONDS else v
                                  for k, v in raw.items()}
        labelled = {start: CounterMetricFamily("fleetboot_" + name, text, labels=[label])
                    for start, (name, label, text) in LABELLED.items()}
        for source in BOOT_EVENT_SOURCES:
            snap.setdefault(f"nodeconfig.events_{source}", 0)
        for key, value in sorted(snap.items()):
            group = next((p for p in LABELLED if key.startswith(p)), None)
            if group is not None and key not in KNOWN_COUNTERS:
                labelled[group].add_metric([key[len(group):]], value)
                continue
            if key in GAUGES:
                yield GaugeMetricFamily(_family_name(key), _help(key), value=value)
            else:
                yield CounterMetricFamily(_family_name(key), _help(key), value=value)
        yield from labelled.values()

    # --- node states and boot durations ----------------------------------------------------

    def _node_families(self) -> Iterator[Metric]:
        per_state = GaugeMetricFamily("fleetboot_nodes", "nodes per state", labels=["state"])
        counts = dict.fromkeys(NODE_STATES, 0)
        nc = self.live.nodeconfig
        if nc is not None:
            statuses = nc.statuses
            for node_id in list(nc.view.by_id):
                st = statuses.get(node_id)
                state = st.state.value if st is not None else "OFF"
                counts[state] = counts.get(state, 0) + 1
            self.live.boot_times.observe_statuses(list(statuses.items()))
        for state, n in counts.items():
            per_state.add_metric([state], n)
        yield per_state
        yield self.live.boot_times.family()
        yield self._phase_family(nc)

    @staticmethod
    def _phase_family(nc: Any) -> Metric:
        family = HistogramMetricFamily(
            "fleetboot_boot_phase_seconds",
            "time nodes spent in a boot phase (the state they left)", labels=["phase"])
        times = getattr(nc, "phases", None) or PhaseTimes()
        for phase in PHASES:
            family.add_metric([phase], times.cumulative(phase), sum_value=times.total(phase))
        return family

    # --- pools and leases -------------------------------------------------------------------

    def _pool_families(self) -> Iterator[Metric]:
        size = GaugeMetricFamily("fleetboot_pool_addresses", "addresses in a subnet's pools",
                                 labels=["subnet"])
        used = GaugeMetricFamily("fleetboot_pool_addresses_leased",
                                 "pool addresses with an active lease", labels=["subnet"])
        leases = GaugeMetricFamily("fleetboot_leases", "active DHCP leases (pools and "
                                   "reservations)", labels=["subnet"])
        dhcp = self.live.dhcp
        ack = getattr(dhcp, "ack_seconds", None) or Histogram(ACK_BUCKETS)
        yield HistogramMetricFamily(
            "fleetboot_dhcp_ack_seconds", "DHCP answer time: a REQUEST's arrival to its ACK, "
            "sent once the lease is durable", buckets=ack.cumulative(), sum_value=ack.total)
        engine = getattr(dhcp, "engine", None)
        if engine is not None:
            now = self.clock()
            active = [(lease.addr, lease.subnet_id) for lease in list(dhcp.leases.by_addr.values())
                      if lease.expires > now]
            for subnet in engine.view.subnets:
                mine = [a for a, sid in active if sid == subnet.id]
                size.add_metric([subnet.name], sum(e - s + 1 for s, e in subnet.pools))
                used.add_metric([subnet.name], sum(1 for a in mine if subnet.in_pool(a)))
                leases.add_metric([subnet.name], len(mine))
        yield from (size, used, leases)

    # --- transfers and admission ------------------------------------------------------------

    def _transfer_families(self) -> Iterator[Metric]:
        flight = GaugeMetricFamily("fleetboot_transfers_in_flight",
                                   "file transfers being sent now", labels=["protocol"])
        tftp = self.live.tftp
        flight.add_metric(["tftp"], len(tftp.sessions) if tftp is not None else 0)
        gate = self.live.gate
        flight.add_metric(["http"], gate.active if gate is not None else 0)
        yield flight
        queue = GaugeMetricFamily("fleetboot_admission_queue",
                                  "nodes and transfers waiting for a slot", labels=["kind"])
        admission = self.live.admission
        queue.add_metric(["boots"], len(admission.waiting) if admission is not None else 0)
        queue.add_metric(["transfers"], gate.counters.get("queued", 0) if gate else 0)
        yield queue


class Exposition:
    """One process's /metrics: a prometheus_client registry holding our collector."""

    def __init__(self, metrics: Metrics = registry, live: LiveSources | None = None) -> None:
        self.live = live or LiveSources()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(FleetbootCollector(metrics, self.live))

    def render(self) -> bytes:
        return generate_latest(self.registry)


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
