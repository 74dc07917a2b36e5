"""Statements for many rows (ManyRows) and a row written with its audit entry in one statement
(PostgreSQL): the same rows, order and outcomes as one statement per row (SQLite), on both."""

from __future__ import annotations

import time
from concurrent.futures import Future
from pathlib import Path

import pytest
from joserfc.jwk import OKPKey
from sqlalchemy import bindparam, select, text

from node.delivery.claims import claim_due_deliveries, settle_delivered, settle_delivered_in
from node.services.audit import append_entries
from node.services.integrator import _SET_INDEX, _SET_RECEIPT, IntegratorLoop
from node.storage.db import Database, DriverStatement, ManyRows, unnest_arrays
from node.storage.models import AuditEntry, AuditTree, OutboxMessage, peers_table
from protocol.jose import LocalSigner
from protocol.merkle import CompactRange
from tests.node.audit_world import queue_messages, two_sides

_p = peers_table.c
_ADD = DriverStatement(peers_table.insert().values(
    authority=bindparam("a"), endpoint="https://127.0.0.1:1", failures=0, next_attempt_at=0, name=bindparam("a"),
    fingerprint="f", chain=b"", keyset_version=1, pinned_at=0, updated_at=0, refreshed_at=0, expires_at=0))
_ARRAYS = unnest_arrays({"a": _p.authority.type, "n": _p.failures.type})
_SET_FAILURES = ManyRows(
    peers_table.update().where(_p.authority == bindparam("a")).values(failures=bindparam("n")),
    peers_table.update().where(_p.authority == _ARRAYS.c.a).values(failures=_ARRAYS.c.n))


def test_many_rows_update_each_row_by_its_key(migrated_url: str) -> None:
    db = Database(migrated_url)
    try:
        with db.write() as session:
            conn = session.connection()
            _ADD.execute_many(conn, [{"a": a} for a in ("FR-DACG", "DE-BMJ", "IT-MG")])
            _SET_FAILURES.execute(conn, [{"a": "IT-MG", "n": 7}, {"a": "FR-DACG", "n": 2}, {"a": "XX-NONE", "n": 9}])
            _SET_FAILURES.execute(conn, [])  # nothing to do: no statement
        with db.read() as session:
            rows = dict(session.execute(select(_p.authority, _p.failures)).all())
        assert rows == {"FR-DACG": 2, "DE-BMJ": 0, "IT-MG": 7}
    finally:
        db.dispose()


def test_entries_appended_together_keep_the_order_given(migrated_url: str) -> None:
    db = Database(migrated_url)
    try:
        events = [f"e{i:03d}" for i in range(300)]
        with db.write() as session:
            append_entries(session, [dict(event=e, at=1_800_000_000 + i, message_id=None if i % 3 else f"m{i}")
                                     for i, e in enumerate(events)])
        with db.read() as session:
            rows = session.execute(select(AuditEntry.event, AuditEntry.message_id, AuditEntry.leaf_index)
                                   .order_by(AuditEntry.id)).all()
        assert [r.event for r in rows] == events
        assert [r.message_id for r in rows] == [None if i % 3 else f"m{i}" for i in range(300)]
        assert {r.leaf_index for r in rows} == {None}  # sequenced later, by the integrator
    finally:
        db.dispose()


def test_a_settle_whose_lease_was_lost_writes_no_entry(tmp_path: Path, backend: str) -> None:
    with two_sides(tmp_path, backend) as (a, b):
        now = int(time.time())
        queue_messages(a, b.authority, 1, now)
        [claim] = claim_due_deliveries(a.db, owner="worker-1", now=now, limit=10)
        receipt = dict(receipt_jws=b"receipt", received_at=now, leaf_index=4, tree_size=5, root="ab" * 32, now=now)

        def delivered() -> list[AuditEntry]:
            with a.db.read() as session:
                return list(session.scalars(select(AuditEntry).where(AuditEntry.event == "delivered")))

        assert settle_delivered(a.db, claim, owner="worker-2", **receipt) is False  # another worker's claim
        assert delivered() == []
        assert settle_delivered(a.db, claim, owner="worker-1", **receipt) is True
        assert settle_delivered(a.db, claim, owner="worker-1", **receipt) is False  # settled already
        [entry] = delivered()
        assert entry.message_id == claim.message_id and entry.peer == b.authority
        assert entry.envelope_sha256 == claim.envelope_sha256 and b'"peer_tree_size":5' in entry.leaf
        with a.db.read() as session:
            row = session.get_one(OutboxMessage, claim.seq)
            assert (row.state, row.receipt_tree_size, row.receipt_leaf_index) == ("delivered", 5, 4)


def test_in_the_integrating_writers_batch_a_lost_settle_leaves_no_gap_in_the_log(tmp_path: Path,
                                                                                  backend: str) -> None:
    """There the ``delivered`` entry takes its leaf index before the statement runs (PostgreSQL: the
    settle and its entry are one statement); a settle that matched no claim gives the index back."""
    with two_sides(tmp_path, backend) as (a, b):
        now = int(time.time())
        queue_messages(a, b.authority, 2, now)
        claims = claim_due_deliveries(a.db, owner="worker-1", now=now, limit=10)
        receipt = dict(receipt_jws=b"receipt", received_at=now, leaf_index=4, tree_size=5, root="ab" * 32, now=now)
        signer = LocalSigner(OKPKey.generate_key("Ed25519"))
        writer = IntegratorLoop(a.db, authority=a.authority, signer=lambda: signer, clock=lambda: now)

        def settle(owner: str, claim: object) -> object:
            return lambda session: settle_delivered_in(session, claim, owner=owner, **receipt)  # type: ignore[arg-type]

        jobs = [(settle("worker-2", claims[0]), Future()), (settle("worker-1", claims[0]), Future()),
                (settle("worker-2", claims[1]), Future()), (settle("worker-1", claims[1]), Future())]
        writer.run_once(jobs)  # type: ignore[arg-type]
        assert [fut.result(timeout=0) for _job, fut in jobs] == [False, True, False, True]
        with a.db.read() as session:
            rows = session.execute(select(AuditEntry.event, AuditEntry.leaf_index, AuditEntry.leaf_hash)
                                   .where(AuditEntry.log == "exchange").order_by(AuditEntry.leaf_index)).all()
            tree = session.get_one(AuditTree, "exchange")
        assert [r.leaf_index for r in rows] == list(range(len(rows)))  # every entry, no gap
        assert [r.event for r in rows].count("delivered") == 2
        cr = CompactRange()
        cr.extend(bytes.fromhex(r.leaf_hash) for r in rows)
        assert (tree.tree_size, tree.root) == (cr.size, cr.root().hex())


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_postgresql_plans_statements_for_many_rows_at_each_run(migrated_url: str) -> None:
    """A plan PostgreSQL keeps for a prepared statement is made for the table of that moment; one
    made while the table was small joins the arrays with a scan of the whole table, for good."""
    db = Database(migrated_url)
    try:
        with db.write() as session:
            conn = session.connection()
            for i in range(8):  # a control: a statement run as often is prepared, after five runs
                _ADD.execute(conn, {"a": f"P{i}"})
            for i in range(8):
                _SET_FAILURES.execute(conn, [{"a": "P1", "n": i}, {"a": "P2", "n": i}])
            prepared = list(session.execute(text("SELECT statement FROM pg_prepared_statements")).scalars())
    finally:
        db.dispose()
    assert any(s.startswith("INSERT INTO peers") for s in prepared), prepared
    assert not any("unnest" in s for s in prepared), prepared


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
@pytest.mark.parametrize("statement", [_SET_INDEX, _SET_RECEIPT], ids=["leaf-indices", "receipts"])
def test_postgresql_updates_many_rows_through_the_key(migrated_url: str, statement: ManyRows) -> None:
    """100 rows of 20,000 updated, and no statistics: the rows are found by key, the table not read."""
    db = Database(migrated_url)
    try:
        with db.write() as session:
            conn = session.connection()
            append_entries(session, [dict(event="received", at=1_800_000_000) for _ in range(20_000)])
            session.flush()
            conn.exec_driver_sql(  # a message received with each
                "INSERT INTO inbox (sender, message_id, envelope_sha256, envelope, inner_jws, kind, subject, body, "
                "iat, exp, received_at, entry_id) SELECT 'FR-DACG', md5(g::text), md5(g::text) || md5(g::text), "
                "'\\x00', '\\x00', 'note', 's', 'b', 0, 0, 0, g FROM generate_series(1, 20000) g")
            arrays = statement._arrays
            sql, _positions, _names, _fixed = arrays._sql(conn.dialect)
            values = {"i": list(range(5_001, 5_101)), "n": list(range(100)),
                      "s": list(range(5_001, 5_101)), "r": [b"receipt"] * 100}
            plan = "\n".join(r[0] for r in conn.exec_driver_sql(
                f"EXPLAIN {sql}", {n: values[n] for n in arrays.names(conn.dialect)}))
            session.rollback()
    finally:
        db.dispose()
    assert "Seq Scan" not in plan, plan
