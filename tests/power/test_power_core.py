"""The pure part: summaries, retry rules, operation and driver names."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetboot.power import ipmi_probe
from fleetboot.power.core import (
    AuthError,
    ComeBack,
    ConfigError,
    Credentials,
    NoAnswerError,
    Operation,
    Outcome,
    PowerError,
    PowerState,
    attempts_left,
    came_back,
    parse_driver,
    parse_operation,
    reason_of,
    summarize,
)


def test_password_never_in_repr_or_str() -> None:
    creds = Credentials("admin", "hunter2-secret")
    assert "hunter2" not in repr(creds) and "hunter2" not in str(creds)


def test_wrong_credentials_are_never_retried_but_lost_answers_are() -> None:
    assert not attempts_left(AuthError("x"), 1, 5)
    assert not attempts_left(ConfigError("x"), 1, 5)
    assert attempts_left(NoAnswerError("x"), 1, 2)
    assert attempts_left(NoAnswerError("x"), 2, 2)
    assert not attempts_left(NoAnswerError("x"), 3, 2)


def test_summary_groups_failures_by_reason() -> None:
    outcomes = [
        Outcome("a", 1, Operation.CYCLE, True, PowerState.ON),
        Outcome("b", 2, Operation.CYCLE, False, error="e", reason=reason_of(NoAnswerError("e"))),
        Outcome("c", 3, Operation.CYCLE, False, error="e", reason=reason_of(AuthError("e"))),
        Outcome("d", 4, Operation.CYCLE, False, error="e", reason=reason_of(TimeoutError())),
    ]
    s = summarize(outcomes)
    assert (s.total, s.ok, s.failed) == (4, 1, 3)
    assert s.by_reason == {"no answer (timeout)": ["b", "d"], "wrong credentials": ["c"]}
    assert s.lines()[0] == "1/4 ok, 3 failed (1 on)"


@given(st.lists(st.tuples(st.booleans(), st.sampled_from(list(PowerState)),
                          st.sampled_from(["x", "y", None])), max_size=40))
def test_summary_counts_add_up(rows: list[tuple[bool, PowerState, str | None]]) -> None:
    outcomes = [Outcome(f"n{i}", i, Operation.STATUS, ok, state, reason=r)
                for i, (ok, state, r) in enumerate(rows)]
    s = summarize(outcomes)
    assert s.ok + s.failed == s.total == len(rows)
    assert sum(len(v) for v in s.by_reason.values()) == s.failed
    assert sum(s.states.values()) == s.ok


def test_bad_names_say_what_to_use() -> None:
    with pytest.raises(PowerError, match="use ipmi, redfish or qmp"):
        parse_driver("ilo")
    with pytest.raises(PowerError, match="status, on, off, cycle"):
        parse_operation("reset")


def test_came_back_needs_up_after_the_action() -> None:
    assert came_back(100.0, "UP", 150.0, 200.0, 600) is ComeBack.BACK
    assert came_back(100.0, "UP", 50.0, 200.0, 600) is ComeBack.WAIT  # UP from before
    assert came_back(100.0, "PXEBOOTING", 150.0, 200.0, 600) is ComeBack.WAIT
    assert came_back(100.0, "PXEBOOTING", 150.0, 700.0, 600) is ComeBack.FLAG
    assert came_back(100.0, None, None, 700.0, 600) is ComeBack.FLAG


# What ipmi_sim answered to the probe (captured on this machine).
IPMI_SIM_ANSWER = bytes.fromhex("0600ff0700000000000000000010811c6320003800019704030000000009")


def test_probe_answer_is_recognised() -> None:
    assert ipmi_probe.is_auth_caps_answer(IPMI_SIM_ANSWER)
    assert not ipmi_probe.is_auth_caps_answer(IPMI_SIM_ANSWER[:19])
    assert not ipmi_probe.is_auth_caps_answer(b"\x07" + IPMI_SIM_ANSWER[1:])


@given(st.binary(max_size=80))
def test_probe_parser_takes_any_bytes(data: bytes) -> None:
    assert ipmi_probe.is_auth_caps_answer(data) in (True, False)
