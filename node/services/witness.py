"""Witnessing peers' exchange logs: the state kept per peer, and what a check concludes.

A peer signs ``(tree_size, root)`` in every receipt and tree head.  The first commitment seen of a
peer is held as is; a larger one is checked with a consistency proof from the held one (at most
once a minute per peer, from the newest verified to the newest received).  A proof that fails is
evidence of a rewritten or truncated log: recorded (``peer_log_inconsistent``, both signed
commitments kept), shown as the peer's ``log_status``, exported in bundles.  After a peer declared
a restore from backup (a verified redelivery request), its next commitment is taken as a new start
and the status is ``restored``, not a forgery.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..storage.models import PeerLog, PeerLogFailure
from .audit import append_entry

CHECK_INTERVAL = 60


@dataclass(frozen=True)
class Commitment:
    """A peer's signed word on its exchange log: a size, a root, and the JWS that says so."""

    tree_size: int
    root: str
    evidence: bytes


def _row(session: Session, peer: str) -> PeerLog:
    row = session.get(PeerLog, peer, with_for_update=True)
    if row is None:
        row = PeerLog(peer=peer, status="unknown")
        session.add(row)
        session.flush()
    return row


def _hold(row: PeerLog, c: Commitment, now: int) -> None:
    row.tree_size, row.root, row.evidence, row.verified_at = c.tree_size, c.root, c.evidence, now


def observe_commitment(session: Session, peer: str, c: Commitment, *, now: int) -> bool:
    """Record a verified commitment of ``peer``; True when a consistency check is due now."""
    row = _row(session, peer)
    if row.tree_size is None or row.root is None:
        _hold(row, c, now)
        if row.status == "unknown":
            row.status, row.status_at = "ok", now
        return False
    if c.tree_size == row.tree_size:
        if c.root != row.root:
            _inconsistent(session, row, Commitment(row.tree_size, row.root, bytes(row.evidence or b"")), c,
                          proof=None, detail=f"two signed roots for tree size {c.tree_size}", now=now)
        return False
    if c.tree_size < row.tree_size:
        return False  # an older commitment (receipts may arrive out of order): the held one covers it
    if row.pending_tree_size is None or c.tree_size > row.pending_tree_size:
        row.pending_tree_size, row.pending_root, row.pending_evidence = c.tree_size, c.root, c.evidence
    return row.checked_at is None or now - row.checked_at >= CHECK_INTERVAL


def due_check(session: Session, peer: str, *, now: int) -> tuple[Commitment, Commitment] | None:
    """The (held, newest received) pair to check now, marking the check as made; None if none is due."""
    row = _row(session, peer)
    if row.pending_tree_size is None or row.tree_size is None or row.root is None:
        return None
    if row.checked_at is not None and now - row.checked_at < CHECK_INTERVAL:
        return None
    row.checked_at = now
    held = Commitment(row.tree_size, row.root, bytes(row.evidence or b""))
    return held, Commitment(row.pending_tree_size, row.pending_root or "", bytes(row.pending_evidence or b""))


def settle_consistent(session: Session, peer: str, held: Commitment, new: Commitment, *, now: int) -> None:
    row = _row(session, peer)
    if row.tree_size == held.tree_size and row.root == held.root:
        _hold(row, new, now)
    if row.pending_tree_size is not None and row.pending_tree_size <= new.tree_size:
        row.pending_tree_size, row.pending_root, row.pending_evidence = None, None, None
    if row.status in ("unknown", "ok"):
        row.status, row.status_detail, row.status_at = "ok", None, now


def settle_inconsistent(session: Session, peer: str, held: Commitment, new: Commitment, *, proof: list[str] | None,
                        detail: str, now: int) -> bool:
    """The peer could not prove ``new`` extends ``held``; True when recorded as a failure (not a declared restore)."""
    row = _row(session, peer)
    row.pending_tree_size, row.pending_root, row.pending_evidence = None, None, None
    if row.restored_after is not None and held.tree_size > row.restored_after:
        # a declared restore: the peer lost the entries after restored_after; start again from this head
        _hold(row, new, now)
        row.status, row.status_at = "restored", now
        row.status_detail = f"restored from backup after tree size {row.restored_after} (declared)"
        append_entry(session, event="peer_log_restored", at=now, peer=peer,
                     details={"held_tree_size": held.tree_size, "held_root": held.root, "tree_size": new.tree_size,
                              "root": new.root, "after_tree_size": row.restored_after})
        return False
    _inconsistent(session, row, held, new, proof=proof, detail=detail, now=now)
    return True


def _inconsistent(session: Session, row: PeerLog, held: Commitment, new: Commitment, *, proof: list[str] | None,
                  detail: str, now: int) -> None:
    session.add(PeerLogFailure(peer=row.peer, at=now, held_tree_size=held.tree_size, held_root=held.root,
                               held_evidence=held.evidence, received_tree_size=new.tree_size,
                               received_root=new.root, received_evidence=new.evidence,
                               proof=None if proof is None else json.dumps(proof), detail=detail[:500]))
    append_entry(session, event="peer_log_inconsistent", at=now, peer=row.peer,
                 details={"held_tree_size": held.tree_size, "held_root": held.root, "tree_size": new.tree_size,
                          "root": new.root})
    row.status, row.status_detail, row.status_at = "inconsistent", detail[:500], now


def declare_restore(session: Session, peer: str, *, after_tree_size: int, now: int) -> None:
    """``peer`` declared (signed) that it was restored from a backup holding its log up to ``after_tree_size``."""
    row = _row(session, peer)
    row.restored_after, row.restored_at = after_tree_size, now
    if row.tree_size is not None and row.tree_size > after_tree_size:
        row.tree_size, row.root, row.evidence = None, None, None  # its next commitment starts again
    row.pending_tree_size, row.pending_root, row.pending_evidence = None, None, None
    row.status, row.status_at = "restored", now
    row.status_detail = f"restored from backup after tree size {after_tree_size} (declared)"


def peers_due(session: Session, *, now: int) -> list[str]:
    """Peers holding a received commitment whose check is due."""
    rows = session.scalars(select(PeerLog.peer).where(PeerLog.pending_tree_size.is_not(None)))
    return [p for p in rows if (r := session.get(PeerLog, p)) is not None
            and (r.checked_at is None or now - r.checked_at >= CHECK_INTERVAL)]


def log_status(session: Session) -> dict[str, dict[str, Any]]:
    """Per peer, for ``peer list``: the witnessed log's status and the newest verified size."""
    return {r.peer: {"log_status": r.status, "log_status_detail": r.status_detail, "log_status_at": r.status_at,
                     "log_tree_size": r.tree_size}
            for r in session.scalars(select(PeerLog))}
