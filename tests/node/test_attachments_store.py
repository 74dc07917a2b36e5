"""Attachments in one process: chunk files, wrapped keys, pending messages, commit checks, export."""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from node.errors import InputError
from node.services.attachment_files import (
    check_attachment_names,
    export_attachment,
    pick_attachment,
    received_attachments,
    seal_files,
)
from node.services.attachments import PENDING_TTL, InboundAttachments, Pending, storage_unready
from node.services.receiving import Accepted, Rejected
from node.storage.blobs import BlobError, BlobStore, ChunkThreads, unwrap_content_key, wrap_content_key
from node.storage.db import Database
from node.storage.models import InboxAttachment, InboxMessage, InboxPending
from protocol.chunks import CHUNK_SIZE, seal_chunk
from protocol.envelope import AttachmentEntry, EnvelopeContent, OpenedEnvelope, chunk_count
from protocol.errors import Category, ChunkError, EnvelopeError
from protocol.jose import b64e
from tests import seeds

STORAGE_KEY = seeds.seed("attachments/storage-key")
T0 = seeds.T0


def test_content_keys_are_wrapped_with_the_storage_key() -> None:
    key = os.urandom(32)
    wrapped = wrap_content_key(STORAGE_KEY, key)
    assert len(wrapped) == 40 and key not in wrapped
    assert unwrap_content_key(STORAGE_KEY, wrapped) == key
    with pytest.raises(BlobError):
        unwrap_content_key(seeds.seed("another storage key"), wrapped)


def test_chunk_files_appear_whole_and_once(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    folder = blobs.incoming("GB-UKCA", "a" * 32)
    assert blobs.held(folder, 0) == []
    assert blobs.write_chunk(folder, 0, 1, b"first", durable=False, replace=False)
    assert not blobs.write_chunk(folder, 0, 1, b"second", durable=False, replace=False)
    assert blobs.read_chunk(folder, 0, 1) == b"first"
    (folder / "0" / ".2.abc.tmp").write_bytes(b"half")  # a write cut short is not a chunk
    (folder / "0" / "01.jwe").write_bytes(b"x")  # nor is a name that is not a plain number
    assert blobs.held(folder, 0) == [1]
    assert list(blobs.iter_chunks(folder, 0, 3)) == []  # chunk 0 is missing: the stream ends there
    blobs.write_chunk(folder, 0, 0, b"zero")
    assert list(blobs.iter_chunks(folder, 0, 3)) == [b"zero", b"first"]
    blobs.sync(folder, 1)
    assert storage_unready(blobs, disk_reserve=0) is None
    assert "below the reserve" in (storage_unready(blobs, disk_reserve=10**18) or "")


def test_chunks_written_uncached_are_durable_and_whole(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    folder = blobs.incoming("GB-UKCA", "b" * 32)
    token = os.urandom(CHUNK_SIZE + 100)
    assert blobs.write_chunk(folder, 3, 0, token, cached=False, replace=False)  # the folder is made
    assert not blobs.write_chunk(folder, 3, 0, b"other", cached=False, replace=False)
    assert blobs.read_chunk(folder, 3, 0) == token
    assert blobs.write_chunk(folder, 3, 0, b"replaced", cached=False)
    assert blobs.read_chunk(folder, 3, 0) == b"replaced"
    assert sorted(p.name for p in (folder / "3").iterdir()) == ["0.jwe"]  # no temporary file left
    (folder / "3").chmod(0o500)
    try:
        if os.geteuid() != 0:  # root writes anywhere
            with pytest.raises(BlobError, match="cannot store chunk 3/1"):
                blobs.write_chunk(folder, 3, 1, token, cached=False)
    finally:
        (folder / "3").chmod(0o700)


def test_chunk_threads_run_calls_on_their_own_threads() -> None:
    threads = ChunkThreads("test-chunk", workers=2)
    tag: contextvars.ContextVar[str] = contextvars.ContextVar("tag", default="none")

    def where(x: int, *, y: int) -> tuple[str, str, int]:
        return threading.current_thread().name, tag.get(), x + y

    async def main() -> list[tuple[str, str, int]]:
        tag.set("bound")  # the caller's context goes with the call (structlog binds live there)
        return list(await asyncio.gather(*(threads.run(where, i, y=1) for i in range(4))))

    results = asyncio.run(main())
    assert [r[2] for r in results] == [1, 2, 3, 4]
    assert {r[1] for r in results} == {"bound"}
    assert {r[0].rsplit("_", 1)[0] for r in results} == {"test-chunk"}

    def fails() -> None:
        raise BlobError("gone")

    with pytest.raises(BlobError, match="gone"):
        asyncio.run(threads.run(fails))


def test_attachment_names_are_checked_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for p in (tmp_path / "a" / "x.pdf", tmp_path / "b" / "x.pdf", tmp_path / "a" / "bad\x01name"):
        p.write_bytes(b"1")
    with pytest.raises(InputError, match=r"x\.pdf"):
        check_attachment_names([tmp_path / "a" / "x.pdf", tmp_path / "b" / "x.pdf"])
    with pytest.raises(InputError, match="cannot be sent"):
        check_attachment_names([tmp_path / "a" / "bad\x01name"])
    with pytest.raises(InputError, match="not a readable file"):
        check_attachment_names([tmp_path / "a"])
    assert check_attachment_names([tmp_path / "a" / "x.pdf"]) == ["x.pdf"]


# --- the receiver, with a real database --------------------------------------------------------------------


def _entry(name: str, data: bytes, key: bytes, sha: str | None = None) -> AttachmentEntry:
    return AttachmentEntry(name, "application/octet-stream", len(data), sha or hashlib.sha256(data).hexdigest(),
                           chunk_count(len(data)), b64e(key).decode())


def _chunks(data: bytes, key: bytes, att: int) -> list[bytes]:
    pieces = [data[i:i + CHUNK_SIZE] for i in range(0, len(data), CHUNK_SIZE)] or [b""]
    return [seal_chunk(p, key=key, att=att, seq=i, last=i == len(pieces) - 1) for i, p in enumerate(pieces)]


def _opened(entries: tuple[AttachmentEntry, ...], sha: str) -> OpenedEnvelope:
    mid = os.urandom(16).hex()
    content = EnvelopeContent(iss="GB-UKCA", aud="FR-DACG", id=mid, iat=T0, exp=T0 + 3600, kind="note",
                              subject="s", body="b", attachments=entries)
    return OpenedEnvelope(content=content, inner_jws=b"inner", sha256=sha, signing_kid="k", recipient_kid="r")


@pytest.fixture
def inbound(migrated_url: str, tmp_path: Path) -> InboundAttachments:
    db = Database(migrated_url)
    yield InboundAttachments(db, BlobStore(tmp_path / "blobs"), STORAGE_KEY, disk_reserve=0)  # type: ignore[misc]
    db.dispose()


def _pending(inbound: InboundAttachments, opened: OpenedEnvelope) -> Pending:
    result = inbound.store_pending(opened, b"raw-" + opened.sha256.encode(), now=T0)
    assert isinstance(result, Pending)
    return result


def test_chunks_in_any_order_then_one_commit(inbound: InboundAttachments) -> None:
    k0, k1 = os.urandom(32), os.urandom(32)
    d0, d1 = os.urandom(3 * CHUNK_SIZE + 7), b""
    opened = _opened((_entry("a.bin", d0, k0), _entry("empty", d1, k1)), "1" * 64)
    pending = _pending(inbound, opened)
    assert _pending(inbound, opened) == pending  # the same bytes again: the same pending message
    with inbound.db.read() as session:
        row = session.query(InboxAttachment).filter_by(message_id=opened.content.id, att=0).one()
        assert k0 not in row.wrapped_key and unwrap_content_key(STORAGE_KEY, row.wrapped_key) == k0
        assert session.query(InboxMessage).count() == 0  # pending is not in the inbox
    c0, c1 = _chunks(d0, k0, 0), _chunks(d1, k1, 1)
    refused = inbound.commit(pending, now=T0 + 1)
    assert isinstance(refused, Rejected) and refused.category == Category.ATTACHMENTS_INCOMPLETE
    for seq in (1, 0, 3, 2):  # out of order: the running digest catches up from the files
        assert inbound.accept_chunk(pending, 0, seq, c0[seq])
    assert not inbound.accept_chunk(pending, 0, 2, c0[2])  # held already: acknowledged again
    assert inbound.accept_chunk(pending, 1, 0, c1[0])
    assert inbound.state(pending) == {"state": "pending", "received": {"0": [0, 1, 2, 3], "1": [0]}}
    accepted = inbound.commit(pending, now=T0 + 5)
    assert isinstance(accepted, Accepted)
    with inbound.db.read() as session:
        msg = session.get(InboxMessage, accepted.seq)
        assert msg is not None and msg.received_at == T0 + 5 and msg.message_id == opened.content.id
        assert session.query(InboxPending).count() == 0
    assert inbound.pending_by_id(opened.content.id) is None


def test_chunks_refused_on_arrival(inbound: InboundAttachments) -> None:
    k0, k1 = os.urandom(32), os.urandom(32)
    d0, d1 = os.urandom(CHUNK_SIZE + 1), os.urandom(5)
    pending = _pending(inbound, _opened((_entry("a", d0, k0), _entry("b", d1, k1)), "2" * 64))
    c0, c1 = _chunks(d0, k0, 0), _chunks(d1, k1, 1)

    def refused(att: int, seq: int, token: bytes, category: Category = Category.BAD_CHUNK) -> None:
        with pytest.raises(ChunkError) as info:
            inbound.accept_chunk(pending, att, seq, token)
        assert info.value.category == category

    refused(0, 1, c0[0])  # moved
    refused(0, 1, c1[0])  # from another attachment
    refused(0, 1, seal_chunk(d0[CHUNK_SIZE:], key=k1, att=0, seq=1, last=True))  # another attachment's key
    refused(2, 0, c1[0])  # outside the manifest
    refused(0, 2, c0[1])
    head, ek, iv, ct, tag = c0[1].split(b".")
    refused(0, 1, b".".join([head, ek, iv, ct, tag[:-2] + (b"AA" if tag[-2:] != b"AA" else b"BA")]))
    assert inbound.state(pending)["received"] == {"0": [], "1": []}
    full = InboundAttachments(inbound.db, inbound.blobs, STORAGE_KEY, disk_reserve=10**18)
    with pytest.raises(ChunkError) as info:
        full.accept_chunk(pending, 0, 0, c0[0])
    assert info.value.category == Category.INSUFFICIENT_STORAGE
    with pytest.raises(EnvelopeError) as env_info:
        full.check_storage(_opened((_entry("a", d0, k0),), "3" * 64))
    assert env_info.value.category == Category.INSUFFICIENT_STORAGE


def test_commit_checks_the_manifest_and_chunks_at_rest(inbound: InboundAttachments) -> None:
    key = os.urandom(32)
    data = os.urandom(2 * CHUNK_SIZE)
    chunks = _chunks(data, key, 0)
    # a manifest SHA-256 that the chunks do not match: manifest_mismatch, and the pending message goes
    liar = _pending(inbound, _opened((_entry("a", data, key, sha="ab" * 32),), "4" * 64))
    for seq, token in enumerate(chunks):
        inbound.accept_chunk(liar, 0, seq, token)
    result = inbound.commit(liar, now=T0)
    assert isinstance(result, Rejected) and result.category == Category.MANIFEST_MISMATCH
    assert inbound.pending_by_id(liar.message_id) is None and not liar.folder.exists()
    # a chunk damaged at rest, found by a commit in a fresh process: dropped, to be sent again
    honest = _pending(inbound, _opened((_entry("a", data, key),), "5" * 64))
    for seq, token in enumerate(chunks):
        inbound.accept_chunk(honest, 0, seq, token)
    (honest.folder / "0" / "1.jwe").write_bytes(chunks[0])
    fresh = InboundAttachments(inbound.db, inbound.blobs, STORAGE_KEY, disk_reserve=0)
    result = fresh.commit(honest, now=T0)
    assert isinstance(result, Rejected) and result.category == Category.ATTACHMENTS_INCOMPLETE
    assert fresh.state(honest)["received"] == {"0": [0]}
    assert fresh.accept_chunk(honest, 0, 1, chunks[1])
    assert isinstance(fresh.commit(honest, now=T0), Accepted)


def test_expired_pending_messages_are_dropped(inbound: InboundAttachments) -> None:
    key = os.urandom(32)
    pending = _pending(inbound, _opened((_entry("a", b"x", key),), "6" * 64))
    inbound.accept_chunk(pending, 0, 0, _chunks(b"x", key, 0)[0])
    assert inbound.purge_expired(now=T0 + 3600, skew=300) == 0
    assert inbound.purge_expired(now=T0 + 3600 + 301, skew=300) == 1
    assert inbound.pending_by_id(pending.message_id) is None and not pending.folder.exists()


def test_pending_lookups_are_remembered_briefly_and_forgotten_on_commit(
        inbound: InboundAttachments, monkeypatch: pytest.MonkeyPatch) -> None:
    key = os.urandom(32)
    pending = _pending(inbound, _opened((_entry("a", b"x", key),), "7" * 64))
    assert inbound.cached_pending(pending.message_id) is None  # only the chunk endpoint's look-up is kept
    assert inbound.pending_by_id(pending.message_id) == pending
    assert inbound.cached_pending(pending.message_id) == pending
    clock = [time.monotonic()]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    clock[0] += PENDING_TTL + 0.1  # stale: asked of the database again
    assert inbound.cached_pending(pending.message_id) is None
    assert inbound.pending_by_id(pending.message_id) == pending
    inbound.accept_chunk(pending, 0, 0, _chunks(b"x", key, 0)[0])
    assert isinstance(inbound.commit(pending, now=T0), Accepted)
    assert inbound.cached_pending(pending.message_id) is None  # committed here: forgotten at once
    refused = _pending(inbound, _opened((_entry("a", b"y", key, sha="cd" * 32),), "8" * 64))
    assert inbound.pending_by_id(refused.message_id) == refused
    inbound.accept_chunk(refused, 0, 0, _chunks(b"y", key, 0)[0])
    assert isinstance(inbound.commit(refused, now=T0), Rejected)
    assert inbound.cached_pending(refused.message_id) is None  # refused: forgotten too
    two = os.urandom(2 * CHUNK_SIZE)
    expired = _pending(inbound, _opened((_entry("a", two, key),), "9" * 64))
    assert inbound.pending_by_id(expired.message_id) == expired
    assert inbound.accept_chunk(expired, 0, 1, _chunks(two, key, 0)[1])  # ahead of chunk 0: held
    assert inbound._held == 1
    assert inbound.purge_expired(now=T0 + 3600 + 301, skew=300) == 1
    assert inbound.cached_pending(expired.message_id) is None  # expired: forgotten too
    assert inbound._held == 0 and not inbound._running  # and its held plaintext let go


def test_seal_then_export_round_trip(inbound: InboundAttachments, tmp_path: Path) -> None:
    src = tmp_path / "evidence.pdf"
    src.write_bytes(os.urandom(CHUNK_SIZE + 99))
    out_blobs = BlobStore(tmp_path / "sender-blobs")
    seen: list[int] = []
    sealed = seal_files(out_blobs, "c" * 32, [src], randbytes=os.urandom, progress=seen.append)
    entry = sealed[0].entry
    assert (entry.name, entry.media_type, entry.size, entry.chunks) == ("evidence.pdf", "application/pdf",
                                                                       CHUNK_SIZE + 99, 2)
    assert entry.sha256 == hashlib.sha256(src.read_bytes()).hexdigest() and sum(seen) == entry.size
    assert out_blobs.held(sealed[0].folder, 0) == [0, 1]
    pending = _pending(inbound, _opened((entry,), "7" * 64))
    for seq in range(2):
        inbound.accept_chunk(pending, 0, seq, out_blobs.read_chunk(sealed[0].folder, 0, seq))
    assert isinstance(inbound.commit(pending, now=T0), Accepted)
    with inbound.db.read() as session:
        row = pick_attachment(received_attachments(session, pending.message_id)[1], "evidence.pdf")
    out = tmp_path / "out.pdf"
    export_attachment(inbound.blobs, STORAGE_KEY, row, out, force=False)
    assert out.read_bytes() == src.read_bytes()
    with pytest.raises(InputError, match="exists"):
        export_attachment(inbound.blobs, STORAGE_KEY, row, out, force=False)
    (pending.folder / "0" / "1.jwe").write_bytes(out_blobs.read_chunk(sealed[0].folder, 0, 0))
    with pytest.raises(BlobError, match="damaged"):
        export_attachment(inbound.blobs, STORAGE_KEY, row, out, force=True)
    assert out.read_bytes() == src.read_bytes()  # a failed export leaves the old file alone
    assert [p.name for p in tmp_path.glob(".out.pdf.*")] == []
