"""One peer holds at most its share of a worker's slots: the claim leaves busy peers out (both
databases), and the worker's room for the next claim keeps every peer under its cap."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from node.delivery.claims import claim_due_deliveries
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
            pin_peer_card(a.db, c.card, c.keystore.fingerprint, own_authority=a.authority, now=now)
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
