"""The log integrator: one per database, group commit of audit entries into signed tree heads.

A batch closes as soon as the previous one has committed and something is pending, or at
``BATCH_MAX`` entries left pending by other transactions (the writer's own jobs, whose entries
take their indices as written, are bounded by its ``max_jobs``) — never on a timer while a
receipt waits.  In one transaction it assigns leaf indices, extends the tree from its stored
frontier, signs one head per log touched, and signs and stores the receipt of every ``received``
entry in the batch.  The writer's
own transactions give their entries indices as they write them (``sequencer``); the batch that
ends such a transaction extends the tree with those first.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

from sqlalchemy import BigInteger, LargeBinary, bindparam, select, text
from sqlalchemy.orm import Session

from protocol.heads import TreeHead, sign_head
from protocol.jose import Signer
from protocol.receipts import Receipt, sign_receipt

from ..faults import crash_point
from ..storage.db import Database, ManyRows, by_key, unnest_arrays
from ..storage.models import audit_entries_table, audit_heads_table, audit_tree_table, inbox_table
from .sequencer import Received, begin_sequencing, load_tree, sequencer_of

if TYPE_CHECKING:
    from ..metrics import NodeMetrics

BATCH_MAX = 1000
RETRY_AFTER_ERROR = 0.5  # seconds before the writer's next round after a failed batch
_PG_LOCK_KEY = 0x436F6D69  # "Comi"


class IntegratorBusyError(Exception):
    """Another process holds this database's integrator lock."""


@dataclass(frozen=True)
class BatchResult:
    entries: int
    receipts: tuple[int, ...]  # inbox seqs whose receipt was stored
    heads: dict[str, int]  # log -> new tree size
    #: inbox seq -> the receipt signed for it in this batch
    receipt_jws: dict[int, bytes] = field(default_factory=dict)


class IntegratorLock:
    """Exclusive right to integrate: a PostgreSQL advisory lock, or ``flock`` on ``HOME/integrator.lock``."""

    def __init__(self, db: Database, home: Path) -> None:
        self._db = db
        self._home = home
        self._file: IO[str] | None = None
        self._conn: object | None = None

    def acquire(self) -> None:
        if self._db.sqlite:
            f = open(self._home / "integrator.lock", "a+")  # noqa: SIM115 - held for the process's life
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as e:
                f.close()
                raise IntegratorBusyError("another process is integrating this node's logs") from e
            self._file = f
            return
        conn = self._db.engine.connect()
        got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": _PG_LOCK_KEY}).scalar()
        conn.commit()
        if not got:
            conn.close()
            raise IntegratorBusyError("another process is integrating this database's logs")
        self._conn = conn

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None
        if self._conn is not None:
            conn = self._conn
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})  # type: ignore[attr-defined]
            conn.commit()  # type: ignore[attr-defined]
            conn.close()  # type: ignore[attr-defined]
            self._conn = None


_t = audit_tree_table.c
_SAVE_TREE = audit_tree_table.update().where(_t.log == bindparam("b_log")).values(
    tree_size=bindparam("b_size"), frontier=bindparam("b_frontier"), root=bindparam("b_root"))
_NEW_TREE = audit_tree_table.insert()
_ADD_HEAD = audit_heads_table.insert()


_e = audit_entries_table.c
_PENDING = (select(_e.id, _e.log, _e.leaf_hash, _e.event).where(_e.leaf_index.is_(None)).order_by(_e.id)
            .limit(bindparam("n")))
# every entry of a batch, and every receipt: one statement each on PostgreSQL (ManyRows), the
# rows found through their primary key (``by_key``)
_INDICES = unnest_arrays({"i": BigInteger(), "n": BigInteger()})
_SET_INDEX = ManyRows(
    audit_entries_table.update().where(_e.id == bindparam("i")).values(leaf_index=bindparam("n")),
    audit_entries_table.update().where(by_key(_e.id, _INDICES, "i")).values(leaf_index=_INDICES.c.n))
_RECEIPTS = unnest_arrays({"s": BigInteger(), "r": LargeBinary()})
_SET_RECEIPT = ManyRows(
    inbox_table.update().where(inbox_table.c.seq == bindparam("s")).values(receipt_jws=bindparam("r")),
    inbox_table.update().where(by_key(inbox_table.c.seq, _RECEIPTS, "s")).values(receipt_jws=_RECEIPTS.c.r))


def integrate_batch(
    session: Session, *, authority: str, signer: Signer, now: int, batch_max: int = BATCH_MAX
) -> BatchResult:
    """Sequence up to ``batch_max`` pending entries in ``session``'s transaction, after those its
    sequencer (if any) gave indices as they were written; sign a head per log and the receipts."""
    # columns, not ORM objects, and one bulk UPDATE: this runs for every batch of every message
    conn = session.connection()
    sequencer = sequencer_of(session)
    pending = conn.execute(_PENDING, {"n": batch_max}).all()
    given = {} if sequencer is None else {log: leaves for log, leaves in sequencer.leaves.items() if leaves}
    if not pending and not given:
        return BatchResult(0, (), {})
    by_log: dict[str, list[Any]] = {log: [] for log in given}
    for entry in pending:
        by_log.setdefault(entry.log, []).append(entry)
    heads: dict[str, int] = {}
    signed: dict[int, bytes] = {}  # inbox seq -> its receipt
    sequenced: list[dict[str, int]] = []
    for log, entries in by_log.items():
        exists, cr = sequencer.trees[log] if log in given else load_tree(conn, log)  # type: ignore[union-attr]
        cr.extend(given.get(log, ()))  # written with their indices already, in that order
        indices: dict[int, int] = {}
        for entry in entries:
            indices[entry.id] = cr.size
            sequenced.append({"i": entry.id, "n": cr.size})
            cr.append(bytes.fromhex(entry.leaf_hash))
        root = cr.root().hex()
        head = TreeHead(iss=authority, log=log, tree_size=cr.size, root=root, at=now)  # type: ignore[arg-type]
        conn.execute(_ADD_HEAD, {"log": log, "tree_size": cr.size, "root": root, "at": now,
                                 "head_jws": sign_head(head, signer=signer)})
        frontier = json.dumps(cr.to_json())
        if exists:
            conn.execute(_SAVE_TREE, {"b_log": log, "b_size": cr.size, "b_frontier": frontier, "b_root": root})
        else:
            conn.execute(_NEW_TREE, {"log": log, "tree_size": cr.size, "frontier": frontier, "root": root})
        heads[log] = cr.size
        if log != "exchange":
            continue
        # the messages stored in this transaction (known), and those of the entries found pending
        messages: list[Received] = [] if sequencer is None else list(sequencer.received)
        received = {e.id: indices[e.id] for e in entries if e.event == "received"}
        if received:
            # columns, not ORM objects: the rows' envelopes are not needed here
            i = inbox_table.c
            messages += [Received(m.seq, received[m.entry_id], m.sender, m.message_id, m.envelope_sha256,
                                  m.received_at)
                         for m in conn.execute(select(i.seq, i.entry_id, i.sender, i.message_id, i.envelope_sha256,
                                                      i.received_at).where(i.entry_id.in_(list(received))))]
        for msg in messages:
            receipt = Receipt(
                iss=authority, aud=msg.sender, id=msg.message_id, envelope_sha256=msg.envelope_sha256,
                received_at=msg.received_at, leaf_index=msg.leaf_index, tree_size=cr.size, root=root,
            )
            signed[msg.seq] = sign_receipt(receipt, signer=signer)
    _SET_RECEIPT.execute(conn, [{"s": seq, "r": jws} for seq, jws in signed.items()])
    _SET_INDEX.execute(conn, sequenced)
    session.flush()
    crash_point("integrator_mid_batch")  # tests only: dies before the batch commits
    direct = 0 if sequencer is None else sequencer.count
    return BatchResult(len(pending) + direct, tuple(signed), heads, signed)


def integrate_until_idle(db: Database, *, authority: str, signer: Signer, now: int) -> int:
    """Run batches until nothing is pending (for a node that is not running); the entries sequenced."""
    total = 0
    while True:
        with db.write() as session:
            entries = integrate_batch(session, authority=authority, signer=signer, now=now).entries
        if entries == 0:
            return total
        total += entries


T = TypeVar("T")
Job = Callable[[Session], Any]
#: a job's future: a thread's, or (submitted on the bound loop) an asyncio one
JobFuture = Future[Any] | asyncio.Future[Any]


class StoppedError(Exception):
    """The node is stopping: the write was not attempted."""


class _JobFailedError(Exception):
    """A job of a shared transaction raised (its cause): the transaction rolls back."""


def _resolve(fut: JobFuture, *, value: Any = None, error: BaseException | None = None) -> None:
    """Settle a job's future (a thread's ``concurrent.futures.Future`` or, on the bound loop, an
    ``asyncio.Future``), unless its waiter gave up (a cancelled coroutine cancels its future)."""
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(value)


class AfterCommit:
    """A job's result that wants to see the batch it committed in (e.g. the receipt signed for it).

    A base class, not a runtime-checkable ``Protocol``: the writer checks every job's result, and
    ``isinstance`` against a protocol costs ~7 us (its members are inspected on each call).
    """

    def after_commit(self, result: BatchResult) -> None:
        raise NotImplementedError


class IntegratorLoop:
    """The process's group-commit writer: small writes submitted by any thread or coroutine run
    together in one transaction, which ends — when this process holds the integrator lock — with
    an integrator batch.  One commit (one fsync) then covers many messages stored, settled or
    claimed, and the receipts of the messages stored are signed before that same commit.

    A batch closes as soon as the previous one has committed and something is pending; it never
    waits on a timer while work waits.  A job that fails (a lost
    race, say) fails alone: the batch rolls back and its jobs run again one transaction each.
    ``wake()`` starts the next batch at once.

    Batches run in one of two places.  A serving node ``bind``s the writer to its event loop: each
    batch then runs on the loop, after the round of callbacks that submitted its jobs.  On a
    thread of its own (``start``) every statement of a batch hands Python's GIL back and forth
    with the loop's thread, and on a busy process each hand-over waits out the interpreter's
    switch interval: a commit of 0.3 ms took 5-6 ms there (docs/adr/0008-writer-on-the-event-loop.md).
    ``start`` remains for callers without a loop.
    """

    def __init__(
        self, db: Database, *, authority: str, signer: Callable[[], Signer], clock: Callable[[], int],
        on_batch: Callable[[BatchResult], None] | None = None, idle_poll: float = 0.2,
        metrics: NodeMetrics | None = None, integrate: bool = True, max_jobs: int = 512,
    ) -> None:
        self._db = db
        self._authority = authority
        self._signer = signer
        self._clock = clock
        self._on_batch = on_batch
        self._idle_poll = idle_poll
        self._metrics = metrics
        self._max_jobs = max_jobs
        #: sequence entries and sign receipts in every batch (only the holder of the integrator lock)
        self.integrate = integrate
        self._jobs: deque[tuple[Job, JobFuture]] = deque()
        self._jobs_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # bound: batches run on this loop
        self._loop_thread: int | None = None
        self._scheduled = False  # a batch is due on the loop (its call_soon is pending)
        self._idle: asyncio.TimerHandle | None = None
        self.last_error: str | None = None

    def wake(self) -> None:
        """Start the next batch at once (from any thread)."""
        if self._loop is None:
            self._wake.set()
        else:
            self._soon()

    @property
    def bound(self) -> bool:
        return self._loop is not None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run batches on ``loop`` from now until ``stop`` (call it on that loop's thread)."""
        if self._thread is not None:
            raise RuntimeError("the writer already runs on a thread of its own")
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._schedule()  # jobs submitted before binding, then the idle rounds

    def _soon(self) -> None:
        """``_schedule`` on the bound loop, from its thread or from another one."""
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._schedule()
        else:
            with contextlib.suppress(RuntimeError):  # the loop has closed: the node is stopping
                loop.call_soon_threadsafe(self._schedule)

    def _schedule(self) -> None:
        if self._scheduled or self._loop is None or self._stop.is_set():
            return
        self._scheduled = True
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self._loop.call_soon(self._loop_batch)

    def _loop_batch(self) -> None:
        """One batch on the bound loop, then the next: at once if more is pending, else after the
        idle poll (entries that other transactions or processes wrote get integrated)."""
        self._scheduled = False
        loop = self._loop
        if self._stop.is_set() or loop is None:
            return
        result = self._batch(self._take())
        if result is None:
            self._idle = loop.call_later(RETRY_AFTER_ERROR, self._schedule)
            return
        if result.entries or self._jobs:
            self._schedule()
        else:
            self._idle = loop.call_later(self._idle_poll, self._schedule)

    def submit(self, job: Callable[[Session], T]) -> Future[T]:
        """Run ``job(session)`` in the next batch's transaction; the future resolves after the commit."""
        fut: Future[T] = Future()
        if self._stop.is_set():
            fut.set_exception(StoppedError("the node is stopping"))
            return fut
        with self._jobs_lock:
            self._jobs.append((job, fut))
        self.wake()
        return fut

    async def run(self, job: Callable[[Session], T]) -> T:
        """``submit`` for coroutines; on the bound loop's thread without a thread hop."""
        if self._loop is None or threading.get_ident() != self._loop_thread:
            return await asyncio.wrap_future(self.submit(job))
        if self._stop.is_set():
            raise StoppedError("the node is stopping")
        fut: asyncio.Future[T] = self._loop.create_future()
        with self._jobs_lock:
            self._jobs.append((job, fut))
        self._schedule()
        return await fut

    def _take(self) -> list[tuple[Job, JobFuture]]:
        with self._jobs_lock:
            n = min(len(self._jobs), self._max_jobs)
            return [self._jobs.popleft() for _ in range(n)]

    def _batch(self, jobs: list[tuple[Job, JobFuture]]) -> BatchResult | None:
        """``run_once`` for the writer's own rounds: None after a (transient) database error, which
        stays in ``last_error`` until a batch succeeds; the jobs have their error already."""
        try:
            result = self.run_once(jobs)
        except Exception as e:  # keep integrating after a transient database error
            self.last_error = type(e).__name__  # shown on /readyz: never the message (it may quote data)
            return None
        self.last_error = None
        return result

    def run_once(self, jobs: list[tuple[Job, JobFuture]] | None = None) -> BatchResult:
        jobs = jobs or []
        started = time.perf_counter()
        try:
            try:
                outcomes, result = self._together(jobs)
            except _JobFailedError:
                # one job failed and the transaction rolled back: each job again in a transaction of its
                # own, so that it fails alone (jobs only write to the database, so running one again is safe)
                outcomes, result = self._one_by_one(jobs)
        except BaseException as e:
            for _job, fut in jobs:
                _resolve(fut, error=e if isinstance(e, Exception) else StoppedError(str(e)))
            raise
        if self._metrics is not None and result.entries:
            self._metrics.observe_batch(result.entries, len(result.receipts), time.perf_counter() - started)
        if self._on_batch is not None and result.entries:
            self._on_batch(result)
        for (_job, fut), (ok, value) in zip(jobs, outcomes, strict=True):
            if ok:
                if isinstance(value, AfterCommit):
                    value.after_commit(result)
                _resolve(fut, value=value)
            else:
                _resolve(fut, error=value)
        return result

    def _integrate(self, session: Session) -> BatchResult:
        if not self.integrate:
            return BatchResult(0, (), {})
        return integrate_batch(session, authority=self._authority, signer=self._signer(), now=self._clock())

    def _together(self, jobs: list[tuple[Job, JobFuture]]) -> tuple[list[tuple[bool, Any]], BatchResult]:
        outcomes: list[tuple[bool, Any]] = []
        with self._db.write() as session:
            if self.integrate:  # this transaction ends with the integrator batch: entries take their
                begin_sequencing(session)  # indices as they are written (not written twice)
            for job, _fut in jobs:
                try:
                    value = job(session)
                    # its ORM changes written now: the next jobs' Core and driver statements do not
                    # flush the session, and must see them (a settle's backoff before a claim)
                    session.flush()
                except Exception as e:
                    raise _JobFailedError from e
                outcomes.append((True, value))
            return outcomes, self._integrate(session)

    def _one_by_one(self, jobs: list[tuple[Job, JobFuture]]) -> tuple[list[tuple[bool, Any]], BatchResult]:
        outcomes: list[tuple[bool, Any]] = []
        for job, _fut in jobs:
            try:
                with self._db.write() as session:
                    outcomes.append((True, job(session)))
            except Exception as e:
                outcomes.append((False, e))
        with self._db.write() as session:
            return outcomes, self._integrate(session)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            jobs = self._take()
            result = self._batch(jobs)
            if result is None:
                result = BatchResult(0, (), {})
                self._stop.wait(RETRY_AFTER_ERROR)
            if result.entries or jobs or self._jobs:
                continue  # group commit: the next batch starts as soon as this one committed
            self._wake.wait(self._idle_poll)
        for _job, fut in self._take_all():
            _resolve(fut, error=StoppedError("the node is stopping"))

    def _take_all(self) -> list[tuple[Job, JobFuture]]:
        with self._jobs_lock:
            jobs = list(self._jobs)
            self._jobs.clear()
            return jobs

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="comity-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        for _job, fut in self._take_all():  # bound to a loop: what no batch took any more
            with contextlib.suppress(RuntimeError):  # an asyncio future of a loop already closed
                _resolve(fut, error=StoppedError("the node is stopping"))
