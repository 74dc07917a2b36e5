"""Engines and transactions for SQLite (the embedded default) and PostgreSQL.

SQLite: WAL, ``synchronous=FULL`` and ``busy_timeout`` on every connection, and every write
transaction opened with ``BEGIN IMMEDIATE`` (a deferred read-then-write transaction fails at
once under WAL when another connection commits first).  PostgreSQL: ``READ COMMITTED`` with
row locks (``FOR UPDATE SKIP LOCKED``) where work is claimed.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, and_, any_, bindparam, create_engine, event, func
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 10_000
#: The WAL is written from its start again once it holds this much (``Database.checkpoint``) ...
WAL_RESTART_BYTES = 16 * 1024 * 1024
#: ... waiting at most this long for readers to leave it (else the next round tries again).
WAL_RESTART_WAIT_MS = 200
#: A WAL left larger than this by a burst is cut back to it when it starts over.
WAL_SIZE_LIMIT = 2 * WAL_RESTART_BYTES


def sqlite_url(home: Path) -> str:
    return f"sqlite:///{(home / 'comity.db').resolve()}"


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def _sqlite_pragmas(*, autocheckpoint: bool) -> Callable[[Any, Any], None]:
    def connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy not emit BEGIN itself: we issue BEGIN / BEGIN IMMEDIATE explicitly.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = FULL")
        cur.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        cur.execute("PRAGMA foreign_keys = ON")
        if not autocheckpoint:
            cur.execute("PRAGMA wal_autocheckpoint = 0")  # a Checkpointer thread does it, off the commit path
        cur.close()
    return connect


def make_engine(url: str, *, pool_size: int = 5, autocheckpoint: bool = True) -> Engine:
    """An engine for ``url``; SQLite connections get WAL, FULL sync and a busy timeout.

    ``hide_parameters``: bound values (subjects, bodies) never appear in error messages or logs.
    ``autocheckpoint=False`` (a running node, which runs a ``Checkpointer``): no commit copies the WAL
    back into the database file itself — SQLite's automatic checkpoint makes the unlucky commit pay
    for writing and syncing up to 1,000 pages.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, hide_parameters=True)
        event.listen(engine, "connect", _sqlite_pragmas(autocheckpoint=autocheckpoint))

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
            conn.exec_driver_sql(f"BEGIN {mode}")

        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, hide_parameters=True)


_WRITER_LOCKS: dict[str, threading.Lock] = {}
_WRITER_LOCKS_GUARD = threading.Lock()


def _writer_lock(url: str) -> threading.Lock:
    with _WRITER_LOCKS_GUARD:
        return _WRITER_LOCKS.setdefault(url, threading.Lock())


class Database:
    """An engine plus session factories for write and read transactions."""

    def __init__(self, url: str, *, autocheckpoint: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url, autocheckpoint=autocheckpoint)
        self.sqlite = is_sqlite(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        if self.sqlite:
            reader = self.engine.execution_options(sqlite_begin="DEFERRED")
            self._readers = sessionmaker(reader, expire_on_commit=False)
        else:
            self._readers = self._sessions

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One write transaction (``BEGIN IMMEDIATE`` on SQLite); commits on success.

        On SQLite, the threads of one process queue on a lock of their own before ``BEGIN IMMEDIATE``:
        SQLite's busy handler polls with sleeps of up to 100 ms, a thread lock hands over at once.
        """
        lock = _writer_lock(self.url) if self.sqlite else contextlib.nullcontext()
        with lock, self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """One read-only transaction (a deferred snapshot on SQLite)."""
        with self._readers() as session, session.begin():
            yield session

    def checkpoint(self, *, restart_above: int = WAL_RESTART_BYTES) -> bool:
        """Copy the SQLite WAL back into the database file as far as readers allow (PASSIVE: it never
        waits for, nor blocks, a reader or the writer).  Once the WAL holds more than
        ``restart_above`` bytes, also make the next commit write it from its start again (RESTART,
        briefly holding this process's writers back); True if it did.

        Without the restart a busy node's WAL never starts over (some reader is always inside it),
        grows by every page every commit writes — hundreds of MB in a minute of load — and each
        commit's sync also has to journal the file's new size."""
        if not self.sqlite:
            return False
        raw = self.engine.raw_connection()  # outside any transaction: a checkpoint cannot run inside one
        try:
            cur = raw.cursor()
            _busy, frames, _done = cur.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            page = cur.execute("PRAGMA page_size").fetchone()[0]
            restarted = False
            if frames * page > restart_above:
                # readers still inside the WAL get up to WAL_RESTART_WAIT_MS to leave it; our own
                # writers wait on the process's lock meanwhile (SQLite's busy handler would sleep)
                with _writer_lock(self.url):
                    cur.execute(f"PRAGMA busy_timeout = {WAL_RESTART_WAIT_MS}")
                    try:
                        busy = cur.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()[0]
                        restarted = not busy
                    finally:
                        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cur.close()
            return restarted
        finally:
            raw.close()

    def dispose(self) -> None:
        self.engine.dispose()


class Checkpointer:
    """A thread that checkpoints a SQLite database's WAL every ``interval`` seconds (a running node's
    engine has automatic checkpoints off, so that commits only append to the WAL)."""

    def __init__(self, db: Database, *, interval: float = 1.0) -> None:
        self._db = db
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    def start(self) -> None:
        if not self._db.sqlite:
            return
        self._thread = threading.Thread(target=self._run, name="comity-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._db.checkpoint()
                self.last_error = None
            except Exception as e:  # the next round tries again; readiness shows the error meanwhile
                self.last_error = type(e).__name__

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        # leave the database file whole for the next reader, backups included (best effort: SQLite
        # replays the WAL on the next open anyway)
        with contextlib.suppress(Exception):
            self._db.checkpoint()


class DriverStatement:
    """A Core statement compiled once per dialect and run on the connection's driver cursor.

    For the few statements every message runs (audit entries, inbox rows, settles): SQLAlchemy's
    per-execution work (cache key, parameter processing, result set-up) cost more than the
    statement itself.  Runs inside the connection's transaction like any other statement; driver
    errors come out as SQLAlchemy's exceptions (``IntegrityError`` ...), parameters hidden.
    Only for statements whose parameters are plain values (no expanding ``IN`` lists).
    """

    def __init__(self, statement: Any, *, prepared: bool = True) -> None:
        self._statement = statement
        #: False: never a server-side prepared statement on PostgreSQL (see ``planned_for_values``)
        self._prepared = prepared
        self._compiled: dict[str, tuple[str, tuple[str, ...] | None, tuple[str, ...], dict[str, Any]]] = {}

    def _sql(self, dialect: Any) -> tuple[str, tuple[str, ...] | None, tuple[str, ...], dict[str, Any]]:
        found = self._compiled.get(dialect.name)
        if found is None:
            compiled = self._statement.compile(dialect=dialect)
            positions = tuple(compiled.positiontup or ()) if compiled.positional else None
            # values the statement carries itself (its literals, e.g. ``state == "sending"``)
            fixed = {k: v for k, v in compiled.params.items() if not compiled.binds[k].required}
            found = self._compiled[dialect.name] = (compiled.string, positions, tuple(compiled.params), fixed)
        return found

    @staticmethod
    def _params(positions: tuple[str, ...] | None, names: tuple[str, ...], fixed: dict[str, Any],
                values: Mapping[str, Any]) -> Any:
        merged = {**fixed, **values} if fixed else values
        if positions is not None:
            return tuple(merged[n] for n in positions)  # a value left out: KeyError, never a NULL
        return {n: merged[n] for n in names}  # (named styles too)

    @contextmanager
    def _cursor(self, conn: Connection) -> Iterator[tuple[Any, str, Callable[[Mapping[str, Any]], Any]]]:
        """The driver cursor, the SQL and the parameter builder; driver errors as SQLAlchemy's."""
        sql, positions, names, fixed = self._sql(conn.dialect)
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            yield cursor, sql, lambda values: self._params(positions, names, fixed, values)
        except conn.dialect.loaded_dbapi.Error as e:
            raise DBAPIError.instance(sql, None, e, conn.dialect.loaded_dbapi.Error, hide_parameters=True,
                                      dialect=conn.dialect) from e
        finally:
            cursor.close()

    def names(self, dialect: Any) -> tuple[str, ...]:
        """The parameters a caller binds (the statement's own literals left out)."""
        _sql, _positions, names, fixed = self._sql(dialect)
        return tuple(n for n in names if n not in fixed)

    def execute(self, conn: Connection, values: Mapping[str, Any]) -> tuple[int, Any]:
        """Run once; (rows affected, the first row returned or None)."""
        with self._cursor(conn) as (cursor, sql, params):
            if not self._prepared and conn.dialect.name == "postgresql":
                cursor.execute(sql, params(values), prepare=False)
            else:
                cursor.execute(sql, params(values))
            row = cursor.fetchone() if cursor.description is not None else None
            return cursor.rowcount, row

    def execute_many(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run once per item of ``rows`` (the driver's ``executemany``)."""
        if rows:
            with self._cursor(conn) as (cursor, sql, params):
                cursor.executemany(sql, [params(r) for r in rows])


@contextmanager
def planned_for_values(conn: Connection, *, ordered: bool = False) -> Iterator[None]:
    """PostgreSQL: the statements run inside are planned at each run, for the values bound and the
    tables as they are then; with ``ordered``, without bitmap scans (which cannot return rows in an
    index's order: a ``LIMIT`` then reads and sorts every matching row).  Elsewhere: nothing.

    Why: psycopg prepares a statement on the server after a few runs, and PostgreSQL then keeps the
    plan it made for the tables' sizes and statistics at that moment — on a node just started, empty
    tables: sequential scans, or a bitmap scan and a sort, that grow with the table, while the rows
    that matter (the few due messages) stay few.  Without statistics (no ``ANALYZE`` yet) even a plan
    made for the values misjudges how many rows a state holds, hence ``ordered``.
    """
    if conn.dialect.name != "postgresql":
        yield
        return
    driver = conn.connection.dbapi_connection
    threshold = driver.prepare_threshold  # type: ignore[union-attr]
    driver.prepare_threshold = None  # type: ignore[union-attr]
    try:
        if ordered:
            conn.exec_driver_sql("SET LOCAL enable_bitmapscan = off")  # until the transaction ends ...
        yield
        if ordered:
            conn.exec_driver_sql("RESET enable_bitmapscan")  # ... or here (not after an error: it is over)
    finally:
        driver.prepare_threshold = threshold  # type: ignore[union-attr]


def unnest_arrays(types: Mapping[str, Any], *, ordinality: str | None = None) -> Any:
    """``unnest(:a, :b, ...) AS u(a, b, ...)``: one array parameter per name (PostgreSQL), its
    elements of the type given; with ``ordinality``, a last column numbering the rows from 1."""
    fn = func.unnest(*(bindparam(n, type_=ARRAY(t)) for n, t in types.items()))
    return fn.table_valued(*types, with_ordinality=ordinality).render_derived(name="u")


def by_key(column: Any, arrays: Any, name: str) -> Any:
    """The rows of an ``UPDATE ... FROM`` ``arrays`` (``unnest_arrays``) whose ``column`` is the
    array ``name``'s element — also as ``column = ANY(:name)``, so that PostgreSQL finds them through
    ``column``'s index instead of reading the whole table to join it with the arrays (its choice
    for a table it believes small, e.g. without statistics yet)."""
    return and_(column == arrays.c[name], column == any_(bindparam(name, type_=ARRAY(column.type))))


class ManyRows:
    """One statement for many rows' parameters where the database can take them at once.

    On PostgreSQL, ``arrays`` runs once with one array per parameter it binds (an ``UPDATE ... FROM
    unnest(...)`` or ``INSERT ... SELECT ... FROM unnest(...)``): one statement planned and run,
    where the driver's ``executemany`` of ``each`` would run one per row.  Elsewhere (SQLite, in
    process: no round trips to save) ``each`` runs once per row.
    """

    def __init__(self, each: Any, arrays: Any) -> None:
        self._each = DriverStatement(each)
        # planned at each run, for its arrays' lengths and the tables' sizes then (a join with
        # ``unnest``: a plan cached while the table was small scans all of it, every run, for good)
        self._arrays = DriverStatement(arrays, prepared=False)

    def execute(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        if conn.dialect.name == "postgresql":
            self._arrays.execute(conn, {n: [r[n] for r in rows] for n in self._arrays.names(conn.dialect)})
        else:
            self._each.execute_many(conn, rows)
