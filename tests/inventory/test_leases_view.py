"""`fleetboot leases`: what the DHCP server's journal stored, with the owning node."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fleetboot.cli.main import app
from fleetboot.inventory import service
from fleetboot.inventory.db import Database
from fleetboot.protocols.dhcp.engine import LeaseRecord
from fleetboot.protocols.dhcp.options import ip_int
from fleetboot.server.leases import LeaseJournal


def _store(db: Database, now: float) -> None:
    """Two subnets, a node with a lease, an unknown client, an expired lease."""
    with db.session() as s:
        lab = service.add_subnet(s, "lab", "10.5.0.0/24").id
        other = service.add_subnet(s, "other", "10.6.0.0/24").id
        service.add_node(s, "n1", [service.NicSpec("52:54:00:aa:bb:01", boot=True)])
    journal = LeaseJournal(db, lambda *_: None)
    journal.write([
        LeaseRecord("bind", ip_int("10.5.0.20"), bytes.fromhex("525400aabb01"), now + 7200,
                    now - 10, lab, None, "n1"),
        LeaseRecord("bind", ip_int("10.5.0.3"), bytes.fromhex("0200000000ff"), now + 3600,
                    now - 5, lab),
        LeaseRecord("bind", ip_int("10.6.0.9"), bytes.fromhex("020000000001"), now - 30,
                    now - 3630, other),
    ])


def test_current_leases_in_address_order_with_their_node(db: Database) -> None:
    now = time.time()
    _store(db, now)
    with db.session() as s:
        current = service.list_leases(s, now=now)
        everything = service.list_leases(s, now=now, include_expired=True)
        other = service.list_leases(s, now=now, subnet="other", include_expired=True)
    assert [(v.address, v.node, v.subnet) for v in current] == [
        ("10.5.0.3", None, "lab"), ("10.5.0.20", "n1", "lab")]
    assert current[1].hostname == "n1" and current[1].expires == pytest.approx(now + 7200, abs=1)
    assert len(everything) == 3 and [v.address for v in other] == ["10.6.0.9"]
    with db.session() as s, pytest.raises(service.NotFound):
        service.list_leases(s, now=now, subnet="nope")


def test_the_command_shows_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path}/cli.db"
    monkeypatch.setenv("FLEETBOOT_DB", url)
    monkeypatch.chdir(tmp_path)
    db = Database(url)
    db.create_schema()
    _store(db, time.time())
    runner = CliRunner()
    out = runner.invoke(app, ["leases"], terminal_width=160).output
    assert "2 lease(s)" in out and "n1" in out and "unknown" in out and "10.6.0.9" not in out
    out = runner.invoke(app, ["leases", "--expired"], terminal_width=160).output
    assert "3 lease(s)" in out and "10.6.0.9" in out and "ago" in out
    bad = runner.invoke(app, ["leases", "--subnet", "nope"])
    assert bad.exit_code == 2 and "nope" in bad.output
