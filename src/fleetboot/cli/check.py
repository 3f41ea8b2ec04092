"""``fleetboot check``: report configuration mistakes before a node trips over them."""

from __future__ import annotations

import typer

from fleetboot.cli.common import console, friendly_errors, state

app = typer.Typer()


@app.command("check")
@friendly_errors
def check(ctx: typer.Context) -> None:
    """Check the configuration and inventory: boot root, server_address, the
    architecture table's boot programs, profiles' kernels and initrds. Exit 1 on
    any finding."""
    from fleetboot.server.config_check import check_configuration

    cli = state(ctx)
    with cli.db.session() as session:
        findings = check_configuration(cli.settings, session)
    for line in findings:
        console.print(f"[yellow]warning:[/] {line}", soft_wrap=True)
    if findings:
        console.print(f"{len(findings)} problem(s) found")
        raise typer.Exit(1)
    console.print("configuration OK")
