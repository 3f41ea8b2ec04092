"""Rich views of a boot run (``fleetboot.lab.boots``): a live table and a results table.

On a terminal the table updates in place; in a log (CI, ``| tee``) each state
change is one line and the table is printed once at the end.
"""

from __future__ import annotations

import statistics
import time

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from fleetboot.lab.boots import BootReport, BootRun, VmProgress

# (column title, the state whose first sighting the column shows)
PHASES = (("PXE", "PXEBOOTING"), ("kernel", "BOOTING"), ("config", "CONFIGURING"), ("UP", "UP"))
STATE_STYLE = {"UP": "bold green", "FAILED": "bold red", "WAITING": "yellow",
               "starting": "dim", "firmware": "dim"}


def _seconds(value: float | None) -> str:
    return f"{value:5.1f}" if value is not None else "    ."


def _state(p: VmProgress) -> Text:
    if p.error is not None:
        return Text("FAILED", style="bold red")
    return Text(p.state, style=STATE_STYLE.get(p.state, "cyan"))


def progress_table(run: BootRun, *, server_column: bool = False) -> Table:
    """One row per VM: its state and when it first reached each phase."""
    now = run.finished_wall or time.time()
    tab = Table(title=f"{len(run.progress)} VMs booting at once under TCG "
                      f"({now - run.began_wall:.0f} s)", title_justify="left",
                header_style="bold",
                caption="seconds after each QEMU started, as the server recorded them")
    titles = ["VM", "how it boots", "state", *(p for p, _ in PHASES)]
    if server_column:
        titles.append("server")
    for col in [*titles, "address"]:
        numeric = col in dict(PHASES) or col == "server"
        tab.add_column(col, justify="right" if numeric else "left")
    for p in run.progress.values():
        row: list[str | Text] = [p.machine.name, p.machine.description, _state(p),
               *(_seconds(p.seen.get(s)) for _, s in PHASES)]
        if server_column:
            row.append(_seconds(p.server_boot_s))
        tab.add_row(*row, p.address or "-")
    return tab


class LiveProgress:
    """The ``on_update`` callback of ``FleetLab.boot``; use it as a context manager."""

    def __init__(self, console: Console, *, server_column: bool = False) -> None:
        self.console = console
        self.server_column = server_column
        self.live: Live | None = None
        self.printed: dict[str, str] = {}

    def __enter__(self) -> LiveProgress:
        if self.console.is_terminal:
            self.live = Live(console=self.console, refresh_per_second=4)
            self.live.__enter__()
        return self

    def __call__(self, run: BootRun) -> None:
        table = progress_table(run, server_column=self.server_column)
        if self.live is not None:
            self.live.update(table)
            return
        for name, p in run.progress.items():
            shown = "FAILED" if p.error else p.state
            if self.printed.get(name) != shown:
                self.printed[name] = shown
                self.console.print(f"  {p.elapsed(time.time()):6.1f} s  {name:8} {shown}")
        if run.finished_wall is not None:
            self.console.print(table)

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)


def summary_line(report: BootReport) -> str:
    """``all UP in 61.2 s; per VM min 30.1 / median 45.0 / max 61.0 s``."""
    ups = report.up_times()
    head = (f"all {len(report.vms)} UP in {report.all_up_s:.1f} s" if report.ok
            else f"{report.failed} of {len(report.vms)} failed")
    if not ups:
        return head
    return (f"{head}; per VM min {ups[0]:.1f} / median {statistics.median(ups):.1f} / "
            f"max {ups[-1]:.1f} s")
