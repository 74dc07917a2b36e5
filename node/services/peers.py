"""Pinned peers in the database: the keyset we hold for each, and their delivery health.

Keysets were verified when pinned or refreshed (``protocol.keychain``); here they are only
read back, and cached per (authority, version) so that every envelope does not re-parse them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from protocol.keychain import KeysetDocument, read_keyset
from protocol.keysets import Keyset

from ..errors import UnknownPeerError
from ..storage.db import Database
from ..storage.models import OutboxMessage, Peer

_cache_lock = threading.Lock()
_keyset_cache: dict[tuple[str, int, int, str], Keyset] = {}


def chain_docs(row: Peer) -> list[bytes]:
    return [d.encode("utf-8") for d in json.loads(row.chain)]


def chain_documents(row: Peer) -> list[KeysetDocument]:
    return [read_keyset(d) for d in chain_docs(row)]


def peer_keyset(row: Peer) -> Keyset:
    """The newest keyset held for ``row`` (parsed once per version)."""
    key = (row.authority, row.keyset_version, row.updated_at, row.fingerprint)
    with _cache_lock:
        hit = _keyset_cache.get(key)
    if hit is not None:
        return hit
    keyset = read_keyset(chain_docs(row)[-1]).keyset
    with _cache_lock:
        _keyset_cache[key] = keyset
    return keyset


def get_peer(session: Session, authority: str) -> Peer:
    row = session.get(Peer, authority)
    if row is None:
        raise UnknownPeerError(authority)
    return row


def peer_lookup(db: Database) -> Callable[[str], Keyset | None]:
    """A ``lookup_peer`` for ``open_envelope`` reading the current row of each peer."""

    def lookup(authority: str) -> Keyset | None:
        with db.read() as session:
            row = session.get(Peer, authority)
            return None if row is None else peer_keyset(row)

    return lookup


def list_peers(session: Session) -> list[Peer]:
    return list(session.scalars(select(Peer).order_by(Peer.authority)))


def delivery_health(session: Session) -> dict[str, dict[str, Any]]:
    """Per peer: backlog, oldest queued message, consecutive failures, last error, next attempt."""
    rows = session.execute(
        select(OutboxMessage.peer, func.count(), func.min(OutboxMessage.created_at))
        .where(OutboxMessage.state.in_(("queued", "sending"))).group_by(OutboxMessage.peer)
    ).all()
    backlog = {peer: (n, oldest) for peer, n, oldest in rows}
    health: dict[str, dict[str, Any]] = {}
    for p in session.scalars(select(Peer)):
        n, oldest = backlog.get(p.authority, (0, None))
        health[p.authority] = {
            "backlog": n, "oldest_queued_at": oldest, "failures": p.failures,
            "last_error": None if p.last_error_category is None else
            {"category": p.last_error_category, "at": p.last_error_at},
            "next_attempt_at": p.next_attempt_at or None, "last_success_at": p.last_success_at,
        }
    return health
