"""The log integrator: one per database, group commit of audit entries into signed tree heads.

A batch closes as soon as the previous one has committed and something is pending, or at
``BATCH_MAX`` entries — never on a timer while a receipt waits.  In one transaction it
assigns leaf indices, extends the tree from its stored frontier, signs one head per log
touched, and signs and stores the receipt of every ``received`` entry in the batch.
"""

from __future__ import annotations

import fcntl
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from protocol.heads import TreeHead, sign_head
from protocol.jose import Signer
from protocol.merkle import CompactRange
from protocol.receipts import Receipt, sign_receipt

from ..faults import crash_point
from ..storage.db import Database
from ..storage.models import AuditEntry, AuditHead, AuditTree, InboxMessage

if TYPE_CHECKING:
    from ..metrics import NodeMetrics

BATCH_MAX = 1000
_PG_LOCK_KEY = 0x436F6D69  # "Comi"


class IntegratorBusyError(Exception):
    """Another process holds this database's integrator lock."""


@dataclass(frozen=True)
class BatchResult:
    entries: int
    receipts: tuple[int, ...]  # inbox seqs whose receipt was stored
    heads: dict[str, int]  # log -> new tree size


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


def _load_tree(session: Session, log: str) -> tuple[AuditTree, CompactRange]:
    row = session.get(AuditTree, log)
    if row is None:
        cr = CompactRange()
        row = AuditTree(log=log, tree_size=0, frontier=json.dumps(cr.to_json()), root=cr.root().hex())
        session.add(row)
        return row, cr
    return row, CompactRange.from_json(json.loads(row.frontier))


def integrate_batch(
    session: Session, *, authority: str, signer: Signer, now: int, batch_max: int = BATCH_MAX
) -> BatchResult:
    """Sequence up to ``batch_max`` pending entries in ``session``'s transaction."""
    pending = session.scalars(
        select(AuditEntry).where(AuditEntry.leaf_index.is_(None)).order_by(AuditEntry.id).limit(batch_max)
    ).all()
    if not pending:
        return BatchResult(0, (), {})
    by_log: dict[str, list[AuditEntry]] = {}
    for entry in pending:
        by_log.setdefault(entry.log, []).append(entry)
    heads: dict[str, int] = {}
    receipts: list[int] = []
    for log, entries in by_log.items():
        row, cr = _load_tree(session, log)
        for entry in entries:
            entry.leaf_index = cr.size
            cr.append(bytes.fromhex(entry.leaf_hash))
        root = cr.root().hex()
        head = TreeHead(iss=authority, log=log, tree_size=cr.size, root=root, at=now)  # type: ignore[arg-type]
        session.add(AuditHead(log=log, tree_size=cr.size, root=root, at=now,
                              head_jws=sign_head(head, signer=signer)))
        row.tree_size, row.frontier, row.root = cr.size, json.dumps(cr.to_json()), root
        heads[log] = cr.size
        if log != "exchange":
            continue
        received = {e.id: e for e in entries if e.event == "received"}
        if not received:
            continue
        rows = session.scalars(select(InboxMessage).where(InboxMessage.entry_id.in_(received))).all()
        for msg in rows:
            entry = received[msg.entry_id]
            assert entry.leaf_index is not None
            receipt = Receipt(
                iss=authority, aud=msg.sender, id=msg.message_id, envelope_sha256=msg.envelope_sha256,
                received_at=msg.received_at, leaf_index=entry.leaf_index, tree_size=cr.size, root=root,
            )
            msg.receipt_jws = sign_receipt(receipt, signer=signer)
            receipts.append(msg.seq)
    session.flush()
    crash_point("integrator_mid_batch")  # tests only: dies before the batch commits
    return BatchResult(len(pending), tuple(receipts), heads)


def integrate_until_idle(db: Database, *, authority: str, signer: Signer, now: int) -> int:
    """Run batches until nothing is pending (for a node that is not running); the entries sequenced."""
    total = 0
    while True:
        with db.write() as session:
            entries = integrate_batch(session, authority=authority, signer=signer, now=now).entries
        if entries == 0:
            return total
        total += entries


class IntegratorLoop:
    """Runs batches in a thread while pending work exists; ``wake()`` starts the next one at once."""

    def __init__(
        self, db: Database, *, authority: str, signer: Callable[[], Signer], clock: Callable[[], int],
        on_batch: Callable[[BatchResult], None] | None = None, idle_poll: float = 0.2,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self._db = db
        self._authority = authority
        self._signer = signer
        self._clock = clock
        self._on_batch = on_batch
        self._idle_poll = idle_poll
        self._metrics = metrics
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    def wake(self) -> None:
        self._wake.set()

    def run_once(self) -> BatchResult:
        started = time.perf_counter()
        with self._db.write() as session:
            result = integrate_batch(session, authority=self._authority, signer=self._signer(), now=self._clock())
        if self._metrics is not None and result.entries:
            self._metrics.observe_batch(result.entries, len(result.receipts), time.perf_counter() - started)
        if self._on_batch is not None and result.entries:
            self._on_batch(result)
        return result

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                result = self.run_once()
                self.last_error = None
            except Exception as e:  # keep integrating after a transient database error
                self.last_error = type(e).__name__  # shown on /readyz: never the message (it may quote data)
                result = BatchResult(0, (), {})
                self._stop.wait(0.5)
            if result.entries:
                continue  # group commit: the next batch starts as soon as this one committed
            self._wake.wait(self._idle_poll)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="comity-integrator", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


