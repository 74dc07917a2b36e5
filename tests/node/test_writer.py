"""The group-commit writer (``IntegratorLoop``): jobs share one transaction ended by an integrator batch,
a failing job fails alone, results arrive only after the commit, and nothing is accepted once it stops.
Also the SQLite checkpointer that keeps WAL checkpoints off the commit path."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest
from joserfc.jwk import OKPKey
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from node.services.audit import append_entry, entry_params, retract_entry
from node.services.integrator import BatchResult, IntegratorLoop, StoppedError
from node.services.sequencer import Sequencer
from node.storage.db import Checkpointer, Database
from node.storage.migrate import upgrade_url
from node.storage.models import AuditEntry, AuditHead, AuditTree
from protocol.jose import LocalSigner
from protocol.merkle import CompactRange


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    upgrade_url(database_url)
    database = Database(database_url)
    yield database
    database.dispose()


def _loop(db: Database, **kw: object) -> IntegratorLoop:
    signer = LocalSigner(OKPKey.generate_key("Ed25519"))
    return IntegratorLoop(db, authority="GB-UKCA", signer=lambda: signer, clock=lambda: 1_800_000_000,
                          **kw)  # type: ignore[arg-type]


def _entry(event: str) -> object:
    return lambda session: append_entry(session, event=event, at=1_800_000_000, peer="FR-DACG").id


def _count(db: Database, model: type) -> int:
    with db.read() as session:
        return int(session.execute(select(func.count()).select_from(model)).scalar_one())


def test_jobs_share_one_transaction_and_its_integrator_batch(db: Database) -> None:
    batches: list[BatchResult] = []
    loop = _loop(db, on_batch=batches.append)
    jobs = [(_entry(f"e{i}"), Future()) for i in range(5)]
    result = loop.run_once(jobs)  # type: ignore[arg-type]
    assert result.entries == 5 and len(batches) == 1
    assert _count(db, AuditHead) == 1  # one signed head for the five entries: one batch, one commit
    ids = [fut.result(timeout=0) for _job, fut in jobs]
    assert ids == sorted(ids) and len(set(ids)) == 5
    with db.read() as session:
        indices = list(session.scalars(select(AuditEntry.leaf_index).order_by(AuditEntry.id)))
    assert indices == [0, 1, 2, 3, 4]


def test_a_failing_job_fails_alone(db: Database) -> None:
    def boom(session: Session) -> None:
        append_entry(session, event="doomed", at=1, peer="FR-DACG")
        raise ValueError("this job fails")

    loop = _loop(db)
    jobs: list[tuple[object, Future[object]]] = [(_entry("first"), Future()), (boom, Future()),
                                                 (_entry("third"), Future())]
    loop.run_once(jobs)  # type: ignore[arg-type]
    assert isinstance(jobs[0][1].result(timeout=0), int)
    assert isinstance(jobs[2][1].result(timeout=0), int)
    with pytest.raises(ValueError, match="this job fails"):
        jobs[1][1].result(timeout=0)
    with db.read() as session:
        rows = session.execute(select(AuditEntry.event, AuditEntry.leaf_index).order_by(AuditEntry.id)).all()
    assert [r.event for r in rows] == ["first", "third"]  # the failed job's own write was rolled back with it
    assert sorted(r.leaf_index for r in rows) == [0, 1]  # and the indices given with it: no gap


def _tree_matches_entries(db: Database) -> None:
    """The stored tree (size and root) is that of the entries' leaf hashes in index order."""
    with db.read() as session:
        hashes = list(session.scalars(select(AuditEntry.leaf_hash).where(AuditEntry.log == "exchange")
                                      .order_by(AuditEntry.leaf_index)))
        tree = session.get(AuditTree, "exchange")
        heads = list(session.scalars(select(AuditHead.tree_size).order_by(AuditHead.tree_size)))
    cr = CompactRange()
    cr.extend(bytes.fromhex(h) for h in hashes)
    assert tree is not None and (tree.tree_size, tree.root) == (cr.size, cr.root().hex())
    assert heads[-1] == cr.size


def test_the_integrating_writers_entries_take_their_index_as_written_and_pending_ones_follow(
        db: Database) -> None:
    """Not written twice (inserted, then sequenced): inside the batch's own transaction the rows
    hold their indices already; entries other transactions left unsequenced come after them."""
    with db.write() as session:  # another transaction's (e.g. a CLI command's), not sequenced
        append_entry(session, event="earlier", at=1, peer="FR-DACG")
    seen: list[int | None] = []

    def job(session: Session) -> None:
        for i in range(3):
            append_entry(session, event=f"own{i}", at=1, peer="FR-DACG")
        seen.extend(session.scalars(select(AuditEntry.leaf_index).where(AuditEntry.event.like("own%"))
                                    .order_by(AuditEntry.id)))

    result = _loop(db).run_once([(job, Future())])  # type: ignore[list-item]
    assert seen == [0, 1, 2]
    assert result.entries == 4 and result.heads == {"exchange": 4}
    with db.read() as session:
        order = list(session.scalars(select(AuditEntry.event).order_by(AuditEntry.leaf_index)))
    assert order == ["own0", "own1", "own2", "earlier"]
    _tree_matches_entries(db)
    # the next batch goes on from there
    _loop(db).run_once([(_entry("next"), Future())])  # type: ignore[list-item]
    with db.read() as session:
        assert session.execute(select(AuditEntry.leaf_index).where(AuditEntry.event == "next")).scalar_one() == 4
    _tree_matches_entries(db)


def _kept_then_after(db: Database, job: object) -> None:
    """Run ``job`` in a writer batch: only its entries "kept" and "after" are written, indices 0 and 1."""
    fut: Future[object] = Future()
    _loop(db).run_once([(job, fut)])  # type: ignore[list-item]
    fut.result(timeout=0)
    with db.read() as session:
        rows = session.execute(select(AuditEntry.event, AuditEntry.leaf_index).order_by(AuditEntry.leaf_index)).all()
    assert [(r.event, r.leaf_index) for r in rows] == [("kept", 0), ("after", 1)]
    _tree_matches_entries(db)


def test_an_index_given_to_an_entry_not_written_is_given_to_the_next(db: Database) -> None:
    """A settle that lost its claim writes no ``delivered`` entry: the index it was given goes to the
    next entry, so that the log has no gap."""
    def job(session: Session) -> None:
        append_entry(session, event="kept", at=1, peer="FR-DACG")
        params = entry_params(session, event="never", at=1, peer="FR-DACG")
        assert params["e_leaf_index"] == 1
        retract_entry(session, params)
        append_entry(session, event="after", at=1, peer="FR-DACG")

    _kept_then_after(db, job)


def test_an_entry_whose_insert_failed_gives_its_index_back(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job that goes on after a failed insert (SQLite does not abort the transaction) leaves no gap."""
    import node.services.audit as audit

    class Failing:
        def execute(self, *_a: object, **_kw: object) -> None:
            raise RuntimeError("the insert failed")

    def job(session: Session) -> None:
        append_entry(session, event="kept", at=1, peer="FR-DACG")
        with monkeypatch.context() as m:
            m.setattr(audit, "_INSERT_ENTRY", Failing())
            m.setattr(audit, "_INSERT_ENTRIES", Failing())
            with pytest.raises(RuntimeError):
                append_entry(session, event="lost", at=1, peer="FR-DACG")
            with pytest.raises(RuntimeError):
                audit.append_entries(session, [dict(event="lost", at=1), dict(event="lost", at=1)])
        append_entry(session, event="after", at=1, peer="FR-DACG")

    _kept_then_after(db, job)


def test_only_the_last_index_given_can_be_taken_back() -> None:
    seq = Sequencer()
    seq.trees["exchange"], seq.leaves["exchange"] = (True, CompactRange()), []  # (as if loaded: size 0)
    first = seq.assign(None, "exchange", b"\x01" * 32)  # type: ignore[arg-type]
    second = seq.assign(None, "exchange", b"\x02" * 32)  # type: ignore[arg-type]
    assert (first, second) == (0, 1)
    with pytest.raises(RuntimeError, match="only the last index"):
        seq.retract("exchange", first)  # an entry after it holds index 1: taking 0 back leaves a gap
    seq.retract("exchange", second)
    assert seq.assign(None, "exchange", b"\x03" * 32) == 1  # type: ignore[arg-type]
    assert seq.count == 2


def test_results_arrive_only_after_the_commit(db: Database) -> None:
    seen: list[int] = []

    def job(session: Session) -> int:
        return append_entry(session, event="x", at=1, peer="FR-DACG").id

    loop = _loop(db)
    loop.start()
    try:
        fut = loop.submit(job)
        entry_id = fut.result(timeout=10)
        # a fresh transaction sees the entry, sequenced: the future resolved after the commit
        with db.read() as session:
            row = session.get(AuditEntry, entry_id)
            assert row is not None and row.leaf_index is not None
            seen.append(row.leaf_index)
    finally:
        loop.stop()
    assert seen == [0]


def test_coroutines_await_the_writer(db: Database) -> None:
    loop = _loop(db)
    loop.start()
    try:
        async def many() -> list[int]:
            return list(await asyncio.gather(*(loop.run(_entry(f"c{i}")) for i in range(20))))  # type: ignore[arg-type]

        ids = asyncio.run(many())
    finally:
        loop.stop()
    assert len(set(ids)) == 20
    assert _count(db, AuditEntry) == 20
    assert _count(db, AuditHead) <= 20  # grouped: usually far fewer heads than entries


def test_no_job_is_taken_once_stopped(db: Database) -> None:
    loop = _loop(db)
    loop.start()
    loop.stop()
    fut = loop.submit(_entry("late"))  # type: ignore[arg-type]
    with pytest.raises(StoppedError):
        fut.result(timeout=1)
    assert _count(db, AuditEntry) == 0


def test_a_writer_that_does_not_integrate_leaves_entries_for_the_integrator(db: Database) -> None:
    loop = _loop(db, integrate=False)
    jobs = [(_entry("x"), Future())]
    result = loop.run_once(jobs)  # type: ignore[arg-type]
    assert result.entries == 0 and _count(db, AuditHead) == 0
    with db.read() as session:
        assert session.execute(select(AuditEntry.leaf_index)).scalar_one() is None
    loop.integrate = True
    assert loop.run_once().entries == 1


def test_the_checkpointer_keeps_checkpoints_off_the_commit_path(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'comity.db'}"
    upgrade_url(url)
    db = Database(url, autocheckpoint=False)
    try:
        with db.write() as session:
            assert session.execute(text("PRAGMA wal_autocheckpoint")).scalar_one() == 0
        for i in range(300):  # past SQLite's automatic threshold of 1,000 pages
            with db.write() as session:
                append_entry(session, event="x", at=i, peer="FR-DACG", details={"reason": "y" * 3000})
        wal = tmp_path / "comity.db-wal"
        assert wal.stat().st_size > 1000 * 4096  # nothing copied it back: commits only appended
        checkpointer = Checkpointer(db, interval=0.05)
        checkpointer.start()
        time.sleep(0.5)
        checkpointer.stop()
        assert checkpointer.last_error is None
        raw = sqlite3.connect(tmp_path / "comity.db")
        busy, frames, copied = raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        raw.close()
        assert busy == 0 and frames == copied  # every frame is in the database file
    finally:
        db.dispose()


def test_threads_of_one_process_queue_for_sqlite_writes(tmp_path: Path) -> None:
    """Many threads writing at once: no 'database is locked', every write lands."""
    url = f"sqlite:///{tmp_path / 'comity.db'}"
    upgrade_url(url)
    db = Database(url)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(20):
                with db.write() as session:
                    append_entry(session, event=f"t{n}", at=i, peer="FR-DACG")
        except BaseException as e:  # collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert _count(db, AuditEntry) == 160
    finally:
        db.dispose()


# --- bound to an event loop (how a serving node runs it) -----------------------------------------------


def test_on_the_loop_one_round_of_coroutines_shares_one_batch_and_no_thread_starts(db: Database) -> None:
    batches: list[BatchResult] = []
    writer = _loop(db, on_batch=batches.append)
    threads_before = threading.active_count()

    async def main() -> list[int]:
        writer.bind(asyncio.get_running_loop())
        try:
            return list(await asyncio.gather(*(writer.run(_entry(f"r{i}")) for i in range(12))))  # type: ignore[arg-type]
        finally:
            writer.stop()

    ids = asyncio.run(main())
    assert len(set(ids)) == 12
    assert len(batches) == 1 and batches[0].entries == 12  # one round: one transaction, one signed head
    assert _count(db, AuditHead) == 1
    assert threading.active_count() == threads_before  # the batches ran on the loop's own thread


def test_on_the_loop_jobs_from_other_threads_and_other_transactions_are_taken(db: Database) -> None:
    writer = _loop(db, idle_poll=0.05)

    async def main() -> tuple[int, int | None]:
        writer.bind(asyncio.get_running_loop())
        try:
            # a job submitted from a thread wakes the loop (no batch was due)
            from_thread = await asyncio.to_thread(lambda: writer.submit(_entry("t")).result(timeout=10))  # type: ignore[arg-type]
            # an entry another transaction wrote is sequenced by an idle round of the loop
            def elsewhere() -> int:
                with db.write() as session:
                    return append_entry(session, event="elsewhere", at=1, peer="FR-DACG").id
            other = await asyncio.to_thread(elsewhere)
            for _ in range(100):
                with db.read() as session:
                    row = session.get(AuditEntry, other)
                    if row is not None and row.leaf_index is not None:
                        return from_thread, row.leaf_index
                await asyncio.sleep(0.02)
            return from_thread, None
        finally:
            writer.stop()

    entry_id, leaf = asyncio.run(main())
    assert isinstance(entry_id, int)
    assert leaf == 1  # sequenced after the thread's entry, without anyone waking the writer


def test_on_the_loop_a_waiter_that_gives_up_does_not_hold_up_the_others(db: Database) -> None:
    writer = _loop(db)

    async def main() -> list[int]:
        writer.bind(asyncio.get_running_loop())
        try:
            doomed = asyncio.ensure_future(writer.run(_entry("abandoned")))  # type: ignore[arg-type]
            others = [asyncio.ensure_future(writer.run(_entry(f"kept{i}"))) for i in range(3)]  # type: ignore[arg-type]
            await asyncio.sleep(0)  # every job queued, the batch not run yet
            doomed.cancel()
            return list(await asyncio.gather(*others))
        finally:
            writer.stop()

    assert len(asyncio.run(main())) == 3
    assert _count(db, AuditEntry) == 4  # the abandoned job's write still committed with its batch


def test_on_the_loop_stop_refuses_new_jobs_and_fails_the_queued_ones(db: Database) -> None:
    writer = _loop(db)

    async def main() -> None:
        writer.bind(asyncio.get_running_loop())
        queued = writer.submit(_entry("queued"))  # type: ignore[arg-type]
        writer.stop()  # before the loop ran the batch
        with pytest.raises(StoppedError):
            queued.result(timeout=1)
        with pytest.raises(StoppedError):
            await writer.run(_entry("late"))  # type: ignore[arg-type]

    asyncio.run(main())
    assert _count(db, AuditEntry) == 0


def test_a_writer_on_a_thread_cannot_also_be_bound(db: Database) -> None:
    writer = _loop(db)
    writer.start()
    try:
        async def main() -> None:
            writer.bind(asyncio.get_running_loop())

        with pytest.raises(RuntimeError, match="thread"):
            asyncio.run(main())
    finally:
        writer.stop()


def test_the_wal_starts_over_once_it_is_large_and_waits_for_no_reader_for_long(tmp_path: Path) -> None:
    """(Under load some reader is nearly always inside the WAL, so SQLite never starts it over by
    itself; bench/exchange_bench.py showed it at 500 MB after 15,000 messages without this.)"""
    url = f"sqlite:///{tmp_path / 'comity.db'}"
    upgrade_url(url)
    db = Database(url, autocheckpoint=False)
    wal = tmp_path / "comity.db-wal"

    def write(n: int) -> None:
        for i in range(n):
            with db.write() as session:
                append_entry(session, event="x", at=i, peer="FR-DACG", details={"reason": "y" * 3000})

    def frames() -> int:
        raw = sqlite3.connect(tmp_path / "comity.db")
        try:
            return int(raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])
        finally:
            raw.close()

    try:
        write(100)
        assert not db.checkpoint()  # well below the default threshold: copied back, not restarted
        assert frames() > 300
        assert db.checkpoint(restart_above=0)
        write(3)
        assert frames() < 40  # the next commits wrote the WAL from its start
        size = wal.stat().st_size
        # a reader inside the WAL: the restart gives up after WAL_RESTART_WAIT_MS, raises nothing,
        # and the process's writers are held back only that long
        reader = sqlite3.connect(tmp_path / "comity.db")
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM audit_entries").fetchone()
        write(3)
        started = time.monotonic()
        assert not db.checkpoint(restart_above=0)
        assert time.monotonic() - started < 2.0
        reader.rollback()
        reader.close()
        assert wal.stat().st_size >= size  # (not truncated while a reader needed it)
        assert db.checkpoint(restart_above=0)
    finally:
        db.dispose()
