"""No look-up reads a whole table: every statement of an exchange, the peer log endpoints, an evidence
export and the local API's single-message reads is planned by SQLite on an index.

SQLite without statistics (no ``ANALYZE``: a node never runs it) plans by the shape of a statement
alone, so a plan seen on this small database is the plan on a million rows.  This test found the
inbox read whole for a look-up by message id alone (no index began with it).  It cannot see a range
search that happens to span the whole table (the exchange log by envelope hash was planned as a
search of ``(log, leaf_index)`` below the tree size: found by measuring, bench/audit_bench.py).
Reads of everything by design (listings, verification, bundle export) are not exercised here.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event, select

from keys.layout import read_card
from node.api.app import build_app
from node.config import Settings
from node.runtime import Node
from node.services.evidence import export_evidence
from node.storage.models import OutboxMessage
from tests.node.audit_world import Side, exchange, two_sides
from tests.node.test_audit_witness import receipts

#: scans that read only what they are for: the integrator's queue, a partial index of unsequenced entries
FINE = re.compile(r"^SCAN audit_entries USING (COVERING )?INDEX ix_audit_entries_unsequenced$")


def capture_into(seen: dict[str, Any], engine: Any) -> None:
    """Record the first parameters of each distinct statement ``engine`` runs (reads and updates)."""
    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, _ctx: Any, many: bool) -> None:
        if not many and statement.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE", "WITH")):
            seen.setdefault(statement, parameters)
    event.listen(engine, "before_cursor_execute", capture)


@pytest.fixture
def statements(tmp_path: Path) -> Iterator[tuple[dict[str, Any], Side, Side]]:
    with two_sides(tmp_path, "sqlite") as (a, b):
        seen: dict[str, Any] = {}
        for side in (a, b):
            capture_into(seen, side.db.engine)
        yield seen, a, b


def test_no_statement_reads_a_whole_table(statements: tuple[dict[str, Any], Side, Side]) -> None:
    seen, a, b = statements
    ids = exchange(a, b, 3)
    size = receipts(a, ids)[-1][0]
    with a.db.read() as s:
        sha = s.scalars(select(OutboxMessage.envelope_sha256).where(OutboxMessage.message_id == ids[0])).one()
    (b.home / "admin.token").write_text("t" * 43 + "\n")
    node = Node(Settings(home=b.home, database_url=b.db.url), b.keystore)
    app = build_app(node, peer=True, local=True)

    async def calls() -> list[int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1",
                                     headers={"Authorization": "Bearer " + "t" * 43}) as c:
            return [(await c.get(path)).status_code for path in (
                "/comity/v1/log/exchange/head",
                f"/comity/v1/log/exchange/inclusion?envelope_sha256={sha}&tree_size={size}",
                f"/comity/v1/log/exchange/consistency?first=1&second={size}",
                f"/api/v1/inbox/{ids[0]}",
            )]

    try:
        capture_into(seen, node.db.engine)
        assert asyncio.run(calls()) == [200, 200, 200, 200]
    finally:
        node.close()
    for side, mid in ((a, ids[1]), (b, ids[2])):  # a sent message's evidence, and a received one's
        with side.db.read() as s:
            export_evidence(s, mid, authority=side.authority, card=read_card(side.home), now=0)

    assert len(seen) > 20  # the capture saw the exchange's statements
    with a.db.engine.connect() as conn:
        full = {}
        for statement, parameters in seen.items():
            plan = [row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)]
            scans = [step for step in plan if step.startswith("SCAN ") and not FINE.match(step)]
            if scans:
                full[" ".join(statement.split())[:200]] = scans
    assert full == {}

