"""Sending a message's attachments after the peer answered 202 (SPEC §7.3, §10.2).

The peer's pending state says which chunks it holds; only the others are PUT, one at a time,
read from the sealed chunk files.  Then the commit: its answer (a receipt, or a refusal) is
handed back to the worker, which judges it exactly as it judges the answer to a POST — only a
receipt that verifies makes the message ``delivered``.  After any interruption the next attempt
re-POSTs the same envelope, gets the pending state again, and goes on from there.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import structlog
from sqlalchemy import select

from ..storage.blobs import BlobError, BlobStore, ChunkThreads
from ..storage.db import Database
from ..storage.models import OutboxAttachment
from .claims import LEASE_SECONDS, Claim, extend_lease
from .transport import MEDIA_JOSE, MEDIA_PROBLEM, Response, TransportFailure

log = structlog.get_logger("comity.delivery")

MEDIA_JSON = "application/json"
#: How often a long transfer renews its lease and records its progress.
PROGRESS_EVERY = 2.0
#: Chunks in flight per transfer (two: the peer verifies one while the next travels).
IN_FLIGHT = 2
#: Commit rounds per attempt (an ``attachments_incomplete`` answer sends what is missing, then commits again).
COMMIT_ROUNDS = 3
#: The commit streams every chunk through a decryption on the peer: allow for it.
COMMIT_BYTES_PER_SECOND = 20 * 1024 * 1024


@dataclass(frozen=True)
class Outgoing:
    att: int
    chunks: int
    size: int
    folder: Path


def load_outgoing(db: Database, message_id: str) -> list[Outgoing]:
    with db.read() as session:
        rows = session.scalars(select(OutboxAttachment).where(OutboxAttachment.message_id == message_id)
                               .order_by(OutboxAttachment.att)).all()
        return [Outgoing(r.att, r.chunks, r.size, Path(r.blob_dir)) for r in rows]


def parse_pending(body: bytes, atts: list[Outgoing]) -> dict[int, set[int]] | None:
    """The ``received`` member of a pending state, per attachment; None if it is not one."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("state") != "pending" or not isinstance(doc.get("received"), dict):
        return None
    held: dict[int, set[int]] = {a.att: set() for a in atts}
    for name, seqs in doc["received"].items():
        if not (isinstance(name, str) and name.isdigit() and int(name) in held and isinstance(seqs, list)):
            return None
        held[int(name)] = {s for s in seqs if isinstance(s, int) and not isinstance(s, bool)}
    return held


def _problem_category(resp: Response) -> str | None:
    if resp.content_type != MEDIA_PROBLEM:
        return None
    try:
        doc = json.loads(resp.body)
    except ValueError:
        return None
    category = doc.get("category") if isinstance(doc, dict) else None
    return category if isinstance(category, str) else None


def _retry_after(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())


async def _request(client: httpx.AsyncClient, method: str, url: str, *, timeout: float,
                   content: bytes | None = None) -> Response | TransportFailure:
    headers = {"Accept": f"{MEDIA_JOSE}, {MEDIA_JSON}, {MEDIA_PROBLEM}"}
    if content is not None:
        headers["Content-Type"] = MEDIA_JOSE
    try:
        resp = await client.request(method, url, content=content, headers=headers, timeout=timeout)
    except httpx.HTTPError as e:
        return TransportFailure(type(e).__name__)
    return Response(resp.status_code, resp.content, resp.headers.get("content-type", "").split(";")[0].strip(),
                    _retry_after(resp.headers.get("retry-after")))


class ChunkSender:
    """Moves the chunks of one claimed message to its peer; one instance serves the whole worker."""

    def __init__(self, db: Database, *, owner: str, clock: Callable[[], int], timeout: float,
                 lease: int = LEASE_SECONDS) -> None:
        self.db = db
        self.owner = owner
        self.clock = clock
        self.timeout = timeout
        self.lease = lease
        self.blobs = BlobStore(Path("/"))  # chunk folders are absolute, recorded per message
        self.reads = ChunkThreads("comity-chunk-read")

    async def transfer(self, client: httpx.AsyncClient, claim: Claim, pending: Response,
                       blog: structlog.typing.FilteringBoundLogger) -> Response | TransportFailure:
        """PUT what the peer lacks, then commit; the last answer is the attempt's outcome."""
        atts = await asyncio.to_thread(load_outgoing, self.db, claim.message_id)
        held = parse_pending(pending.body, atts) if atts else None
        if held is None:
            blog.warning("pending_state_unusable", status=pending.status)
            return Response(502, b"", "", None)  # retried later, like any answer we cannot use
        base = f"{claim.endpoint.rstrip('/')}/comity/v1/inbox/{claim.message_id}"
        resp: Response | TransportFailure = pending
        for _ in range(COMMIT_ROUNDS):
            outcome = await self._send_missing(client, claim, base, atts, held, blog)
            if outcome is not None:
                return outcome
            total = sum(a.size for a in atts)
            resp = await _request(client, "POST", f"{base}/commit", content=b"",
                                  timeout=self.timeout + total / COMMIT_BYTES_PER_SECOND)
            if not (isinstance(resp, Response) and resp.status == 409
                    and _problem_category(resp) == "attachments_incomplete"):
                return resp
            listing = await _request(client, "GET", f"{base}/attachments", timeout=self.timeout)
            if not isinstance(listing, Response) or listing.status != 200:
                return listing
            again = parse_pending(listing.body, atts)
            if again is None:
                return Response(502, b"", "", None)
            held = again
        return resp

    async def _send_missing(self, client: httpx.AsyncClient, claim: Claim, base: str, atts: list[Outgoing],
                            held: dict[int, set[int]], blog: structlog.typing.FilteringBoundLogger,
                            ) -> Response | TransportFailure | None:
        """PUT every chunk not in ``held``, ``IN_FLIGHT`` at a time; None when all are acknowledged,
        else the first answer that was not 204."""
        counts = {a.att: len(held[a.att] & set(range(a.chunks))) for a in atts}
        if not await self._checkpoint(claim, counts):
            return TransportFailure("lease_lost")
        missing = iter([(a, seq) for a in atts for seq in range(a.chunks) if seq not in held[a.att]])
        failures: list[Response | TransportFailure] = []
        last_checkpoint = [time.monotonic()]

        async def lane() -> None:
            for a, seq in missing:  # one iterator shared by the lanes: each chunk is sent once
                if failures:
                    return
                try:
                    token = await self.reads.run(self.blobs.read_chunk, a.folder, a.att, seq)
                except BlobError as e:
                    blog.error("chunk_unreadable", att=a.att, seq=seq, detail=e.detail[:200])
                    failures.append(TransportFailure("chunk_unreadable"))
                    return
                resp = await _request(client, "PUT", f"{base}/attachments/{a.att}/{seq}", content=token,
                                      timeout=self.timeout)
                del token
                if not isinstance(resp, Response) or resp.status != 204:
                    failures.append(resp)
                    return
                held[a.att].add(seq)
                counts[a.att] += 1
                if time.monotonic() - last_checkpoint[0] >= PROGRESS_EVERY:
                    last_checkpoint[0] = time.monotonic()
                    if not await self._checkpoint(claim, counts):
                        failures.append(TransportFailure("lease_lost"))
                        return

        await asyncio.gather(*(lane() for _ in range(IN_FLIGHT)))
        kept = await self._checkpoint(claim, counts)
        if failures:
            return failures[0]
        return None if kept else TransportFailure("lease_lost")

    async def _checkpoint(self, claim: Claim, counts: dict[int, int]) -> bool:
        return await asyncio.to_thread(extend_lease, self.db, claim, owner=self.owner, now=self.clock(),
                                       lease=self.lease, acknowledged=dict(counts))
