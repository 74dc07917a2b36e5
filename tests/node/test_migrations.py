"""Models and migrations agree, on both databases; ``serve`` refuses an outdated schema; PostgreSQL
stores envelopes uncompressed."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from node.storage.db import make_engine
from node.storage.migrate import SchemaOutdatedError, check_current, head_revision, upgrade_url
from node.storage.models import Base
from tests.conftest import create_pg_database, drop_pg_database


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


def test_envelopes_are_stored_without_compression_on_postgresql() -> None:
    """(Encrypted bytes never compress, yet PostgreSQL tried on every insert. SQLite never
    compresses: this concerns PostgreSQL alone.)"""
    url = create_pg_database()
    try:
        upgrade_url(url)
        engine = make_engine(url)
        with engine.connect() as conn:
            storage = dict(conn.execute(text(
                "SELECT c.relname || '.' || a.attname, a.attstorage FROM pg_attribute a "
                "JOIN pg_class c ON c.oid = a.attrelid WHERE a.attname IN ('envelope', 'inner_jws') "
                "AND c.relname IN ('outbox', 'inbox', 'inbox_pending')")).all())
        engine.dispose()
        # 'e' external: out of line when large, never compressed; 'x' extended (the default)
        assert storage == {"outbox.envelope": "e", "inbox.envelope": "e", "inbox_pending.envelope": "e",
                           "outbox.inner_jws": "x", "inbox.inner_jws": "x", "inbox_pending.inner_jws": "x"}
    finally:
        drop_pg_database(url)
