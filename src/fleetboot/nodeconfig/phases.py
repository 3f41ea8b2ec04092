"""How long nodes spend in each boot phase (DHCP, FIRMWARE, BOOTING, CONFIGURING, ...):
a histogram per state, fed by the state machine when a node leaves a state.

Observed in ``NodeConfigService._apply``, which runs in batches off the packet
paths; read by the metrics exposition at scrape time. Plain lists and floats:
no locking, no allocation per observation.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

BUCKETS: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
# The states a boot passes through; OFF, UP and FAILED end a boot (no duration to time).
PHASES: tuple[str, ...] = ("DHCP", "FIRMWARE", "BOOTING", "CONFIGURING", "WAITING",
                           "RELOADING")


@dataclass
class PhaseTimes:
    counts: dict[str, list[int]] = field(
        default_factory=lambda: {p: [0] * (len(BUCKETS) + 1) for p in PHASES})
    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))

    def observe(self, phase: str, seconds: float) -> None:
        counts = self.counts.get(phase)
        if counts is None or seconds < 0:
            return
        counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sums[phase] += seconds

    def cumulative(self, phase: str) -> list[tuple[str, int]]:
        """Prometheus buckets: (upper bound, observations at or below it)."""
        out, acc = [], 0
        for bound, n in zip((*map(str, BUCKETS), "+Inf"), self.counts[phase], strict=True):
            acc += n
            out.append((bound, acc))
        return out
