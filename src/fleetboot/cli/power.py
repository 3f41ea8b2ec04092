"""``fleetboot power``: node power through BMCs (IPMI, Redfish) and Fleetboot's VMs (QMP).

Passwords are read from a file or an environment variable (never a command-line
argument: those show in ``ps`` and shell history) and are never printed.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import typer
from rich.text import Text

from fleetboot.cli.common import console, err_console, friendly_errors, state, table
from fleetboot.power import service
from fleetboot.power.bulk import BulkSettings
from fleetboot.power.core import ConfigError, Operation, Outcome, summarize
from fleetboot.power.secrets import SecretBox, key_path
from fleetboot.vm.service import VmService, vm_settings

app = typer.Typer(help="Power nodes on, off and through a cycle via their BMCs.",
                  no_args_is_help=True)

NodesArg = typer.Argument(None, help="node names")
AllOpt = typer.Option(False, "--all", help="every node with power settings")
StateOpt = typer.Option([], "--state", help="nodes in this node state (repeat)")
TimeoutOpt = typer.Option(30.0, "--timeout", help="seconds per BMC, retries included")
RetriesOpt = typer.Option(2, "--retries", help="retries per BMC after a lost answer")
ConcurrencyOpt = typer.Option(64, "--concurrency", help="BMCs worked on at once")


def _box(ctx: typer.Context) -> SecretBox:
    return SecretBox(key_path(state(ctx).settings.state_dir))


def _vms(ctx: typer.Context) -> VmService:
    cli = state(ctx)
    return VmService(cli.db, vm_settings(cli.settings))


def _read_password(password_file: Path | None, password_env: str | None) -> str | None:
    if password_file is not None and password_env is not None:
        raise ConfigError("give the password with --password-file or --password-env, not both")
    if password_file is not None:
        if not password_file.is_file():
            raise ConfigError(f"the password file {password_file} does not exist")
        return password_file.read_text().rstrip("\n")
    if password_env is not None:
        value = os.environ.get(password_env)
        if value is None:
            raise ConfigError(f"the environment variable {password_env} is not set")
        return value
    return None


@app.command("set")
@friendly_errors
def power_set(
    ctx: typer.Context,
    node: str,
    driver: str = typer.Option(..., "--driver", help="ipmi | redfish | qmp"),
    address: str | None = typer.Option(None, "--address",
                                       help="BMC host/IP, a Redfish https:// URL, or the VM "
                                            "name for qmp (default: the node's name)"),
    port: int | None = typer.Option(None, "--port", help="default: 623 (ipmi), 443 (redfish)"),
    username: str | None = typer.Option(None, "--username"),
    password_file: Path | None = typer.Option(None, "--password-file",
                                              help="file holding the BMC password"),
    password_env: str | None = typer.Option(None, "--password-env",
                                            help="environment variable holding the password"),
    ca_file: str | None = typer.Option(None, "--ca-file",
                                       help="CA certificate(s) to trust for the Redfish TLS"),
    system: str | None = typer.Option(None, "--system",
                                      help="Redfish system id or path (default: the only one)"),
) -> None:
    """Configure how to reach a node's BMC. The password is stored encrypted."""
    password = _read_password(password_file, password_env)
    with state(ctx).db.session() as s:
        service.configure(s, _box(ctx), node, driver, address=address, port=port,
                          username=username, password=password, ca_file=ca_file, system=system)
    console.print(f"{node}: power through {driver}"
                  f"{' (password stored encrypted)' if password else ''}")


@app.command("unset")
@friendly_errors
def power_unset(ctx: typer.Context, node: str) -> None:
    """Forget a node's power settings."""
    with state(ctx).db.session() as s:
        service.unset(s, node)
    console.print(f"{node}: power settings removed")


@app.command("show")
@friendly_errors
def power_show(ctx: typer.Context, nodes: list[str] | None = NodesArg) -> None:
    """Power settings and the last answer of each BMC (passwords are never shown)."""
    now = time.time()
    with state(ctx).db.session() as s:
        infos = service.describe(s, nodes or None)
    tab = table("node", "driver", "address", "user", "password", "power", "checked",
                "last answer")
    for i in infos:
        where = f"{i.address}:{i.port}" if i.port else i.address
        tab.add_row(i.node, i.driver, where, i.username or "-",
                    "stored" if i.has_password else "-", i.state or "?",
                    f"{now - i.state_at:.0f} s ago" if i.state_at else "-",
                    Text(i.last_answer or "", style="dim"))
    console.print(tab)


def _print_outcomes(outcomes: list[Outcome], missing: list[str]) -> None:
    tab = table("node", "result", "power", "attempts", "time", "error")
    for o in sorted(outcomes, key=lambda o: o.node):
        tab.add_row(o.node, Text("ok", "green") if o.ok else Text("FAILED", "bold red"),
                    o.state.value if o.ok else "-", str(o.attempts), f"{o.seconds:.1f} s",
                    o.error or "")
    console.print(tab)
    for line in summarize(outcomes).lines():
        console.print(line)
    if missing:
        err_console.print(f"no power settings (skipped): {', '.join(missing)}; "
                          "configure them with `fleetboot power set NODE --driver ...`")


def _operate(ctx: typer.Context, operation: Operation, nodes: list[str] | None, every: bool,
             states: list[str], settings: BulkSettings) -> None:
    db = state(ctx).db
    with db.session() as s:
        chosen = service.select_nodes(s, nodes or [], every=every, states=states)
    outcomes, missing = asyncio.run(service.run(db, lambda: _box(ctx), chosen, operation,
                                                settings, lambda: _vms(ctx)))
    _print_outcomes(outcomes, missing)
    if any(not o.ok for o in outcomes) or (missing and not every):
        raise typer.Exit(1)


def _command(operation: Operation, doc: str) -> None:
    @friendly_errors
    def command(
        ctx: typer.Context,
        nodes: list[str] | None = NodesArg,
        every: bool = AllOpt,
        states: list[str] = StateOpt,
        timeout: float = TimeoutOpt,
        retries: int = RetriesOpt,
        concurrency: int = ConcurrencyOpt,
        soft_timeout: float = typer.Option(
            10.0, "--soft-timeout", help="off: seconds the OS gets before the hard power-off"),
    ) -> None:
        settings = BulkSettings(concurrency=concurrency, timeout_s=timeout, retries=retries,
                                soft_timeout_s=soft_timeout)
        _operate(ctx, operation, nodes, every, states, settings)

    command.__doc__ = doc
    app.command(operation.value)(command)


_command(Operation.STATUS, "Ask each node's BMC for its power state.")
_command(Operation.ON, "Power nodes on (and wait until their BMC says on).")
_command(Operation.OFF, "Power nodes off: the ACPI button first, then hard after --soft-timeout.")
_command(Operation.CYCLE, "Power nodes off (hard) and on again; a node that is off is switched on.")


def check_configured(ctx: typer.Context, node: str) -> None:
    """Fail before anything changes if ``node`` cannot be power-cycled."""
    with state(ctx).db.session() as s:
        if not service.describe(s, [service.inventory.get_node(s, node).name]):
            raise ConfigError(f"{node} has no power settings, so it cannot be rebooted; "
                              f"configure them with `fleetboot power set {node} --driver ...`")


def reboot_to_network(ctx: typer.Context, node: str, timeout: float = 60.0) -> Outcome:
    """Set a one-time network boot on the node's BMC and power-cycle it (``node boot --reboot``)."""
    db = state(ctx).db
    with db.session() as s:
        chosen = service.select_nodes(s, [node])
    outcomes, missing = asyncio.run(service.run(
        db, lambda: _box(ctx), chosen, Operation.REBOOT_NETWORK,
        BulkSettings(concurrency=1, timeout_s=timeout), lambda: _vms(ctx)))
    if missing:
        raise ConfigError(f"{node} has no power settings, so it cannot be rebooted; configure "
                          f"them with `fleetboot power set {node} --driver ...`")
    return outcomes[0]


@app.command("poll")
@friendly_errors
def power_poll(
    ctx: typer.Context,
    interval: float = typer.Option(60.0, "--interval", help="seconds between rounds"),
    once: bool = typer.Option(False, "--once", help="one round, then exit"),
    timeout: float = TimeoutOpt,
    concurrency: int = ConcurrencyOpt,
    come_back: float = typer.Option(900.0, "--come-back",
                                    help="flag a node not UP this many seconds after a "
                                         "power on, cycle or reboot"),
) -> None:
    """Ask every configured BMC for its power state at an interval.

    The states show in `fleetboot nodes` and `power show`; changes, silent BMCs and nodes
    not back after a power action go on the timelines."""
    from fleetboot.power.poller import PowerPoller

    if interval <= 0:
        raise ConfigError("--interval must be positive")
    poller = PowerPoller(state(ctx).db, lambda: _box(ctx), interval,
                         BulkSettings(concurrency=concurrency, timeout_s=min(timeout, interval),
                                      retries=1), lambda: _vms(ctx), come_back)

    async def main() -> None:
        if once:
            outcomes = await poller.poll_once()
            for line in summarize(outcomes).lines():
                console.print(line)
            if poller.not_back:
                err_console.print(f"not back after a power action: {', '.join(poller.not_back)}")
            return
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        import signal

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await poller.run(stop)

    asyncio.run(main())
