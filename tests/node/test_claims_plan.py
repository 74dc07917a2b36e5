"""The claim query stays on its indexes however the database plans it.

PostgreSQL plans a prepared statement generically after a few runs; with the states bound as
parameters that plan could not use the partial index of active messages and compared every queued
message with every other one (a claim took 160 ms with 4,000 queued).  Later, with the states
written in, a plan made while the outbox was small (or without statistics) still read and sorted
every queued message, each claim (8 ms a claim, 10,000 queued).  These tests pin the shape.
"""

from __future__ import annotations

from concurrent.futures import Future

import pytest
from sqlalchemy import create_engine, insert, select, text
from sqlalchemy.dialects import postgresql

from node.delivery.claims import _DUE, ACTIVE, claim_due, settle_retry_in
from node.services.integrator import IntegratorLoop
from node.storage.db import Database, planned_for_values
from node.storage.models import outbox_table, peers_table

NOW = 1_800_000_000


def _rendered(query: object, **values: object) -> str:
    """The statement's text as PostgreSQL receives it (only ``now`` and ``limit`` left as parameters,
    and the peers left out, if any, as ``b_exclude_1`` ...)."""
    bound = query.params(b_now=NOW, b_limit=32, **values)  # type: ignore[attr-defined]
    return str(bound.compile(dialect=postgresql.psycopg.dialect(), compile_kwargs={"render_postcompile": True}))


def test_the_states_are_written_into_the_statement() -> None:
    for queries in (_DUE[False, False], _DUE[True, False]):  # without and with row locks
        for state, query in zip(ACTIVE, queries, strict=True):
            sql = _rendered(query)
            assert f"outbox.state = '{state}'" in sql
            assert "outbox_1.state IN ('queued', 'sending')" in sql
            assert sql.count("%(") == 4  # now (three times) and limit: nothing else is bound


def _seed(url: str, n: int, *, exp: int = NOW + 86400, size: int = 1) -> None:
    """``n`` queued messages, two per conversation, to one peer; their signed and sealed forms of
    ``size`` bytes each (the planner counts a table's pages to guess its rows)."""
    engine = create_engine(url)
    with engine.begin() as c:
        c.execute(insert(peers_table).values(
            authority="FR-DACG", endpoint="https://127.0.0.1:1", failures=0, next_attempt_at=0, name="FR",
            fingerprint="f", chain=b"", keyset_version=1, pinned_at=0, updated_at=0, refreshed_at=0, expires_at=0))
        c.execute(insert(outbox_table), [dict(
            message_id=f"{i:032x}", peer="FR-DACG", kind="note", conversation=f"c{i % (n // 2):031x}",
            inner_jws=b"i" * size, envelope=b"e" * size, envelope_sha256="a" * 64, recipient_kid="k", created_at=NOW,
            exp=exp, state="queued", attempts=0, next_attempt_at=0) for i in range(n)])
    engine.dispose()


def test_claims_keep_conversation_order(migrated_url: str) -> None:
    _seed(migrated_url, 40)  # two messages per conversation: the second waits for the first
    db = Database(migrated_url)
    try:
        with db.write() as session:
            first = claim_due(session, owner="w1", now=NOW, limit=100)
        assert [c.seq for c in first] == list(range(1, 21))
        with db.write() as session:
            assert claim_due(session, owner="w2", now=NOW, limit=100) == []  # all blocked or leased
    finally:
        db.dispose()


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
@pytest.mark.parametrize("excluding", [False, True], ids=["all-peers", "peers-left-out"])
def test_postgresql_claims_walk_the_index_in_order_without_statistics(migrated_url: str, excluding: bool) -> None:
    """5,000 queued messages and no ``ANALYZE``: PostgreSQL guesses that few rows are queued.  Planned
    as the claim plans it, the due query must still walk the index in order and stop at its limit —
    not read every queued row (a bitmap scan, a join with the peers) and sort them, every claim."""
    _seed(migrated_url, 5000, size=2000)  # the size of a short message's
    engine = create_engine(migrated_url)
    try:
        with engine.connect() as c:
            sql = _rendered(_DUE[True, excluding][0], b_exclude=["DE-BMJ"])
            values = {"b_now": NOW, "b_limit": 32, "b_exclude_1": "DE-BMJ"}
            with planned_for_values(c, ordered=True):  # (values bound, as the claim binds them)
                plan = "\n".join(r[0] for r in c.exec_driver_sql(f"EXPLAIN {sql}", values))
            assert c.exec_driver_sql("SHOW enable_bitmapscan").scalar() == "on"  # for this claim only
            c.rollback()
    finally:
        engine.dispose()
    assert "Index Scan using ix_outbox_due on outbox" in plan, plan  # walked in order ...
    assert "Sort" not in plan and "Bitmap" not in plan and "Hash" not in plan, plan  # ... no sort, nothing hashed
    assert "ix_outbox_conversation_active" in plan, plan  # the anti-join looks up one conversation


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_postgresql_never_keeps_a_claims_plan(migrated_url: str) -> None:
    """psycopg prepares a statement on the server after five runs, and PostgreSQL keeps the plan it
    then makes — for an empty outbox, a sequential scan that grows with the table.  The claim's
    statements are planned at every run instead; the connection's other statements are prepared."""
    _seed(migrated_url, 12)
    db = Database(migrated_url)
    try:
        with db.write() as session:
            claimed = [claim_due(session, owner="w1", now=NOW, limit=1, expire=False) for _ in range(8)]
            for i in range(8):  # a control: an ordinary statement run as often is prepared
                session.execute(text("SELECT count(*) FROM peers WHERE failures >= :n"), {"n": i})
            prepared = list(session.execute(text("SELECT statement FROM pg_prepared_statements")).scalars())
            assert session.execute(text("SHOW enable_bitmapscan")).scalar() == "on"
    finally:
        db.dispose()
    assert [len(c) for c in claimed] == [1] * 6 + [0] * 2  # six conversations, two messages each
    assert any("FROM peers" in s for s in prepared), prepared
    assert not any("outbox" in s or "unnest" in s for s in prepared), prepared


def test_an_expired_message_is_failed_not_claimed(migrated_url: str) -> None:
    """``fail_expired`` changes ORM rows; the claim's statements run on the connection and must see them."""
    _seed(migrated_url, 2, exp=NOW - 1000)
    db = Database(migrated_url)
    try:
        with db.write() as session:
            assert claim_due(session, owner="w1", now=NOW, limit=10, skew=300, expire=True) == []
        with db.read() as session:
            rows = session.execute(select(outbox_table.c.state, outbox_table.c.attempts,
                                          outbox_table.c.lease_owner)).all()
            events = list(session.execute(text("SELECT event FROM audit_entries ORDER BY id")).scalars())
        assert [tuple(r) for r in rows] == [("failed", 0, None)] * 2
        assert events == ["failed", "failed"]
    finally:
        db.dispose()


def test_a_claim_in_one_batch_sees_the_backoff_set_before_it(migrated_url: str) -> None:
    """Jobs of one writer batch share a transaction: a settle's ORM changes (the peer's backoff)
    are visible to the claim that follows it in the same batch."""
    _seed(migrated_url, 4)
    db = Database(migrated_url)
    try:
        with db.write() as session:
            first = claim_due(session, owner="w1", now=NOW, limit=1)
        assert len(first) == 1
        writer = IntegratorLoop(db, authority="GB-UKCA", signer=lambda: None, clock=lambda: NOW,  # type: ignore[arg-type,return-value]
                                integrate=False)
        retry: Future[bool] = Future()
        claim: Future[list[object]] = Future()
        writer.run_once([
            (lambda s: settle_retry_in(s, first[0], owner="w1", category="unreachable", now=NOW, delay=60), retry),
            (lambda s: claim_due(s, owner="w1", now=NOW, limit=10, expire=False), claim),
        ])
        assert retry.result() is True
        assert claim.result() == []  # the peer backs off: nothing more is sent to it now
    finally:
        db.dispose()
