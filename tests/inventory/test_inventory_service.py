"""Inventory operations on SQLite and PostgreSQL (the ``db`` fixture runs both)."""

import pytest
from sqlalchemy.exc import IntegrityError

from fleetboot.boot.decision import decide
from fleetboot.errors import FleetbootError
from fleetboot.inventory import service, yamlio
from fleetboot.inventory.db import Database
from fleetboot.inventory.models import BootAction, Interface

MAC1, MAC2, MAC3 = "52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03"


def _setup(db: Database) -> None:
    with db.session() as s:
        service.add_subnet(s, "lab", "10.0.0.0/24", router="10.0.0.1", dns=["10.0.0.1"])
        service.add_pool(s, "lab", "10.0.0.100", "10.0.0.150")
        service.add_reservation(s, "lab", MAC3.upper(), "10.0.0.5", "fixed")
        service.add_profile(s, "deb12", kernel="deb/vmlinuz", initrd="deb/initrd",
                            cmdline="console=ttyS0")
        service.add_node(s, "n1", [service.parse_nic(f"{MAC1},name=eth0"),
                                   service.parse_nic(f"{MAC2},boot")])


def test_nodes_have_exactly_one_boot_interface(db: Database) -> None:
    _setup(db)
    with db.session() as s:
        node = service.get_node(s, "n1")
        assert [i.mac for i in node.interfaces if i.is_boot] == [MAC2]
        service.set_boot_interface(s, "n1", MAC1)
    with db.session() as s:
        assert service.get_node(s, "n1").boot_interface.mac == MAC1  # type: ignore[union-attr]
    with pytest.raises(IntegrityError), db.session() as s:  # the database enforces it too
        for iface in s.query(Interface).all():
            iface.is_boot = True


def test_boot_levels_and_decision(db: Database) -> None:
    _setup(db)
    with db.session() as s:
        service.set_boot(s, "n1", "temp", BootAction.WAIT)
        service.set_boot(s, "n1", "next", BootAction.PROFILE, "deb12")
    with db.session() as s:
        decision = decide(service.get_node(s, "n1"))
        assert decision.profile is not None and decision.profile.name == "deb12"
        assert decision.one_shot
        service.set_boot(s, "n1", "next", None)
        assert decide(service.get_node(s, "n1")).action is BootAction.WAIT


@pytest.mark.parametrize("call, message", [
    (lambda s: service.add_node(s, "n2", [service.NicSpec(MAC1)]), "already belongs"),
    (lambda s: service.add_pool(s, "lab", "10.0.0.140", "10.0.0.160"), "overlaps"),
    (lambda s: service.add_pool(s, "lab", "10.0.1.1", "10.0.1.5"), "not a host address"),
    (lambda s: service.add_subnet(s, "x", "10.0.0.128/25"), "overlaps"),
    (lambda s: service.add_reservation(s, "lab", MAC1, "10.0.0.5"), "already reserved"),
    (lambda s: service.remove_profile(s, "nope"), "no boot profile"),
    (lambda s: service.add_profile(s, "deb12", kernel="k"), "immutable"),
    (lambda s: service.parse_nic("zz:zz"), "not a MAC"),
])
def test_errors_say_what_to_do(db: Database, call, message) -> None:  # type: ignore[no-untyped-def]
    _setup(db)
    with pytest.raises(FleetbootError, match=message), db.session() as s:
        call(s)


def test_profile_in_use_cannot_be_removed(db: Database) -> None:
    _setup(db)
    with db.session() as s:
        service.set_boot(s, "n1", "default", BootAction.PROFILE, "deb12")
    with pytest.raises(service.InventoryError, match="used by node"), db.session() as s:
        service.remove_profile(s, "deb12")


def test_yaml_round_trip(db: Database, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _setup(db)
    with db.session() as s:
        service.set_boot(s, "n1", "next", BootAction.PROFILE, "deb12")
        text = yamlio.export_inventory(s)
    other = Database(f"sqlite:///{tmp_path}/other.db")
    other.create_schema()
    with other.session() as s:
        assert yamlio.import_inventory(s, text) == {"profiles": 1, "subnets": 1, "nodes": 1}
    with other.session() as s:
        assert yamlio.export_inventory(s) == text
        yamlio.import_inventory(s, text)  # importing again updates in place
    with pytest.raises(service.InventoryError, match=r"nodes\[0\] \(bad\)"), other.session() as s:
        yamlio.import_inventory(s, "nodes: [{name: bad, interfaces: [{mac: nonsense}]}]")
    other.dispose()


def test_revision_moves_on_inventory_change(db: Database) -> None:
    before = db.revision()
    _setup(db)
    assert db.revision() > before


def test_reimport_updates_nodes_in_place(db: Database) -> None:
    _setup(db)
    with db.session() as s:
        node_id = service.get_node(s, "n1").id
        text = yamlio.export_inventory(s)
    edited = text.replace("52:54:00:00:00:01", "52:54:00:00:00:09")
    with db.session() as s:
        yamlio.import_inventory(s, edited)
    with db.session() as s:
        node = service.get_node(s, "n1")
        assert node.id == node_id  # same row: per-node data hanging off it survives
        assert sorted(i.mac for i in node.interfaces) == ["52:54:00:00:00:02",
                                                           "52:54:00:00:00:09"]
        assert node.boot_interface is not None and node.boot_interface.mac == MAC2
