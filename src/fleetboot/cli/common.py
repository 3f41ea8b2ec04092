"""What every command group shares: the loaded settings, the database, output."""

from __future__ import annotations

import enum
import functools
import getpass
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, TypeVar

import typer
import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy.exc import IntegrityError

from fleetboot.config import Settings, load_settings
from fleetboot.errors import FleetbootError
from fleetboot.inventory.db import Database

# emoji=False: Rich would turn the ":ab:" of a MAC like 52:54:00:ab:cd:01 into an emoji.
console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)

F = TypeVar("F", bound=Callable[..., Any])


class CliState:
    """Settings and database, opened lazily so ``--help`` never touches a file."""

    def __init__(self, config_path: str | None = None) -> None:
        self.config_path = config_path
        self._settings: Settings | None = None
        self._db: Database | None = None
        self.command: typer.Context | None = None  # the command running (for the audit log)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config_path)
        return self._settings

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = Database(self.settings.database.url)
            self._db.create_schema()
            _audit_as_cli_user(self.command)
        return self._db


def state(ctx: typer.Context) -> CliState:
    root = ctx.find_root()
    if not isinstance(root.obj, CliState):
        root.obj = CliState()
    root.obj.command = ctx
    return root.obj


def fail(message: str) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(2)


def friendly_errors(func: F) -> F:
    """Show a FleetbootError as one line (what was wrong, how to fix it), exit 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except FleetbootError as exc:
            raise fail(str(exc)) from None
        except IntegrityError as exc:  # a rule the service layer missed: still one line
            raise fail(f"the change conflicts with what is stored ({exc.orig}); "
                       "look at the existing entry with the matching list command") from None
        except OSError as exc:  # a file named on the command line
            what = f"{exc.filename}: " if exc.filename else ""
            raise fail(f"{what}{exc.strerror or exc}; check the path and its "
                       "permissions") from None

    return wrapper  # type: ignore[return-value]


def table(*columns: str, title: str | None = None) -> Table:
    tab = Table(title=title, header_style="bold")
    for col in columns:
        tab.add_column(col)
    return tab


def _audit_as_cli_user(command: typer.Context | None) -> None:
    """Every change this command makes goes to the audit log as ``cli:<user>``."""
    from fleetboot.api import audit

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    audit.install()
    audit.set_actor(audit.Actor(f"cli:{user}", _command_line(command)))


def _command_line(ctx: typer.Context | None) -> str:
    """The command and its names ("fleetboot node boot n1"); never option values or
    section values, which may hold secrets."""
    if ctx is None:
        return "fleetboot"
    words = ["fleetboot", *ctx.command_path.split()[1:]]
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if param.param_type_name == "argument" and param.name != "value" and \
                isinstance(value, str) and len(value) <= 63:
            words.append(value)
    return " ".join(words)


# --- output: one helper for every list and show command ------------------------------------


class Output(enum.StrEnum):
    TABLE = "table"
    JSON = "json"
    YAML = "yaml"


OutputOpt = Annotated[Output, typer.Option(
    "--output", "-o", help="table (plain text when not a terminal), json or yaml")]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value)
    if isinstance(value, Text):
        return value.plain
    return str(value)


def emit(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None,
         output: Output = Output.TABLE, *, title: str | None = None,
         styles: Mapping[str, Callable[[Any], Text]] | None = None) -> None:
    """Print records as a table, JSON or YAML. ``columns`` picks and orders the table's
    columns (JSON and YAML get every key). Not a terminal: the table is plain
    tab-separated text with a header line, no box drawing and no wrapping."""
    if output is Output.JSON:
        sys.stdout.write(json.dumps(list(rows), indent=2, default=str) + "\n")
        return
    if output is Output.YAML:
        sys.stdout.write(yaml.safe_dump(json.loads(json.dumps(list(rows), default=str)),
                                        sort_keys=False))
        return
    cols = list(columns) if columns else (list(rows[0]) if rows else [])
    styles = styles or {}
    terminal = console.is_terminal
    if terminal:
        tab = table(*cols, title=title)
    else:  # for grep/awk: no box drawing, no colour, one line per row however long
        tab = Table(box=None, header_style="", pad_edge=True)
        for col in cols:
            tab.add_column(col, no_wrap=True, overflow="ignore")
    for row in rows:
        tab.add_row(*[styles[c](row.get(c)) if c in styles else Text(_cell(row.get(c)))
                      for c in cols])
    if terminal:
        console.print(tab)
    else:
        Console(file=sys.stdout, width=100_000, emoji=False, no_color=True, highlight=False,
                soft_wrap=True).print(tab)


def emit_one(record: Mapping[str, Any], output: Output = Output.TABLE) -> None:
    """One record (a show command): field/value pairs as a table, or the record as is."""
    if output is not Output.TABLE:
        sys.stdout.write(json.dumps(record, indent=2, default=str) + "\n"
                         if output is Output.JSON else yaml.safe_dump(
                             json.loads(json.dumps(record, default=str)), sort_keys=False))
        return
    emit([{"field": k, "value": _cell(v)} for k, v in record.items()], ["field", "value"])
