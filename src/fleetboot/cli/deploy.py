"""``fleetboot deploy IMAGE NODE...``: write a disk image to many nodes at once.

``deploy IMAGE NODE...`` (the ``start`` command) records one deployment per
node (all-or-nothing: an unknown or busy node refuses the whole deployment),
then for ``--transport multicast`` serves the image to the deployment's own
group (TTL 1) at ``--rate`` until every node's receiver has verified or failed,
with a live table per node (percent, MB/s, chunks re-asked, state). With
``--transport http`` the nodes fetch ``/boot/files/disks/<id>/`` from the HTTP
server by Range; the command records the deployment and prints the URL.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import typer
from rich.live import Live
from rich.table import Table
from typer.core import TyperGroup

from fleetboot.cli.common import console, friendly_errors, state, table
from fleetboot.reload import service
from fleetboot.reload.mcast import Member, Sender
from fleetboot.reload.models import DeployState
from fleetboot.reload.sender import parse_rate
from fleetboot.reload.store import DiskImageStore
from fleetboot.reload.transport import image_info, load_records, run_sender, sender_socket


class _DefaultStart(TyperGroup):
    """``fleetboot deploy IMAGE NODE...`` means ``fleetboot deploy start IMAGE NODE...``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["start", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(cls=_DefaultStart, no_args_is_help=True,
                  help="Write a disk image to many nodes at once (multicast or HTTP).")


def _group_for(session_id: int) -> str:
    """One administratively scoped group per deployment (239.77.x.y)."""
    return f"239.77.{session_id >> 8 & 255}.{max(1, session_id & 255)}"


def _progress(sender: Sender, names: list[str], started: float) -> Table:
    tab = Table("node", "percent", "MB/s", "re-asked", "state", title="deployment")
    by_name = {m.name: m for m in sender.members.values() if m.name}
    elapsed = max(0.001, time.monotonic() - started)
    total = max(1, sender.info.chunks)
    for name in names:
        m = by_name.get(name)
        if m is None:
            tab.add_row(name, "-", "-", "-", "waiting to join")
            continue
        pct = 100 if m.status == "verified" else 100 * m.chunks_done // total
        rate = m.chunks_done * sender.info.virtual_size / total / elapsed / 1e6
        tab.add_row(name, f"{pct} %", f"{rate:.1f}", str(max(0, m.requests - 1)), m.status)
    return tab


def _outcome(m: Member | None, total: int) -> tuple[DeployState, int, str]:
    if m is None:
        return DeployState.FAILED, 0, "its receiver never joined"
    pct = 100 * m.chunks_done // max(1, total)
    if m.status == "verified":
        return DeployState.VERIFIED, 100, ""
    if m.status == "failed":
        return DeployState.FAILED, pct, "the receiver could not verify the disk"
    if m.status == "dropped":
        return DeployState.FAILED, pct, "the receiver fell silent and was dropped"
    return DeployState.FAILED, pct, "the deployment ended before the node finished"


@app.command("start")
@friendly_errors
def deploy_start(
    ctx: typer.Context,
    image: str = typer.Argument(..., help="a disk image id, id prefix or name "
                                "(`fleetboot image list`)"),
    nodes: list[str] = typer.Argument(..., help="the nodes to write it to"),
    transport: str = typer.Option("multicast", "--transport", help="multicast or http"),
    rate: str = typer.Option("100m", "--rate", help="multicast rate limit in bits/s "
                             "(e.g. 100m, 1g)"),
    iface_ip: str = typer.Option("", "--iface-ip", help="the server's address on the "
                                 "boot network (multicast)"),
    port: int = typer.Option(4711, "--port", help="the group's UDP port (requests: PORT+1)"),
    block_size: int = typer.Option(1400, "--block-size", help="bytes of data per packet "
                                   "(up to the MTU minus 48)"),
    timeout: float = typer.Option(3600.0, "--timeout", help="give up after this many seconds"),
) -> None:
    """Deploy IMAGE to NODE...; the command form is `fleetboot deploy IMAGE NODE...`."""
    st = state(ctx)
    disk = DiskImageStore(st.settings.boot_root).get(image)
    session_id = random.SystemRandom().randrange(1, 1 << 30)
    rate_bps = parse_rate(rate)
    if transport == "multicast" and not iface_ip:
        raise service.DeployError("multicast needs --iface-ip: the server's address on the "
                                  "nodes' boot network")
    with st.db.session() as s:
        rows = service.plan(s, disk, nodes, transport, session_id)
        ids = {name: row.id for name, row in zip(nodes, rows, strict=True)}
    if transport == "http":
        console.print(f"deployment {session_id}: nodes fetch "
                      f"/boot/files/{disk.url_path}/ (index.txt, chunks.bin) by Range")
        return
    group = _group_for(session_id)
    console.print(f"deployment {session_id}: image {disk.manifest.image_id} to "
                  f"{len(nodes)} node(s) on {group}:{port} at {rate}; receivers: "
                  f"`python -m fleetboot.reload.receiver multicast --group {group} --port "
                  f"{port} --sender {iface_ip}:{port + 1} --session {session_id} --name NODE "
                  "--iface-ip ADDR --out DISK`", soft_wrap=True)
    sender = _serve(st, disk, nodes, ids, session_id, group, port, iface_ip, rate_bps,
                    block_size, timeout)
    by_name = {m.name: m for m in sender.members.values() if m.name}
    outcome = {ids[n]: _outcome(by_name.get(n), sender.info.chunks) for n in nodes}
    with st.db.session() as s:
        service.finish(s, ids.values(), outcome)
    failed = [n for n in nodes if outcome[ids[n]][0] is not DeployState.VERIFIED]
    console.print(f"sent {sender.stats.data_bytes / 2**20:.1f} MiB for "
                  f"{disk.manifest.stored_size / 2**20:.1f} MiB stored "
                  f"({sender.stats.data_bytes / max(1, disk.manifest.stored_size):.2f}x)")
    if failed:
        raise service.DeployError(f"deployment {session_id} failed on {', '.join(failed)}; "
                                  "see `fleetboot deploy status`")
    console.print(f"all {len(nodes)} node(s) verified")


def _serve(st: Any, disk: Any, nodes: list[str], ids: dict[str, int], session_id: int,
           group: str, port: int, iface_ip: str, rate_bps: float, block_size: int,
           timeout: float) -> Sender:
    records, _mapped = load_records(disk)
    sender = Sender(session_id, records, image_info(disk, block_size), rate_bps,
                    expected=len(nodes))
    started = time.monotonic()
    with Live(_progress(sender, nodes, started), console=console, refresh_per_second=2) as live:
        def tick(snd: Sender) -> bool:
            live.update(_progress(snd, nodes, started))
            with st.db.session() as s:
                return service.cancelled(s, ids.values())

        sock = sender_socket(iface_ip, port + 1)
        try:
            asyncio.run(run_sender(sender, sock, (group, port), timeout, tick))
        finally:
            sock.close()
        live.update(_progress(sender, nodes, started))
    return sender


@app.command("status")
@friendly_errors
def deploy_status(
    ctx: typer.Context,
    node: str | None = typer.Argument(None, help="only this node"),
) -> None:
    """The deployment history, newest first."""
    tab = table("id", "node", "image", "transport", "state", "percent", "reason", "started",
                "finished")
    with state(ctx).db.session() as s:
        for name, d in service.history(s, node):
            tab.add_row(str(d.id), name, f"{d.image_name} ({d.image_id[:8]})", d.transport,
                        d.state, f"{d.percent} %", d.reason or "-",
                        d.started_at.strftime("%Y-%m-%d %H:%M:%S"),
                        d.finished_at.strftime("%H:%M:%S") if d.finished_at else "-")
    console.print(tab)


@app.command("cancel")
@friendly_errors
def deploy_cancel(
    ctx: typer.Context,
    nodes: list[str] = typer.Argument(None, help="nodes whose deployment to cancel "
                                      "(default: every active one)"),
) -> None:
    """Cancel active deployments; a running `fleetboot deploy` stops within a second."""
    with state(ctx).db.session() as s:
        found = service.cancel(s, nodes or [])
    if not found:
        raise service.DeployError("no active deployment" + (f" for {', '.join(nodes)}"
                                                              if nodes else ""))
    for name, d in found:
        console.print(f"cancelled deployment {d.id} of {name}")
