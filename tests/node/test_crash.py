"""Issue 5 crash matrix: real node processes killed with SIGKILL at each crash point, then restarted.

Invariants afterwards, on SQLite and on PostgreSQL: every message delivered; exactly one copy
of each at the receiver; exactly one stored receipt (one ``delivered`` entry) at the sender;
both exchange logs verify.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from keys.keystore import Keystore
from node.faults import CRASH_POINTS
from node.services.sending import Draft, queue_message
from node.storage.models import AuditEntry, InboxMessage, OutboxMessage, Peer
from protocol.artifacts import LiveKeys
from protocol.receipts import verify_receipt
from tests.node.harness import REPO, NodeHandle, federation
from tests.node.test_exchange import assert_logs_verify

pytestmark = pytest.mark.slow

LEASE = 2
TESTING = {"COMITY_TESTING": "1", "COMITY_LEASE_SECONDS": str(LEASE), "COMITY_WORKER_POLL": "0.2"}


def hurry(node: NodeHandle) -> None:
    """Make every retry due now (the per-peer backoff would otherwise wait up to minutes)."""
    db = node.database()
    try:
        with db.write() as session:
            for peer in session.scalars(select(Peer)):
                peer.next_attempt_at = 0
            for row in session.scalars(select(OutboxMessage).where(OutboxMessage.state == "queued")):
                row.next_attempt_at = 0
    finally:
        db.dispose()


def outbox_ids(node: NodeHandle) -> list[str]:
    db = node.database()
    try:
        with db.read() as session:
            return list(session.scalars(select(OutboxMessage.message_id).order_by(OutboxMessage.seq)))
    finally:
        db.dispose()


def post_message(node: NodeHandle, to: str, subject: str) -> None:
    """Queue through the local API; the node may die before it answers."""
    with contextlib.suppress(httpx.HTTPError):
        node.api("POST", "/api/v1/messages", json={"to": to, "kind": "note", "subject": subject, "body": "b"})


def expect_crash(node: NodeHandle, point: str, timeout: float = 30) -> None:
    assert node.proc is not None
    try:
        code = node.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{node.authority} did not crash at {point}: {node.log_tail()}") from None
    assert code == -signal.SIGKILL, f"{node.authority} exited {code} instead of dying at {point}"
    assert f'"point": "{point}"' in node.log_path.read_text()


def wait_all_delivered(node: NodeHandle, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ids = outbox_ids(node)
        if all(node.status(i)["state"] == "delivered" for i in ids):
            return
        hurry(node)
        time.sleep(0.3)
    raise AssertionError(f"not all delivered: {[node.status(i) for i in outbox_ids(node)][:3]}")


def assert_exactly_once(a: NodeHandle, b: NodeHandle) -> None:
    """Every message of A delivered once, held once by B, with one verified receipt at A."""
    da, db_ = a.database(), b.database()
    try:
        with da.read() as s:
            rows = list(s.scalars(select(OutboxMessage).where(OutboxMessage.peer == b.authority)))
            delivered = Counter(s.scalars(select(AuditEntry.message_id).where(AuditEntry.event == "delivered")))
        with db_.read() as s:
            held = Counter(s.scalars(select(InboxMessage.message_id).where(InboxMessage.sender == a.authority)))
            received = Counter(s.scalars(select(AuditEntry.message_id).where(AuditEntry.event == "received")))
    finally:
        da.dispose()
        db_.dispose()
    ids = {r.message_id for r in rows}
    assert rows and all(r.state == "delivered" and r.receipt_jws for r in rows)
    assert set(held) == ids and set(held.values()) == {1}
    assert set(received) == ids and set(received.values()) == {1}
    assert set(delivered) == ids and set(delivered.values()) == {1}
    keyset = b.newest_keyset()
    for r in rows:
        assert r.receipt_jws is not None
        verify_receipt(r.receipt_jws, keys=LiveKeys(keyset, int(time.time())), sender=a.authority,
                       receiver=b.authority, message_id=r.message_id, envelope_sha256=r.envelope_sha256)


def crash_chain(victim: NodeHandle, steps: list[tuple[str, Callable[[], None]]]) -> None:
    """Start ``victim`` armed with each step's point, do the step's action, expect the crash; each restart
    is armed with the next point, so work left by one crash meets the next point."""
    victim.kill()
    for point, action in steps:
        victim.start(extra_env={**TESTING, "COMITY_CRASH_AT": point}, wait=False)
        action()
        expect_crash(victim, point.split(":")[0])
    victim.start(extra_env=TESTING)


def test_every_crash_point_then_restart_loses_and_duplicates_nothing(tmp_path: Path, backend: str) -> None:
    with federation(tmp_path, backend, ["GB-UKCA", "FR-DACG"], start=False) as n:
        a, b = n["GB-UKCA"], n["FR-DACG"]
        b.start(extra_env=TESTING)
        # without testing = true a crash point is ignored (and said so)
        a.start(extra_env={"COMITY_CRASH_AT": "after_queue_commit"})
        a.wait_for([a.send(b.authority)])
        assert a.proc is not None and a.proc.poll() is None
        assert "crash_points_ignored" in a.log_path.read_text()

        def via_api(count: int, *, ready: NodeHandle) -> Callable[[], None]:
            def post() -> None:
                try:
                    ready.wait_ready()
                except AssertionError:  # it may already have met its point (work left by the last crash)
                    assert ready.proc is not None and ready.proc.poll() == -signal.SIGKILL
                hurry(a)
                for i in range(count):
                    post_message(a, b.authority, f"message {i}")
            return post

        def direct(count: int) -> Callable[[], None]:
            def queue() -> None:
                queue_directly(a, b.authority, count)
            return queue

        crash_chain(a, [
            ("after_queue_commit", via_api(1, ready=a)),
            ("after_claim_commit", direct(2)),  # what the first crash left is claimed at once
            ("after_post_before_receipt_stored:2", lambda: None),  # three messages left: two receipts
            ("integrator_mid_batch", direct(2)),  # the claim's ``attempt`` entries, in the first batch
        ])
        crash_chain(b, [
            ("inbox_after_commit_before_response", via_api(2, ready=b)),
            ("inbox_after_receipt_before_response", via_api(2, ready=b)),
            ("integrator_mid_batch", via_api(2, ready=b)),
        ])
        wait_all_delivered(a)
        assert len(outbox_ids(a)) == 1 + 2 + 1 + 2 + 6
        assert_exactly_once(a, b)
        a.stop()
        b.stop()
        assert_logs_verify(a, b)
        assert {line.split('"point": "')[1].split('"')[0]
                for node in (a, b) for line in node.log_path.read_text().splitlines()
                if '"event": "crash_point"' in line} == CRASH_POINTS


def queue_directly(node: NodeHandle, to: str, count: int) -> list[str]:
    """Queue ``count`` messages in A's database from this process (the way ``comity send`` does)."""
    ks = Keystore.open(node.home, None)
    db = node.database()
    ids = [os.urandom(16).hex() for _ in range(count)]
    now = int(time.time())
    try:
        with db.write() as session:
            for i, mid in enumerate(ids):
                queue_message(session, Draft(to=to, kind="note", subject=f"bulk {i}", body="b"), me=node.authority,
                              signer=ks.signer, message_id=mid, now=now, lifetime=86400, max_bytes=1 << 20)
    finally:
        db.dispose()
    return ids


def start_worker(node: NodeHandle, name: str, crash_at: str | None = None, concurrency: int | None = None
                 ) -> subprocess.Popen[bytes]:
    env = node.env({**TESTING, "COMITY_LEASE_SECONDS": "3", **({"COMITY_CRASH_AT": crash_at} if crash_at else {}),
                    **({"COMITY_WORKER_CONCURRENCY": str(concurrency)} if concurrency else {})})
    logf = (node.home.parent / f"{name}.log").open("ab")
    try:
        return subprocess.Popen([sys.executable, "-m", "node.cli.main", "worker", "--home", str(node.home),
                                 "--insecure-http"], stdout=logf, stderr=logf, env=env, cwd=REPO,
                                start_new_session=True)
    finally:
        logf.close()


def delivered_count(node: NodeHandle) -> int:
    db = node.database()
    try:
        with db.read() as s:
            return len(list(s.scalars(select(OutboxMessage.seq).where(OutboxMessage.state == "delivered"))))
    finally:
        db.dispose()


def test_two_workers_on_one_postgres_database_under_kill_9(tmp_path: Path) -> None:
    with federation(tmp_path, "postgres", ["GB-UKCA", "FR-DACG"], start=False) as n:
        a, b = n["GB-UKCA"], n["FR-DACG"]
        b.start()
        ids = queue_directly(a, b.authority, 60)
        # a few deliveries in flight each: with the default window the first worker to claim took all
        # 60 messages in one claim, and delivered them before the test could kill it (or the other
        # never reached its crash point)
        workers = [start_worker(a, "w1", crash_at="after_post_before_receipt_stored:5", concurrency=4),
                   start_worker(a, "w2", concurrency=4)]
        try:
            deadline = time.monotonic() + 60
            while delivered_count(a) < 12 and time.monotonic() < deadline:
                time.sleep(0.05)
            workers[1].send_signal(signal.SIGKILL)  # kill -9 the second worker mid-flight
            assert workers[0].wait(timeout=60) == -signal.SIGKILL  # the first dies at its crash point
            assert workers[1].wait(timeout=10) == -signal.SIGKILL
            assert delivered_count(a) < len(ids)
            restarted = time.monotonic()
            workers = [start_worker(a, "w1"), start_worker(a, "w2")]
            deadline = time.monotonic() + 60
            while delivered_count(a) < len(ids) and time.monotonic() < deadline:
                hurry(a)
                time.sleep(0.2)
            # nothing stuck past a lease: what the dead workers held was taken over once it expired
            assert delivered_count(a) == len(ids), f"stuck after {time.monotonic() - restarted:.0f}s"
        finally:
            for w in workers:
                if w.poll() is None:
                    w.send_signal(signal.SIGTERM)
                    w.wait(timeout=30)
        assert_exactly_once(a, b)
        logs = [json.loads(line) for name in ("w1", "w2")
                for line in (a.home.parent / f"{name}.log").read_text().splitlines() if line.startswith("{")]
        assert {e.get("event") for e in logs} >= {"delivered", "crash_point"}
        b.stop()
        assert_logs_verify(a, b)
