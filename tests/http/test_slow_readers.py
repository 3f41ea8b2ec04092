"""Issue 11 item 4: slow readers must not hold every transfer slot.

A per-client cap (by peer address) on transfers running or waiting, and a rate
floor that cuts off a transfer moving less than N KiB/s over a window. Real
slow-reading sockets on 127.0.0.1, real curl as the normal client.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from hostile_helpers import (
    BIG,
    BIG_PATH,
    SlowReader,
    curl_status,
    serving,
    slow_readers_are_cut_off,
    wait_for,
)
from hypothesis import given
from hypothesis import strategies as st

from fleetboot.config import AdmissionConfig
from fleetboot.inventory.db import Database
from fleetboot.server.admission import (
    GateBusy,
    RateFloor,
    RateWatch,
    TransferGate,
    TransferLimits,
)

# --- the pure rate watch --------------------------------------------------------------------

FLOOR = RateFloor(bytes_per_s=1000, window_s=10)


@given(rate=st.floats(1001, 1e7), ticks=st.lists(st.floats(0.01, 3), min_size=1, max_size=60))
def test_a_transfer_above_the_floor_is_never_cut(rate: float,
                                                        ticks: list[float]) -> None:
    watch, now = RateWatch(FLOOR, 0.0), 0.0
    for dt in ticks:
        now += dt
        assert not watch.too_slow(now, int(rate * now))


@given(burst=st.integers(0, 10**9), stop=st.floats(0, 100),
       ticks=st.lists(st.floats(0.01, 3), min_size=1, max_size=200))
def test_a_transfer_that_stops_is_cut_within_two_windows(burst: int, stop: float,
                                                         ticks: list[float]) -> None:
    """Whatever went first (a burst into socket buffers), standing still is found out."""
    watch, now, cut = RateWatch(FLOOR, 0.0), 0.0, None
    for dt in ticks:
        now += dt
        sent = burst if now >= stop else int(burst * now / max(stop, 1e-9))
        if watch.too_slow(now, sent):
            cut = now
            break
    if cut is not None:
        assert cut >= FLOOR.window_s  # never before a whole window
    elif now > stop + 2 * (FLOOR.window_s + 3):  # a tick is at most 3 s late per window
        pytest.fail("a stopped transfer was never cut")


def test_no_floor_never_cuts() -> None:
    watch = RateWatch(RateFloor(0, 1), 0.0)
    assert not watch.too_slow(1000.0, 0)


def test_limits_come_from_the_settings() -> None:
    limits = TransferLimits.from_config(AdmissionConfig(max_transfers_per_client=3,
                                                        min_transfer_rate_kib_s=16,
                                                        transfer_rate_window_s=5,
                                                        slow_client_penalty_s=7))
    assert limits.max_per_client == 3 and limits.floor == RateFloor(16 * 1024, 5)
    assert limits.slow_penalty_s == 7
    defaults = TransferLimits.from_config(AdmissionConfig())
    assert defaults.max_per_client == 8 and defaults.floor == RateFloor(32 * 1024, 10)
    assert defaults.slow_penalty_s == 60


# --- the per-client cap ---------------------------------------------------------------------


async def test_one_client_holds_at_most_its_cap() -> None:
    gate = TransferGate(TransferLimits(max_transfers=4, max_per_client=2, queue_timeout_s=30))
    await gate.acquire("10.0.0.1")
    await gate.acquire("10.0.0.1")
    with pytest.raises(GateBusy, match=r"2 transfers from 10\.0\.0\.1"):
        await gate.acquire("10.0.0.1")
    await gate.acquire("10.0.0.2")  # the others are not affected
    assert gate.counters["rejected_client"] == 1 and gate.counters["clients"] == 2
    gate.release("10.0.0.1")
    await gate.acquire("10.0.0.1")  # a finished transfer makes room again
    for client in ("10.0.0.1", "10.0.0.1", "10.0.0.2"):
        gate.release(client)
    assert gate.counters["clients"] == 0 and gate.counters["active"] == 0


async def test_places_in_line_count_and_are_given_back() -> None:
    gate = TransferGate(TransferLimits(max_transfers=1, max_per_client=2, queue_timeout_s=0.1))
    await gate.acquire("a")
    with pytest.raises(GateBusy):
        await gate.acquire("b")  # waited too long
    assert gate.held_by("b") == 0
    waiting = asyncio.create_task(gate.acquire("a"))
    await asyncio.sleep(0)
    with pytest.raises(GateBusy, match="2 transfers"):
        await gate.acquire("a")  # one running, one waiting: a's cap
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert gate.held_by("a") == 1
    gate.release("a")
    assert gate.held_by("a") == 0 and gate.counters["active"] == 0


async def test_a_client_cut_off_for_slowness_waits_out_its_penalty() -> None:
    now = [100.0]
    gate = TransferGate(TransferLimits(max_transfers=4, slow_penalty_s=30),
                        clock=lambda: now[0])
    await gate.acquire("slow")
    gate.release("slow")
    gate.penalize("slow")
    with pytest.raises(GateBusy, match="read too slowly") as refused:
        await gate.acquire("slow")
    assert refused.value.retry_after_s == 30
    await gate.acquire("other")  # nobody else is affected
    now[0] += 29.5
    with pytest.raises(GateBusy):
        await gate.acquire("slow")
    now[0] += 1
    await gate.acquire("slow")  # served its time
    assert gate.counters["rejected_penalized"] == 2 and gate.counters["penalized"] == 0
    assert gate.counters["aborted_too_slow"] == 1


async def test_penalties_are_forgotten_once_over() -> None:
    now = [0.0]
    gate = TransferGate(TransferLimits(slow_penalty_s=10), clock=lambda: now[0])
    for i in range(1000):
        gate.penalize(f"10.0.{i // 250}.{i % 250}")
        now[0] += 0.1
    assert gate.penalty_left("anyone") == 0 and gate.counters["penalized"] == 100


# --- real slow readers ------------------------------------------------------------------------

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")


@needs_curl
@pytest.mark.parametrize("zero_copy", [True, False], ids=["sendfile", "stream"])
async def test_slow_readers_are_cut_off_and_a_normal_download_succeeds(
        sqlite_db: Database, tmp_path: Path, zero_copy: bool) -> None:
    await slow_readers_are_cut_off(sqlite_db, tmp_path, zero_copy)


@needs_curl
async def test_one_slow_host_cannot_take_every_slot(sqlite_db: Database,
                                                    tmp_path: Path) -> None:
    """No rate floor here: the cap alone leaves slots for other hosts."""
    limits = TransferLimits(max_transfers=3, max_per_client=2, queue_timeout_s=3,
                            floor=RateFloor(0, 1))
    async with serving(sqlite_db, tmp_path, limits) as service:
        gate = service.app.state.fleetboot.gate
        readers = [SlowReader(service.port, BIG_PATH).start() for _ in range(2)]
        try:
            await wait_for(lambda: gate.counters["active"] == 2)
            third = SlowReader(service.port, BIG_PATH).start()
            readers.append(third)
            await wait_for(lambda: third.status is not None)
            assert third.status == 503  # the host's third transfer: at once, Retry-After
            status, size = await curl_status(f"http://127.0.0.1:{service.port}{BIG_PATH}",
                                             "--interface", "127.0.0.2")
            assert (status, size) == (200, BIG)  # another host still gets a slot
            assert gate.counters["rejected_client"] == 1
        finally:
            for reader in readers:
                reader.stop()
