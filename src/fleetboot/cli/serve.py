"""``fleetboot serve``: run DHCP, TFTP, HTTP boot and node configuration in one process."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
import uvloop

from fleetboot.cli.common import console, friendly_errors, state

app = typer.Typer()


@app.command("serve")
@friendly_errors
def serve(
    ctx: typer.Context,
    config: str | None = typer.Option(
        None, "--config", "-c", help="configuration file (same as the global --config)"),
    log_level: str = typer.Option("info", help="debug | info | warning | error"),
    log_format: str = typer.Option("text", "--log-format", help="text | json (one object "
                                   "per line)"),
    ready_file: Path | None = typer.Option(
        None, help="write this file once every service listens (for scripts and tests)"),
) -> None:
    """Serve DHCP+PXE, TFTP, HTTP boot and node configuration until SIGINT/SIGTERM;
    SIGHUP reloads the configuration file (what can change while serving)."""
    from fleetboot.logjson import configure as configure_logging
    from fleetboot.server.assemble import assemble
    from fleetboot.server.reload import ConfigReloader, assembly_appliers
    from fleetboot.server.runtime import tune_gc_for_packets
    from fleetboot.server.startup_checks import startup_warnings

    configure_logging(log_level, log_format)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    tune_gc_for_packets()
    cli = state(ctx)
    if config is not None:
        cli.config_path = config
    settings = cli.settings
    for warning in startup_warnings(settings):
        logging.getLogger("fleetboot.serve").warning("%s", warning)
    assembly = assemble(settings, cli.db)
    console.print(f"fleetboot serving {settings.server_address} "
                  f"(database {settings.database.url}, boot root {settings.boot_root})")

    def started() -> None:
        if ready_file is not None:
            ready_file.write_text("ready\n")

    reloader = ConfigReloader(cli.config_path, settings, assembly_appliers(assembly))
    uvloop.run(assembly.runtime.run_forever(started, on_hangup=reloader.reload))
