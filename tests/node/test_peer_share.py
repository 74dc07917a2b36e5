"""One peer holds at most its share of a worker's slots: the claim leaves busy peers out (both
databases), and the worker's room for the next claim keeps every peer under its cap."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from node.delivery import worker as worker_module
from node.delivery.claims import Claim, claim_due_deliveries
from node.delivery.worker import PEER_SHARE, DeliveryWorker
from node.services.trust import pin_peer_card
from node.storage.db import Database
from tests.node.audit_world import make_side, queue_messages, two_sides


def test_a_claim_leaves_the_excluded_peers_messages_queued(tmp_path: Path, backend: str) -> None:
    with two_sides(tmp_path, backend) as (a, b):
        url = f"sqlite:///{tmp_path / 'c.db'}" if backend == "sqlite" else None
        if url is None:
            from tests.conftest import create_pg_database
            url = create_pg_database()
        c = make_side(tmp_path, "DE-BMJ", url)
        try:
            now = int(time.time())
            pin_peer_card(a.db, c.card, c.keystore.fingerprint, own_authority=a.authority, now=now, actor="cli:test")
            queue_messages(a, b.authority, 5, now)
            queue_messages(a, c.authority, 2, now)
            claims = claim_due_deliveries(a.db, owner="w", now=now, limit=10, exclude={b.authority})
            assert sorted(x.peer for x in claims) == [c.authority] * 2  # B's five wait, though queued first
            claims = claim_due_deliveries(a.db, owner="w", now=now, limit=10)
            assert sorted(x.peer for x in claims) == [b.authority] * 5
        finally:
            c.db.dispose()
            if backend != "sqlite":
                from tests.conftest import drop_pg_database
                drop_pg_database(url)


def test_the_room_for_a_claim_keeps_every_peer_under_its_cap(tmp_path: Path) -> None:
    worker = DeliveryWorker(Database(f"sqlite:///{tmp_path / 'w.db'}"), authority="GB-UKCA", owner="w",
                            concurrency=128)
    cap = worker.peer_cap
    assert cap == int(128 * PEER_SHARE) == 96
    assert worker._claim_room(128, Counter()) == (96, set())  # nothing in flight: one peer may take its share
    assert worker._claim_room(64, Counter({"FR-DACG": 64})) == (32, set())  # may reach its cap, not pass it
    # 65: within a quarter window of its cap, it sits the claim out; the others have room
    assert worker._claim_room(63, Counter({"FR-DACG": 65})) == (63, {"FR-DACG"})
    limit, busy = worker._claim_room(13, Counter({"FR-DACG": 65, "DE-BMJ": 50}))
    assert busy == {"FR-DACG"} and limit == 13
    for free in range(0, 129):  # whatever the loads, no claim can push a peer past its cap
        for loads in ({}, {"X": 96}, {"X": 64, "Y": 10}, {"X": 70, "Y": 64}, {"X": 1, "Y": 2, "Z": 3}):
            limit, busy = worker._claim_room(free, Counter(loads))
            assert 0 <= limit <= free
            assert all(n + limit <= cap for p, n in loads.items() if p not in busy)
            assert limit > 0 or free == 0  # a free slot is always usable by some peer


def test_a_claim_that_found_nothing_is_not_run_again_until_something_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One peer at its share, nothing queued for any other: each finished delivery used to start a
    claim leaving that peer out — and to find nothing, each walked all of that peer's queued messages."""
    calls: list[frozenset[str]] = []
    seqs = iter(range(1, 100_000))

    def claim(_session: object, *, limit: int, exclude: set[str], **_kw: object) -> list[Claim]:
        calls.append(frozenset(exclude))
        if "FR-DACG" in exclude:
            return []
        return [Claim(next(seqs), "m", "FR-DACG", "https://127.0.0.1:1/", b"", "", b"", "k", 1, 0)
                for _ in range(limit)]

    monkeypatch.setattr(worker_module, "claim_due", claim)
    worker = DeliveryWorker(Database(f"sqlite:///{tmp_path / 'w.db'}"), authority="GB-UKCA", owner="w",
                            concurrency=8, poll=30.0)

    async def write(job: Any, *args: Any, **kw: Any) -> Any:
        # a claim takes a while (it waits for the writer's batch): deliveries end meanwhile, and a
        # claim that left nobody out says nothing about the finding for the peers left out before
        await asyncio.sleep(0.002)
        return job(None, *args, **kw)

    durations = random.Random(7)

    async def deliver(_client: object, _claim: Claim) -> None:
        await asyncio.sleep(durations.uniform(0.001, 0.009))  # (they end at different times)

    async def witness(_client: object, stop: asyncio.Event) -> None:
        await stop.wait()

    async def scenario() -> None:
        worker._write = write  # type: ignore[method-assign]
        worker._deliver = deliver  # type: ignore[method-assign]
        worker.witness.run = witness  # type: ignore[method-assign]
        stop = asyncio.Event()
        running = asyncio.create_task(worker.run(stop))
        # rounds of six deliveries until twenty claims have taken FR-DACG's messages (a fixed 0.5 s
        # gave only six on a loaded CI machine); bounded, so a worker that stops claiming fails below
        for _ in range(3000):
            if sum(1 for c in calls if not c) >= 20:
                break
            await asyncio.sleep(0.01)
        stop.set()
        await running
        assert worker._nothing_more({"FR-DACG"})  # within the poll: that claim would find nothing ...
        worker.wake()  # ... until a message is queued
        assert not worker._nothing_more({"FR-DACG"})

    asyncio.run(scenario())
    delivered = sum(1 for c in calls if not c)
    assert delivered >= 20, calls  # FR-DACG's messages kept flowing, six at a time ...
    assert calls.count(frozenset({"FR-DACG"})) == 1, calls  # ... and the others were looked for once


def test_a_message_queued_while_a_claim_runs_is_claimed_without_waiting_for_the_poll(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The claim may have read the outbox before the message committed: finding nothing then says
    nothing about after, and the next round claims again at once."""
    worker = DeliveryWorker(Database(f"sqlite:///{tmp_path / 'w.db'}"), authority="GB-UKCA", owner="w",
                            concurrency=8, poll=30.0)
    calls: list[float] = []

    def claim(_session: object, **_kw: object) -> list[Claim]:
        calls.append(time.monotonic())
        if len(calls) == 1:
            worker.wake()  # queued and committed while this claim ran (and missed it)
        return []

    monkeypatch.setattr(worker_module, "claim_due", claim)

    async def write(job: Any, *args: Any, **kw: Any) -> Any:
        return job(None, *args, **kw)

    async def witness(_client: object, stop: asyncio.Event) -> None:
        await stop.wait()

    async def scenario() -> None:
        worker._write = write  # type: ignore[method-assign]
        worker.witness.run = witness  # type: ignore[method-assign]
        stop = asyncio.Event()
        running = asyncio.create_task(worker.run(stop))
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.wait_for(running, timeout=10)  # at once: not after the 30 s poll

    asyncio.run(scenario())
    assert len(calls) == 2, calls  # the second at once, not after the 30 s poll; then nothing new


def test_after_a_claim_found_nothing_the_worker_looks_again_within_one_poll(tmp_path: Path) -> None:
    worker = DeliveryWorker(Database(f"sqlite:///{tmp_path / 'w.db'}"), authority="GB-UKCA", owner="w",
                            concurrency=8, poll=0.5)
    assert worker._next_look() == 0.5
    worker._exhausted, worker._exhausted_at = frozenset({"FR-DACG"}), time.monotonic() - 0.4
    assert 0.0 < worker._next_look() <= 0.1  # what is left of the poll since that claim
    worker._exhausted_at = time.monotonic() - 2
    assert worker._next_look() == 0.0
