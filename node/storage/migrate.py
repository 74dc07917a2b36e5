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


def head_revisions() -> frozenset[str]:
    """The code's head revision(s); independent branches are allowed until a merge revision joins them."""
    return frozenset(ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads())


def head_revision() -> str | None:
    return ",".join(sorted(head_revisions())) or None


def current_revisions(engine: Engine) -> frozenset[str]:
    with engine.connect() as conn:
        return frozenset(MigrationContext.configure(conn).get_current_heads())


def upgrade(url: str) -> None:
    """Bring the schema at ``url`` to the head revision(s)."""
    command.upgrade(alembic_config(url), "heads")


def check_current(engine: Engine) -> None:
    """Raise ``SchemaOutdatedError`` unless the schema is at head (``serve`` and ``worker`` refuse otherwise)."""
    current, heads = current_revisions(engine), head_revisions()
    if current != heads:
        raise SchemaOutdatedError(",".join(sorted(current)) or None, ",".join(sorted(heads)) or None)


def upgrade_url(url: str) -> None:
    engine = make_engine(url)
    try:
        upgrade(url)
    finally:
        engine.dispose()
