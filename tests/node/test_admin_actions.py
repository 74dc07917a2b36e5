"""Administrators' changes to peers and keys are in the access log, naming who made them.

The exchange log says what changed (peers witness it, so it names no person); DESIGN §3 asks the
access log to hold "user and admin actions". Pinning, updating and removing a peer, and issuing a
keyset by hand (``init``, ``keys rotate``), used to reach the exchange log only: an auditor could not
tell who had pinned a peer's new key.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from node.services.trust import pin_peer_card, record_keyset_issued, remove_peer
from node.storage.models import AuditEntry
from tests.node.audit_world import Side, two_sides


@pytest.fixture
def world(tmp_path: Path, backend: str) -> Iterator[tuple[Side, Side]]:
    with two_sides(tmp_path, backend) as sides:  # pinned to each other by "cli:test"
        yield sides


def entries(side: Side, log: str) -> list[dict[str, Any]]:
    with side.db.read() as s:
        return [json.loads(leaf) for leaf in s.scalars(select(AuditEntry.leaf).where(AuditEntry.log == log)
                                                       .order_by(AuditEntry.id))]


def test_peer_and_key_changes_name_their_actor_in_the_access_log_only(world: tuple[Side, Side]) -> None:
    a, b = world
    now = int(time.time())
    b.keystore.rotate(now)  # B's new keys reach A in a newer card
    pin_peer_card(a.db, b.card, b.keystore.fingerprint, own_authority=a.authority, now=now, actor="cli:alice")
    pin_peer_card(a.db, b.card, b.keystore.fingerprint, own_authority=a.authority, now=now, actor="cli:alice")
    record_keyset_issued(a.db, version=2, fingerprint=a.keystore.fingerprint, now=now, event="keys_rotated",
                         previous_version=1, actor="cli:alice")
    record_keyset_issued(a.db, version=3, fingerprint=a.keystore.fingerprint, now=now, previous_version=2)
    remove_peer(a.db, b.authority, now=now, actor="cli:bob")

    actions = [(e["action"], e["actor"], e.get("peer"), e.get("keyset_version"))
               for e in entries(a, "access") if e["event"] == "admin_action"]
    assert actions == [
        ("peer_pinned", "cli:test", "FR-DACG", 1),
        ("peer_updated", "cli:alice", "FR-DACG", 2),  # the second, unchanged, card changed nothing
        ("keys_rotated", "cli:alice", None, 2),
        ("peer_removed", "cli:bob", "FR-DACG", None),
    ]  # the running node's own re-issue (v3) has no actor and is no admin action
    exchange = entries(a, "exchange")
    assert [e["event"] for e in exchange if e["event"] != "keyset_issued"] == \
        ["peer_pinned", "peer_updated", "keys_rotated", "peer_removed"]
    assert not any("actor" in e for e in exchange)  # peers witness this log: it names nobody
    a.integrate()  # both logs sequence and sign as before
    with a.db.read() as s:
        assert s.scalar(select(AuditEntry.id).where(AuditEntry.leaf_index.is_(None))) is None
