"""The receiver-driven multicast protocol, simulated in virtual time with loss."""

from __future__ import annotations

import contextlib
import hashlib
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from fleetboot.reload.mcast import Info, Kind, Receiver, Sender, WireError, parse_header

SENDER = ("10.0.0.1", 9000)


def _records(n: int, rnd: random.Random) -> list[bytes]:
    return [rnd.randbytes(rnd.randint(1, 9000)) for _ in range(n)]


def simulate(records: list[bytes], n: int, loss: float, seed: int, late: int = 0,
             silent: int = 0, rate_bps: float = 80e6, limit_s: float = 60.0,
             start_wait_s: float = 10.0
             ) -> tuple[Sender, list[Receiver], list[dict[int, bytes]], float]:
    """Step sender and receivers every millisecond; DATA lost per receiver with ``loss``."""
    rnd = random.Random(seed)
    info = Info(len(records), 1000, 1 << 30, hashlib.sha256(b"disk").digest())
    sender = Sender(7, records, info, rate_bps, expected=n, silent_s=2.5,
                    start_wait_s=start_wait_s)
    recv = [Receiver(7, 100 + i) for i in range(n)]
    got: list[dict[int, bytes]] = [{} for _ in range(n)]
    start_at = [0.0] * n
    for i in range(late):
        start_at[n - 1 - i] = 0.5  # late joiners
    now = 0.0
    while now < limit_s and not sender.finished:
        for i, r in enumerate(recv):
            if now < start_at[i] or (i < silent and now > 0.05):
                continue  # not started yet, or fell silent for good
            for pkt in r.poll(now):
                for reply, _ in sender.receive(pkt, (f"10.0.0.{i + 2}", 9001), now):
                    r.receive(reply, now)
        for pkt in sender.poll(now):
            for i, r in enumerate(recv):
                if now < start_at[i] or i < silent or rnd.random() < loss:
                    continue
                arrived = r.receive(pkt, now)
                if arrived is not None:
                    got[i][arrived.index] = arrived.record
        now += 0.001
    return sender, recv, got, now


def test_every_receiver_gets_every_record_once_per_group_without_loss() -> None:
    records = _records(40, random.Random(1))
    sender, _, got, _ = simulate(records, 8, 0.0, 1)
    assert sender.finished
    assert all(g == dict(enumerate(records)) for g in got)
    assert sender.stats.data_bytes == sum(map(len, records))  # each block sent once
    assert all(m.status == "verified" for m in sender.members.values())


def test_loss_costs_blocks_not_the_stream() -> None:
    records = _records(40, random.Random(2))
    sender, _, got, _ = simulate(records, 8, 0.05, 2)
    assert all(g == dict(enumerate(records)) for g in got)
    ratio = sender.stats.data_bytes / sum(map(len, records))
    # 8 receivers losing 5 % each: about 1 - 0.95**8 = 34 % of blocks go twice
    assert ratio < 1.6, ratio


def test_late_joiners_are_served_when_the_sender_comes_round() -> None:
    records = _records(60, random.Random(3))
    sender, _, got, _ = simulate(records, 4, 0.0, 3, late=2, rate_bps=4e6, start_wait_s=0.1)
    assert all(g == dict(enumerate(records)) for g in got)
    assert sender.stats.data_bytes > sum(map(len, records))  # a second round for the late


def test_the_sender_waits_a_little_for_the_expected_receivers() -> None:
    records = _records(60, random.Random(3))
    sender, _, got, _ = simulate(records, 4, 0.0, 3, late=2, rate_bps=4e6)
    assert all(g == dict(enumerate(records)) for g in got)
    assert sender.stats.data_bytes == sum(map(len, records))  # one round for all


def test_a_silent_receiver_is_dropped_without_stalling_the_others() -> None:
    records = _records(30, random.Random(4))
    sender, _, got, now = simulate(records, 4, 0.0, 4, silent=1)
    assert sender.finished and now < 10
    assert [m.status for m in sender.members.values()].count("dropped") == 1
    assert all(g == dict(enumerate(records)) for g in got[1:])


def test_rate_limit_paces_the_sender() -> None:
    records = _records(20, random.Random(5))
    sender, _, _, now = simulate(records, 1, 0.0, 5, rate_bps=2e6)
    assert now >= sender.stats.wire_bytes * 8 / 2e6 - 0.1  # never faster than the rate


@given(st.binary(max_size=300))
@settings(max_examples=300)
def test_garbage_is_dropped_and_counted(data: bytes) -> None:
    info = Info(3, 1000, 4096, bytes(32))
    sender = Sender(7, [b"a", b"b", b"c"], info, 1e6)
    sender.receive(data, SENDER, 0.0)
    r = Receiver(7, 1, info=info)
    with contextlib.suppress(WireError):
        r.receive(data, 0.0)
    with contextlib.suppress(WireError):
        parse_header(data)


@given(st.integers(0, 2**32 - 1), st.floats(0, 0.3), st.integers(1, 6))
@settings(max_examples=15, deadline=None)
def test_any_loss_and_seed_ends_complete(seed: int, loss: float, n: int) -> None:
    records = _records(10, random.Random(seed))
    sender, _, got, _ = simulate(records, n, loss, seed)
    assert sender.finished
    assert all(g == dict(enumerate(records)) for g in got)


def test_kinds_are_stable() -> None:
    assert [k.value for k in Kind] == [1, 2, 3, 4, 5]


def test_the_sender_socket_keeps_the_group_on_the_link() -> None:
    import socket

    from fleetboot.reload.transport import sender_socket

    sock = sender_socket("127.0.0.1", 0)
    try:
        assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL) == 1
        assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP) == 0
    finally:
        sock.close()
