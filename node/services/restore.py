"""Restoring a node from a backup, and redelivering to a peer that did.

The restored node records a signed ``restored_from_backup`` entry in each log, keeps the heads
it had written before (``HOME/heads/<log>.jws.pre-restore-<at>``), and asks every pinned peer to
redeliver what it holds receipts for after its last surviving exchange head: a compact JWS, ``typ``
``comity-redeliver+jws``, payload exactly ``{v, iss, aud, after_tree_size, at}`` (SPEC §10.5).
A peer that verifies one re-queues — same stored envelope bytes — every message to that node whose
receipt's ``tree_size`` is larger, and takes the node's next log head as a declared restore.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from protocol.artifacts import KeyRules, require_fields, require_int, verify_artifact
from protocol.errors import ArtifactError, Category, ProtocolError
from protocol.ids import is_authority_id
from protocol.jose import Signer, b64d, sign_compact
from protocol.strictjson import parse_object

from ..storage.models import AuditEntry, OutboxMessage, Peer, Redelivery
from .audit import LOGS, append_entry
from .headsfile import heads_path, newest_heads, read_held_head
from .witness import declare_restore

REDELIVER_TYP = "comity-redeliver+jws"
REDELIVER_NAMES = frozenset({"v", "iss", "aud", "after_tree_size", "at"})
REDELIVER_MAX_BYTES = 64 * 1024


@dataclass(frozen=True)
class RedeliveryRequest:
    iss: str  # the restored node
    aud: str  # the peer asked
    after_tree_size: int
    at: int


def sign_redelivery_request(req: RedeliveryRequest, *, signer: Signer) -> bytes:
    return sign_compact(typ=REDELIVER_TYP, payload={"v": 1, "iss": req.iss, "aud": req.aud,
                                                    "after_tree_size": req.after_tree_size, "at": req.at},
                        signer=signer)


def claimed_issuer(token: bytes) -> str | None:
    """The unverified ``iss`` of a request, to pick the keyset it must verify under."""
    try:
        iss = parse_object(b64d(token.split(b".")[1], what="payload"), max_bytes=REDELIVER_MAX_BYTES).get("iss")
    except (ProtocolError, IndexError):
        return None
    return iss if is_authority_id(iss) else None


def verify_redelivery_request(token: bytes, *, keys: KeyRules, me: str, now: int, skew: int,
                              max_lifetime: int) -> RedeliveryRequest:
    """SPEC §10.5: §1.7 with the acceptance rules (time ``at``), exact members, ``aud`` = me, fresh ``at``."""
    verified = verify_artifact(token, typ=REDELIVER_TYP, keys=keys, time_field="at", max_bytes=REDELIVER_MAX_BYTES)
    p = verified.payload
    require_fields(p, REDELIVER_NAMES, "redelivery request")
    if not (is_authority_id(p["iss"]) and is_authority_id(p["aud"])):
        raise ArtifactError(Category.MALFORMED, "redelivery request iss or aud is not an authority id")
    req = RedeliveryRequest(p["iss"], p["aud"], require_int(p, "after_tree_size", "redelivery request"),
                            require_int(p, "at", "redelivery request"))
    if req.aud != me:
        raise ArtifactError(Category.WRONG_RECIPIENT, f"redelivery request for {req.aud}")
    if req.at > now + skew:
        raise ArtifactError(Category.NOT_YET_VALID, "redelivery request made in the future")
    if req.at + max_lifetime + skew < now:
        raise ArtifactError(Category.EXPIRED, "redelivery request older than the maximum message lifetime")
    return req


def requeue_for_restored_peer(session: Session, req: RedeliveryRequest, token: bytes, *, now: int) -> int:
    """Re-queue every message to ``req.iss`` receipted after ``after_tree_size``; idempotent per request."""
    digest = hashlib.sha256(token).hexdigest()
    for leaf in session.scalars(select(AuditEntry.leaf).where(AuditEntry.event == "redelivery_requested",
                                                              AuditEntry.peer == req.iss)):
        done = json.loads(leaf)
        if done.get("request_sha256") == digest:
            return int(done.get("requeued", 0))
    rows = session.scalars(select(OutboxMessage).where(
        OutboxMessage.peer == req.iss, OutboxMessage.state == "delivered",
        OutboxMessage.receipt_tree_size > req.after_tree_size).order_by(OutboxMessage.seq)).all()
    for row in rows:
        row.state, row.next_attempt_at, row.lease_until, row.lease_owner = "queued", now, None, None
        row.delivered_at = None
        append_entry(session, event="requeued", at=now, message_id=row.message_id, peer=req.iss,
                     envelope_sha256=row.envelope_sha256,
                     details={"peer_tree_size": row.receipt_tree_size, "after_tree_size": req.after_tree_size})
    declare_restore(session, req.iss, after_tree_size=req.after_tree_size, now=now)
    append_entry(session, event="redelivery_requested", at=now, peer=req.iss,
                 details={"after_tree_size": req.after_tree_size, "requeued": len(rows), "request_sha256": digest})
    return len(rows)


def declare_own_restore(session: Session, home: Path, *, authority: str, signer: Signer, actor: str,
                        now: int) -> dict[str, Any]:
    """Record ``restored_from_backup`` in both logs and queue a redelivery request to every pinned peer.

    The entries are sequenced by the next integrator batch; the caller then moves the old heads
    files aside (``set_aside_heads_files``).
    """
    newest = newest_heads(session)
    summary: dict[str, Any] = {}
    for name in LOGS:
        surviving = newest[name].tree_size if name in newest else 0
        held = read_held_head(home, name)
        lost = held if held is not None and held.tree_size != surviving else None
        append_entry(session, log=name, event="restored_from_backup", at=now,
                     details={"actor": actor, "tree_size": surviving,
                              "root": newest[name].root if name in newest else None,
                              "lost_tree_size": None if lost is None else lost.tree_size,
                              "lost_root": None if lost is None else lost.root})
        summary[name] = {"surviving_tree_size": surviving, "heads_file_tree_size": None if held is None
                         else held.tree_size}
    after = summary["exchange"]["surviving_tree_size"]
    peers = list(session.scalars(select(Peer.authority).order_by(Peer.authority)))
    for peer in peers:
        token = sign_redelivery_request(RedeliveryRequest(authority, peer, after, now), signer=signer)
        session.add(Redelivery(peer=peer, after_tree_size=after, request_jws=token, created_at=now,
                               state="pending", attempts=0))
    summary["redelivery_requested_from"] = peers
    return summary


def set_aside_heads_files(home: Path, *, now: int) -> list[Path]:
    """Keep the heads written before the restore beside the new ones (evidence of what was lost)."""
    moved = []
    for name in LOGS:
        path = heads_path(home, name)
        if path.exists():
            target = path.with_name(f"{path.name}.pre-restore-{now}")
            path.replace(target)
            moved.append(target)
    return moved
