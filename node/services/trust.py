"""Pinning, updating and removing peers, and recording the node's own key events — each in one
transaction with its exchange-log entry (key files are written first, then the transaction)."""

from __future__ import annotations

from keys.truststore import PinResult, pin_peer

from ..storage.db import Database
from ..storage.trust import DbTrustStore
from .audit import append_entry


def pin_peer_card(db: Database, card: bytes, fingerprint: str, *, own_authority: str, now: int) -> PinResult:
    """``peer add``: pin a new peer or apply a newer card, and log it."""
    with db.write() as session:
        result = pin_peer(DbTrustStore(session), card, fingerprint, now=now, own_authority=own_authority)
        r = result.record
        if result.outcome != "unchanged":
            event = "peer_pinned" if result.outcome == "pinned" else "peer_updated"
            append_entry(session, event=event, at=now, peer=r.authority,
                         details={"keyset_version": r.keyset.version, "fingerprint": r.fingerprint,
                                  "previous_version": result.previous_version, "endpoint": r.endpoint})
        return result


def remove_peer(db: Database, authority: str, *, now: int) -> None:
    """``peer remove``: forget a peer (its sent and received messages stay), and log it."""
    with db.write() as session:
        DbTrustStore(session).remove(authority)
        append_entry(session, event="peer_removed", at=now, peer=authority)


def record_keyset_issued(db: Database, *, version: int, fingerprint: str, now: int, event: str = "keyset_issued",
                         previous_version: int | None = None) -> None:
    """The node issued keyset ``version`` (at ``init``, ``keys rotate`` or a re-issue)."""
    with db.write() as session:
        append_entry(session, event=event, at=now,
                     details={"keyset_version": version, "fingerprint": fingerprint,
                              "previous_version": previous_version})
