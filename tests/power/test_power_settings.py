"""Power settings in the inventory (SQLite and PostgreSQL) and BMC passwords at rest."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from sqlalchemy import select, text

from fleetboot.inventory import service as inventory
from fleetboot.inventory import yamlio
from fleetboot.inventory.db import Database
from fleetboot.nodeconfig.timeline import read_timeline
from fleetboot.power import service
from fleetboot.power.core import ConfigError, DriverName, Operation, Outcome, PowerState
from fleetboot.power.models import PowerSetting
from fleetboot.power.secrets import SecretBox

PASSWORD = "s3cr3t-Pa55word"


def test_key_file_is_created_readable_only_by_its_owner(tmp_path: Path) -> None:
    box = SecretBox(tmp_path / "state" / "power.key")
    assert stat.S_IMODE((tmp_path / "state" / "power.key").stat().st_mode) == 0o600
    token = box.seal(PASSWORD)
    assert PASSWORD not in token
    assert SecretBox(tmp_path / "state" / "power.key").open(token) == PASSWORD


def test_a_key_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "power.key"
    SecretBox(path)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        SecretBox(path)


def test_a_replaced_key_is_explained(tmp_path: Path) -> None:
    token = SecretBox(tmp_path / "a.key").seal(PASSWORD)
    with pytest.raises(ConfigError, match="does not match the key file"):
        SecretBox(tmp_path / "b.key").open(token)


def _node(db: Database, name: str = "n1") -> int:
    with db.session() as s:
        return inventory.add_node(s, name, [inventory.parse_nic("52:54:00:aa:00:01")]).id


def test_settings_store_only_the_encrypted_password(db: Database, tmp_path: Path) -> None:
    node_id = _node(db)
    box = SecretBox(tmp_path / "power.key")
    with db.session() as s:
        service.configure(s, box, "n1", "ipmi", address="10.0.0.9", port=6230,
                          username="admin", password=PASSWORD)
    with db.engine.connect() as conn:
        raw = conn.execute(text("SELECT * FROM power_settings")).all()
    assert PASSWORD not in repr(raw)
    with db.session() as s:
        [info] = service.describe(s)
        assert info.has_password and "secret" not in repr(info)
        [target], missing = service.targets(s, lambda: box, [(node_id, "n1")])
    assert missing == [] and target.driver is DriverName.IPMI
    assert target.credentials.password == PASSWORD and PASSWORD not in repr(target)
    with db.session() as s:
        exported = yamlio.export_inventory(s)
    assert PASSWORD not in exported and raw[0].secret not in exported


def test_bad_settings_are_refused_with_the_fix(db: Database, tmp_path: Path) -> None:
    _node(db)
    box = SecretBox(tmp_path / "power.key")
    with pytest.raises(ConfigError, match="needs --username and a password"), db.session() as s:
        service.configure(s, box, "n1", "ipmi", address="10.0.0.9")
    with pytest.raises(ConfigError, match="use ipmi, redfish or qmp"), db.session() as s:
        service.configure(s, box, "n1", "ilo", address="10.0.0.9")
    with pytest.raises(ConfigError, match="CA file"), db.session() as s:
        service.configure(s, box, "n1", "redfish", address="10.0.0.9", username="u",
                          password="p", ca_file=str(tmp_path / "missing.pem"))
    with db.session() as s:
        row = service.configure(s, box, "n1", "qmp")
        assert row.address == "n1"  # the VM is named like the node


def test_outcomes_go_on_the_timeline_without_a_revision_bump(db: Database,
                                                             tmp_path: Path) -> None:
    node_id = _node(db)
    with db.session() as s:
        service.configure(s, SecretBox(tmp_path / "k"), "n1", "qmp")
    before = db.revision()
    service.record(db, [
        Outcome("n1", node_id, Operation.CYCLE, True, PowerState.ON, attempts=2, seconds=1.5),
        Outcome("n1", node_id, Operation.OFF, False, error="n1: no answer",
                reason="no answer (timeout)"),
    ], now=1000.0)
    assert db.revision() == before
    with db.session() as s:
        events = read_timeline(s, node_id)
        row = s.scalar(select(PowerSetting))
    assert [(e.source, e.kind, e.detail["ok"]) for e in events] == [
        ("power", "cycle", True), ("power", "off", False)]
    assert events[1].detail["error"] == "n1: no answer"
    assert row is not None and row.state == "on" and row.last_answer == "off: n1: no answer"


def test_selection_by_name_all_and_state(db: Database) -> None:
    _node(db, "a")
    with db.session() as s:
        inventory.add_node(s, "b", [inventory.parse_nic("52:54:00:aa:00:02")])
    with db.session() as s:
        assert [n for _, n in service.select_nodes(s, ["b"])] == ["b"]
        assert [n for _, n in service.select_nodes(s, [], every=True)] == ["a", "b"]
        assert [n for _, n in service.select_nodes(s, [], states=["off"])] == ["a", "b"]
        assert service.select_nodes(s, [], states=["UP"]) == []
        with pytest.raises(ConfigError, match="--all or --state"):
            service.select_nodes(s, [])
        with pytest.raises(ConfigError, match="unknown node state"):
            service.select_nodes(s, [], states=["sleepy"])


def test_a_node_not_back_after_a_cycle_is_flagged_once(db: Database, tmp_path: Path) -> None:
    node_id = _node(db)
    with db.session() as s:
        service.configure(s, SecretBox(tmp_path / "k"), "n1", "qmp")
    service.record(db, [Outcome("n1", node_id, Operation.CYCLE, False, error="n1: BMC said no",
                                reason="BMC error")], now=900.0)
    assert service.flag_not_back(db, now=5000.0, limit_s=600) == []  # a failed cycle: no wait
    service.record(db, [Outcome("n1", node_id, Operation.CYCLE, True, PowerState.ON)],
                   now=1000.0)
    assert service.flag_not_back(db, now=1100.0, limit_s=600) == []
    assert service.flag_not_back(db, now=1700.0, limit_s=600) == ["n1"]
    assert service.flag_not_back(db, now=2500.0, limit_s=600) == []  # flagged once
    with db.session() as s:
        last = read_timeline(s, node_id)[-1]
    assert (last.source, last.kind) == ("power", "not-back")
    assert last.detail["bmc_last_answer"] == "cycle: on" and last.detail["after_s"] == 700.0
