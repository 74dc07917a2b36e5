"""Queueing a message: one transaction stores it, seals its envelope once, queues it and logs it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, object_session

from protocol.envelope import AttachmentEntry, EnvelopeContent, Kind, seal_envelope
from protocol.errors import ProtocolError
from protocol.ids import is_message_id
from protocol.jose import Signer

from ..errors import InputError, NotFoundError
from ..storage.models import OutboxMessage
from .audit import append_entry
from .peers import get_peer, peer_keyset

SENDABLE_KINDS = frozenset({Kind.CONSULTATION.value, Kind.NOTE.value})


@dataclass(frozen=True)
class Draft:
    to: str
    kind: str
    subject: str
    body: str | dict[str, Any]
    thread: str | None = None
    request: str | None = None
    #: manifest entries of attachments already sealed to chunk files (``attachment_files.seal_files``)
    attachments: tuple[AttachmentEntry, ...] = ()


def conversation_of(peer: str, thread: str | None, request: str | None, message_id: str) -> str:
    """Messages of one (peer, thread or request) are delivered one at a time, in order.

    A thread or request is named by the id of its first message, so the first message and the
    ones that follow it share one conversation key and a reply never overtakes what it answers.
    """
    return f"{peer}/{thread or request or message_id}"


def queue_message(
    session: Session, draft: Draft, *, me: str, signer: Signer, message_id: str, now: int, lifetime: int,
    max_bytes: int,
) -> OutboxMessage:
    """Seal ``draft`` once and queue it for delivery, in the caller's transaction."""
    if draft.kind not in SENDABLE_KINDS:
        raise InputError(f"kind {draft.kind!r} cannot be sent yet; use one of {sorted(SENDABLE_KINDS)}")
    if draft.to == me:
        raise InputError("a node does not send to itself")
    for name, value in (("thread", draft.thread), ("request", draft.request)):
        if value is not None and not is_message_id(value):
            raise InputError(f"{name} must be a message id (32 lowercase hex characters)")
    peer = get_peer(session, draft.to)
    keyset = peer_keyset(peer)
    content = EnvelopeContent(
        iss=me, aud=draft.to, id=message_id, iat=now, exp=now + lifetime, kind=draft.kind,
        subject=draft.subject, body=draft.body, thread=draft.thread, request=draft.request,
        attachments=draft.attachments,
    )
    try:
        key = keyset.current_encryption_key(now)
        sealed = seal_envelope(content, signer=signer, recipient_kid=key.kid, recipient_key=key.key,
                               max_bytes=max_bytes, max_lifetime=lifetime)
    except ProtocolError as e:
        raise InputError(f"cannot seal the message: {e.category.value}: {e.detail}") from e
    row = OutboxMessage(
        message_id=message_id, peer=draft.to, kind=draft.kind, thread=draft.thread, request=draft.request,
        conversation=conversation_of(draft.to, draft.thread, draft.request, message_id),
        inner_jws=sealed.inner_jws, envelope=sealed.raw, envelope_sha256=sealed.sha256, recipient_kid=key.kid,
        created_at=now, exp=content.exp, state="queued", attempts=0, next_attempt_at=now,
    )
    session.add(row)
    append_entry(session, event="queued", at=now, message_id=message_id, peer=draft.to,
                 envelope_sha256=sealed.sha256, details={"kind": draft.kind})
    return row


def get_outbound(session: Session, message_id: str) -> OutboxMessage:
    row = session.scalars(select(OutboxMessage).where(OutboxMessage.message_id == message_id)).first()
    if row is None:
        raise NotFoundError(f"no sent message with id {message_id}")
    return row


def status_document(row: OutboxMessage) -> dict[str, Any]:
    """The ``comity status --json`` document of a sent message."""
    receipt = None
    if row.receipt_jws is not None:
        receipt = {
            "jws": row.receipt_jws.decode("ascii"), "received_at": row.receipt_received_at,
            "leaf_index": row.receipt_leaf_index, "tree_size": row.receipt_tree_size, "root": row.receipt_root,
        }
    last_error = None
    if row.last_error_category is not None:
        last_error = {"category": row.last_error_category, "at": row.last_error_at}
    state = row.state
    doc = {
        "id": row.message_id, "to": row.peer, "kind": row.kind, "state": state, "attempts": row.attempts,
        "next_attempt_at": row.next_attempt_at if state in ("queued", "sending") else None,
        "last_error": last_error, "receipt": receipt,
    }
    session = object_session(row)
    if session is not None:
        from .attachment_files import attachment_progress

        progress = attachment_progress(session, row.message_id)
        if progress is not None:
            doc["attachments"] = progress
    return doc
