"""Showing a storm: the per-phase table, the waterfall picture, the RESULT line."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from fleetboot.storm.plan import PHASES
from fleetboot.storm.runner import StackRun
from fleetboot.storm.stats import PhaseSummary, detail_percentiles, result_line

if TYPE_CHECKING:
    from matplotlib.axes import Axes

PHASE_COLOURS = {
    "pxe_dhcp": "#1f77b4", "tftp": "#ff7f0e", "ipxe_dhcp": "#17becf", "script": "#9467bd",
    "kernel": "#2ca02c", "initrd": "#98df8a", "os_dhcp": "#8c564b", "config": "#e377c2",
    "up": "#d62728",
}


def _ms(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value * 1000:,.0f}" if value < 10 else f"{value:,.1f} s"


def _row(s: PhaseSummary) -> list[str]:
    return [s.name, str(s.count), _ms(s.p50), _ms(s.p90), _ms(s.p99), _ms(s.max),
            str(s.retries), str(s.failed)]


def stack_table(run: StackRun) -> Table:
    s = run.summary
    title = (f"{run.kind}: {s.up}/{s.n} UP in {s.storm_s:.2f} s, {s.failed} failed, "
             f"{s.retries} retries (tcp {run.tcp_retransmissions})")
    table = Table(title=title, header_style="bold")
    for col in ("phase", "done", "p50 ms", "p90 ms", "p99 ms", "max ms", "retries", "failed"):
        table.add_column(col, justify="left" if col == "phase" else "right")
    for phase in s.phases:
        table.add_row(*_row(phase))
    table.add_row(*_row(s.boot), style="bold")
    return table


def server_lines(run: StackRun) -> list[str]:
    """Counters that locate an overload: server drops, listen overflows, simulator health."""
    srv = run.server
    lines = [
        f"{run.kind}: server UDP receive-buffer drops {srv.get('server.Udp.RcvbufErrors', 0)}, "
        f"listen overflows {srv.get('server.TcpExt.ListenOverflows', 0)}, "
        f"server TCP retransmits {srv.get('server.Tcp.RetransSegs', 0)}",
    ]
    lines.append(f"{run.kind}: simulator used {run.client.get('cpu_s', 0)} s CPU in "
                 f"{run.client.get('wall_s', 0)} s; host load average "
                 f"{run.client.get('host.load1_before', 0):.1f} before, "
                 f"{run.client.get('host.load1_after', 0):.1f} after")
    if run.simulator_drops:
        lines.append(f"{run.kind}: WARNING the simulator itself dropped {run.simulator_drops} "
                     "packets; its figures overstate the server's losses")
    for phase in ("script", "config", "up"):
        connect = detail_percentiles(run.results, phase, "connect_ms")
        head = detail_percentiles(run.results, phase, "head_ms")
        if connect and head:
            lines.append(f"{run.kind}: {phase} over HTTP: connect p50/p90/max "
                         f"{connect[0]:.0f}/{connect[1]:.0f}/{connect[2]:.0f} ms, answer "
                         f"p50/p90/max {head[0]:.0f}/{head[1]:.0f}/{head[2]:.0f} ms")
    for reason, count in run.summary.errors:
        lines.append(f"{run.kind}: {count} node(s) failed: {reason}")
    return lines


def print_report(runs: Mapping[str, StackRun], console: Console | None = None) -> str:
    """Print the tables and counters; return the RESULT line (also printed, last)."""
    out = console or Console()
    for run in runs.values():
        out.print(stack_table(run))
        for line in server_lines(run):
            out.print(line, highlight=False, soft_wrap=True)
    n = next(iter(runs.values())).plan.n if runs else 0
    line = result_line(n, {k: r.summary for k, r in runs.items()})
    out.print(line, highlight=False, soft_wrap=True)
    return line


def draw(runs: Mapping[str, StackRun], path: Path) -> None:
    """A waterfall per stack (one row per node, coloured by phase) and the UP curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    kinds = list(runs)
    fig, axes = plt.subplots(len(kinds) + 1, 1, figsize=(11, 3.2 * (len(kinds) + 1)),
                             constrained_layout=True)
    horizon = max((r.summary.storm_s for r in runs.values()), default=1.0) * 1.03 or 1.0
    for ax, kind in zip(axes[:-1], kinds, strict=True):
        _waterfall(ax, runs[kind], horizon)
    _up_curves(axes[-1], runs, horizon)
    handles = [Patch(color=c, label=p) for p, c in PHASE_COLOURS.items()]
    axes[0].legend(handles=handles, loc="upper right", ncol=5, fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _waterfall(ax: Axes, run: StackRun, horizon: float) -> None:
    nodes = sorted(run.results, key=lambda r: (r.start, r.end))
    for phase in PHASES:
        ys, starts, ends = [], [], []
        for y, node in enumerate(nodes):
            for rec in node.phases:
                if rec.name == phase:
                    ys.append(y)
                    starts.append(rec.start)
                    ends.append(max(rec.end, rec.start + horizon / 2000))
        if ys:
            ax.hlines(ys, starts, ends, colors=PHASE_COLOURS[phase], linewidth=1.2)
    failed = [y for y, n in enumerate(nodes) if not n.ok]
    if failed:
        ax.plot([nodes[y].end for y in failed], failed, "kx", markersize=3,
                label="failed")
    s = run.summary
    ax.set_title(f"{run.kind}: {s.up}/{s.n} nodes UP in {s.storm_s:.1f} s, "
                 f"{s.failed} failed, {s.retries} retries", fontsize=10)
    ax.set_xlim(0, horizon)
    ax.set_ylim(len(nodes), -1)
    ax.set_ylabel("node")


def _up_curves(ax: Axes, runs: Mapping[str, StackRun], horizon: float) -> None:
    for kind, run in runs.items():
        ups = sorted(r.up_at for r in run.results if r.up_at is not None)
        ax.step([0.0, *ups], range(len(ups) + 1), where="post", label=kind)
    ax.set_xlim(0, horizon)
    ax.set_xlabel("seconds since the storm began")
    ax.set_ylabel("nodes UP")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
