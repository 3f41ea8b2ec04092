"""`fleetboot token|audit`, `--version`, `-o json|yaml`, plain output and MACs that stay MACs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fleetboot.api import audit
from fleetboot.cli.main import app
from fleetboot.version import version


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("FLEETBOOT_DB", f"sqlite:///{tmp_path}/cli.db")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    yield lambda *args: runner.invoke(app, list(args))
    audit.set_actor(None)  # the CLI names its user for the rest of the process


def test_version(run) -> None:  # type: ignore[no-untyped-def]
    result = run("--version")
    assert result.exit_code == 0 and result.output == f"fleetboot {version()}\n"


def test_a_mac_is_not_turned_into_an_emoji(run) -> None:  # type: ignore[no-untyped-def]
    result = run("node", "add", "web1", "--nic", "52:54:00:ab:cd:01")
    assert result.exit_code == 0
    assert "52:54:00:ab:cd:01" in result.output and "\N{NEGATIVE SQUARED AB}" not in result.output


def test_list_and_show_as_json_yaml_and_plain_text(run) -> None:  # type: ignore[no-untyped-def]
    assert run("subnet", "add", "lab", "10.5.0.0/24", "--pool",
               "10.5.0.10-10.5.0.20").exit_code == 0
    assert run("node", "add", "n1", "--nic", "52:54:00:aa:bb:01",
               "--nic", "52:54:00:aa:bb:02,boot").exit_code == 0
    nodes = json.loads(run("node", "list", "-o", "json").output)
    assert nodes == [{"name": "n1", "arch": "x86_64", "boot": "default=local",
                      "interfaces": [{"mac": "52:54:00:aa:bb:01", "name": "", "boot": False},
                                     {"mac": "52:54:00:aa:bb:02", "name": "", "boot": True}]}]
    shown = yaml.safe_load(run("node", "show", "n1", "-o", "yaml").output)
    assert shown["interfaces"][1]["boot"] is True
    subnets = json.loads(run("subnet", "list", "--output", "json").output)
    assert subnets[0]["pools"] == ["10.5.0.10-10.5.0.20"]
    assert json.loads(run("nodes", "-o", "json").output)[0]["state"] == "OFF"
    assert json.loads(run("leases", "-o", "json").output) == []
    plain = run("node", "list").output  # not a terminal: no box drawing, one line per node
    assert not any(c in plain for c in "│┃━─┏")
    assert plain.splitlines()[1].split() == ["n1", "x86_64", "52:54:00:aa:bb:01,",
                                             "52:54:00:aa:bb:02*", "default=local"]
    bad = run("node", "list", "-o", "xml")
    assert bad.exit_code == 2 and "xml" in bad.output


def test_tokens_and_the_audit_log(run) -> None:  # type: ignore[no-untyped-def]
    made = run("token", "create", "ci", "--role", "operator")
    assert made.exit_code == 0, made.output
    secret = made.output.strip().splitlines()[-1]
    assert secret.startswith("fbt_")
    assert run("token", "create", "x", "--role", "king").exit_code == 2
    listed = json.loads(run("token", "list", "-o", "json").output)
    assert [(t["name"], t["role"]) for t in listed] == [("ci", "operator")]
    assert secret not in run("token", "list").output
    assert run("node", "add", "n1", "--nic", "52:54:00:aa:bb:01").exit_code == 0
    assert run("node", "boot", "n1", "wait").exit_code == 0
    assert run("token", "revoke", "ci").exit_code == 0
    assert run("token", "revoke", "ci").exit_code == 2
    entries = json.loads(run("audit", "-o", "json").output)
    assert [(e["action"], e["kind"], e["target"]) for e in entries][:3] == [
        ("update", "api_tokens", "ci"), ("update", "nodes", "n1"),
        ("create", "interfaces", "52:54:00:aa:bb:01")]
    boot = entries[1]
    assert boot["actor"].startswith("cli:") and boot["via"] == "fleetboot node boot n1 wait"
    assert (boot["before"]["default_action"], boot["after"]["default_action"]) == (
        "local", "wait")
    table = run("audit", "--kind", "nodes").output
    assert "default_action: local -> wait" in table
