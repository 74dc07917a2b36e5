"""Audit bundles (SPEC §9.7): a self-contained export of one log that anyone can verify offline.

A bundle holds a range of leaves with the compact range before it, every signed head inside the
range and the newest one, a consistency proof between each two consecutive heads, the node's
card (its keyset chain) and, for the exchange log, the peer-log failures this node recorded.
``verify_bundle`` checks it with no database, under the archival key rules, in SPEC's order.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from itertools import pairwise
from typing import IO, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from protocol.artifacts import ArchivalKeys
from protocol.errors import Category, ProofError, ProtocolError
from protocol.heads import TreeHead, verify_head
from protocol.ids import is_authority_id
from protocol.jose import b64d
from protocol.merkle import CompactRange, leaf_hash, proof_from_hex, verify_consistency
from protocol.strictjson import canonical, parse_object

from ..errors import InputError
from ..storage.models import AuditEntry, AuditHead, Peer, PeerLogFailure
from .audit import LOGS
from .log_proofs import StoredTree, TileRoots
from .proofs import archival_chain, check_fingerprint

BUNDLE_VERSION = 1
BUNDLE_NAMES = frozenset({"comity_bundle", "authority", "log", "card", "from", "frontier", "leaves", "heads",
                          "consistency", "peer_log_failures", "exported_at"})
FAILURE_NAMES = frozenset({"peer", "at", "peer_card", "held", "received", "proof", "detail"})
#: A bundle is read whole; this cap leaves room for several million leaves.
BUNDLE_MAX_BYTES = 4 * 1024**3


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _failures(session: Session) -> list[dict[str, Any]]:
    from .peers import chain_docs

    out = []
    for f in session.scalars(select(PeerLogFailure).order_by(PeerLogFailure.id)):
        peer = session.get(Peer, f.peer)
        card = None
        if peer is not None:
            from protocol.card import build_card

            card = json.loads(build_card(chain_docs(peer)))
        out.append({"peer": f.peer, "at": f.at, "peer_card": card, "held": bytes(f.held_evidence).decode("ascii"),
                    "received": bytes(f.received_evidence).decode("ascii"),
                    "proof": None if f.proof is None else json.loads(f.proof), "detail": f.detail})
    return out


def export_bundle(session: Session, out: IO[bytes], *, log: str, authority: str, card: bytes, first: int | None,
                  last: int | None, now: int) -> dict[str, Any]:
    """Write the RFC 8785 bundle of ``log`` leaves ``[first, last)`` (``last`` snapped up to a signed head)."""
    if log not in LOGS:
        raise InputError(f"unknown log {log!r}: exchange or access")
    heads = list(session.execute(select(AuditHead.tree_size, AuditHead.head_jws).where(AuditHead.log == log)
                                 .order_by(AuditHead.tree_size)))
    if not heads:
        raise InputError(f"the {log} log has no signed head yet")
    newest = heads[-1].tree_size
    start = first or 0
    want = newest if last is None else last
    if not 0 <= start <= want <= newest:
        raise InputError(f"need 0 <= --from ({start}) <= --to ({want}) <= {newest}, the newest signed head")
    end = next(h.tree_size for h in heads if h.tree_size >= max(want, start))
    held = session.scalar(select(func.count()).where(AuditEntry.log == log, AuditEntry.leaf_index < newest))
    if held != newest:
        raise InputError(f"the {log} log has {held} entries under a head of {newest}: run `comity audit verify`")
    tree = StoredTree(session, TileRoots(log), newest)  # not every leaf hash in memory at once
    chosen = [h for h in heads if start <= h.tree_size <= end]
    if chosen[-1].tree_size != newest:
        chosen.append(heads[-1])
    sizes = [h.tree_size for h in chosen]
    members: dict[str, Any] = {
        "authority": authority, "card": json.loads(card), "comity_bundle": BUNDLE_VERSION,
        "consistency": [{"first": a, "second": b, "proof": [p.hex() for p in tree.consistency(a, b)]}
                        for a, b in pairwise(sizes)],
        "exported_at": now, "from": start, "frontier": [h.hex() for h in tree.frontier(start)],
        "heads": [bytes(h.head_jws).decode("ascii") for h in chosen],
        "leaves": None, "log": log, "peer_log_failures": _failures(session) if log == "exchange" else [],
    }
    out.write(b"{")
    for i, name in enumerate(sorted(members)):
        out.write((b"," if i else b"") + canonical(name) + b":")
        if name == "leaves":
            _write_leaves(session, out, log, start, end)
        else:
            out.write(canonical(members[name]))
    out.write(b"}")
    return {"log": log, "from": start, "to": end, "heads": len(chosen), "newest_tree_size": newest,
            "peer_log_failures": len(members["peer_log_failures"])}


def _write_leaves(session: Session, out: IO[bytes], log: str, start: int, end: int) -> None:
    rows = session.scalars(select(AuditEntry.leaf).where(
        AuditEntry.log == log, AuditEntry.leaf_index >= start, AuditEntry.leaf_index < end,
    ).order_by(AuditEntry.leaf_index).execution_options(yield_per=5000))
    out.write(b"[")
    for i, leaf in enumerate(rows):
        out.write((b',"' if i else b'"') + _b64(bytes(leaf)).encode("ascii") + b'"')
    out.write(b"]")


# --- verifying -------------------------------------------------------------------------------------


def _malformed(detail: str) -> ProtocolError:
    return ProtocolError(Category.MALFORMED, detail)


def _int(obj: dict[str, Any], name: str, what: str) -> int:
    v = obj.get(name)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise _malformed(f"{what} {name} is not a non-negative integer")
    return v


def _strings(obj: dict[str, Any], name: str) -> list[str]:
    v = obj.get(name)
    if not isinstance(v, list) or not all(isinstance(x, str) and x.isascii() for x in v):
        raise _malformed(f"bundle {name} is not an array of ASCII strings")
    return v


def read_archive(data: bytes) -> dict[str, Any]:
    """Strictly parse a bundle or evidence file (any formatting; duplicates, NaN, huge ints refused)."""
    return parse_object(data, max_bytes=BUNDLE_MAX_BYTES)


def check_leaf(leaf: bytes, *, log: str, where: str) -> dict[str, Any]:
    """A leaf is an RFC 8785 JSON object ``{v: 1, log, event, at, ...}`` (SPEC §9.6)."""
    try:
        obj = parse_object(leaf, max_bytes=64 * 1024)
    except ProtocolError as e:
        raise _malformed(f"{where}: not strict JSON: {e.detail}") from e
    if canonical(obj) != leaf:
        raise _malformed(f"{where}: not RFC 8785 canonical JSON")
    if obj.get("v") != 1 or isinstance(obj.get("v"), bool) or obj.get("log") != log \
            or not isinstance(obj.get("event"), str):
        raise _malformed(f"{where}: not an entry of the {log} log (v, log, event)")
    _int(obj, "at", where)
    return obj


def _leaves(items: list[str]) -> Iterator[bytes]:
    for i, item in enumerate(items):
        try:
            yield b64d(item, what=f"leaf {i}")
        except ProtocolError as e:
            raise _malformed(f"leaf {i} is not base64url") from e


def verify_bundle(obj: dict[str, Any], *, fingerprint: str | None = None) -> dict[str, Any]:
    """Verify a parsed bundle (SPEC §9.7); return what it proves, or raise ``ProtocolError``."""
    if set(obj) != BUNDLE_NAMES or obj.get("comity_bundle") != BUNDLE_VERSION \
            or isinstance(obj.get("comity_bundle"), bool):
        raise _malformed(f"bundle members {sorted(obj)}")
    authority, log = obj["authority"], obj["log"]
    if not is_authority_id(authority) or log not in LOGS or not isinstance(obj["card"], dict):
        raise _malformed("bundle authority, log or card")
    start = _int(obj, "from", "bundle")
    _int(obj, "exported_at", "bundle")
    frontier, leaves, tokens = _strings(obj, "frontier"), _strings(obj, "leaves"), _strings(obj, "heads")
    links, failures = obj["consistency"], obj["peer_log_failures"]
    if not isinstance(links, list) or not isinstance(failures, list):
        raise _malformed("bundle consistency or peer_log_failures is not an array")
    # 2-3. the chain, and the pinned fingerprint
    docs = archival_chain(obj["card"], authority=authority)
    check_fingerprint(docs, fingerprint)
    keys = ArchivalKeys([d.keyset for d in docs])
    # 4. heads, ascending
    heads: list[TreeHead] = [verify_head(t.encode("ascii"), keys=keys, authority=authority, log=log)
                             for t in tokens]
    if not heads:
        raise ProofError(Category.BAD_PROOF, "the bundle holds no signed head")
    for a, b in pairwise(heads):
        if b.tree_size <= a.tree_size:
            raise ProofError(Category.BAD_PROOF, f"heads not strictly ascending at size {b.tree_size}")
    # 5. consistency between consecutive heads
    if len(links) != len(heads) - 1:
        raise ProofError(Category.BAD_PROOF, f"{len(links)} consistency proofs for {len(heads)} heads")
    for i, (link, a, b) in enumerate(zip(links, heads, heads[1:], strict=False)):
        if not isinstance(link, dict) or set(link) != {"first", "second", "proof"}:
            raise _malformed(f"consistency[{i}] is not {{first, second, proof}}")
        if (_int(link, "first", "consistency"), _int(link, "second", "consistency")) != (a.tree_size, b.tree_size):
            raise ProofError(Category.BAD_PROOF,
                             f"consistency[{i}] is not between sizes {a.tree_size} and {b.tree_size}")
        verify_consistency(a.tree_size, b.tree_size, a.root_bytes, b.root_bytes, proof_from_hex(link["proof"]))
    # 6-7. the leaves, from the compact range before them, against every head inside the range
    end = start + len(leaves)
    if len(frontier) != start.bit_count():
        raise _malformed(f"frontier of {len(frontier)} hashes for {start} leaves")
    try:
        cr = CompactRange.from_json({"size": start, "nodes": frontier})
    except ProtocolError as e:
        raise _malformed(f"frontier: {e.detail}") from e
    by_size = {h.tree_size: h for h in heads}
    if end not in by_size or heads[0].tree_size < start:
        raise ProofError(Category.BAD_PROOF, f"no signed head at the range's end ({end}) or a head before it starts")

    def check_root() -> None:
        head = by_size.get(cr.size)
        if head is not None and head.root != cr.root().hex():
            raise ProofError(Category.BAD_PROOF, f"leaves {start}..{cr.size - 1} do not give the root of the signed "
                             f"head of size {cr.size}")

    check_root()
    for i, leaf in enumerate(_leaves(leaves)):
        check_leaf(leaf, log=log, where=f"leaf {start + i}")
        cr.append(leaf_hash(leaf))
        check_root()
    checked = [_check_failure(f, i) for i, f in enumerate(failures)]
    return {"ok": True, "kind": "bundle", "authority": authority, "log": log,
            "fingerprint": docs[-1].keyset.identity_kid,
            "fingerprints": [d.keyset.identity_kid for d in docs], "from": start, "to": end, "heads": len(heads),
            "newest_tree_size": heads[-1].tree_size, "peer_log_failures": checked}


def _check_failure(f: Any, i: int) -> dict[str, Any]:
    """A recorded peer-log failure: both commitments verify under the peer's chain (archival rules)."""
    from .evidence import commitment_of

    if not isinstance(f, dict) or set(f) != FAILURE_NAMES or not isinstance(f["peer"], str):
        raise _malformed(f"peer_log_failures[{i}] members")
    if f["peer_card"] is None:  # the peer was unpinned since: its commitments cannot be checked here
        return {"peer": f["peer"], "at": f["at"], "checked": False}
    if not isinstance(f["peer_card"], dict):
        raise _malformed(f"peer_log_failures[{i}].peer_card is not a card")
    docs = archival_chain(f["peer_card"], authority=f["peer"])
    keys = ArchivalKeys([d.keyset for d in docs])
    held = commitment_of(f["held"], keys=keys, peer=f["peer"], where=f"peer_log_failures[{i}].held")
    received = commitment_of(f["received"], keys=keys, peer=f["peer"], where=f"peer_log_failures[{i}].received")
    return {"peer": f["peer"], "at": f["at"], "checked": True, "held": list(held), "received": list(received)}


def bundle_heads(obj: dict[str, Any]) -> list[bytes]:
    """The signed heads a bundle holds, to check a database against (``audit verify --against``)."""
    return [t.encode("ascii") for t in _strings(obj, "heads")]
