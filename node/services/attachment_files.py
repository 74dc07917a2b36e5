"""Attachment files at the edges: sealing the files a message carries, exporting one received.

Sending: each file is read once — encrypted chunk by chunk to ``BLOBS/out/<id>/<att>/`` under a
fresh content key while its size and SHA-256 are computed — and only then is the manifest built
and the envelope sealed.  The node keeps the sealed chunks, never a plaintext copy.

Exporting (``comity attachment get``): the chunks are opened one by one with the unwrapped
content key and written to a temporary file next to ``--out``, which takes its final name only
once the size and SHA-256 match the manifest.
"""

from __future__ import annotations

import contextlib
import mimetypes
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from protocol.envelope import AttachmentEntry, EnvelopeContent, parse_payload
from protocol.errors import ProtocolError
from protocol.jose import b64e
from protocol.streams import StreamDigest, open_stream, seal_stream, verify_digest

from ..errors import InputError, NotFoundError
from ..storage.blobs import BlobError, BlobStore, ChunkWriter, release_chunk_garbage, unwrap_content_key
from ..storage.models import InboxAttachment, InboxMessage, OutboxAttachment
from .sending import Draft, queue_message

if TYPE_CHECKING:
    from ..runtime import Node

#: Called with the number of plaintext bytes just processed (a progress bar, say).
Progress = Callable[[int], None]


@dataclass(frozen=True)
class SealedFile:
    """A file sealed to chunk files: its manifest entry (with its content key) and where the chunks are."""

    entry: AttachmentEntry
    folder: Path


def media_type_of(name: str) -> str:
    return mimetypes.guess_type(name, strict=False)[0] or "application/octet-stream"


def check_attachment_names(files: Sequence[Path]) -> list[str]:
    """The names the files travel under; refuses (exit 3) duplicates and names a receiver must refuse."""
    names = [f.name for f in files]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"two attachments are named {dupes[0]!r}: names must be unique within a message")
    for f in files:
        if not f.is_file():
            raise InputError(f"{f} is not a readable file")
    probe = EnvelopeContent(
        iss="XX-PROBE", aud="XX-PROBE", id="0" * 32, iat=0, exp=0, kind="note", subject="", body="",
        attachments=tuple(AttachmentEntry(n, media_type_of(n), 0, "0" * 64, 1, b64e(bytes(32)).decode())
                          for n in names),
    )
    try:
        parse_payload(probe.to_payload())
    except ProtocolError as e:
        raise InputError(f"an attachment name cannot be sent: {e.detail}") from e
    return names


def seal_files(blobs: BlobStore, message_id: str, files: Sequence[Path], *, randbytes: Callable[[int], bytes],
               progress: Progress | None = None) -> list[SealedFile]:
    """Encrypt each file to chunk files under ``BLOBS/out/<message_id>``; each file is read once."""
    names = check_attachment_names(files)
    folder = blobs.outgoing(message_id)
    sealed: list[SealedFile] = []
    try:
        for att, (path, name) in enumerate(zip(files, names, strict=True)):
            key = randbytes(32)
            writer = ChunkWriter(blobs, folder)  # files are written while the next chunk is sealed

            def emit(seq: int, token: bytes, att: int = att, writer: ChunkWriter = writer) -> None:
                writer.put(att, seq, token)
                release_chunk_garbage(every=4)

            try:
                with path.open("rb") as f:
                    read = f.read if progress is None else _counting(f.read, progress)
                    digest = seal_stream(read, key=key, att=att, emit=emit)
            finally:
                writer.close()
            entry = AttachmentEntry(name, media_type_of(name), digest.size, digest.sha256, digest.chunks,
                                    b64e(key).decode("ascii"))
            sealed.append(SealedFile(entry, folder))
        blobs.sync(folder, len(sealed))  # durable before the outbox row that points at them commits
    except BaseException:
        blobs.remove(folder)
        raise
    return sealed


def _counting(read: Callable[[int], bytes], progress: Progress) -> Callable[[int], bytes]:
    def counted(n: int) -> bytes:
        data = read(n)
        progress(len(data))
        return data
    return counted


def record_outgoing(session: Session, message_id: str, sealed: Sequence[SealedFile]) -> None:
    """The outbox's attachment rows (metadata only; the content keys live in the sealed envelope)."""
    for att, s in enumerate(sealed):
        session.add(OutboxAttachment(message_id=message_id, att=att, name=s.entry.name, size=s.entry.size,
                                     chunks=s.entry.chunks, acknowledged=0, blob_dir=str(s.folder)))


def queue_with_attachments(node: Node, draft: Draft, files: Sequence[Path], *,
                           progress: Progress | None = None) -> str:
    """Seal ``files`` to chunk files, then seal the envelope with their manifest and queue it; the id."""
    message_id = os.urandom(16).hex()
    blobs = BlobStore(node.settings.blobs_dir)
    sealed = seal_files(blobs, message_id, files, randbytes=os.urandom, progress=progress)
    try:
        with node.db.write() as session:
            queue_message(session, replace(draft, attachments=tuple(s.entry for s in sealed)), me=node.authority,
                          signer=node.keystore.signer, message_id=message_id, now=node.clock(),
                          lifetime=node.settings.message_lifetime, max_bytes=node.settings.envelope_max_bytes)
            record_outgoing(session, message_id, sealed)
    except BaseException:
        blobs.remove(blobs.outgoing(message_id))
        raise
    return message_id


def attachment_progress(session: Session, message_id: str) -> dict[str, int] | None:
    """``{"chunks_total", "chunks_acknowledged"}`` of a sent message, or None if it has no attachments."""
    rows = session.execute(select(OutboxAttachment.chunks, OutboxAttachment.acknowledged)
                           .where(OutboxAttachment.message_id == message_id)).all()
    if not rows:
        return None
    return {"count": len(rows), "chunks_total": sum(r.chunks for r in rows),
            "chunks_acknowledged": sum(r.acknowledged for r in rows)}


# --- export ------------------------------------------------------------------------------------------------


def received_attachments(session: Session, message_id: str) -> tuple[InboxMessage, list[InboxAttachment]]:
    """A committed message's attachments; a pending one is not visible."""
    msg = session.scalars(select(InboxMessage).where(InboxMessage.message_id == message_id)).first()
    if msg is None:
        raise NotFoundError(f"no received message {message_id}")
    rows = list(session.scalars(select(InboxAttachment).where(
        InboxAttachment.sender == msg.sender, InboxAttachment.message_id == msg.message_id,
    ).order_by(InboxAttachment.att)))
    return msg, rows


def pick_attachment(rows: Sequence[InboxAttachment], ref: str) -> InboxAttachment:
    """ATT is the name as sent, or else the 0-based index."""
    for row in rows:
        if row.name == ref:
            return row
    if ref.isdigit() and int(ref) < len(rows):
        return rows[int(ref)]
    raise NotFoundError(f"the message has no attachment {ref!r} ({len(rows)} attachment(s); give a name or index)")


def export_attachment(blobs: BlobStore, storage_key: bytes, row: InboxAttachment, out: Path, *, force: bool,
                      progress: Progress | None = None) -> StreamDigest:
    """Decrypt one received attachment to ``out``, checking its size and SHA-256 on the way."""
    if out.exists() and not force:
        raise InputError(f"{out} exists; pass --force to overwrite it")
    if out.is_dir():
        raise InputError(f"{out} is a folder")
    folder = blobs.incoming(row.sender, row.message_id)
    key = unwrap_content_key(storage_key, row.wrapped_key)
    tmp = out.parent / f".{out.name}.{secrets.token_hex(4)}.part"
    try:
        with tmp.open("wb") as f:
            def emit(plaintext: bytes) -> None:
                f.write(plaintext)
                if progress is not None:
                    progress(len(plaintext))
            try:
                digest = open_stream(blobs.iter_chunks(folder, row.att, row.chunks), key=key, att=row.att,
                                     chunks=row.chunks, emit=emit)
                verify_digest(digest, size=row.size, sha256=row.sha256)
            except ProtocolError as e:
                raise BlobError(f"attachment {row.att} of {row.message_id} is damaged at rest: "
                                f"{e.category.value}: {e.detail}") from e
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return digest


def describe_attachment(row: InboxAttachment) -> dict[str, Any]:
    return {"att": row.att, "name": row.name, "media_type": row.media_type, "size": row.size, "chunks": row.chunks}

