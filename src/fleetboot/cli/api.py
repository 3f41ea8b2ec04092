"""``fleetboot token ...`` and ``fleetboot audit``: API tokens and the audit log.

Both call the same functions as the API (``fleetboot.api.tokens`` and
``fleetboot.api.audit``); token changes made here are audited like any other.
"""

from __future__ import annotations

import dataclasses
import time

import typer

from fleetboot.api import audit, tokens
from fleetboot.cli.common import Output, OutputOpt, console, emit, friendly_errors, state

token_app = typer.Typer(help="Named API tokens with a role (viewer, operator, admin).",
                        no_args_is_help=True)
app = typer.Typer()


def _when(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at else "-"


@token_app.command("create")
@friendly_errors
def token_create(
    ctx: typer.Context, name: str,
    role: str = typer.Option("viewer", "--role", "-r", help="viewer | operator | admin"),
) -> None:
    """Create a token; its secret is printed once (only its hash is stored)."""
    cli = state(ctx)
    with cli.db.session() as s:
        actor = audit.current_actor()
        view, secret = tokens.create_token(s, name, role, actor.who if actor else "")
    if console.is_terminal:
        console.print(f"token [bold]{view.name}[/] ({view.role}); keep this secret, it is "
                      "not shown again:")
    print(secret)


@token_app.command("list")
@friendly_errors
def token_list(
    ctx: typer.Context,
    revoked: bool = typer.Option(False, "--revoked", help="also revoked tokens"),
    output: OutputOpt = Output.TABLE,
) -> None:
    """The tokens (never their secrets)."""
    with state(ctx).db.session() as s:
        rows = [dataclasses.asdict(t) for t in tokens.list_tokens(s, include_revoked=revoked)]
    if output is Output.TABLE:
        rows = [{**r, "created_at": _when(r["created_at"]),
                 "revoked_at": _when(r["revoked_at"])} for r in rows]
    emit(rows, ["name", "role", "created_at", "created_by", "revoked_at"], output)


@token_app.command("revoke")
@friendly_errors
def token_revoke(ctx: typer.Context, name: str) -> None:
    """Revoke a token: the API refuses it from now on (within 2 s on a running server)."""
    with state(ctx).db.session() as s:
        tokens.revoke_token(s, name)
    console.print(f"revoked token [bold]{name}[/]")


@app.command("audit")
@friendly_errors
def audit_cmd(
    ctx: typer.Context,
    limit: int = typer.Option(50, "--limit", "-n", help="how many entries, newest first"),
    actor: str | None = typer.Option(None, help="only this actor (token:NAME, cli:USER)"),
    kind: str | None = typer.Option(None, help="only this table (nodes, subnets, ...)"),
    output: OutputOpt = Output.TABLE,
) -> None:
    """Every change through the API or the CLI: who, what, when, before and after."""
    with state(ctx).db.session() as s:
        rows = [dataclasses.asdict(e) for e in audit.list_audit(s, limit=limit, actor=actor,
                                                                 kind=kind)]
    if output is not Output.TABLE:
        emit(rows, output=output)
        return
    emit([{"when": _when(r["at"]), "actor": r["actor"], "action": r["action"],
           "kind": r["kind"], "target": r["target"], "change": _change(r["before"], r["after"]),
           "via": r["via"]} for r in rows])


def _change(before: dict[str, object] | None, after: dict[str, object] | None) -> str:
    if before is None or after is None:
        return ""
    return ", ".join(f"{k}: {before.get(k)} -> {v}" for k, v in after.items()
                     if before.get(k) != v)
