"""Witnessing in one process: A checks B's exchange log through B's real peer routes (ASGI), and
B's log endpoints and A's redelivery endpoint answer per SPEC §10.4-§10.5, on both databases."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import delete, select, update
from structlog.testing import capture_logs

from node.api.app import build_app
from node.cli.audit_cmds import open_audit
from node.config import Settings
from node.delivery.witness import PeerWitness
from node.runtime import Node
from node.services.access import record_settings
from node.services.bundles import read_archive
from node.services.restore import RedeliveryRequest, sign_redelivery_request
from node.storage.models import AuditEntry, OutboxMessage, PeerLog, PeerLogFailure
from protocol.merkle import leaf_hash, proof_from_hex, verify_inclusion
from tests.node.audit_world import Side, exchange, two_sides
from tests.node.test_audit_verify import rewrite


@pytest.fixture
def world(tmp_path: Path, backend: str) -> Iterator[tuple[Side, Side]]:
    with two_sides(tmp_path, backend) as sides:
        yield sides


def peer_app(side: Side) -> tuple[FastAPI, Node]:
    node = Node(Settings(home=side.home, database_url=side.db.url), side.keystore)
    return build_app(node, peer=True, local=False), node


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://peer.example")


def fetch(app: FastAPI, *paths: str) -> list[httpx.Response]:
    """GET each of ``paths`` in turn."""
    async def run() -> list[httpx.Response]:
        async with client(app) as c:
            return [await c.get(p) for p in paths]
    return asyncio.run(run())


def receipts(a: Side, ids: list[str]) -> list[tuple[int, str, bytes]]:
    with a.db.read() as s:
        rows = s.execute(select(OutboxMessage.receipt_tree_size, OutboxMessage.receipt_root, OutboxMessage.receipt_jws)
                         .where(OutboxMessage.message_id.in_(ids)).order_by(OutboxMessage.receipt_tree_size)).all()
    return [(r[0], r[1], bytes(r[2])) for r in rows]


def peer_log(a: Side, peer: str) -> PeerLog:
    with a.db.read() as s:
        row = s.get(PeerLog, peer)
        assert row is not None
        s.expunge(row)
        return row


def _all_ids(a: Side) -> list[tuple[str]]:
    with a.db.read() as s:
        return [(m,) for m in s.scalars(select(OutboxMessage.message_id))]


def allow_check(a: Side) -> None:
    """The minute between two checks of one peer has passed."""
    with a.db.write() as s:
        s.execute(update(PeerLog).values(checked_at=0))


def test_witness_accepts_growth_and_records_a_rewritten_log(world: tuple[Side, Side]) -> None:
    a, b = world
    app, _ = peer_app(b)
    witness = PeerWitness(a.db, clock=lambda: int(time.time()))

    async def run() -> None:
        async with client(app) as c:
            first = receipts(a, exchange(a, b, 2))
            for size, root, token in first:  # the first commitment is held as it is
                await witness.observe(b.authority, size, root, token)
            assert (peer_log(a, b.authority).status, peer_log(a, b.authority).tree_size) == ("ok", first[-1][0])
            second = receipts(a, exchange(a, b, 3))
            await witness.observe(b.authority, *second[-1])
            await witness.check(c, b.authority)
            assert peer_log(a, b.authority).tree_size == second[-1][0]
            later = receipts(a, exchange(a, b, 2))
            await witness.observe(b.authority, *later[-1])
            await witness.check(c, b.authority)  # at most once a minute: not yet
            assert peer_log(a, b.authority).tree_size == second[-1][0]
            allow_check(a)
            await witness.check(c, b.authority)
            row = peer_log(a, b.authority)
            assert (row.status, row.tree_size, row.pending_tree_size) == ("ok", later[-1][0], None)
            # B's operator rewrites an old entry and recomputes everything, then B keeps working
            rewrite(b, "exchange", index=1)
            newer = receipts(a, exchange(a, b, 2))
            await witness.observe(b.authority, *newer[-1])
            allow_check(a)
            await witness.check(c, b.authority)

    asyncio.run(run())
    newest = receipts(a, [m for (m,) in _all_ids(a)])[-1][0]
    row = peer_log(a, b.authority)
    assert row.status == "inconsistent" and "extends" in (row.status_detail or "")
    with a.db.read() as s:
        failure = s.scalars(select(PeerLogFailure)).one()
        assert failure.peer == b.authority and failure.received_tree_size == newest
        events = list(s.scalars(select(AuditEntry.event).where(AuditEntry.peer == b.authority)))
    assert "peer_log_inconsistent" in events


def test_log_endpoints_answer_per_spec(world: tuple[Side, Side]) -> None:
    a, b = world
    app, _ = peer_app(b)
    ids = exchange(a, b, 3)
    size, root, _ = receipts(a, ids)[-1]
    with a.db.read() as s:
        sha = s.scalars(select(OutboxMessage.envelope_sha256).where(OutboxMessage.message_id == ids[0])).one()

    head, inc, cons, backwards, junk, unknown, upper, beyond = fetch(
        app,
        "/comity/v1/log/exchange/head",
        f"/comity/v1/log/exchange/inclusion?envelope_sha256={sha}&tree_size={size}",
        f"/comity/v1/log/exchange/consistency?first=1&second={size}",
        "/comity/v1/log/exchange/consistency?first=2&second=1",
        "/comity/v1/log/exchange/consistency?first=x&second=1",
        f"/comity/v1/log/exchange/inclusion?envelope_sha256={'0' * 64}&tree_size={size}",
        f"/comity/v1/log/exchange/inclusion?envelope_sha256={sha.upper()}&tree_size={size}",
        f"/comity/v1/log/exchange/inclusion?envelope_sha256={sha}&tree_size={size + 100}",
    )
    assert head.status_code == 200 and head.headers["content-type"] == "application/jose"
    doc = inc.json()
    leaf = base64.urlsafe_b64decode(doc["leaf"] + "==")
    assert b'"event":"received"' in leaf and doc["tree_size"] == size
    verify_inclusion(leaf_hash(leaf), doc["leaf_index"], size, proof_from_hex(doc["proof"]), bytes.fromhex(root))
    assert cons.status_code == 200 and cons.json()["first"] == 1
    for r, status, category in ((backwards, 400, "malformed"), (junk, 400, "malformed"), (unknown, 404, "not_found"),
                                (upper, 400, "malformed"), (beyond, 400, "malformed")):
        assert r.status_code == status and r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["category"] == category and r.json()["error_jws"] is None


def test_a_gap_in_the_log_answers_unavailable_not_a_500(world: tuple[Side, Side]) -> None:
    """Only an edit of the database leaves a sequenced leaf missing; the endpoints say so and log it."""
    a, b = world
    app, _ = peer_app(b)
    ids = exchange(a, b, 3)
    size, _, _ = receipts(a, ids)[-1]
    with b.db.write() as s:
        s.execute(delete(AuditEntry).where(AuditEntry.log == "exchange", AuditEntry.leaf_index == 1))
    with b.db.read() as s:
        sha = s.scalars(select(AuditEntry.envelope_sha256).where(
            AuditEntry.log == "exchange", AuditEntry.event == "received")).first()

    with capture_logs() as logs:
        answers = fetch(app, f"/comity/v1/log/exchange/consistency?first=1&second={size}",
                        f"/comity/v1/log/exchange/inclusion?envelope_sha256={sha}&tree_size={size}")
    for r in answers:
        assert r.status_code == 503 and r.headers["retry-after"] == "300"
        assert r.json()["category"] == "unavailable" and "Traceback" not in r.text
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["exchange_log_damaged"] * 2


def test_a_declared_restore_requeues_and_is_not_a_forgery(world: tuple[Side, Side]) -> None:
    a, b = world
    app, _ = peer_app(a)  # A holds receipts from B: B asks A to redeliver
    early = exchange(a, b, 2)
    after = receipts(a, early)[-1][0]
    late = exchange(a, b, 3)
    now = int(time.time())

    def request(**kw: object) -> bytes:
        fields = {"iss": b.authority, "aud": a.authority, "after_tree_size": after, "at": now, **kw}
        return sign_redelivery_request(RedeliveryRequest(**fields), signer=b.keystore.signer)  # type: ignore[arg-type]

    token = request()

    async def run() -> list[httpx.Response]:
        async with client(app) as c:
            post = "/comity/v1/redeliver"
            return [await c.post(post, content=token), await c.post(post, content=token),
                    await c.post(post, content=request(aud="ZA-DOJCD")),
                    await c.post(post, content=token[:-3] + (b"AAA" if token[-3:] != b"AAA" else b"BBB")),
                    await c.post(post, content=sign_redelivery_request(
                        RedeliveryRequest("ZA-DOJCD", a.authority, 0, now), signer=b.keystore.signer)),
                    await c.post(post, content=request(at=now + 3600))]

    ok, again, wrong_aud, bad_sig, unknown, early_request = asyncio.run(run())
    assert ok.status_code == 200 and ok.json() == {"requeued": len(late)}
    assert again.json() == {"requeued": len(late)}  # the same request twice re-queues once
    for r, status, category in ((wrong_aud, 421, "wrong_recipient"), (bad_sig, 401, "bad_signature"),
                                (unknown, 403, "unknown_sender"), (early_request, 425, "not_yet_valid")):
        assert r.status_code == status and r.json()["category"] == category, r.text
    with a.db.read() as s:
        states = {m: state for m, state in s.execute(select(OutboxMessage.message_id, OutboxMessage.state))}
        requeued = list(s.scalars(select(AuditEntry.message_id).where(AuditEntry.event == "requeued")))
    assert {states[m] for m in late} == {"queued"} and {states[m] for m in early} == {"delivered"}
    assert sorted(requeued) == sorted(late)
    row = peer_log(a, b.authority)
    assert row.status == "restored" and row.restored_after == after


def test_bundles_carry_recorded_failures(world: tuple[Side, Side], tmp_path: Path) -> None:
    import io

    from node.services.bundles import export_bundle, verify_bundle

    a, b = world
    test_witness_accepts_growth_and_records_a_rewritten_log(world)
    buf = io.BytesIO()
    with a.db.read() as s:
        export_bundle(s, buf, log="exchange", authority=a.authority, card=a.card, first=None, last=None,
                      now=int(time.time()))
    result = verify_bundle(read_archive(buf.getvalue()))
    [failure] = result["peer_log_failures"]
    assert failure["peer"] == b.authority and failure["checked"] is True
    assert failure["held"][0] < failure["received"][0]


def test_first_receipts_arriving_together_are_all_witnessed(world: tuple[Side, Side]) -> None:
    """Several deliveries observe a peer's first commitments at once: each records it (on PostgreSQL
    the row one of them creates makes the others' inserts collide; they read it and go on)."""
    a, b = world
    witness = PeerWitness(a.db, clock=lambda: int(time.time()))
    first = receipts(a, exchange(a, b, 6))

    async def run() -> None:
        await asyncio.gather(*(witness.observe(b.authority, size, root, token) for size, root, token in first))

    with capture_logs() as logs:
        asyncio.run(run())
    assert [e for e in logs if e["event"] == "witness_record_failed"] == []
    row = peer_log(a, b.authority)
    assert row.status == "ok" and row.tree_size is not None and row.tree_size >= first[0][0]
    with a.db.read() as s:
        assert not list(s.scalars(select(PeerLogFailure)))


def test_receipts_arriving_together_write_the_peers_commitment_once(world: tuple[Side, Side]) -> None:
    """A window of deliveries observes a peer's commitments at once; one records what is held, the
    others wait for it and are then covered, or kept in memory for the next check (the largest)."""
    a, b = world
    witness = PeerWitness(a.db, clock=lambda: int(time.time()))
    first = receipts(a, exchange(a, b, 6))
    recorded: list[int] = []
    record = witness._record

    async def counted(peer: str, c: object) -> bool:
        recorded.append(c.tree_size)  # type: ignore[attr-defined]
        return await record(peer, c)  # type: ignore[arg-type]

    witness._record = counted  # type: ignore[method-assign]

    async def run() -> None:
        await asyncio.gather(*(witness.observe(b.authority, size, root, token) for size, root, token in first))

    asyncio.run(run())
    assert len(recorded) == 1, recorded
    largest = max(size for size, _root, _token in first)
    held = peer_log(a, b.authority).tree_size
    assert held == largest or witness._pending[b.authority].tree_size == largest


def test_two_processes_starting_together_both_record_the_settings(world: tuple[Side, Side]) -> None:
    """``serve`` and ``worker`` (or two workers on PostgreSQL) of one node start at the same moment:
    both record the first settings.  Here one has inserted them and not committed yet when the other
    reads; the other's insert then collides, and it reads them again instead of failing."""
    a, _ = world
    node = Node(Settings(home=a.home, database_url=a.db.url), a.keystore)
    errors: list[BaseException] = []

    def start() -> None:
        try:
            open_audit(node)
        except BaseException as e:  # collected: the assertion below names it
            errors.append(e)

    try:
        with a.db.write() as first:
            record_settings(first, node.settings, actor="cli:first", at=int(time.time()))
            first.flush()
            other = threading.Thread(target=start)
            other.start()
            time.sleep(0.5)  # the other process reads no rows and waits on the first's inserts
        other.join(timeout=30)
    finally:
        node.close()
    assert errors == []
    with a.db.read() as s:
        events = s.scalars(select(AuditEntry.event).where(AuditEntry.log == "access")).all()
    assert events.count("settings_recorded") >= 1 and "settings_changed" not in events
