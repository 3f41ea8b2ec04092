"""``fleetboot nodes``, ``timeline``, ``why`` and ``config``: states, boots and configuration.

``app`` holds top-level commands (the integrator adds them with
``app.registered_commands.extend``); ``config_app`` is the ``config`` group.
Everything reads the database the server writes, so these work beside a
running server and after it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.text import Text
from sqlalchemy import select

from fleetboot.boot.why import explain
from fleetboot.cli.common import (
    Output,
    OutputOpt,
    console,
    emit,
    friendly_errors,
    state,
    table,
)
from fleetboot.inventory import service as inventory
from fleetboot.inventory import service6 as inventory6
from fleetboot.inventory.models import Node
from fleetboot.nodeconfig import sections, store
from fleetboot.nodeconfig.errors import NodeConfigError
from fleetboot.nodeconfig.models import NodeStateRow
from fleetboot.nodeconfig.render import render_node
from fleetboot.nodeconfig.states import DEFAULT_TIMEOUTS, NodeStatus, State, check_timeout
from fleetboot.nodeconfig.timeline import boots, read_states, read_timeline
from fleetboot.nodeconfig.waterfall import waterfall
from fleetboot.power.models import power_states

app = typer.Typer(help="Node states, boot timelines and boot decisions.")
config_app = typer.Typer(help="Node configuration sections (the document nodes fetch).",
                         no_args_is_help=True)


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)  # a clock step back must not print "-3 s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"


@app.command("leases")
@friendly_errors
def leases(
    ctx: typer.Context,
    subnet: str | None = typer.Option(None, "--subnet", help="only this subnet's leases"),
    expired: bool = typer.Option(False, "--expired", help="also leases that have run out"),
    output: OutputOpt = Output.TABLE,
) -> None:
    """DHCP leases (IPv4, then IPv6) as the server last stored them: address, MAC, node, expiry."""
    now = time.time()
    with state(ctx).db.session() as s:
        rows = inventory6.list_all_leases(s, now=now, subnet=subnet, include_expired=expired)
    if output is not Output.TABLE:
        emit([dataclasses.asdict(v) for v in rows], output=output)
        return
    tab = table("address", "MAC", "node", "hostname", "subnet", "expires",
                title=f"{len(rows)} lease(s)")
    for v in rows:
        left = v.expires - now
        expiry = Text(f"in {_ago(left)}") if left > 0 else Text(f"{_ago(-left)} ago", "dim")
        tab.add_row(v.address, v.mac, v.node or Text("unknown", "yellow"), v.hostname or "",
                    v.subnet or "", expiry)
    console.print(tab)


def _state_text(st: NodeStatus | None, now: float) -> Text:
    if st is None:
        return Text("OFF", style="dim")
    style = {State.UP: "green", State.FAILED: "bold red", State.WAITING: "yellow",
             State.OFF: "dim"}.get(st.state, "cyan")
    text = Text(st.state.value, style=style)
    if st.stuck or check_timeout(st, now, DEFAULT_TIMEOUTS) is not None:
        text.append(" STUCK", style="bold red")
    return text


@app.command("nodes")
@friendly_errors
def nodes_cmd(ctx: typer.Context, output: OutputOpt = Output.TABLE) -> None:
    """Every node: state, for how long, address, and how long its last boot took."""
    now = time.time()
    with state(ctx).db.session() as s:
        statuses = read_states(s)
        power = power_states(s)
        nodes = [(node.id, node.name, statuses.get(node.id)) for node in inventory.list_nodes(s)]
    if output is not Output.TABLE:
        emit([{"node": name, "state": _state_text(st, now).plain,
               "since": st.since if st else None, "address": st.address if st else None,
               "boot": st.boot if st else 0, "last_boot_s": st.last_boot_s if st else None,
               "message": st.message if st else "", "power": power.get(nid)}
              for nid, name, st in nodes], output=output)
        return
    emit([{"node": name, "state": st,
           "since": _ago(now - st.since) if st and st.since else "-",
           "address": (st.address if st else None) or "-",
           "boot": str(st.boot) if st else "0",
           "last boot": f"{st.last_boot_s:.1f} s" if st and st.last_boot_s is not None else "-",
           "note": st.message if st else "", "power": power.get(nid, "-")}
          for nid, name, st in nodes],
         styles={"state": lambda st: _state_text(st, now),
                 "note": lambda note: Text(note, style="dim")})


def _node_id(s: Any, name: str) -> int:
    node_id = s.scalar(select(Node.id).where(Node.name == name))
    if node_id is None:
        raise inventory.NotFound(f"no node named {name!r}; `fleetboot nodes` lists them")
    return int(node_id)


@app.command("timeline")
@friendly_errors
def timeline_cmd(
    ctx: typer.Context,
    node: str,
    boot: int | None = typer.Option(None, "--boot", "-b", help="boot number (default: latest)"),
    width: int = typer.Option(40, help="width of the bars"),
    as_json: bool = typer.Option(False, "--json", help="print the events as JSON"),
) -> None:
    """A node's boot as a waterfall: every DHCP message, file, fetch and report in order."""
    with state(ctx).db.session() as s:
        node_id = _node_id(s, node)
        events = read_timeline(s, node_id, boot)
        all_boots = boots(s, node_id)
    if as_json:
        sys.stdout.write(json.dumps([e.row() for e in events], indent=1) + "\n")
        return
    if not events:
        console.print(f"no recorded events for {node}" + (f" in boot {boot}" if boot else ""))
        return
    first, last = events[0].at, max(e.at for e in events)
    tab = table("+time", "source", "event", "", "details",
                title=f"{node}: boot {events[0].boot} "
                      f"({time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(first))}, "
                      f"{last - first:.1f} s, {len(events)} events)")
    for row in waterfall(events, width):
        style = "dim" if row.gap else ("red" if row.alarm else "")
        tab.add_row(f"{row.offset_s:8.3f}", row.source, Text(row.label, style=style),
                    Text(row.bar, style="blue"), Text(row.note, style=style))
    console.print(tab)
    if len(all_boots) > 1:
        console.print(f"[dim]boots recorded: {', '.join(str(b[0]) for b in all_boots)} "
                      "(--boot N shows another)[/]")


@app.command("why")
@friendly_errors
def why_cmd(ctx: typer.Context, node: str) -> None:
    """What a node boots next and which rule decided it."""
    with state(ctx).db.session() as s:
        n = inventory.get_node(s, node)
        why = explain(n)
        console.print(f"[bold]{n.name}[/] boots {why.boots}")
        if why.one_shot:
            console.print("  (a one-shot boot: after it is served the node returns to its "
                          "temporary or default boot)")
        for level, shown in why.levels.items():
            console.print(f"  {level:8} {shown}")
        if why.profile_detail is not None:
            console.print(f"  profile {why.profile}: {why.profile_detail}")
        row = s.get(NodeStateRow, n.id)
        if row is not None:
            console.print(f"  state now: {row.state} (boot {row.boot})"
                          + (f"; {row.message}" if row.message else ""))


# --- config sections -------------------------------------------------------------------


def _parse_value(value: str | None, file: Path | None) -> Any:
    if (value is None) == (file is None):
        raise NodeConfigError("give the value (YAML or JSON) or --file FILE ('-' for stdin)")
    if file is not None:
        text = sys.stdin.read() if str(file) == "-" else file.read_text()
    else:
        text = value or ""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise NodeConfigError(f"the value is not valid YAML or JSON: {exc}") from None


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True) + "\n")


@config_app.command("set")
@friendly_errors
def config_set(
    ctx: typer.Context, node: str, section: str,
    value: str | None = typer.Argument(None, help="the section's value as YAML or JSON"),
    file: Path | None = typer.Option(None, "--file", "-f", help="read the value from a file"),
) -> None:
    """Set one section of a node's configuration (replaces the fleet default for it)."""
    parsed = _parse_value(value, file)
    with state(ctx).db.session() as s:
        stored = store.set_section(s, node, section, parsed)
    console.print(f"{node}: {section} set")
    _print_json(stored)


@config_app.command("set-default")
@friendly_errors
def config_set_default(
    ctx: typer.Context, section: str,
    value: str | None = typer.Argument(None, help="the section's value as YAML or JSON"),
    file: Path | None = typer.Option(None, "--file", "-f", help="read the value from a file"),
) -> None:
    """Set a section for every node that has no value of its own."""
    parsed = _parse_value(value, file)
    with state(ctx).db.session() as s:
        store.set_section(s, None, section, parsed)
    console.print(f"fleet default: {section} set")


@config_app.command("unset")
@friendly_errors
def config_unset(ctx: typer.Context, node: str, section: str) -> None:
    """Remove a node's own value of a section (the fleet default applies again)."""
    with state(ctx).db.session() as s:
        store.unset_section(s, node, section)
    console.print(f"{node}: {section} unset")


@config_app.command("unset-default")
@friendly_errors
def config_unset_default(ctx: typer.Context, section: str) -> None:
    """Remove a fleet default section."""
    with state(ctx).db.session() as s:
        store.unset_section(s, None, section)
    console.print(f"fleet default: {section} unset")


@config_app.command("show")
@friendly_errors
def config_show(
    ctx: typer.Context, node: str,
    section: str | None = typer.Argument(None, help="one section (default: the document)"),
    public: bool = typer.Option(False, help="what a request without the token gets"),
    stored: bool = typer.Option(False, help="only the sections set for this node itself"),
) -> None:
    """The document a node gets, exactly as served (or one section of it)."""
    with state(ctx).db.session() as s:
        if stored:
            _print_json(store.stored_sections(s, node))
            return
        facts, fleet = store.load_facts(s, only=_node_id(s, node))
    docs = render_node(facts[0], fleet)
    if section is None:
        sys.stdout.write((docs.public if public else docs.full).body.decode())
        return
    chosen = (docs.public_sections if public else docs.sections).get(section)
    if chosen is None:
        raise NodeConfigError(f"no section {section!r} in the {'public ' if public else ''}"
                              f"document; sections are: {', '.join(sections.SECTIONS)}")
    sys.stdout.write(chosen.body.decode())


@config_app.command("defaults")
@friendly_errors
def config_defaults(ctx: typer.Context) -> None:
    """The fleet default sections."""
    with state(ctx).db.session() as s:
        _print_json(store.stored_sections(s, None))


@config_app.command("sections")
def config_sections() -> None:
    """The sections a document has."""
    tab = table("section", "secret", "holds")
    for name, text in sections.describe().items():
        tab.add_row(name, "yes" if name in sections.SECRET_SECTIONS else "", text)
    console.print(tab)
