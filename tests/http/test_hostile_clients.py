"""The hostile clients of ``bench/hostile.py`` against a real server on loopback: the
bench's attackers do what they say, and the server answers each kind as it should."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from hostile_helpers import serving

from fleetboot.inventory.db import Database
from fleetboot.server.admission import RateFloor, TransferLimits
from fleetboot.server.httpguard import HeaderLimits
from fleetboot.storm.hostile import HostileConfig, run

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")


async def test_the_bench_attackers_are_answered(sqlite_db: Database, tmp_path: Path) -> None:
    limits = TransferLimits(max_transfers=4, max_per_client=2, floor=RateFloor(64 << 10, 1.0))
    async with serving(sqlite_db, tmp_path, limits, big=16 << 20,
                       header_limits=HeaderLimits(header_timeout_s=0.5)) as service:
        cfg = HostileConfig("127.0.0.1", service.port, ["127.0.0.11"], ["127.0.0.12"],
                            ["127.0.0.13"], huge_mib=16, slow_per_address=3,
                            slow_path="/boot/files/big.bin", idle_per_address=4)
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(4.0, stop.set)
        seen = await asyncio.wait_for(run(cfg, stop), 30)
    assert seen["huge_attempts"] >= 1 and seen["huge_status_431"] == seen["huge_attempts"]
    assert seen["idle_closed_by_server"] >= 4  # nothing or half a head: closed after 0.5 s
    assert seen["slow_status_503"] >= 1  # the third reader of the host: over its cap
    assert seen["slow_reset"] >= 2  # the other two: cut off by the rate floor
