"""The read-session state machine: examples, and hypothesis runs over a lossy network."""

from __future__ import annotations

import math

from hypothesis import event, given, settings
from hypothesis import strategies as st

from fleetboot.protocols.tftp.options import Negotiated
from fleetboot.protocols.tftp.session import (
    Outcome,
    ReadSession,
    SendError,
    TimerPolicy,
    Window,
)


def machine(size: int, blksize: int = 512, windowsize: int = 1, oack: bool = False,
            retries: int = 3) -> ReadSession:
    negotiated = Negotiated(blksize, windowsize, None, {"blksize": str(blksize)} if oack else None)
    return ReadSession(size, negotiated, TimerPolicy(timeout=1.0, max_timeout=4.0,
                                                     retries=retries), now=0.0)


def test_lock_step_without_options() -> None:
    m = machine(1000)
    assert m.start(0.0) == (1, 1)
    assert m.block_span(1) == (0, 512)
    assert m.on_ack(1, 0.1) == (2, 2)
    assert m.block_span(2) == (512, 488)
    assert m.on_ack(1, 0.2) is None  # duplicate: no second copy (RFC 1123)
    assert m.stats.duplicate_acks == 1
    assert m.on_ack(2, 0.3) is None and m.outcome is Outcome.DONE
    assert m.stats.bytes_sent == 1000 and m.stats.duration == 0.3


def test_oack_and_empty_last_block() -> None:
    m = machine(1024, oack=True)
    assert m.start(0.0) == (0, 0)
    assert m.on_ack(1, 0.1) is None  # an ACK for a block not sent yet is stale
    assert m.on_ack(0, 0.1) == (1, 1)
    assert m.on_ack(1, 0.2) == (2, 2)
    assert m.on_ack(2, 0.3) == (3, 3)  # 1024 = 2 * 512: a last, empty block follows
    assert m.block_span(3) == (1024, 0)
    assert m.on_ack(3, 0.4) is None and m.finished


def test_window_partial_ack_resends_from_the_gap() -> None:
    m = machine(100 * 512, windowsize=8)
    assert m.start(0.0) == (1, 8)
    assert m.on_ack(5, 0.1) == (6, 13)  # blocks 6..8 were lost
    assert m.stats.retransmitted_packets == 3
    assert m.on_ack(5, 0.2) is None  # the same ACK again: nothing
    assert m.on_ack(13, 0.3) == (14, 21)


def test_timeout_backoff_and_give_up() -> None:
    m = machine(10_000, retries=2)
    m.start(0.0)
    assert m.deadline == 1.0
    assert m.on_timeout(0.5) is None  # not due yet
    assert m.on_timeout(1.0) == (1, 1)
    assert m.deadline == 3.0  # backoff: 2 s
    assert m.on_timeout(3.0) == (1, 1)
    assert m.deadline == 7.0  # 4 s, the cap
    action = m.on_timeout(7.0)
    assert isinstance(action, SendError) and m.outcome is Outcome.TIMED_OUT
    assert m.deadline == math.inf
    assert m.on_ack(1, 8.0) is None  # finished: ignores everything


def test_rollover_mapping() -> None:
    m = machine(70_000 * 8, blksize=8, windowsize=4)
    window = m.start(0.0)
    while window[1] < 65_534:
        window = m.on_ack(window[1] & 0xFFFF, 0.0)  # type: ignore[assignment]
        assert window is not None
    assert window == (65_533, 65_536)
    assert m.on_ack(0, 0.0) == (65_537, 65_540)  # wire 0 after 65535 is block 65536
    assert m.acked == 65_536
    assert m.on_ack(65_535, 0.0) is None  # before acked: stale, not a wrap forward
    assert m.stats.stale_acks == 1


def test_client_error_and_probe() -> None:
    m = machine(5000, oack=True)
    m.start(0.0)
    assert m.on_packet(b"\0\5\0\x08tsize probe\0", 0.1) is None
    assert m.outcome is Outcome.PROBE
    m = machine(5000)
    m.start(0.0)
    m.on_packet(b"\0\5\0\x03disk full\0", 0.1)
    assert m.outcome is Outcome.CLIENT_ERROR and m.stats.client_error == (3, "disk full")
    m = machine(5000)
    m.start(0.0)
    assert m.on_packet(b"garbage", 0.1) is None and m.stats.bad_packets == 1
    assert isinstance(m.on_packet(b"\0\3\0\1data", 0.1), SendError)
    assert m.outcome is Outcome.PROTOCOL_ERROR


def test_duplicate_request_resends_only_the_first_packet() -> None:
    m = machine(5000, oack=True)
    m.start(0.0)
    assert m.on_duplicate_request(0.1) == (0, 0)
    m.on_ack(0, 0.2)
    assert m.on_duplicate_request(0.3) is None


# --- hypothesis -----------------------------------------------------------------------------

events = st.lists(st.one_of(
    st.tuples(st.just("ack"), st.integers(0, 0xFFFF)),
    st.tuples(st.just("ack-near"), st.integers(-3, 20)),
    st.tuples(st.just("timeout"), st.just(0)),
    st.tuples(st.just("rrq"), st.just(0)),
    st.tuples(st.just("raw"), st.binary(max_size=8).map(len)),
), max_size=80)


@given(st.integers(0, 40_000), st.sampled_from([8, 512, 1468]), st.integers(1, 32),
       st.booleans(), events)
def test_random_events_are_safe(size: int, blksize: int, windowsize: int, oack: bool,
                                script: list[tuple[str, int]]) -> None:
    m = machine(size, blksize, windowsize, oack, retries=50)
    first = m.start(0.0)
    assert first == ((0, 0) if oack else (1, min(windowsize, m.last_block)))
    now = 0.0
    for kind, value in script:
        acked_before, sent_before = m.acked, m.sent_upto
        now += 0.01
        if kind == "ack" or kind == "ack-near":
            wire = value if kind == "ack" else (m.acked + value) & 0xFFFF
            result: Window | SendError | None = m.on_ack(wire, now)
            mapped = sent_before - ((sent_before - wire) & 0xFFFF)
            if mapped <= acked_before:
                assert result is None  # Sorcerer's Apprentice: never for a duplicate
        elif kind == "timeout":
            now = max(now, m.deadline) if m.deadline != math.inf else now
            result = m.on_timeout(now)
        elif kind == "rrq":
            result = m.on_duplicate_request(now)
        else:
            result = m.on_packet(bytes(value), now)
        assert m.acked >= acked_before
        assert m.sent_upto >= m.acked or m.finished
        if isinstance(result, tuple):
            lo, hi = result
            if lo == 0:
                assert oack and hi == 0 and m.acked == -1
            else:
                assert lo == m.acked + 1 and lo <= hi <= m.last_block
                assert hi - lo + 1 <= windowsize
        if m.finished:
            assert m.deadline == math.inf


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 20_000), st.sampled_from([8, 512, 1468]), st.integers(1, 16),
       st.booleans(), st.data())
def test_lossy_network_delivers_the_file_in_order(size: int, blksize: int, windowsize: int,
                                                  oack: bool, data: st.DataObject) -> None:
    """A simulated client over a network that drops, duplicates and reorders packets."""
    m = machine(size, blksize, windowsize, oack, retries=1000)
    content = bytes(i % 251 for i in range(size))
    to_client: list[tuple[int, int]] = []  # (absolute block, wire block) in flight
    to_server: list[int] = []  # wire ACK numbers in flight
    received: list[bytes] = []
    expected, since_ack = 1, 0
    now = 0.0
    duplicate_acks_answered = 0

    def send(window: Window | SendError | None) -> None:
        if isinstance(window, tuple):
            for block in range(window[0], window[1] + 1):
                to_client.append((block, block & 0xFFFF))

    send(m.start(now))
    for _ in range(3000):
        if m.finished:
            break
        now += 0.001
        choice = data.draw(st.integers(0, 9), label="step")
        if choice == 0 or not (to_client or to_server):
            now = max(now, m.deadline)
            send(m.on_timeout(now))
            continue
        queue = to_client if (choice < 6 and to_client) or not to_server else to_server
        index = data.draw(st.integers(0, len(queue) - 1), label="which") if choice > 3 else 0
        fate = data.draw(st.sampled_from(["deliver"] * 6 + ["drop", "dup"]), label="fate")
        item = queue.pop(index)
        if fate == "drop":
            continue
        if fate == "dup":
            queue.append(item)
        if queue is to_server:
            before = m.acked
            wire = int(item)  # type: ignore[call-overload]
            answer = m.on_ack(wire, now)
            if answer is not None and m.sent_upto - ((m.sent_upto - wire) & 0xFFFF) <= before:
                duplicate_acks_answered += 1
            send(answer)
            continue
        block, _wire = item  # type: ignore[misc]
        if block == 0:
            to_server.append(0)
            continue
        if block != expected:
            to_server.append((expected - 1) & 0xFFFF)
            since_ack = 0
            continue
        offset, length = m.block_span(block)
        received.append(content[offset : offset + length])
        expected += 1
        since_ack += 1
        if length < blksize or since_ack >= windowsize:
            to_server.append(block & 0xFFFF)
            since_ack = 0
    event(f"outcome: {m.outcome.value}")
    assert duplicate_acks_answered == 0
    got = b"".join(received)
    assert content.startswith(got)
    if m.outcome is Outcome.DONE:
        assert got == content
