"""The CLI end to end through Typer's runner, on a fresh SQLite file."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fleetboot.cli.main import app


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("FLEETBOOT_DB", f"sqlite:///{tmp_path}/cli.db")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args))


def test_register_and_list(run) -> None:  # type: ignore[no-untyped-def]
    result = run("subnet", "add", "lab", "10.5.0.0/24", "--pool", "10.5.0.10-10.5.0.20")
    assert result.exit_code == 0
    assert run("node", "add", "n1", "--nic", "52:54:00:aa:bb:01,boot").exit_code == 0
    out = run("node", "list").output
    assert "n1" in out and "52:54:00:aa:bb:01*" in out


def test_errors_are_one_clean_line(run) -> None:  # type: ignore[no-untyped-def]
    result = run("subnet", "add", "lab", "10.5.0.0/33")
    assert result.exit_code == 2
    assert "not an IPv4 network" in result.output and "Traceback" not in result.output
    result = run("node", "boot", "ghost", "local")
    assert result.exit_code == 2 and "no node named 'ghost'" in result.output


def test_bad_config_file_is_explained(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "bad.yaml").write_text("dhcp: {port: seventy}\n")
    result = run("--config", str(tmp_path / "bad.yaml"), "node", "list")
    assert result.exit_code == 2 and "dhcp.port" in result.output


def test_an_unreachable_database_is_explained(run, tmp_path: Path,  # type: ignore[no-untyped-def]
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETBOOT_DB", f"sqlite:///{tmp_path}/no/such/dir/fleetboot.db")
    for command in (["node", "list"], ["nodes"]):
        result = run(*command)
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert "cannot open the database" in result.output and "database.url" in result.output
