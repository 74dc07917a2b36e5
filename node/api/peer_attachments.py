"""Peer endpoints for attachments (SPEC §7.3, §10.2): pending answers, chunk PUT, listing, commit.

The chunk endpoint is unauthenticated, so it takes nothing it has not checked: a chunk is
read only for a pending message whose manifest declares that position, only up to the size
bound of that position, and stored only once it opens under the attachment's content key.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select

from protocol.envelope import OpenedEnvelope
from protocol.errors import Category, ProtocolError
from protocol.ids import is_message_id
from protocol.streams import chunk_plaintext_length, chunk_token_bound

from ..runtime import Node
from ..services.attachments import InboundAttachments, Pending
from ..services.receiving import Accepted, Duplicate, Rejected, record_rejection, rejected_from
from ..storage.blobs import BlobStore, ChunkThreads, tune_allocator
from ..storage.models import InboxMessage

log = structlog.get_logger("comity.attachments")

MEDIA_JSON = "application/json"
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,9}")


class Refusal(Protocol):
    def __call__(self, category: Category, *, aud: str | None, sha: str | None, detail: str | None = None,
                 retry_after: int | None = None) -> Response: ...


def pending_response(state: dict[str, object]) -> Response:
    return JSONResponse(state, status_code=202, media_type=MEDIA_JSON)


class AttachmentRoutes:
    """The attachment half of the peer listener; shares the inbox's refusal and receipt helpers."""

    def __init__(self, node: Node, *, refusal: Refusal, await_receipt: Callable[[int], Awaitable[bytes | None]],
                 duplicate_answer: Callable[[str, bytes | None], Awaitable[Response]]) -> None:
        s = node.settings
        self.node = node
        self.inbound = InboundAttachments(node.db, BlobStore(s.blobs_dir), node.keystore.storage_key,
                                          disk_reserve=s.disk_reserve_bytes)
        self.refusal = refusal
        self.await_receipt = await_receipt
        self.duplicate_answer = duplicate_answer
        self.chunk_delay = s.chunk_delay if s.testing else 0.0
        tune_allocator()  # chunk-sized buffers kept for reuse: see there
        # shared by every sender's transfer (each decrypts, checks and fsyncs a chunk): a few more
        # than one transfer's two chunks in flight, still few malloc arenas
        self.chunk_threads = ChunkThreads("comity-chunk", workers=4)

    async def pending_answer(self, sha: str) -> Response | None:
        """SPEC §5 step 2 for pending bytes: the 202 pending state again, or None if not pending."""
        pending = await asyncio.to_thread(self.inbound.pending_by_sha, sha)
        if pending is None:
            return None
        return pending_response(await asyncio.to_thread(self.inbound.state, pending))

    async def post_pending(self, opened: OpenedEnvelope, raw: bytes, *, now: int) -> Response:
        """An opened envelope with attachments: check the disk, keep it pending, answer 202."""
        c = opened.content
        try:
            await asyncio.to_thread(self.inbound.check_storage, opened)
        except ProtocolError as e:
            await asyncio.to_thread(record_rejection, self.node.db, rejected_from(e, raw), authenticated=c.iss,
                                    source="", message_id=c.id, now=now)
            return self.refusal(e.category, aud=c.iss, sha=opened.sha256, detail=e.detail)
        await asyncio.to_thread(self.inbound.purge_expired, now=now, skew=self.node.settings.skew)
        result = await asyncio.to_thread(self.inbound.store_pending, opened, raw, now=now)
        if isinstance(result, Duplicate):
            return await self.duplicate_answer(opened.sha256, None)
        if isinstance(result, Rejected):
            return self.refusal(result.category, aud=result.aud, sha=opened.sha256, detail=result.detail)
        self.node.wake_integrator()
        log.info("pending", message_id=c.id, peer=c.iss, attachments=len(c.attachments))
        return pending_response(await asyncio.to_thread(self.inbound.state, result))

    async def _pending(self, message_id: str) -> Pending | None:
        if not is_message_id(message_id):
            return None
        return await asyncio.to_thread(self.inbound.pending_by_id, message_id)

    async def _pending_for_chunk(self, message_id: str) -> Pending | None:
        """``_pending``, answered from memory while a transfer runs (no thread, no database per chunk)."""
        if not is_message_id(message_id):
            return None
        return self.inbound.cached_pending(message_id) or await self._pending(message_id)

    def _unknown(self, message_id: str) -> Response:
        return self.refusal(Category.UNKNOWN_MESSAGE, aud=None, sha=None,
                            detail=f"no pending message {message_id[:32]}")

    def _signed(self, pending: Pending, category: Category, detail: str) -> Response:
        return self.refusal(category, aud=pending.sender, sha=pending.envelope_sha256, detail=detail)

    async def put_chunk(self, request: Request, message_id: str, att_text: str, seq_text: str) -> Response:
        length = request.headers.get("content-length")
        if length is None or not length.isdigit():
            return self.refusal(Category.LENGTH_REQUIRED, aud=None, sha=None, detail="Content-Length is required")
        pending = await self._pending_for_chunk(message_id)
        if pending is None:
            return self._unknown(message_id)
        if not (_DECIMAL.fullmatch(att_text) and _DECIMAL.fullmatch(seq_text)):
            return self._signed(pending, Category.BAD_CHUNK, "att and seq are non-negative decimal integers")
        att, seq = int(att_text), int(seq_text)
        if not 0 <= att < len(pending.attachments) or not 0 <= seq < pending.attachments[att].chunks:
            return self._signed(pending, Category.BAD_CHUNK, f"the manifest declares no chunk {att}/{seq}")
        bound = chunk_token_bound(chunk_plaintext_length(pending.attachments[att].size, seq))
        if int(length) > bound:
            return self._signed(pending, Category.TOO_LARGE, f"{length} bytes exceed the {bound} of chunk {att}/{seq}")
        token = await request.body()
        try:
            stored = await self.chunk_threads.run(self.inbound.accept_chunk, pending, att, seq, token)
        except ProtocolError as e:
            source = request.client.host if request.client else "unknown"
            rejected = Rejected(e.category, e.detail, pending.sender, pending.envelope_sha256)
            await asyncio.to_thread(record_rejection, self.node.db, rejected, authenticated=None, source=source,
                                    message_id=None, now=self.node.clock())
            return self._signed(pending, e.category, e.detail)
        log.info("chunk_stored" if stored else "chunk_held", message_id=pending.message_id, att=att, seq=seq)
        if self.chunk_delay:
            await asyncio.sleep(self.chunk_delay)
        return Response(status_code=204)

    async def list_chunks(self, message_id: str) -> Response:
        pending = await self._pending(message_id)
        if pending is None:
            return self._unknown(message_id)
        return JSONResponse(await asyncio.to_thread(self.inbound.state, pending), media_type=MEDIA_JSON)

    async def commit(self, request: Request, message_id: str) -> Response:
        length = request.headers.get("content-length")
        if length is None or not length.isdigit():
            return self.refusal(Category.LENGTH_REQUIRED, aud=None, sha=None, detail="Content-Length is required")
        pending = await self._pending(message_id)
        if pending is None:
            committed = await asyncio.to_thread(self._committed_sha, message_id)
            return await self.duplicate_answer(committed, None) if committed else self._unknown(message_id)
        if int(length) != 0:
            return self._signed(pending, Category.TOO_LARGE, "a commit has an empty body")
        now = self.node.clock()
        result = await asyncio.to_thread(self.inbound.commit, pending, now=now)
        if isinstance(result, Accepted):
            log.info("committed", message_id=pending.message_id, peer=pending.sender)
            receipt = await self.await_receipt(result.seq)
            if receipt is None:
                return self.refusal(Category.UNAVAILABLE, aud=pending.sender, sha=pending.envelope_sha256,
                                    detail="committed; the receipt is not signed yet", retry_after=1)
            return Response(receipt, status_code=201, media_type="application/jose")
        if isinstance(result, Duplicate):
            return await self.duplicate_answer(pending.envelope_sha256, None)
        log.info("commit_refused", message_id=pending.message_id, category=result.category.value)
        return self._signed(pending, result.category, result.detail)

    def _committed_sha(self, message_id: str) -> str | None:
        if not is_message_id(message_id):
            return None
        with self.node.db.read() as session:
            return session.scalar(select(InboxMessage.envelope_sha256).where(InboxMessage.message_id == message_id)
                                  .limit(1))

    def register(self, router: APIRouter) -> None:
        @router.put("/comity/v1/inbox/{message_id}/attachments/{att}/{seq}")
        async def put_chunk(request: Request, message_id: str, att: str, seq: str) -> Response:
            return await self.put_chunk(request, message_id, att, seq)

        @router.get("/comity/v1/inbox/{message_id}/attachments")
        async def list_chunks(message_id: str) -> Response:
            return await self.list_chunks(message_id)

        @router.post("/comity/v1/inbox/{message_id}/commit")
        async def commit(request: Request, message_id: str) -> Response:
            return await self.commit(request, message_id)
