"""Subnets from the command line (issue 11, item 16): reservations are listed, a
subnet is edited in place, and removing one that holds something asks first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fleetboot.cli.main import app
from fleetboot.inventory import service
from fleetboot.inventory.db import Database
from fleetboot.inventory.models import Lease


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("FLEETBOOT_DB", f"sqlite:///{tmp_path}/cli.db")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def invoke(*args: str, stdin: str | None = None):  # type: ignore[no-untyped-def]
        result = runner.invoke(app, list(args), input=stdin)
        result.text = " ".join(result.output.split())  # rich wraps at the terminal width
        return result

    return invoke


@pytest.fixture
def lab(run):  # type: ignore[no-untyped-def]
    assert run("subnet", "add", "lab", "10.5.0.0/24", "--router", "10.5.0.1",
               "--pool", "10.5.0.100-10.5.0.199").exit_code == 0
    assert run("node", "add", "n1", "--nic", "52:54:00:aa:bb:01").exit_code == 0
    assert run("subnet", "reserve", "lab", "52:54:00:aa:bb:01", "10.5.0.20",
               "--hostname", "n1").exit_code == 0
    return run


def test_reservations_are_listed(lab) -> None:  # type: ignore[no-untyped-def]
    assert "10.5.0.20" in lab("subnet", "list").text
    shown = lab("subnet", "show", "lab").text
    assert "10.5.0.20 │ 52:54:00:aa:bb:01 │ n1 │ n1" in shown
    assert "10.5.0.100 │ 10.5.0.199" in shown and "router: 10.5.0.1" in shown


def test_a_subnet_is_edited_in_place(lab, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = Database(f"sqlite:///{tmp_path}/cli.db")
    with db.session() as s:
        before = service.get_subnet(s, "lab").id
    result = lab("subnet", "set", "lab", "--mtu", "9000", "--dns", "10.5.0.2",
                 "--remove-pool", "10.5.0.100-10.5.0.199", "--add-pool", "10.5.0.150-10.5.0.160",
                 "--clear", "router")
    assert result.exit_code == 0, result.output
    with db.session() as s:
        sub = service.get_subnet(s, "lab")
        assert (sub.id, sub.mtu, sub.dns_servers, sub.router) == (before, 9000, ["10.5.0.2"],
                                                                   None)
        assert [(p.start, p.end) for p in sub.pools] == [("10.5.0.150", "10.5.0.160")]
    db.dispose()
    refused = lab("subnet", "set", "lab", "--mtu", "70000")
    assert refused.exit_code == 2 and "MTU 70000 is out of range" in refused.text
    refused = lab("subnet", "set", "lab", "--cidr", "10.6.0.0/24")
    assert refused.exit_code == 2 and "not a host address of 10.6.0.0/24" in refused.text


def test_removing_a_subnet_that_holds_something_asks(lab, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = Database(f"sqlite:///{tmp_path}/cli.db")
    with db.session() as s:
        s.add(Lease(address="10.5.0.100", mac="52:54:00:aa:bb:02",
                    subnet_id=service.get_subnet(s, "lab").id,
                    expires=datetime.now(UTC) + timedelta(hours=1)))
    refused = lab("subnet", "remove", "lab")  # not a terminal: no question, an error
    assert refused.exit_code == 2
    assert "1 pool, 1 reservation, 1 lease" in refused.text and "--yes" in refused.text
    assert "lab" in lab("subnet", "list").text
    assert lab("subnet", "remove", "lab", "--yes").exit_code == 0
    assert "10.5.0.0/24" not in lab("subnet", "list").text
    assert lab("subnet", "add", "empty", "10.9.0.0/24").exit_code == 0
    assert lab("subnet", "remove", "empty").exit_code == 0  # nothing to lose: no question
    db.dispose()


def test_an_export_with_secrets_is_private(lab, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert lab("inventory", "export", "-o", str(tmp_path / "all.yaml"), "--secrets").exit_code == 0
    assert (tmp_path / "all.yaml").stat().st_mode & 0o777 == 0o600
    assert "secrets: included" in (tmp_path / "all.yaml").read_text()
    assert "secrets: omitted" in lab("inventory", "export").output
