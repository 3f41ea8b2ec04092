"""The ``fleetboot`` entry point: global options and the command groups."""

from __future__ import annotations

import importlib

import typer

from fleetboot.cli import inventory
from fleetboot.cli.common import CliState

app = typer.Typer(
    help="Fleetboot boots, configures and wires fleets of machines.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from fleetboot.version import version

        typer.echo(f"fleetboot {version()}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    config: str | None = typer.Option(
        None, "--config", "-c", envvar="FLEETBOOT_CONFIG",
        help="configuration file (default: ./fleetboot.yaml, then /etc/fleetboot/)",
    ),
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="print the version and exit"),
) -> None:
    ctx.obj = CliState(config)


app.add_typer(inventory.node_app, name="node")
app.add_typer(inventory.subnet_app, name="subnet")
app.add_typer(inventory.subnet6_app, name="subnet6")
app.add_typer(inventory.profile_app, name="profile")
app.add_typer(inventory.inventory_app, name="inventory")

# Command groups of the other concerns: (module, attribute, command name). A name of
# None adds the group's commands at the top level; "vm+" adds them to `fleetboot vm`.
_GROUPS = (
    ("fleetboot.cli.serve", "app", None),
    ("fleetboot.cli.nodes", "app", None),
    ("fleetboot.cli.nodes", "config_app", "config"),
    ("fleetboot.cli.images", "app", "image"),
    ("fleetboot.cli.vm", "app", "vm"),
    ("fleetboot.cli.passthrough", "vm_passthrough_app", "vm+"),
    ("fleetboot.cli.passthrough", "host_app", "host"),
    ("fleetboot.cli.passthrough", "flavor_app", "flavor"),
    ("fleetboot.cli.storm", "app", "storm"),
    ("fleetboot.cli.power", "app", "power"),
    ("fleetboot.cli.api", "token_app", "token"),
    ("fleetboot.cli.api", "app", None),
    ("fleetboot.cli.check", "app", None),
    ("fleetboot.cli.deploy", "app", "deploy"),
)


def _mount(groups: tuple[tuple[str, str, str | None], ...]) -> None:
    mounted: dict[str, typer.Typer] = {}
    for module_name, attr, name in groups:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        group: typer.Typer = getattr(module, attr)
        if name is None:
            app.registered_commands.extend(group.registered_commands)
        elif name.endswith("+"):
            mounted[name[:-1]].registered_commands.extend(group.registered_commands)
        else:
            mounted[name] = group
            app.add_typer(group, name=name)


_mount(_GROUPS)
