"""Pinned peers in the database: the keyset we hold for each, and their delivery health.

Keysets were verified when pinned or refreshed (``protocol.keychain``); here they are only
read back, and cached per (authority, version) so that every envelope does not re-parse them.
"""

from __future__ import annotations

import json
import threading
import time
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


class PeerKeysets:
    """A ``lookup_peer`` for ``open_envelope``: the keyset held for each peer, read from the database
    again once ``ttl`` seconds have passed since the last read (0: every time).

    Hot paths (the inbox, receipts) use a short ``ttl`` so that every message is not a read
    transaction; a change of keys (rotation, refresh, removal) is seen within ``ttl`` seconds, or at
    once after ``forget``.
    """

    def __init__(self, db: Database, *, ttl: float = 0.0) -> None:
        self._db = db
        self._ttl = ttl
        self._lock = threading.Lock()
        self._held: dict[str, tuple[float, Keyset | None]] = {}

    def cached(self, authority: str) -> tuple[bool, Keyset | None]:
        """(True, keyset or None) if a read younger than ``ttl`` is held; (False, None) otherwise."""
        with self._lock:
            hit = self._held.get(authority)
        if hit is None or time.monotonic() - hit[0] >= self._ttl:
            return False, None
        return True, hit[1]

    def __call__(self, authority: str) -> Keyset | None:
        fresh, keyset = self.cached(authority)
        if fresh:
            return keyset
        at = time.monotonic()
        with self._db.read() as session:
            row = session.get(Peer, authority)
            keyset = None if row is None else peer_keyset(row)
        if self._ttl > 0:
            with self._lock:
                self._held[authority] = (at, keyset)
        return keyset

    def forget(self, authority: str) -> None:
        with self._lock:
            self._held.pop(authority, None)


#: How old a keyset read on a hot path (the inbox, receipts) may be: a change is seen within this.
KEYSET_TTL = 1.0


def peer_lookup(db: Database, *, ttl: float = 0.0) -> PeerKeysets:
    """A ``lookup_peer`` reading the current row of each peer (at most ``ttl`` seconds old)."""
    return PeerKeysets(db, ttl=ttl)


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
