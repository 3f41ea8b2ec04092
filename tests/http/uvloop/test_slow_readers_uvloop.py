"""Slow readers on uvloop (``fleetboot serve``'s loop): the sendfile pump's rate floor."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
import uvloop
from hostile_helpers import slow_readers_are_cut_off

from fleetboot.inventory.db import Database

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")


async def test_slow_readers_are_cut_off_on_uvloop(sqlite_db: Database, tmp_path: Path) -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
    await slow_readers_are_cut_off(sqlite_db, tmp_path, zero_copy=True)
