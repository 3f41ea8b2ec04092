"""Fixtures for the passthrough tests (helpers live in pt_helpers)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pt_helpers import Fleet, build_fleet

from fleetboot.inventory.db import Database


@pytest.fixture
def fleet(db: Database, tmp_path: Path) -> Fleet:
    """Both example hosts scanned and tagged, the example flavors defined (SQLite + PG)."""
    return build_fleet(db, tmp_path)


@pytest.fixture
def sqlite_fleet(sqlite_db: Database, tmp_path: Path) -> Fleet:
    return build_fleet(sqlite_db, tmp_path)
