"""Peer-listener routes for the exchange log (SPEC §10.4) and redelivery after a restore (§10.5).

Heads and proofs are what peers witness a node's log with; the access log has no route here.
Every refusal is a problem document (``application/problem+json``); none concerns an envelope, so
none carries a signed error.
"""

from __future__ import annotations

import asyncio
import base64
import re
from typing import Any

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from protocol.artifacts import LiveKeys
from protocol.errors import Category, ProtocolError
from protocol.merkle import proof_to_hex

from ..runtime import Node
from ..services.log_proofs import StoredTree, TileRoots, sequenced_entries
from ..services.peers import peer_keyset
from ..services.restore import (
    REDELIVER_MAX_BYTES,
    claimed_issuer,
    requeue_for_restored_peer,
    verify_redelivery_request,
)
from ..storage.models import AuditHead, Peer
from .problems import MEDIA_PROBLEM, peer_problem

log = structlog.get_logger("comity.api")

MEDIA_JOSE = "application/jose"
_SIZE = re.compile(r"^(0|[1-9][0-9]{0,15})$")
_HEX = re.compile(r"^[0-9a-f]{64}$")


def _not_found(detail: str) -> Response:
    body = {"type": "urn:comity:error:not_found", "title": "no such log entry or head", "status": 404,
            "category": "not_found", "class": "permanent", "error_jws": None, "detail": detail}
    return JSONResponse(body, status_code=404, media_type=MEDIA_PROBLEM)


def _malformed(detail: str) -> Response:
    return peer_problem(Category.MALFORMED, error_jws=None, detail=detail)


def _size(request: Request, name: str) -> int | None:
    value = request.query_params.get(name)
    return int(value) if value is not None and _SIZE.match(value) else None


def _newest_size(session: Session) -> int:
    return session.scalars(select(AuditHead.tree_size).where(AuditHead.log == "exchange")
                           .order_by(AuditHead.tree_size.desc()).limit(1)).first() or 0


def _damaged(e: LookupError) -> Response:
    """A gap in the sequenced log (only an edit of the database makes one): the operator's to fix."""
    log.error("exchange_log_damaged", detail=str(e)[:200], hint="run comity audit verify")
    return peer_problem(Category.UNAVAILABLE, error_jws=None, detail="the exchange log cannot give proofs now",
                        retry_after=300)


def register_log_routes(router: APIRouter, node: Node) -> None:
    roots = TileRoots("exchange")  # this process's tile roots of its own exchange log

    @router.get("/comity/v1/log/exchange/head")
    async def log_head() -> Response:
        def load() -> bytes | None:
            with node.db.read() as session:
                return session.scalars(select(AuditHead.head_jws).where(AuditHead.log == "exchange")
                                       .order_by(AuditHead.tree_size.desc()).limit(1)).first()
        head = await asyncio.to_thread(load)
        if head is None:
            return _not_found("the exchange log has no signed head yet")
        return Response(bytes(head), media_type=MEDIA_JOSE)

    @router.get("/comity/v1/log/exchange/consistency")
    async def log_consistency(request: Request) -> Response:
        first, second = _size(request, "first"), _size(request, "second")
        if first is None or second is None:
            return _malformed("first and second must be non-negative decimal integers")

        def load() -> list[bytes] | str:
            with node.db.read() as session:
                newest = _newest_size(session)
                if not first <= second <= newest:
                    return f"need 0 <= first <= second <= {newest}, the newest signed head"
                return [] if first in (0, second) else StoredTree(session, roots, second).consistency(first, second)
        try:
            proof = await asyncio.to_thread(load)
        except LookupError as e:
            return _damaged(e)
        if isinstance(proof, str):
            return _malformed(proof)
        return JSONResponse({"first": first, "second": second, "proof": proof_to_hex(proof)})

    @router.get("/comity/v1/log/exchange/inclusion")
    async def log_inclusion(request: Request) -> Response:
        sha, size = request.query_params.get("envelope_sha256", ""), _size(request, "tree_size")
        if not _HEX.match(sha) or size is None or size < 1:
            return _malformed("envelope_sha256 must be 64 lowercase hex, tree_size a positive integer")

        def load() -> dict[str, Any] | Response:
            with node.db.read() as session:
                if size > _newest_size(session):
                    return _malformed(f"tree_size {size} is beyond the newest signed head")
                entry = min((e for e in sequenced_entries(session, "exchange", sha) if (e.leaf_index or 0) < size),
                            key=lambda e: (e.event != "received", e.leaf_index or 0), default=None)
                if entry is None or entry.leaf_index is None:
                    return _not_found(f"no entry within the first {size} records that envelope")
                proof = StoredTree(session, roots, size).inclusion(entry.leaf_index, size)
                leaf = base64.urlsafe_b64encode(bytes(entry.leaf)).rstrip(b"=").decode("ascii")
                return {"leaf": leaf, "leaf_index": entry.leaf_index, "tree_size": size, "proof": proof_to_hex(proof)}
        try:
            doc = await asyncio.to_thread(load)
        except LookupError as e:
            return _damaged(e)
        return doc if isinstance(doc, Response) else JSONResponse(doc)

    @router.post("/comity/v1/redeliver")
    async def redeliver(request: Request) -> Response:
        length = request.headers.get("content-length")
        if length is None or not length.isdigit():
            return peer_problem(Category.LENGTH_REQUIRED, error_jws=None, detail="Content-Length is required")
        if int(length) > REDELIVER_MAX_BYTES:
            return peer_problem(Category.TOO_LARGE, error_jws=None, detail="a redelivery request is at most 64 KiB")
        token = await request.body()
        now = node.clock()
        iss = claimed_issuer(token)

        def keys() -> LiveKeys | None:
            with node.db.read() as session:
                row = session.get(Peer, iss) if iss is not None else None
                return None if row is None else LiveKeys(peer_keyset(row), now, node.settings.skew,
                                                         node.settings.max_lifetime)
        live = await asyncio.to_thread(keys)
        if live is None:
            return peer_problem(Category.UNKNOWN_SENDER, error_jws=None, detail="iss is not a pinned peer")
        try:
            req = verify_redelivery_request(token, keys=live, me=node.authority, now=now, skew=node.settings.skew,
                                            max_lifetime=node.settings.max_lifetime)
        except ProtocolError as e:
            return peer_problem(e.category, error_jws=None, detail=e.detail)

        def requeue() -> int:
            with node.db.write() as session:
                return requeue_for_restored_peer(session, req, token, now=now)
        count = await asyncio.to_thread(requeue)
        log.warning("peer_declared_restore", peer=req.iss, after_tree_size=req.after_tree_size, requeued=count)
        node.wake_worker()
        return JSONResponse({"requeued": count})
