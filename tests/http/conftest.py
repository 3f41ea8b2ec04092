"""Fixtures for the HTTP boot tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from httpboot_helpers import Boot, build_boot

from fleetboot.inventory.db import Database
from fleetboot.server.http import CmdlineHook


@pytest.fixture
def make_boot(db: Database, tmp_path: Path) -> Callable[..., Boot]:
    def make(hook: CmdlineHook | None = None, **http: object) -> Boot:
        return build_boot(db, tmp_path, hook, **http)

    return make


@pytest.fixture
def make_files_boot(sqlite_db: Database, tmp_path: Path) -> Callable[..., Boot]:
    """For file-serving tests: the database plays no part, so SQLite only."""

    def make(hook: CmdlineHook | None = None, **http: object) -> Boot:
        return build_boot(sqlite_db, tmp_path, hook, **http)

    return make
