"""``fleetboot storm``: boot-storm a stack with simulated machines and measure it.

Needs root (it creates network namespaces). Example:

    fleetboot storm run --nodes 1000 --window 0 --stack classic --stack fleetboot \\
        --picture storm.png
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import typer

from fleetboot.cli.common import console, fail, friendly_errors
from fleetboot.storm.fleetboot_stack import parse_settings
from fleetboot.storm.plan import ALL_STACKS, STACKS, KiB, MiB, Payload, StackKind, Timing, make_plan
from fleetboot.storm.report import draw, print_report
from fleetboot.storm.runner import StackRun, run_storm

app = typer.Typer(help="Boot storms: many simulated machines PXE-booting at once.",
                  no_args_is_help=True)


def _kinds(stack: list[str]) -> tuple[StackKind, ...]:
    kinds: list[StackKind] = []
    for name in stack or list(STACKS):
        if name not in ALL_STACKS:
            raise fail(f"unknown stack {name!r}; choose from {', '.join(ALL_STACKS)}")
        kinds.append(name)
    return tuple(kinds)


@app.command("run")
@friendly_errors
def run(
    nodes: int = typer.Option(100, "--nodes", "-n", min=1, help="simulated machines"),
    window: float = typer.Option(0.0, min=0.0, help="spread power-on over this many seconds"),
    stack: list[str] = typer.Option(
        [], "--stack", help="classic, fleetboot and/or proxy (default: classic and fleetboot)"),
    kernel_mib: float = typer.Option(4.0, min=0.0, help="kernel size, MiB"),
    initrd_mib: float = typer.Option(4.0, min=0.0, help="initrd size, MiB"),
    bootfile_kib: float = typer.Option(100.0, min=1.0, help="TFTP boot program size, KiB"),
    os_boot_s: float = typer.Option(0.0, min=0.0, help="seconds from initrd to the OS's DHCP"),
    seed: int = typer.Option(1, help="seed of start offsets and transaction ids"),
    workdir: Path | None = typer.Option(None, help="keep configs, logs and results here"),
    picture: Path | None = typer.Option(None, help="write the waterfall PNG here"),
    progress: bool = typer.Option(False, help="print progress while the storm runs"),
    setting: list[str] = typer.Option(
        [], "--set", metavar="KEY=VALUE",
        help="a Fleetboot setting for the storm, e.g. admission.max_booting=300"),
) -> None:
    """Storm each stack with the same machines; print per-phase figures and a RESULT line."""
    if os.geteuid() != 0:
        raise fail("a storm creates network namespaces: run it as root")
    payload = Payload(bootfile=int(bootfile_kib * KiB), kernel=int(kernel_mib * MiB),
                      initrd=int(initrd_mib * MiB))
    plan = make_plan(nodes, window, seed, payload=payload, timing=Timing(os_boot_s=os_boot_s))
    kinds = _kinds(stack)
    settings = parse_settings(setting)
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="fleetboot-storm-") as tmp:
            runs = run_storm(plan, kinds, Path(tmp), progress, settings)
    else:
        runs = run_storm(plan, kinds, workdir, progress, settings)
    if picture is not None:
        draw(runs, picture)
    print_report(runs, console)


@app.command("report")
@friendly_errors
def report(
    results: list[Path] = typer.Argument(..., help="results.json files written by a storm"),
    picture: Path | None = typer.Option(None, help="write the waterfall PNG here"),
) -> None:
    """Show stored storm results again (and draw them)."""
    runs: dict[str, StackRun] = {}
    for path in results:
        try:
            run = StackRun.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError) as exc:
            raise fail(f"{path}: not storm results ({exc})") from None
        runs[run.kind] = run
    if picture is not None:
        draw(runs, picture)
    print_report(runs, console)
