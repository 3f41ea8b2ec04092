"""The OpenAPI document is served, valid OpenAPI 3, and documents every route; the
API's tables match their Alembic revision."""

from __future__ import annotations

from pathlib import Path

import httpx
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from api_helpers import running
from openapi_spec_validator import validate

from fleetboot.inventory.db import Base, Database


async def test_the_openapi_document_is_valid_and_complete(sqlite_db: Database,
                                                          tmp_path: Path) -> None:
    async with running(sqlite_db, tmp_path) as server, \
            httpx.AsyncClient(base_url=server.url) as c:
        r = await c.get("/api/v1/openapi.json")  # no token: it holds no data
    assert r.status_code == 200
    doc = r.json()
    validate(doc)
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    for path in ("/nodes", "/nodes/{name}", "/nodes/{name}/boot/{level}", "/subnets",
                 "/subnets/{name}/reservations", "/profiles", "/leases", "/pools",
                 "/nodes/{name}/timeline", "/nodes/{name}/why", "/defaults/config/{section}",
                 "/tokens", "/audit", "/events", "/images"):
        assert path in paths, path
    assert {"get", "post"} <= set(paths["/nodes"])
    assert "NodeIn" in doc["components"]["schemas"]


def test_api_tables_match_their_revision(sqlite_db: Database) -> None:
    with sqlite_db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    ours = [d for d in diff if "api_tokens" in str(d) or "audit_log" in str(d)]
    assert ours == []
