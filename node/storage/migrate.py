"""Schema migrations (Alembic under ``migrations/``): upgrade, and the check ``serve`` makes."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from ..errors import SchemaOutdated
from .db import make_engine

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


class SchemaOutdatedError(SchemaOutdated):
    """The database schema is not at the code's head revision (exit 4; ``serve`` refuses to start)."""

    def __init__(self, current: str | None, head: str | None) -> None:
        super().__init__(f"database schema is at {current or 'nothing'}, the code needs {head}: "
                         "run `comity db upgrade`")
        self.current = current
        self.head = head


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(url: str) -> None:
    """Bring the schema at ``url`` to the head revision."""
    command.upgrade(alembic_config(url), "head")


def check_current(engine: Engine) -> None:
    """Raise ``SchemaOutdatedError`` unless the schema is at head (``serve`` and ``worker`` refuse otherwise)."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise SchemaOutdatedError(current, head)


def upgrade_url(url: str) -> None:
    engine = make_engine(url)
    try:
        upgrade(url)
    finally:
        engine.dispose()
