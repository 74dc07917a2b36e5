"""The peer listener: what other states' nodes reach (SPEC §10)."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from protocol.envelope import OpenedEnvelope, envelope_sha256
from protocol.errors import Category, ProtocolError

from ..faults import crash_point
from ..runtime import Node
from ..services.audit import append_entry
from ..services.integrator import StoppedError
from ..services.peers import KEYSET_TTL, peer_lookup
from ..services.receiving import (
    Accepted,
    Duplicate,
    InboxLimits,
    Rejected,
    Stored,
    open_inbound,
    receipt_by_seq,
    record_rejection,
    rejected_from,
    sign_rejection,
    store_inbound,
    store_inbound_in,
    stored_receipt,
)
from ..storage.models import InboxMessage
from .peer_attachments import AttachmentRoutes
from .peer_log import register_log_routes
from .problems import peer_problem

MEDIA_JOSE = "application/jose"
MEDIA_JOSE_JSON = "application/jose+json"
DUPLICATE_WAIT = 5.0
DUPLICATE_LOG_INTERVAL = 600.0
RECEIPT_WAIT = 10.0
#: The inbox (SPEC §5): answered by ``app._DirectRoutes`` without FastAPI's routing layers.
INBOX_PATH = "/comity/v1/inbox"
INLINE_OPEN_BYTES = 64 * 1024
#: Envelopes opened and stored at once.  A sender's burst is then answered in slices — the first
#: receipts leave while later envelopes are still being opened — instead of all at the end of one
#: long round of the event loop; the two nodes work at the same time instead of taking turns
#: (measured with bench/exchange_bench.py: both processes busy together 3% of the time without it,
#: over 60% with it; ADR 0008).
INBOX_SLICE = 32


def _receipt(body: bytes, *, duplicate: bool) -> Response:
    headers = {"Comity-Duplicate": "true"} if duplicate else {}
    return Response(body, status_code=200 if duplicate else 201, media_type=MEDIA_JOSE, headers=headers)


def build_peer_router(node: Node) -> APIRouter:
    router = APIRouter()
    limits = InboxLimits(skew=node.settings.skew, max_lifetime=node.settings.max_lifetime,
                         max_bytes=node.settings.envelope_max_bytes, max_attachments=node.settings.max_attachments,
                         max_attachment_bytes=node.settings.max_attachment_bytes)
    lookup = peer_lookup(node.db, ttl=KEYSET_TTL)
    slice_ = asyncio.Semaphore(INBOX_SLICE)

    def refusal(category: Category, *, aud: str | None, sha: str | None, detail: str | None = None,
                retry_after: int | None = None) -> Response:
        node.metrics.rejections.labels(category=category.value).inc()
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

    def _receipt_of(seq: int) -> bytes | None:
        with node.db.read() as session:
            return receipt_by_seq(session, seq)

    async def await_receipt(seq: int) -> bytes | None:
        """The receipt of inbox message ``seq`` once signed (None after ``RECEIPT_WAIT``): woken by this
        process's integrator, or read from the database (another process may integrate)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RECEIPT_WAIT
        waiter = asyncio.wrap_future(node.waiters.register(seq))
        node.wake_integrator()
        try:
            while True:
                receipt = await asyncio.to_thread(_receipt_of, seq)
                if receipt is not None:
                    return receipt
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None
                poll = 0.25 if node.integrator is not None else 0.02
                await asyncio.wait({waiter}, timeout=min(poll, remaining))
                if waiter.done() and not waiter.cancelled():
                    return waiter.result()
        finally:
            node.waiters.forget(seq)
            waiter.cancel()

    async def store(opened: OpenedEnvelope, raw: bytes, now: int) -> Stored:
        """Store through the writer's next batch (group commit: one transaction for every message
        arriving meanwhile, ended by the integrator batch that signs their receipts)."""
        writer = node.writer
        if writer is not None:
            try:
                return await writer.run(
                    lambda session: Stored(store_inbound_in(session, opened, raw, now=now, check_held=False)))
            except IntegrityError:
                pass  # the message id is held already (a retry, or a conflict): decide with a look-up
        return Stored(await asyncio.to_thread(store_inbound, node.db, opened, raw, now=now))

    async def held_answer(sha: str) -> Response | None:
        """The answer for bytes already held: their receipt (200), or their pending state (202)."""
        found, receipt = await asyncio.to_thread(_lookup, sha)
        if found:
            return await duplicate_answer(sha, receipt)
        return await attachments.pending_answer(sha)

    @router.post(INBOX_PATH)
    async def inbox(request: Request) -> Response:
        length = request.headers.get("content-length")
        if length is None or not length.isdigit():
            return refusal(Category.LENGTH_REQUIRED, aud=None, sha=None, detail="Content-Length is required")
        if int(length) > limits.max_bytes:
            return refusal(Category.TOO_LARGE, aud=None, sha=None,
                           detail=f"{length} bytes exceed the cap of {limits.max_bytes}")
        raw = await request.body()
        async with slice_:
            return await _accept(request, raw)

    async def _accept(request: Request, raw: bytes) -> Response:
        now = node.clock()
        try:
            keys = node.keystore.decryption_keys(now)
            if len(raw) <= INLINE_OPEN_BYTES:  # a small envelope opens faster than a thread hop
                opened = open_inbound(raw, me=node.authority, decryption_keys=keys, lookup_peer=lookup, now=now,
                                      limits=limits)
            else:
                opened = await asyncio.to_thread(open_inbound, raw, me=node.authority, decryption_keys=keys,
                                                 lookup_peer=lookup, now=now, limits=limits)
        except ProtocolError as e:
            sha = envelope_sha256(raw)
            # (2) bytes already held are answered as held (their receipt, or their pending state), before
            # any verdict on freshness or keys: a replay of an old message is not an error
            held = await held_answer(sha)
            if held is not None:
                return held
            rejected = rejected_from(e, raw)
            sender = getattr(e, "authenticated_sender", None)
            if e.category == Category.UNKNOWN_SIGNING_KEY and rejected.aud is not None:
                # the sender may have rotated its signing key: fetch its keyset (at most once a minute)
                node.peer_refresher.request(rejected.aud, reason="unknown_kid")
            source = request.client.host if request.client else "unknown"
            await asyncio.to_thread(record_rejection, node.db, rejected, authenticated=sender, source=source,
                                    message_id=None, now=now)
            return refusal(rejected.category, aud=rejected.aud, sha=sha, detail=e.detail)
        sha = opened.sha256  # the raw bytes' SHA-256, computed once (by the opening)
        if opened.content.attachments:
            held = await held_answer(sha)
            if held is not None:
                return held
            return await attachments.post_pending(opened, raw, now=now)
        # without attachments, bytes already held are found by the store itself (no read first)
        try:
            stored = await store(opened, raw, now)
        except StoppedError:
            return refusal(Category.UNAVAILABLE, aud=opened.content.iss, sha=sha, detail="the node is stopping",
                           retry_after=1)
        result = stored.result
        if isinstance(result, Accepted):
            crash_point("inbox_after_commit_before_response")  # tests only
            receipt = stored.receipt or await await_receipt(result.seq)
            if receipt is None:
                return refusal(Category.UNAVAILABLE, aud=opened.content.iss, sha=sha,
                               detail="stored; the receipt is not signed yet", retry_after=1)
            crash_point("inbox_after_receipt_before_response")  # tests only
            return _receipt(receipt, duplicate=False)
        if isinstance(result, Duplicate):
            return await duplicate_answer(sha, None)
        return refusal(result.category, aud=result.aud, sha=sha, detail=result.detail)

    duplicates_logged: dict[str, float] = {}

    def log_duplicate(sha: str) -> None:
        """A ``duplicate`` exchange-log entry, at most once per envelope per interval (a flood of
        replays must not flood the log)."""
        t = time.monotonic()
        if t - duplicates_logged.get(sha, -DUPLICATE_LOG_INTERVAL) < DUPLICATE_LOG_INTERVAL:
            return
        if len(duplicates_logged) > 10_000:
            duplicates_logged.clear()
        duplicates_logged[sha] = t
        with node.db.write() as session:
            held = session.execute(select(InboxMessage.sender, InboxMessage.message_id)
                                   .where(InboxMessage.envelope_sha256 == sha)).first()
            append_entry(session, event="duplicate", at=node.clock(), envelope_sha256=sha,
                         peer=held.sender if held else None, message_id=held.message_id if held else None)

    async def duplicate_answer(sha: str, receipt: bytes | None) -> Response:
        if receipt is None:
            node.wake_integrator()
            receipt = await await_stored_receipt(sha, wait=DUPLICATE_WAIT)
        if receipt is None:
            return refusal(Category.UNAVAILABLE, aud=None, sha=sha, detail="receipt not signed yet", retry_after=1)
        await asyncio.to_thread(log_duplicate, sha)
        return _receipt(receipt, duplicate=True)

    attachments = AttachmentRoutes(node, refusal=refusal, await_receipt=await_receipt,
                                   duplicate_answer=duplicate_answer)
    attachments.register(router)

    @router.get("/.well-known/comity/keyset")
    async def keyset_newest() -> Response:
        return Response(node.keystore.keyset_docs()[-1], media_type=MEDIA_JOSE_JSON)

    @router.get("/.well-known/comity/keyset/{version}")
    async def keyset_version(version: int) -> Response:
        docs = node.keystore.keyset_docs()
        if not 1 <= version <= len(docs):
            return JSONResponse({"category": "not_found", "detail": f"no keyset version {version}"}, status_code=404)
        return Response(docs[version - 1], media_type=MEDIA_JOSE_JSON)

    register_log_routes(router, node)  # exchange-log heads and proofs, redelivery (peer_log.py)

    return router
