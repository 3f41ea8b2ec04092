"""`fleetboot nodes|timeline|why|config` through Typer's runner, as the integrator mounts them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import typer
from nodeconfig_helpers import make_fleet
from typer.testing import CliRunner

from fleetboot.cli import common, nodes
from fleetboot.cli.common import CliState
from fleetboot.inventory.db import Database
from fleetboot.nodeconfig.states import NodeStatus, State
from fleetboot.nodeconfig.timeline import BatchWriter, EventRecord


def _root() -> typer.Typer:
    root = typer.Typer()

    @root.callback()
    def main(ctx: typer.Context) -> None:
        ctx.obj = CliState(None)

    root.registered_commands.extend(nodes.app.registered_commands)
    root.add_typer(nodes.config_app, name="config")
    return root


Run = Callable[..., "typer.testing.Result"]


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Run, Database]:
    url = f"sqlite:///{tmp_path}/cli.db"
    monkeypatch.setenv("FLEETBOOT_DB", url)
    monkeypatch.setattr(common.console, "width", 160)  # made at import: COLUMNS is too late
    monkeypatch.chdir(tmp_path)
    db = Database(url)
    db.create_schema()
    runner, root = CliRunner(), _root()
    return (lambda *args, **kw: runner.invoke(root, list(args), **kw)), db


def test_config_set_show_unset(cli: tuple[Run, Database], tmp_path: Path) -> None:
    run, db = cli
    make_fleet(db)
    assert run("config", "set", "a", "mounts", "[{source: 'srv:/x', target: /x}]").exit_code == 0
    (tmp_path / "acc.yaml").write_text("- name: bob\n  ssh_keys: ['ssh-ed25519 AAAA bob']\n")
    assert run("config", "set", "a", "accounts", "--file", "acc.yaml").exit_code == 0
    shown = run("config", "show", "a")
    assert shown.exit_code == 0 and '"mounts":[{"options":"defaults"' in shown.output
    assert '"name":"bob"' in shown.output
    public = run("config", "show", "a", "--public")
    assert "bob" not in public.output and '"redacted"' in public.output
    assert run("config", "show", "a", "hostname").output == '"host-a"\n'
    assert run("config", "unset", "a", "mounts").exit_code == 0
    assert "srv:/x" not in run("config", "show", "a").output
    assert run("config", "set-default", "routes", "[]").exit_code == 0
    assert '"routes": []' in run("config", "defaults").output
    assert "accounts" in run("config", "sections").output


def test_config_errors_are_one_line(cli: tuple[Run, Database]) -> None:
    run, db = cli
    make_fleet(db)
    bad = run("config", "set", "a", "files", "[{path: relative}]")
    assert bad.exit_code == 2 and "absolute path" in bad.output and "Traceback" not in bad.output
    assert "unknown section" in run("config", "set", "a", "rpms", "[]").output
    assert "no node named" in run("config", "set", "ghost", "mounts", "[]").output
    assert "give the value" in run("config", "set", "a", "mounts").output
    assert "has no section" in run("config", "unset", "a", "mounts").output


async def _record_a_boot(db: Database, node_id: int) -> None:
    writer = BatchWriter(db)
    await writer.start()
    t = 1_800_000_000.0
    boot: list[tuple[float, str, str, dict[str, Any]]] = [
        (t, "dhcp", "DISCOVER", {}), (t + 4, "dhcp", "DISCOVER", {"retransmit": 1}),
        (t + 4.2, "dhcp", "ACK", {}), (t + 5, "http", "file",
                                       {"path": "vmlinuz", "size": 6 << 20, "duration_s": 2}),
        (t + 20, "node", "state", {"state": "UP"}),
    ]
    for i, (at, source, kind, detail) in enumerate(boot):
        writer.event(EventRecord(node_id, 1, at, i, source, kind, None, None, None, detail))
    writer.state(node_id, NodeStatus(State.UP, since=t + 20, boot=1, boot_started=t,
                                     last_boot_s=20.0, address="10.0.0.5"))
    await writer.stop()


async def test_nodes_timeline_and_why(cli: tuple[Run, Database]) -> None:
    run, db = cli
    fleet = make_fleet(db)
    await _record_a_boot(db, fleet["a"].id)
    listing = run("nodes")
    assert listing.exit_code == 0
    row_a = next(line for line in listing.output.splitlines() if " a " in line)
    assert "UP" in row_a and "10.0.0.5" in row_a and "20.0 s" in row_a
    row_b = next(line for line in listing.output.splitlines() if " b " in line)
    assert "OFF" in row_b
    tl = run("timeline", "a")
    assert tl.exit_code == 0, tl.output
    assert "boot 1" in tl.output and "retransmission #1" in tl.output
    assert "file vmlinuz" in tl.output and "6.0 MiB" in tl.output
    assert "with no event" in tl.output  # the 4 s firmware retransmit gap shows
    assert tl.output.index("DISCOVER") < tl.output.index("ACK") < tl.output.index("vmlinuz")
    assert '"kind": "ACK"' in run("timeline", "a", "--json").output
    assert "no recorded events" in run("timeline", "b").output
    why = run("why", "a")
    assert why.exit_code == 0 and "local (decided by node default)" in why.output
    assert "state now: UP" in why.output
    assert run("why", "ghost").exit_code == 2
