from sqlalchemy import inspect

from fleetboot.inventory.db import Database


def test_schema_has_inventory_tables(db: Database) -> None:
    tables = set(inspect(db.engine).get_table_names())
    assert {"nodes", "interfaces", "subnets", "pools", "reservations", "leases"} <= tables
