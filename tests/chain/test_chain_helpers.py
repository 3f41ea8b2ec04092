"""The phase matcher the end-to-end test relies on: it must accept a timeline only when
every phase occurs after the previous one (pure; no VM)."""

from __future__ import annotations

from chain_helpers import Event, Phase, find_phases
from hypothesis import given
from hypothesis import strategies as st

KINDS = ("a", "b", "c", "d")
PHASES = [Phase(k, lambda e, k=k: e["kind"] == k) for k in KINDS]  # type: ignore[misc]


def _events(kinds: list[str]) -> list[Event]:
    return [{"source": "x", "kind": k, "detail": {}} for k in kinds]


def _is_subsequence(wanted: tuple[str, ...], kinds: list[str]) -> bool:
    it = iter(kinds)
    return all(k in it for k in wanted)


@given(st.lists(st.sampled_from(KINDS), max_size=12))
def test_phases_are_found_in_order_exactly_when_they_occur_in_order(kinds: list[str]) -> None:
    found = find_phases(_events(kinds), PHASES)
    assert len(found) == len(PHASES)
    complete = None not in found
    assert complete == _is_subsequence(KINDS, kinds)
    hits = [i for i in found if i is not None]
    assert hits == sorted(set(hits))  # strictly increasing
    assert all(kinds[i] == KINDS[n] for n, i in enumerate(hits))
    if not complete:  # nothing is reported after the first missing phase
        first_missing = found.index(None)
        assert all(i is None for i in found[first_missing:])


def test_a_phase_out_of_order_is_missing() -> None:
    assert find_phases(_events(["a", "c", "b", "d"]), PHASES) == [0, 2, None, None]
