"""What every command group shares: the loaded settings, the database, output."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import IntegrityError

from fleetboot.config import Settings, load_settings
from fleetboot.errors import FleetbootError
from fleetboot.inventory.db import Database

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


class CliState:
    """Settings and database, opened lazily so ``--help`` never touches a file."""

    def __init__(self, config_path: str | None = None) -> None:
        self.config_path = config_path
        self._settings: Settings | None = None
        self._db: Database | None = None

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
        return self._db


def state(ctx: typer.Context) -> CliState:
    root = ctx.find_root()
    if not isinstance(root.obj, CliState):
        root.obj = CliState()
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
