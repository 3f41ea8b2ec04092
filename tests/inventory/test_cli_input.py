"""Command-line input that used to end in a traceback or be stored silently (issue 11)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fleetboot.cli.main import app
from fleetboot.protocols.dhcp.settings import DhcpSettings
from fleetboot.server.dhcp import DhcpServiceError, open_listeners


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("FLEETBOOT_DB", f"sqlite:///{tmp_path}/cli.db")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args))


def _one_line_error(result, *expected: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())  # rich wraps long lines at the terminal width
    for part in expected:
        assert part in text, text


def test_node_add_with_the_same_mac_twice(run) -> None:  # type: ignore[no-untyped-def]
    mac = "52:54:00:aa:bb:01"
    _one_line_error(run("node", "add", "n1", "--nic", mac, "--nic", mac), "given twice")
    assert run("node", "add", "n1", "--nic", mac).exit_code == 0
    _one_line_error(run("node", "add", "n2", "--nic", mac), "already belongs to node 'n1'")
    _one_line_error(run("node", "edit", "n1", "--add-nic", mac), "already belongs")


def test_profile_script_that_does_not_exist(run) -> None:  # type: ignore[no-untyped-def]
    _one_line_error(run("profile", "add", "p", "--script", "/nonexistent"),
                    "/nonexistent", "No such file")


def test_profile_files_are_checked_against_the_boot_root(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _one_line_error(run("profile", "add", "p", "--kernel", "vmlinuz"),
                    "boot root", "does not exist")
    (tmp_path / "bootroot").mkdir()
    _one_line_error(run("profile", "add", "p", "--kernel", "vmlinuz"),
                    "not a file under the boot root", "fleetboot image add")
    _one_line_error(run("profile", "add", "p", "--kernel", "../../etc/passwd"), "no '..'")


def test_a_database_url_without_a_driver(run, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("FLEETBOOT_DB", "mysql://root@localhost/fleetboot")
    _one_line_error(run("node", "list"), "mysql", "postgresql+psycopg://", "database.url")


def test_an_inventory_whose_nodes_is_a_mapping(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "inv.yaml").write_text("nodes:\n  n1: {interfaces: []}\n")
    _one_line_error(run("inventory", "import", str(tmp_path / "inv.yaml")),
                    "nodes must be a list of entries")


@pytest.mark.parametrize("args, expected", [
    (["node", "add", "n 1", "--nic", "52:54:00:aa:bb:01"], "no spaces"),
    (["node", "add", "n1", "--nic", "ff:ff:ff:ff:ff:ff"], "broadcast"),
    (["node", "add", "n1", "--nic", "52:54:00:aa:bb:01", "--arch", "pdp11"],
     "unknown architecture"),
    (["subnet", "add", "lab", "10.5.0.0/24", "--mtu", "70000"], "MTU 70000 is out of range"),
    (["subnet", "add", "lab", "10.5.0.0/24", "--lease-seconds", "5000000000"], "out of range"),
])
def test_values_are_refused_from_the_command_line(run, args: list[str], expected: str) -> None:  # type: ignore[no-untyped-def]
    _one_line_error(run(*args), expected)
    assert "lab" not in run("subnet", "list").output


def test_an_interface_that_does_not_exist_names_the_setting_to_fix() -> None:
    with pytest.raises(DhcpServiceError) as err:
        open_listeners(DhcpSettings(interfaces=("fbnoiface9",)))
    assert "dhcp.interfaces" in str(err.value) and "server_id" not in str(err.value)
