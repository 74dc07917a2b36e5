"""Models and migrations agree, on both databases; ``serve`` refuses an outdated schema."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from node.storage.db import make_engine
from node.storage.migrate import SchemaOutdatedError, check_current, head_revision, upgrade_url
from node.storage.models import Base


def test_models_and_migrations_agree(migrated_url: str) -> None:
    engine = make_engine(migrated_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == [], f"models differ from migrations: {diff}"
        check_current(engine)
    finally:
        engine.dispose()


def test_outdated_schema_is_refused(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        with pytest.raises(SchemaOutdatedError, match="comity db upgrade"):
            check_current(engine)
        upgrade_url(database_url)
        check_current(engine)
        assert head_revision() is not None
    finally:
        engine.dispose()
