"""Alembic, driven from code: the schema of every concern lives in one revision graph.

Each concern adds its tables in its own revision whose ``down_revision`` is the
inventory's base revision, so the graph may have several heads; we always
upgrade to all of them.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(engine: Engine | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if engine is not None:
        cfg.attributes["engine"] = engine
        cfg.set_main_option(
            "sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%")
        )
    return cfg


def upgrade(engine: Engine) -> None:
    command.upgrade(alembic_config(engine), "heads")


def revision(engine: Engine, message: str, rev_id: str, down_revision: str) -> None:
    """Autogenerate a revision on top of ``down_revision`` (a developer tool).

    ``engine`` must point at a database already upgraded to ``down_revision``.
    """
    command.revision(
        alembic_config(engine), message=message, autogenerate=True, rev_id=rev_id,
        head=down_revision,
    )
