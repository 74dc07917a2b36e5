"""Engines and transactions for SQLite (the embedded default) and PostgreSQL.

SQLite: WAL, ``synchronous=FULL`` and ``busy_timeout`` on every connection, and every write
transaction opened with ``BEGIN IMMEDIATE`` (a deferred read-then-write transaction fails at
once under WAL when another connection commits first).  PostgreSQL: ``READ COMMITTED`` with
row locks (``FOR UPDATE SKIP LOCKED``) where work is claimed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 10_000


def sqlite_url(home: Path) -> str:
    return f"sqlite:///{(home / 'comity.db').resolve()}"


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy not emit BEGIN itself: we issue BEGIN / BEGIN IMMEDIATE explicitly.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA journal_mode = WAL")
    cur.execute("PRAGMA synchronous = FULL")
    cur.execute("PRAGMA foreign_keys = ON")
    cur.close()


def make_engine(url: str, *, pool_size: int = 5) -> Engine:
    """An engine for ``url``; SQLite connections get WAL, FULL sync and a busy timeout.

    ``hide_parameters``: bound values (subjects, bodies) never appear in error messages or logs.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, hide_parameters=True)
        event.listen(engine, "connect", _sqlite_connect)

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
            conn.exec_driver_sql(f"BEGIN {mode}")

        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, hide_parameters=True)


class Database:
    """An engine plus session factories for write and read transactions."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sqlite = is_sqlite(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        if self.sqlite:
            reader = self.engine.execution_options(sqlite_begin="DEFERRED")
            self._readers = sessionmaker(reader, expire_on_commit=False)
        else:
            self._readers = self._sessions

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One write transaction (``BEGIN IMMEDIATE`` on SQLite); commits on success."""
        with self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """One read-only transaction (a deferred snapshot on SQLite)."""
        with self._readers() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
