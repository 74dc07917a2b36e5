"""Pinning, updating and removing peers, and recording the node's own key events — each in one
transaction with its exchange-log entry (key files are written first, then the transaction).

The exchange log says what changed (its entries are witnessed by peers and name no person); what an
administrator did is also an ``admin_action`` in the internal access log, naming who did it, in
the same transaction.  A keyset re-issued by the running node itself has no actor and no access
entry."""

from __future__ import annotations

from keys.truststore import PinResult, pin_peer

from ..storage.db import Database
from ..storage.trust import DbTrustStore
from .access import record_admin_action
from .audit import append_entry


def pin_peer_card(db: Database, card: bytes, fingerprint: str, *, own_authority: str, now: int,
                  actor: str) -> PinResult:
    """``peer add``: pin a new peer or apply a newer card, and log it (and who did it)."""
    with db.write() as session:
        result = pin_peer(DbTrustStore(session), card, fingerprint, now=now, own_authority=own_authority)
        r = result.record
        if result.outcome != "unchanged":
            event = "peer_pinned" if result.outcome == "pinned" else "peer_updated"
            append_entry(session, event=event, at=now, peer=r.authority,
                         details={"keyset_version": r.keyset.version, "fingerprint": r.fingerprint,
                                  "previous_version": result.previous_version, "endpoint": r.endpoint})
            record_admin_action(session, actor=actor, action=event, at=now, peer=r.authority,
                                keyset_version=r.keyset.version, fingerprint=r.fingerprint)
        return result


def remove_peer(db: Database, authority: str, *, now: int, actor: str) -> None:
    """``peer remove``: forget a peer (its sent and received messages stay), and log it (and who did it)."""
    with db.write() as session:
        DbTrustStore(session).remove(authority)
        append_entry(session, event="peer_removed", at=now, peer=authority)
        record_admin_action(session, actor=actor, action="peer_removed", at=now, peer=authority)


def record_keyset_issued(db: Database, *, version: int, fingerprint: str, now: int, event: str = "keyset_issued",
                         previous_version: int | None = None, actor: str | None = None) -> None:
    """The node issued keyset ``version`` (at ``init`` or ``keys rotate`` by ``actor``, or re-issued by
    the running node, with no actor)."""
    with db.write() as session:
        append_entry(session, event=event, at=now,
                     details={"keyset_version": version, "fingerprint": fingerprint,
                              "previous_version": previous_version})
        if actor is not None:
            record_admin_action(session, actor=actor, action=event, at=now, keyset_version=version,
                                fingerprint=fingerprint)
