"""Shared fixtures: a fresh database per test on SQLite and on PostgreSQL.

PostgreSQL tests create their own database on the server at ``COMITY_TEST_PG_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``) and drop it afterwards.  If the server
is unreachable the PostgreSQL half FAILS (it is never skipped): ``.ci/run`` starts the server.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

PG_URL = os.environ.get("COMITY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BACKENDS = ["sqlite", "postgres"]


def _admin_engine():  # type: ignore[no-untyped-def]
    return create_engine(PG_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)


def create_pg_database() -> str:
    """A new, empty PostgreSQL database; returns its URL."""
    name = f"comity_t_{secrets.token_hex(6)}"
    engine = _admin_engine()
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as e:  # pragma: no cover - environment failure, reported loudly
        pytest.fail(f"PostgreSQL at {PG_URL} is not usable ({type(e).__name__}: {e}); .ci/run starts it")
    finally:
        engine.dispose()
    return make_url(PG_URL).set(database=name).render_as_string(hide_password=False)


def drop_pg_database(url: str) -> None:
    name = make_url(url).database
    engine = _admin_engine()
    try:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """An empty database of ``backend`` (no schema yet)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'comity.db'}"
        return
    url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(url)


@pytest.fixture
def migrated_url(database_url: str) -> str:
    from node.storage.migrate import upgrade_url

    upgrade_url(database_url)
    return database_url
