"""The inbox opens and stores at most ``INBOX_SLICE`` envelopes at once (a burst is answered in
slices), with the group-commit writer bound to the serving loop, on both databases."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import node.api.peer as peer_module
from node.api.app import build_app
from node.config import Settings
from node.delivery.claims import claim_due_deliveries
from node.runtime import Node
from node.services.sending import Draft, queue_message
from tests.node.audit_world import Side, two_sides

BURST = 6


@pytest.fixture
def world(tmp_path: Path, backend: str) -> Iterator[tuple[Side, Side]]:
    with two_sides(tmp_path, backend) as sides:
        yield sides


def _envelopes(a: Side, b: Side, n: int) -> list[bytes]:
    now = int(time.time())
    with a.db.write() as session:
        for _ in range(n):
            queue_message(session, Draft(to=b.authority, kind="note", subject="s", body="b"), me=a.authority,
                          signer=a.keystore.signer, message_id=os.urandom(16).hex(), now=now, lifetime=86400,
                          max_bytes=1 << 20)
    return [c.envelope for c in claim_due_deliveries(a.db, owner="test", now=now, limit=n)]


@pytest.mark.parametrize("slice_", [2, 8])
def test_a_burst_is_opened_and_stored_a_slice_at_a_time(world: tuple[Side, Side], slice_: int,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = world
    envelopes = _envelopes(a, b, BURST)
    monkeypatch.setattr(peer_module, "INBOX_SLICE", slice_)
    node = Node(Settings(home=b.home, database_url=b.db.url), b.keystore)
    app = build_app(node, peer=True, local=False)
    inside = peak = 0

    async def main() -> list[int]:
        nonlocal inside, peak
        writer = node.start_writer(integrate=True)  # bound to this loop, as when serving
        assert writer.bound
        run = writer.run

        async def counted(job: Any) -> Any:
            nonlocal inside, peak
            inside += 1
            peak = max(peak, inside)
            try:
                return await run(job)
            finally:
                inside -= 1

        writer.run = counted  # type: ignore[method-assign]
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://peer.example") as client:
            answers = await asyncio.gather(*(
                client.post("/comity/v1/inbox", content=e, headers={"Content-Type": "application/jose"})
                for e in envelopes))
        return [r.status_code for r in answers]

    try:
        statuses = asyncio.run(main())
    finally:
        node.close()
    assert statuses == [201] * BURST  # every envelope receipted
    assert peak == min(slice_, BURST)  # never more at once than the slice; all at once when it allows
