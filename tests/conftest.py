"""Shared fixtures: a database on SQLite and PostgreSQL, and namespace labs."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from fleetboot.inventory.db import Database
from fleetboot.lab import netns, postgres

# CI shares 2 cores with QEMU guests: data generation may be slow, which says
# nothing about the code under test. Timing lives in bench/, not in tests.
settings.register_profile(
    "fleetboot", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("fleetboot")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[postgres.PostgresServer]:
    if not postgres.available():
        pytest.skip("PostgreSQL not installed (run scripts/install-system-deps.sh)")
    server = postgres.PostgresServer.start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, tmp_path) -> Iterator[Database]:  # type: ignore[no-untyped-def]
    """An empty, migrated inventory; every test using it runs on both databases."""
    if request.param == "sqlite":
        database = Database(f"sqlite:///{tmp_path}/fleetboot.db")
        name = None
    else:
        server: postgres.PostgresServer = request.getfixturevalue("pg_server")
        name = f"t_{uuid.uuid4().hex[:12]}"
        database = Database(server.create_database(name))
    database.create_schema()
    yield database
    database.dispose()
    if name is not None:
        request.getfixturevalue("pg_server").drop_database(name)


@pytest.fixture
def sqlite_db(tmp_path) -> Iterator[Database]:  # type: ignore[no-untyped-def]
    database = Database(f"sqlite:///{tmp_path}/fleetboot.db")
    database.create_schema()
    yield database
    database.dispose()


def _require_netns() -> None:
    if not netns.have_netns():
        pytest.skip("needs root and iproute2 to create network namespaces")


@pytest.fixture
def lab() -> Iterator[netns.Lab]:
    """A server and a client namespace joined by a veth pair (10.77.0.1 <-> .2)."""
    _require_netns()
    with netns.Lab.create() as the_lab:
        yield the_lab


@pytest.fixture
def bridged_lab() -> Iterator[netns.Lab]:
    """Like ``lab`` with a bridge br0 in the server namespace, for QEMU tap NICs."""
    _require_netns()
    with netns.Lab.create(with_bridge=True) as the_lab:
        yield the_lab


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # FLEETBOOT_SKIP_PG=1 lets a developer run only the SQLite half quickly.
    if os.environ.get("FLEETBOOT_SKIP_PG"):
        skip = pytest.mark.skip(reason="FLEETBOOT_SKIP_PG set")
        for item in items:
            if "postgres" in item.keywords:
                item.add_marker(skip)
