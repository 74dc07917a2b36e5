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


def test_a_received_message_is_found_by_its_id_through_an_index(database_url: str) -> None:
    """Look-ups by message id alone (local API, evidence, attachments) read the whole inbox before
    0008; the upgrade keeps what was received and the (sender, id) uniqueness."""
    from alembic import command
    from sqlalchemy.exc import IntegrityError

    from node.storage.migrate import alembic_config

    command.upgrade(alembic_config(database_url), "0007")
    engine = make_engine(database_url)
    blob = "X'00'" if engine.dialect.name == "sqlite" else "'\\x00'::bytea"
    received = ("INSERT INTO inbox (sender, message_id, envelope_sha256, envelope, inner_jws, kind, subject, body, "
                f"iat, exp, received_at, entry_id) VALUES (:sender, :mid, :sha, {blob}, {blob}, 'note', 's', 'b', "
                "1, 2, 3, 1)")
    mid = "a" * 32
    try:
        with engine.begin() as conn:
            conn.execute(text(f"INSERT INTO audit_entries (id, log, leaf, leaf_hash, event, at) "
                              f"VALUES (1, 'exchange', {blob}, 'h', 'received', 1)"))
            conn.execute(text(received), {"sender": "FR-DACG", "mid": mid, "sha": "1" * 64})
        upgrade_url(database_url)
        check_current(engine)
        with engine.begin() as conn:
            assert conn.execute(text("SELECT sender FROM inbox WHERE message_id = :m"), {"m": mid}).all() == \
                [("FR-DACG",)]
            conn.execute(text(received), {"sender": "DE-BFJ", "mid": mid, "sha": "2" * 64})  # another sender's
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(text(received), {"sender": "FR-DACG", "mid": mid, "sha": "3" * 64})
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                plan = " ".join(r[3] for r in conn.execute(text(
                    "EXPLAIN QUERY PLAN SELECT kind FROM inbox WHERE message_id = 'x'")))
                assert plan.startswith("SEARCH inbox USING INDEX") and "(message_id=?)" in plan, plan
            else:
                conn.execute(text("SET enable_seqscan = off"))  # an index that can serve is then always taken
                plan = " ".join(r[0] for r in conn.execute(text(
                    "EXPLAIN SELECT kind FROM inbox WHERE message_id = 'x'")))
                assert "uq_inbox_id_sender" in plan, plan
    finally:
        engine.dispose()
