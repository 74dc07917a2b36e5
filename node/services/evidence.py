"""Evidence files (SPEC §9.8): what an officer hands a court about one message.

For a message this node sent: the envelope bytes, the peer's receipt, this node's ``delivered``
log entry (which records the receipt's SHA-256) with its inclusion proof in a signed head, and both
keyset chains.  For a message it received: the envelope, its own receipt, its ``received`` entry
and proof, and the decrypted inner JWS signed by the sender — proof of origin, and an audited
content export (the caller records it in the access log).
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from protocol.artifacts import ArchivalKeys, KeyRules, verify_artifact
from protocol.card import build_card
from protocol.envelope import parse_payload
from protocol.errors import Category, ProofError, ProtocolError
from protocol.heads import verify_head
from protocol.ids import is_authority_id, is_message_id
from protocol.jose import b64d, decode_protected
from protocol.merkle import leaf_hash, proof_from_hex, verify_inclusion
from protocol.receipts import RECEIPT_TYP, parse_receipt, verify_receipt

from ..errors import InputError, NotFoundError
from ..storage.models import AuditEntry, AuditHead, InboxMessage, OutboxMessage, Peer
from .bundles import check_leaf
from .log_proofs import StoredTree, TileRoots, sequenced_entries
from .peers import chain_docs
from .proofs import archival_chain, check_fingerprint

EVIDENCE_VERSION = 1
EVIDENCE_NAMES = frozenset({"comity_evidence", "direction", "authority", "peer", "message_id", "envelope", "receipt",
                            "inner_jws", "leaf", "leaf_index", "tree_size", "proof", "head", "cards", "exported_at"})
INNER_TYP = "comity-envelope+jws"
INNER_MAX_BYTES = 1024 * 1024


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _entry_for(session: Session, *, message_id: str, event: str, envelope_sha256: str,
               receipt_sha256: str | None) -> AuditEntry:
    for entry in sorted((e for e in sequenced_entries(session, "exchange", envelope_sha256)
                         if e.event == event and e.message_id == message_id),
                        key=lambda e: e.leaf_index or 0, reverse=True):
        if receipt_sha256 is None or json.loads(entry.leaf).get("receipt_sha256") == receipt_sha256:
            return entry
    raise NotFoundError(f"message {message_id} has no sequenced `{event}` log entry yet (is the node integrating?)")


def export_evidence(session: Session, message_id: str, *, authority: str, card: bytes, now: int) -> dict[str, Any]:
    """The evidence document of message ``message_id`` (sent or received by this node)."""
    sent = session.scalars(select(OutboxMessage).where(OutboxMessage.message_id == message_id)).first()
    received = session.scalars(select(InboxMessage).where(InboxMessage.message_id == message_id)).first()
    if sent is not None and sent.receipt_jws is not None:
        direction, peer, envelope, receipt, inner = "sent", sent.peer, sent.envelope, sent.receipt_jws, None
        entry = _entry_for(session, message_id=message_id, event="delivered", envelope_sha256=sent.envelope_sha256,
                           receipt_sha256=_sha(sent.receipt_jws))
    elif received is not None and received.receipt_jws is not None:
        direction, peer, envelope, receipt = "received", received.sender, received.envelope, received.receipt_jws
        inner = bytes(received.inner_jws).decode("ascii")
        entry = session.get_one(AuditEntry, received.entry_id)
    elif sent is not None or received is not None:
        raise InputError(f"message {message_id} has no receipt yet: there is no evidence of delivery to export")
    else:
        raise NotFoundError(f"no sent or received message with id {message_id}")
    peer_row = session.get(Peer, peer)
    if peer_row is None:
        raise InputError(f"{peer} is no longer pinned: its keyset chain is needed for the evidence")
    head = session.scalars(select(AuditHead).where(AuditHead.log == "exchange")
                           .order_by(AuditHead.tree_size.desc()).limit(1)).one()
    assert entry.leaf_index is not None
    # tile roots read in slices, not every leaf hash held at once (SubtreeProofs over the database)
    proof = StoredTree(session, TileRoots("exchange"), head.tree_size).inclusion(entry.leaf_index, head.tree_size)
    return {
        "comity_evidence": EVIDENCE_VERSION, "direction": direction, "authority": authority, "peer": peer,
        "message_id": message_id, "envelope": bytes(envelope).decode("ascii"),
        "receipt": bytes(receipt).decode("ascii"), "inner_jws": inner,
        "leaf": base64.urlsafe_b64encode(bytes(entry.leaf)).rstrip(b"=").decode("ascii"),
        "leaf_index": entry.leaf_index, "tree_size": head.tree_size, "proof": [p.hex() for p in proof],
        "head": bytes(head.head_jws).decode("ascii"),
        "cards": {authority: json.loads(card), peer: json.loads(build_card(chain_docs(peer_row)))},
        "exported_at": now,
    }


# --- verifying -------------------------------------------------------------------------------------


def _bad(detail: str) -> ProofError:
    return ProofError(Category.BAD_PROOF, detail)


def commitment_of(token: Any, *, keys: KeyRules, peer: str, where: str) -> tuple[int, str]:
    """The ``(tree_size, root)`` a peer signed in a tree head or a receipt (archival rules)."""
    if not isinstance(token, str) or not token.isascii():
        raise ProtocolError(Category.MALFORMED, f"{where} is not a compact JWS")
    raw = token.encode("ascii")
    typ = decode_protected(raw.split(b".", 1)[0]).get("typ")
    if typ == RECEIPT_TYP:
        r = parse_receipt(verify_artifact(raw, typ=RECEIPT_TYP, keys=keys, time_field="received_at").payload)
        if r.iss != peer:
            raise _bad(f"{where}: a receipt of {r.iss}, not of {peer}")
        return r.tree_size, r.root
    head = verify_head(raw, keys=keys, authority=peer, log="exchange")
    return head.tree_size, head.root


def verify_evidence(obj: dict[str, Any], *, fingerprint: str | None = None) -> dict[str, Any]:
    """Verify a parsed evidence file (SPEC §9.8); return what it proves, or raise ``ProtocolError``."""
    if set(obj) != EVIDENCE_NAMES or obj.get("comity_evidence") != EVIDENCE_VERSION \
            or isinstance(obj.get("comity_evidence"), bool):
        raise ProtocolError(Category.MALFORMED, f"evidence members {sorted(obj)}")
    authority, peer, mid, direction = obj["authority"], obj["peer"], obj["message_id"], obj["direction"]
    strings = ("envelope", "receipt", "leaf", "head")
    inner = obj["inner_jws"]
    if not (is_authority_id(authority) and is_authority_id(peer) and is_message_id(mid)) \
            or direction not in ("sent", "received") \
            or not all(isinstance(obj[n], str) and obj[n].isascii() for n in strings) \
            or not (inner is None or (isinstance(inner, str) and inner.isascii())) \
            or not isinstance(obj["cards"], dict) or set(obj["cards"]) != {authority, peer} \
            or not isinstance(obj["proof"], list):
        raise ProtocolError(Category.MALFORMED, "evidence authority, peer, message_id, direction, strings or cards")
    for name in ("leaf_index", "tree_size", "exported_at"):
        if isinstance(obj[name], bool) or not isinstance(obj[name], int) or obj[name] < 0:
            raise ProtocolError(Category.MALFORMED, f"evidence {name} is not a non-negative integer")
    # 2. both chains; the fingerprint pins the exporting node's
    own = archival_chain(obj["cards"][authority], authority=authority)
    check_fingerprint(own, fingerprint)
    theirs = archival_chain(obj["cards"][peer], authority=peer)
    own_keys, peer_keys = ArchivalKeys([d.keyset for d in own]), ArchivalKeys([d.keyset for d in theirs])
    # 3. the head
    head = verify_head(obj["head"].encode("ascii"), keys=own_keys, authority=authority, log="exchange")
    if head.tree_size != obj["tree_size"]:
        raise _bad(f"the head is of size {head.tree_size}, not {obj['tree_size']}")
    # 4. the entry
    try:
        leaf = b64d(obj["leaf"], what="leaf")
    except ProtocolError as e:
        raise ProtocolError(Category.MALFORMED, "leaf is not base64url") from e
    entry = check_leaf(leaf, log="exchange", where="leaf")
    envelope, receipt = obj["envelope"].encode("ascii"), obj["receipt"].encode("ascii")
    want = {"event": "delivered" if direction == "sent" else "received", "message_id": mid, "peer": peer,
            "envelope_sha256": _sha(envelope)}
    if direction == "sent":
        want["receipt_sha256"] = _sha(receipt)
    for name, value in want.items():
        if entry.get(name) != value:
            raise _bad(f"the log entry's {name} is not {value}")
    # 5. its inclusion in the head
    verify_inclusion(leaf_hash(leaf), obj["leaf_index"], head.tree_size, proof_from_hex(obj["proof"]),
                     head.root_bytes)
    # 6. the receipt, signed by the receiver
    sender, receiver, rkeys = (authority, peer, peer_keys) if direction == "sent" else (peer, authority, own_keys)
    r = verify_receipt(receipt, keys=rkeys, sender=sender, receiver=receiver, message_id=mid,
                       envelope_sha256=_sha(envelope))
    if direction == "received" and r.leaf_index != obj["leaf_index"]:
        raise _bad(f"the receipt names leaf {r.leaf_index}, the evidence {obj['leaf_index']}")
    # 7. the inner JWS: proof of origin (received messages only)
    if direction == "sent" and inner is not None:
        raise ProtocolError(Category.MALFORMED, "evidence of a sent message carries no inner JWS")
    if direction == "received":
        if not isinstance(inner, str):
            raise ProtocolError(Category.MALFORMED, "evidence of a received message carries the inner JWS")
        verified = verify_artifact(inner.encode("ascii"), typ=INNER_TYP, keys=peer_keys, time_field="iat",
                                   max_bytes=INNER_MAX_BYTES)
        content = parse_payload(verified.payload)
        if (content.iss, content.aud, content.id) != (peer, authority, mid):
            raise _bad("the inner JWS names another sender, recipient or message id")
    return {"ok": True, "kind": "evidence", "authority": authority, "fingerprint": own[-1].keyset.identity_kid,
            "fingerprints": [d.keyset.identity_kid for d in own], "peer": peer,
            "peer_fingerprint": theirs[-1].keyset.identity_kid, "message_id": mid, "direction": direction,
            "leaf_index": obj["leaf_index"], "tree_size": head.tree_size, "received_at": r.received_at}
