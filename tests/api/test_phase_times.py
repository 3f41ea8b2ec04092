"""The per-phase histogram's pure core."""

from hypothesis import given
from hypothesis import strategies as st

from fleetboot.nodeconfig.phases import BUCKETS, PHASES, PhaseTimes


def test_buckets_are_cumulative_and_bounded() -> None:
    times = PhaseTimes()
    for seconds in (0.1, 0.5, 3.0, 1000.0):
        times.observe("BOOTING", seconds)
    times.observe("UP", 5.0)  # not a phase: ignored
    times.observe("PXEBOOTING", -1.0)  # a clock step back: ignored
    buckets = dict(times.cumulative("BOOTING"))
    assert buckets["0.5"] == 2 and buckets["5.0"] == 3 and buckets["+Inf"] == 4
    assert times.total("BOOTING") == 1003.6
    assert times.cumulative("PXEBOOTING")[-1] == ("+Inf", 0)


@given(st.lists(st.tuples(st.sampled_from(PHASES), st.floats(0, 1e6))))
def test_counts_never_decrease_and_total_every_observation(obs: list[tuple[str, float]]) -> None:
    times = PhaseTimes()
    for phase, seconds in obs:
        times.observe(phase, seconds)
    for phase in PHASES:
        counts = [n for _, n in times.cumulative(phase)]
        assert counts == sorted(counts) and len(counts) == len(BUCKETS) + 1
        assert counts[-1] == sum(1 for p, _ in obs if p == phase)
