"""The peer listener: what other states' nodes reach (SPEC §10)."""

from __future__ import annotations

import asyncio
import base64
import contextlib

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select

from protocol.envelope import envelope_sha256
from protocol.errors import Category, ProtocolError
from protocol.merkle import consistency_proof, inclusion_proof, proof_to_hex

from ..runtime import Node
from ..services.peers import peer_lookup
from ..services.receiving import (
    Accepted,
    Duplicate,
    InboxLimits,
    Rejected,
    open_inbound,
    receipt_by_seq,
    record_rejection,
    rejected_from,
    sign_rejection,
    store_inbound,
    stored_receipt,
)
from ..storage.models import AuditEntry, AuditHead
from .problems import peer_problem

MEDIA_JOSE = "application/jose"
MEDIA_JOSE_JSON = "application/jose+json"
DUPLICATE_WAIT = 5.0
RECEIPT_WAIT = 10.0


def _receipt(body: bytes, *, duplicate: bool) -> Response:
    headers = {"Comity-Duplicate": "true"} if duplicate else {}
    return Response(body, status_code=200 if duplicate else 201, media_type=MEDIA_JOSE, headers=headers)


def build_peer_router(node: Node) -> APIRouter:
    router = APIRouter()
    limits = InboxLimits(skew=node.settings.skew, max_lifetime=node.settings.max_lifetime,
                         max_bytes=node.settings.envelope_max_bytes)
    lookup = peer_lookup(node.db)

    def refusal(category: Category, *, aud: str | None, sha: str | None, detail: str | None = None,
                retry_after: int | None = None) -> Response:
        rejected = Rejected(category, detail or "", aud, sha or "")
        token = sign_rejection(rejected, authority=node.authority, signer=node.keystore.signer, now=node.clock()) \
            if sha is not None else None
        return peer_problem(category, error_jws=token, detail=detail, retry_after=retry_after)

    async def await_stored_receipt(sha: str, *, wait: float) -> bytes | None:
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            found, receipt = await asyncio.to_thread(_lookup, sha)
            if receipt is not None or not found or asyncio.get_running_loop().time() >= deadline:
                return receipt
            await asyncio.sleep(0.02)

    def _lookup(sha: str) -> tuple[bool, bytes | None]:
        with node.db.read() as session:
            return stored_receipt(session, sha)

    async def await_receipt(seq: int) -> bytes | None:
        event = node.waiters.register(seq)
        node.wake_integrator()
        deadline = asyncio.get_running_loop().time() + RECEIPT_WAIT
        try:
            while True:
                with node.db.read() as session:
                    receipt = receipt_by_seq(session, seq)
                if receipt is not None:
                    return receipt
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    return None
                poll = 0.25 if node.integrator is not None else 0.02
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), timeout=min(poll, remaining))
        finally:
            node.waiters.forget(seq)

    @router.post("/comity/v1/inbox")
    async def inbox(request: Request) -> Response:
        length = request.headers.get("content-length")
        if length is None or not length.isdigit():
            return refusal(Category.LENGTH_REQUIRED, aud=None, sha=None, detail="Content-Length is required")
        if int(length) > limits.max_bytes:
            return refusal(Category.TOO_LARGE, aud=None, sha=None,
                           detail=f"{length} bytes exceed the cap of {limits.max_bytes}")
        raw = await request.body()
        sha = envelope_sha256(raw)
        # (2) a stored receipt for these exact bytes is returned before any freshness check
        found, receipt = await asyncio.to_thread(_lookup, sha)
        if found:
            return await duplicate_answer(sha, receipt)
        now = node.clock()
        try:
            opened = await asyncio.to_thread(
                open_inbound, raw, me=node.authority, decryption_keys=node.keystore.decryption_keys(now),
                lookup_peer=lookup, now=now, limits=limits,
            )
        except ProtocolError as e:
            rejected = rejected_from(e, raw)
            sender = getattr(e, "authenticated_sender", None)
            source = request.client.host if request.client else "unknown"
            await asyncio.to_thread(record_rejection, node.db, rejected, authenticated=sender, source=source,
                                    message_id=None, now=now)
            return refusal(rejected.category, aud=rejected.aud, sha=sha, detail=e.detail)
        result = await asyncio.to_thread(store_inbound, node.db, opened, raw, now=now)
        if isinstance(result, Accepted):
            receipt = await await_receipt(result.seq)
            if receipt is None:
                return refusal(Category.UNAVAILABLE, aud=opened.content.iss, sha=sha,
                               detail="stored; the receipt is not signed yet", retry_after=1)
            return _receipt(receipt, duplicate=False)
        if isinstance(result, Duplicate):
            return await duplicate_answer(sha, None)
        return refusal(result.category, aud=result.aud, sha=sha, detail=result.detail)

    async def duplicate_answer(sha: str, receipt: bytes | None) -> Response:
        if receipt is None:
            node.wake_integrator()
            receipt = await await_stored_receipt(sha, wait=DUPLICATE_WAIT)
        if receipt is None:
            return refusal(Category.UNAVAILABLE, aud=None, sha=sha, detail="receipt not signed yet", retry_after=1)
        return _receipt(receipt, duplicate=True)

    @router.get("/.well-known/comity/keyset")
    async def keyset_newest() -> Response:
        return Response(node.keystore.keyset_docs()[-1], media_type=MEDIA_JOSE_JSON)

    @router.get("/.well-known/comity/keyset/{version}")
    async def keyset_version(version: int) -> Response:
        docs = node.keystore.keyset_docs()
        if not 1 <= version <= len(docs):
            return JSONResponse({"category": "not_found", "detail": f"no keyset version {version}"}, status_code=404)
        return Response(docs[version - 1], media_type=MEDIA_JOSE_JSON)

    def leaf_hashes(session: object, size: int) -> list[bytes]:
        rows = session.execute(  # type: ignore[attr-defined]
            select(AuditEntry.leaf_hash).where(AuditEntry.log == "exchange", AuditEntry.leaf_index < size)
            .order_by(AuditEntry.leaf_index)
        ).scalars()
        return [bytes.fromhex(h) for h in rows]

    @router.get("/comity/v1/log/exchange/head")
    async def log_head() -> Response:
        with node.db.read() as session:
            head = session.scalars(select(AuditHead).where(AuditHead.log == "exchange")
                                   .order_by(AuditHead.tree_size.desc()).limit(1)).first()
        if head is None:
            return JSONResponse({"category": "not_found", "detail": "the exchange log is empty"}, status_code=404)
        return Response(head.head_jws, media_type=MEDIA_JOSE)

    @router.get("/comity/v1/log/exchange/consistency")
    async def log_consistency(first: int = Query(ge=0), second: int = Query(ge=0)) -> Response:
        with node.db.read() as session:
            newest = session.scalars(select(AuditHead.tree_size).where(AuditHead.log == "exchange")
                                     .order_by(AuditHead.tree_size.desc()).limit(1)).first() or 0
            if not first <= second <= newest:
                return JSONResponse({"category": "bad_proof", "detail": "need first <= second <= newest tree size"},
                                    status_code=400)
            hashes = leaf_hashes(session, second)
        proof = consistency_proof(hashes, first, second) if 0 < first < second else []
        return JSONResponse({"first": first, "second": second, "proof": proof_to_hex(proof)})

    @router.get("/comity/v1/log/exchange/inclusion")
    async def log_inclusion(envelope_sha256: str = Query(pattern="^[0-9a-f]{64}$"),
                            tree_size: int = Query(ge=1)) -> Response:
        with node.db.read() as session:
            entry = session.scalars(select(AuditEntry).where(
                AuditEntry.log == "exchange", AuditEntry.envelope_sha256 == envelope_sha256,
                AuditEntry.leaf_index.is_not(None), AuditEntry.leaf_index < tree_size,
            ).order_by(AuditEntry.leaf_index).limit(1)).first()
            if entry is None or entry.leaf_index is None:
                return JSONResponse({"category": "not_found", "detail": "no such entry in that tree"},
                                    status_code=404)
            hashes = leaf_hashes(session, tree_size)
            if len(hashes) < tree_size:
                return JSONResponse({"category": "bad_proof", "detail": "tree_size beyond the log"}, status_code=400)
            proof = inclusion_proof(hashes, entry.leaf_index, tree_size)
            leaf = base64.urlsafe_b64encode(entry.leaf).rstrip(b"=").decode()
            return JSONResponse({"leaf": leaf, "leaf_index": entry.leaf_index, "tree_size": tree_size,
                                 "proof": proof_to_hex(proof)})

    return router
