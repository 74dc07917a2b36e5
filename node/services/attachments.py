"""Inbound attachments (SPEC §7.3): a pending message, its chunks verified on arrival, the commit.

POST of an envelope whose manifest lists attachments stores it as *pending* (not in the
inbox); each chunk PUT is opened with the content key from the manifest before its bytes are
kept, as received; the commit checks that every chunk is held and that each attachment's
plaintext size and SHA-256 match the manifest, then commits the message and its ``received``
entry in one transaction — the integrator then signs the one receipt.

Chunks are hashed as they are verified (``RunningDigest``): in order, a chunk that overtook its
predecessor (two travel at once) held until its turn, so a commit in the same process need not
decrypt them again; otherwise the commit streams the stored chunks through ``open_stream``, one
at a time.  A chunk is on disk and fsynced before its PUT is acknowledged.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from protocol.chunks import open_chunk
from protocol.envelope import OpenedEnvelope
from protocol.errors import Category, ChunkError, EnvelopeError
from protocol.streams import RunningDigest, StreamDigest, open_stream, sealed_size_bound, verify_digest

from ..storage.blobs import BlobStore, release_chunk_garbage, unwrap_content_key, wrap_content_key
from ..storage.db import Database
from ..storage.models import InboxAttachment, InboxMessage, InboxPending
from .audit import append_entry
from .receiving import Accepted, Duplicate, Rejected

log = structlog.get_logger("comity.attachments")

#: Running digests kept per process; beyond this the oldest are dropped (their commit streams instead).
MAX_RUNNING = 4096
#: Plaintexts of chunks that overtook their predecessor, held for the running digests of the whole
#: process (1 MiB each); one that finds no room is read back from its file when its turn comes.
MAX_HELD = 8
#: Seconds a pending message looked up by the chunk endpoint is answered from memory (it asks for
#: every chunk; what it needs of the message never changes, and this process forgets the message
#: as soon as it commits, refuses or expires it here).
PENDING_TTL = 2.0
MAX_CACHED = 1024


@dataclass(frozen=True)
class PendingAttachment:
    att: int
    size: int
    sha256: str
    chunks: int
    wrapped_key: bytes


@dataclass(frozen=True)
class Pending:
    """A pending message as the chunk, listing and commit endpoints see it (no content)."""

    id: int
    sender: str
    message_id: str
    envelope_sha256: str
    exp: int
    folder: Path
    attachments: tuple[PendingAttachment, ...]


class InboundAttachments:
    """The receiver's side of attachments for one node process."""

    def __init__(self, db: Database, blobs: BlobStore, storage_key: bytes, *, disk_reserve: int) -> None:
        self.db = db
        self.blobs = blobs
        self._storage_key = storage_key
        self.disk_reserve = disk_reserve
        self._lock = threading.Lock()
        self._running: dict[tuple[str, int], RunningDigest] = {}
        self._held = 0  # plaintexts held by all running digests
        #: the chunk endpoint's lookups, under a lock of their own (the event loop takes it)
        self._cache: OrderedDict[str, tuple[float, Pending]] = OrderedDict()
        self._cache_lock = threading.Lock()

    # --- lookups -------------------------------------------------------------------------------------

    def _load(self, where: Any) -> Pending | None:
        with self.db.read() as session:
            row = session.scalars(select(InboxPending).where(where)).first()
            if row is None:
                return None
            atts = session.scalars(
                select(InboxAttachment).where(InboxAttachment.sender == row.sender,
                                              InboxAttachment.message_id == row.message_id)
                .order_by(InboxAttachment.att)
            ).all()
            return Pending(row.id, row.sender, row.message_id, row.envelope_sha256, row.exp,
                           self.blobs.incoming(row.sender, row.message_id),
                           tuple(PendingAttachment(a.att, a.size, a.sha256, a.chunks, a.wrapped_key) for a in atts))

    def pending_by_sha(self, sha256: str) -> Pending | None:
        return self._load(InboxPending.envelope_sha256 == sha256)

    def pending_by_id(self, message_id: str) -> Pending | None:
        """The pending message from the database (and remembered for ``cached_pending``)."""
        pending = self._load(InboxPending.message_id == message_id)
        if pending is not None:
            with self._cache_lock:
                self._cache[message_id] = (time.monotonic() + PENDING_TTL, pending)
                self._cache.move_to_end(message_id)
                while len(self._cache) > MAX_CACHED:
                    self._cache.popitem(last=False)
        return pending

    def cached_pending(self, message_id: str) -> Pending | None:
        """A pending message looked up by ``pending_by_id`` less than ``PENDING_TTL`` seconds ago; no I/O."""
        with self._cache_lock:
            hit = self._cache.get(message_id)
            if hit is None:
                return None
            if hit[0] < time.monotonic():
                del self._cache[message_id]
                return None
            return hit[1]

    def state(self, pending: Pending) -> dict[str, Any]:
        """The pending state of SPEC §10.1: the chunks held, per attachment."""
        return {"state": "pending",
                "received": {str(a.att): self.blobs.held(pending.folder, a.att) for a in pending.attachments}}

    # --- POST ----------------------------------------------------------------------------------------

    def check_storage(self, opened: OpenedEnvelope) -> None:
        """``insufficient_storage`` unless the sealed chunks fit above the free-disk reserve."""
        need = sum(sealed_size_bound(a.size) for a in opened.content.attachments)
        free = self.blobs.free_bytes()
        if free - need < self.disk_reserve:
            err = EnvelopeError(Category.INSUFFICIENT_STORAGE,
                                f"{need} bytes of chunks do not fit above the free-disk reserve")
            err.authenticated_sender = opened.content.iss
            raise err

    def store_pending(self, opened: OpenedEnvelope, raw: bytes, *, now: int) -> Pending | Duplicate | Rejected:
        """Keep a verified envelope with attachments as pending (or find it, or refuse a conflict)."""
        c = opened.content
        try:
            with self.db.write() as session:
                if session.scalar(select(InboxMessage.seq).where(InboxMessage.sender == c.iss,
                                                                 InboxMessage.message_id == c.id)) is None:
                    self._insert_pending(session, opened, raw, now=now)
        except IntegrityError:
            pass
        found = self.pending_by_sha(opened.sha256)
        if found is not None:
            return found
        with self.db.read() as session:
            held = session.scalar(select(InboxMessage.envelope_sha256).where(InboxMessage.sender == c.iss,
                                                                             InboxMessage.message_id == c.id))
        if held == opened.sha256:
            return Duplicate(opened.sha256)
        with self.db.write() as session:
            append_entry(session, event="conflict", at=now, message_id=c.id, peer=c.iss,
                         envelope_sha256=opened.sha256, details={"category": Category.MSG_ID_CONFLICT.value})
        return Rejected(Category.MSG_ID_CONFLICT, f"message {c.id} is held with other bytes", c.iss, opened.sha256)

    def _insert_pending(self, session: Any, opened: OpenedEnvelope, raw: bytes, *, now: int) -> None:
        c = opened.content
        session.add(InboxPending(
            sender=c.iss, message_id=c.id, envelope_sha256=opened.sha256, envelope=raw, inner_jws=opened.inner_jws,
            kind=c.kind, thread=c.thread, request=c.request, subject=c.subject,
            body=json.dumps(c.body, ensure_ascii=False), iat=c.iat, exp=c.exp, posted_at=now,
        ))
        for att, entry in enumerate(c.attachments):
            session.add(InboxAttachment(
                sender=c.iss, message_id=c.id, att=att, name=entry.name, media_type=entry.media_type,
                size=entry.size, sha256=entry.sha256, chunks=entry.chunks,
                wrapped_key=wrap_content_key(self._storage_key, entry.key_bytes),
            ))
        session.flush()
        append_entry(session, event="pending", at=now, message_id=c.id, peer=c.iss, envelope_sha256=opened.sha256,
                     details={"kind": c.kind, "count": len(c.attachments)})

    # --- PUT -----------------------------------------------------------------------------------------

    def accept_chunk(self, pending: Pending, att: int, seq: int, token: bytes) -> bool:
        """Open the chunk at ``(att, seq)`` with its content key and keep it as received.

        True if it was stored now, False if it was already held (the PUT is idempotent).
        """
        entry = self._attachment(pending, att)
        if not 0 <= seq < entry.chunks:
            raise ChunkError(Category.BAD_CHUNK, f"attachment {att} has {entry.chunks} chunks, not a chunk {seq}")
        if self.blobs.free_bytes() < self.disk_reserve:
            raise ChunkError(Category.INSUFFICIENT_STORAGE, "the free-disk reserve is reached")
        key = unwrap_content_key(self._storage_key, entry.wrapped_key)
        plaintext = self._open(token, key=key, att=att, seq=seq, chunks=entry.chunks)
        # durable before it is acknowledged (or listed as held): fsynced under its temporary name;
        # then out of the page cache (read again only by an export, or a commit that must stream)
        stored = self.blobs.write_chunk(pending.folder, att, seq, token, durable=True, replace=False,
                                        cached=False)
        if stored:
            self._feed(pending, entry, seq, plaintext, key)
        return stored

    @staticmethod
    def _open(token: bytes, *, key: bytes, att: int, seq: int, chunks: int) -> bytes:
        try:
            return open_chunk(token, key=key, att=att, seq=seq, chunks=chunks)
        except ChunkError as e:
            category, detail = e.category, e.detail
        # A chunk that opens leaves no garbage behind (protocol.chunks breaks joserfc's cycle); one
        # that fails may, held by the failed decryption's frames: collect it once they are gone.
        release_chunk_garbage()
        raise ChunkError(category, detail)

    @staticmethod
    def _attachment(pending: Pending, att: int) -> PendingAttachment:
        if not 0 <= att < len(pending.attachments):
            raise ChunkError(Category.BAD_CHUNK, f"the manifest has {len(pending.attachments)} attachments, not {att}")
        return pending.attachments[att]

    def _feed(self, pending: Pending, entry: PendingAttachment, seq: int, plaintext: bytes, key: bytes) -> None:
        """Hash a chunk just stored if it is the next one, or hold it until it is; then read back
        any stored after it that could not be held."""
        slot = (pending.envelope_sha256, entry.att)
        with self._lock:
            running = self._running.get(slot)
            if running is None:
                # a digest starts with chunk 0, or with a chunk that overtook it in a fresh
                # transfer; if chunk 0 was stored earlier (by another process) the commit streams
                if seq != 0 and self.blobs.chunk_path(pending.folder, entry.att, 0).exists():
                    return
                if len(self._running) >= MAX_RUNNING:
                    self._held -= self._running.pop(next(iter(self._running))).held
                running = self._running[slot] = RunningDigest(entry.chunks)
            if seq != running.expected:
                # ahead of its predecessor (still in flight): held if there is room, else read
                # back below once its turn comes; late (stored meanwhile by another request): skipped
                if seq > running.expected and self._held < MAX_HELD and running.hold(seq, plaintext):
                    self._held += 1
                return
            self._feed_counted(running, seq, plaintext)
            while running.expected < entry.chunks:
                nxt = running.expected
                path = self.blobs.chunk_path(pending.folder, entry.att, nxt)
                if not path.exists():
                    break
                token = self.blobs.read_chunk(pending.folder, entry.att, nxt)
                self._feed_counted(running, nxt,
                                   self._open(token, key=key, att=entry.att, seq=nxt, chunks=entry.chunks))

    def _feed_counted(self, running: RunningDigest, seq: int, plaintext: bytes) -> None:
        """``running.feed``, keeping the count of held plaintexts (under ``_lock``)."""
        before = running.held
        running.feed(seq, plaintext)
        self._held -= before - running.held

    # --- commit --------------------------------------------------------------------------------------

    def commit(self, pending: Pending, *, now: int) -> Accepted | Duplicate | Rejected:
        """Check every chunk, size and SHA-256; then move the message into the inbox with its entry."""
        for a in pending.attachments:
            if len(self.blobs.held(pending.folder, a.att)) != a.chunks:
                return self._refuse(pending, Category.ATTACHMENTS_INCOMPLETE, f"attachment {a.att} is incomplete")
        for a in pending.attachments:
            try:
                digest = self._digest(pending, a)
            except ChunkError as e:
                return self._refuse(pending, e.category, e.detail)
            try:
                verify_digest(digest, size=a.size, sha256=a.sha256)
            except ChunkError as e:
                self._discard(pending, now=now, category=e.category)
                return self._refuse(pending, e.category, f"attachment {a.att}: {e.detail}")
        self.blobs.sync(pending.folder, len(pending.attachments))
        try:
            with self.db.write() as session:
                row = session.get(InboxPending, pending.id)
                if row is None:
                    return Duplicate(pending.envelope_sha256)
                entry_row = append_entry(session, event="received", at=now, message_id=row.message_id,
                                         peer=row.sender, envelope_sha256=row.envelope_sha256,
                                         details={"kind": row.kind, "count": len(pending.attachments)})
                msg = InboxMessage(
                    sender=row.sender, message_id=row.message_id, envelope_sha256=row.envelope_sha256,
                    envelope=row.envelope, inner_jws=row.inner_jws, kind=row.kind, thread=row.thread,
                    request=row.request, subject=row.subject, body=row.body, iat=row.iat, exp=row.exp,
                    received_at=now, entry_id=entry_row.id,
                )
                session.delete(row)
                session.add(msg)
                session.flush()
                accepted = Accepted(msg.seq)
        except IntegrityError:
            return Duplicate(pending.envelope_sha256)
        self._forget(pending)
        return accepted

    def _digest(self, pending: Pending, a: PendingAttachment) -> StreamDigest:
        with self._lock:
            running = self._running.get((pending.envelope_sha256, a.att))
        digest = running.result() if running is not None else None
        if digest is not None:
            return digest
        current = [-1]

        def tokens() -> Iterator[bytes]:
            for seq, token in enumerate(self.blobs.iter_chunks(pending.folder, a.att, a.chunks)):
                current[0] = seq
                yield token

        log.info("commit_streams_chunks", message_id=pending.message_id, att=a.att, chunks=a.chunks)
        key = unwrap_content_key(self._storage_key, a.wrapped_key)
        try:
            return open_stream(tokens(), key=key, att=a.att, chunks=a.chunks)
        except ChunkError as e:
            if e.category == Category.BAD_CHUNK and current[0] >= 0:
                # damaged at rest: drop it so that the sender sends it again
                self.blobs.discard_chunk(pending.folder, a.att, current[0])
                raise ChunkError(Category.ATTACHMENTS_INCOMPLETE, f"chunk {a.att}/{current[0]} was damaged") from e
            raise

    def _refuse(self, pending: Pending, category: Category, detail: str) -> Rejected:
        return Rejected(category, detail, pending.sender, pending.envelope_sha256)

    def _discard(self, pending: Pending, *, now: int, category: Category) -> None:
        """A permanent refusal at commit: the pending message and its chunks go, with an entry."""
        with self.db.write() as session:
            self._delete_rows(session, pending.sender, pending.message_id)
            append_entry(session, event="rejected", at=now, message_id=pending.message_id, peer=pending.sender,
                         envelope_sha256=pending.envelope_sha256, details={"category": category.value})
        self.blobs.remove(pending.folder)
        self._forget(pending)

    @staticmethod
    def _delete_rows(session: Any, sender: str, message_id: str) -> None:
        session.execute(delete(InboxPending).where(InboxPending.sender == sender,
                                                   InboxPending.message_id == message_id))
        session.execute(delete(InboxAttachment).where(InboxAttachment.sender == sender,
                                                      InboxAttachment.message_id == message_id))

    def _forget(self, pending: Pending) -> None:
        self._uncache(pending.message_id)
        self._drop_running(pending.envelope_sha256)

    def _drop_running(self, envelope_sha256: str) -> None:
        """Forget the running digests of a message (committed, refused or expired), held plaintexts too."""
        with self._lock:
            for slot in [s for s in self._running if s[0] == envelope_sha256]:
                self._held -= self._running.pop(slot).held

    def _uncache(self, message_id: str) -> None:
        with self._cache_lock:
            self._cache.pop(message_id, None)

    def purge_expired(self, *, now: int, skew: int) -> int:
        """Pending messages past ``exp`` + skew are dropped with their chunks (the sender gave up)."""
        with self.db.read() as session:
            rows = session.execute(select(InboxPending.sender, InboxPending.message_id, InboxPending.envelope_sha256)
                                   .where(InboxPending.exp + skew < now)).all()
        for sender, message_id, sha in rows:
            with self.db.write() as session:
                self._delete_rows(session, sender, message_id)
                append_entry(session, event="pending_expired", at=now, message_id=message_id, peer=sender,
                             envelope_sha256=sha)
            self._uncache(message_id)
            self._drop_running(sha)
            self.blobs.remove(self.blobs.incoming(sender, message_id))
        return len(rows)


def storage_unready(blobs: BlobStore, *, disk_reserve: int) -> str | None:
    """Why the node cannot take attachments now (for ``/readyz``), or None: free disk below the reserve."""
    free = blobs.free_bytes()
    if free < disk_reserve:
        return f"storage: {free} bytes free, below the reserve of {disk_reserve}"
    return None
