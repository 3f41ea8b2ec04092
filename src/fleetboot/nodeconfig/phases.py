"""How long nodes spend in each boot phase (PXEBOOTING, BOOTING, CONFIGURING, ...):
a histogram per state, fed by the state machine when a node leaves a state.

Observed in ``NodeConfigService._apply``, which runs in batches off the packet
paths; read by the metrics exposition at scrape time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fleetboot.nodeconfig.states import State
from fleetboot.server.histogram import Histogram

BUCKETS: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
# The states a boot passes through; OFF, UP and FAILED end a boot (no duration to time).
PHASES: tuple[str, ...] = tuple(s.value for s in State
                                if s not in (State.OFF, State.UP, State.FAILED))


@dataclass
class PhaseTimes:
    phases: dict[str, Histogram] = field(
        default_factory=lambda: {p: Histogram(BUCKETS) for p in PHASES})

    def observe(self, phase: str, seconds: float) -> None:
        histogram = self.phases.get(phase)
        if histogram is not None and seconds >= 0:
            histogram.observe(seconds)

    def cumulative(self, phase: str) -> list[tuple[str, int]]:
        return self.phases[phase].cumulative()

    def total(self, phase: str) -> float:
        return self.phases[phase].total
