"""Per-node results of a storm and their summaries. Pure.

Times are seconds since the storm started (the moment the first node could
power on). A node's phases are recorded in the order they ran; a failed node
names the phase it failed in and why.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from fleetboot.storm.plan import PHASES


@dataclass
class PhaseRecord:
    name: str
    start: float
    end: float
    retries: int = 0
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass
class NodeResult:
    name: str
    mac: str
    start: float
    phases: list[PhaseRecord] = field(default_factory=list)
    up_at: float | None = None
    failed_phase: str | None = None
    error: str | None = None

    @property
    def retries(self) -> int:
        return sum(p.retries for p in self.phases)

    @property
    def ok(self) -> bool:
        return self.up_at is not None and self.failed_phase is None

    @property
    def end(self) -> float:
        """When the node was UP, or when it gave up."""
        if self.up_at is not None:
            return self.up_at
        return max((p.end for p in self.phases), default=self.start)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NodeResult:
        phases = [PhaseRecord(**p) for p in data.get("phases", [])]
        return cls(data["name"], data["mac"], float(data["start"]), phases,
                   data.get("up_at"), data.get("failed_phase"), data.get("error"))


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError("q must lie in 0..100")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class PhaseSummary:
    name: str
    count: int  # nodes that completed the phase
    p50: float
    p90: float
    p99: float
    max: float
    retries: int
    failed: int  # nodes that failed in this phase


@dataclass(frozen=True)
class StormSummary:
    n: int
    up: int
    failed: int
    retries: int
    storm_s: float  # until every node was UP (or, with failures, until the last gave up)
    phases: tuple[PhaseSummary, ...]
    boot: PhaseSummary  # power-on to UP, per node
    errors: tuple[tuple[str, int], ...]  # most frequent failure reasons

    @property
    def all_up(self) -> bool:
        return self.up == self.n


def _summary(name: str, durations: list[float], retries: int, failed: int) -> PhaseSummary:
    if not durations:
        return PhaseSummary(name, 0, math.nan, math.nan, math.nan, math.nan, retries, failed)
    return PhaseSummary(name, len(durations), percentile(durations, 50),
                        percentile(durations, 90), percentile(durations, 99), max(durations),
                        retries, failed)


def summarize(results: Iterable[NodeResult], extra_retries: int = 0) -> StormSummary:
    """Aggregate node results. ``extra_retries`` are retransmissions not tied to one node."""
    nodes = list(results)
    durations: dict[str, list[float]] = {p: [] for p in PHASES}
    retries: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    for node in nodes:
        for rec in node.phases:
            retries[rec.name] += rec.retries
            if rec.name != node.failed_phase:
                durations.setdefault(rec.name, []).append(rec.duration)
        if node.failed_phase is not None:
            failures[node.failed_phase] += 1
    phases = tuple(_summary(p, durations[p], retries[p], failures[p]) for p in durations)
    ok = [n for n in nodes if n.ok]
    boot = _summary("boot", [n.end - n.start for n in ok], sum(retries.values()),
                    len(nodes) - len(ok))
    errors = Counter(f"{n.failed_phase}: {n.error}" for n in nodes if not n.ok)
    return StormSummary(
        n=len(nodes), up=len(ok), failed=len(nodes) - len(ok),
        retries=sum(retries.values()) + extra_retries,
        storm_s=max((n.end for n in nodes), default=0.0),
        phases=phases, boot=boot, errors=tuple(errors.most_common(5)),
    )


def detail_percentiles(results: Iterable[NodeResult], phase: str,
                       key: str) -> tuple[float, float, float] | None:
    """p50, p90 and max of a numeric ``detail[key]`` of one phase over all nodes."""
    values = [float(rec.detail[key]) for node in results for rec in node.phases
              if rec.name == phase and isinstance(rec.detail.get(key), int | float)]
    if not values:
        return None
    return percentile(values, 50), percentile(values, 90), max(values)


def result_line(n: int, summaries: dict[str, StormSummary]) -> str:
    """The benchmark's final line; a stack that was not run is reported as ``nan``/-1."""
    parts = [f"RESULT storm n={n}"]
    # The proxy-mode stack is reported only when it ran (the line keeps its old form).
    for kind in ("fleetboot", "classic", *(("proxy",) if "proxy" in summaries else ())):
        s = summaries.get(kind)
        if s is None:
            parts.append(f"{kind}_s=nan {kind}_failed=-1 {kind}_retries=-1")
        else:
            parts.append(f"{kind}_s={s.storm_s:.2f} {kind}_failed={s.failed} "
                         f"{kind}_retries={s.retries}")
    return " ".join(parts)
