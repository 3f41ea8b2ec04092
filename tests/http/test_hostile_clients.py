"""The hostile clients of ``bench/hostile.py`` against a real server on loopback: the
bench's attackers do what they say, and the server answers each kind as it should."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from hostile_helpers import serving, wait_for

from fleetboot.inventory.db import Database
from fleetboot.server.admission import RateFloor, TransferLimits
from fleetboot.server.httpguard import HeaderLimits, head_stats
from fleetboot.storm.hostile import HostileConfig, run

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")


async def test_the_bench_attackers_are_answered(sqlite_db: Database, tmp_path: Path) -> None:
    limits = TransferLimits(max_transfers=4, max_per_client=2, floor=RateFloor(64 << 10, 1.0))
    async with serving(sqlite_db, tmp_path, limits, big=16 << 20,
                       header_limits=HeaderLimits(header_timeout_s=0.5)) as service:
        cfg = HostileConfig("127.0.0.1", service.port, ["127.0.0.11"], ["127.0.0.12"],
                            ["127.0.0.13"], huge_mib=16, slow_per_address=3,
                            slow_path="/boot/files/big.bin", idle_per_address=4)
        gate = service.app.state.fleetboot.gate
        before = dict(head_stats)
        stop = asyncio.Event()
        attack = asyncio.create_task(run(cfg, stop))

        def server_saw_everything() -> bool:
            return (head_stats["rejected_431"] > before["rejected_431"]
                    and head_stats["idle_closed"] >= before["idle_closed"] + 2
                    and head_stats["timed_out_408"] >= before["timed_out_408"] + 2
                    and gate.counters["aborted_too_slow"] >= 2
                    and gate.counters["rejected_client"] >= 1)

        await wait_for(server_saw_everything, 30)
        await asyncio.sleep(1.0)  # the 431s and closes reach the clients
        stop.set()
        seen = await asyncio.wait_for(attack, 30)
    assert seen["huge_status_431"] >= 1
    assert seen["idle_closed_by_server"] >= 4  # nothing or half a head: closed after 0.5 s
    assert seen["slow_status_503"] >= 1  # the third reader of the host: over its cap
    # The other two were cut off by the rate floor (the server's counters above); the
    # readers notice a few seconds later, once they have read what their buffers held.
