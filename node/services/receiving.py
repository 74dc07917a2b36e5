"""The inbox: look up the raw body's digest first, open per SPEC, commit, then await the receipt.

The inbox commits a message and its ``received`` entry before any receipt is signed; the
receipt is signed by the integrator once that entry has a leaf index.  A refusal after the
sender is authenticated gets an audit entry; refusals before that are counted per source
address and category, so that nobody can flood the log.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from joserfc.jwk import OKPKey
from sqlalchemy import bindparam, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from protocol.envelope import OpenedEnvelope, envelope_sha256, open_envelope
from protocol.errors import Category, EnvelopeError, ProtocolError
from protocol.ids import is_authority_id
from protocol.jose import Signer, decode_protected
from protocol.keysets import Keyset
from protocol.rejections import SignedError, sign_error

from ..storage.db import Database, DriverStatement
from ..storage.models import InboxMessage, RejectionCount, inbox_table
from .audit import ENTRY_CTE, append_entry, entry_params
from .integrator import AfterCommit, BatchResult
from .sequencer import Received, sequencer_of


@dataclass(frozen=True)
class Accepted:
    seq: int


@dataclass(frozen=True)
class Duplicate:
    """The same bytes were accepted before: answer with their receipt (once it exists)."""

    sha256: str


@dataclass
class Stored(AfterCommit):
    """An inbound message stored by the node's writer; ``receipt`` is set when the integrator signed it
    in the same transaction (the writer calls ``after_commit``)."""

    result: Accepted | Duplicate | Rejected
    receipt: bytes | None = None

    def after_commit(self, batch: BatchResult) -> None:
        if isinstance(self.result, Accepted):
            self.receipt = batch.receipt_jws.get(self.result.seq)


@dataclass(frozen=True)
class Rejected:
    category: Category
    detail: str
    aud: str | None  # the (claimed) sender, for the signed error
    sha256: str


@dataclass(frozen=True)
class InboxLimits:
    skew: int = 300
    max_lifetime: int = 7 * 86400
    max_bytes: int = 1024 * 1024
    #: per message: how many attachments, and how many plaintext bytes in all (settings of the same names)
    max_attachments: int = 100
    max_attachment_bytes: int = 8 * 1024**3


def stored_receipt(session: Session, sha256: str) -> tuple[bool, bytes | None]:
    """Is a message with these exact bytes held, and is its receipt signed yet?"""
    row = session.execute(
        select(InboxMessage.seq, InboxMessage.receipt_jws).where(InboxMessage.envelope_sha256 == sha256)
    ).first()
    if row is None:
        return False, None
    return True, row.receipt_jws


def receipt_by_seq(session: Session, seq: int) -> bytes | None:
    return session.execute(select(InboxMessage.receipt_jws).where(InboxMessage.seq == seq)).scalar()


def _claimed_sender(raw: bytes) -> str | None:
    """The outer header's ``iss``, unauthenticated, to address a signed error to; None if unreadable."""
    try:
        iss = decode_protected(raw.split(b".", 1)[0]).get("iss")
    except ProtocolError:
        return None
    return iss if is_authority_id(iss) else None


def _count_rejection(session: Session, *, source: str, category: str, now: int, sqlite: bool) -> None:
    values = {"source": source[:64], "category": category, "count": 1, "first_at": now, "last_at": now}
    ins = sqlite_insert(RejectionCount) if sqlite else pg_insert(RejectionCount)
    stmt = ins.values(**values).on_conflict_do_update(
        index_elements=["source", "category"],
        set_={"count": RejectionCount.count + 1, "last_at": now},
    )
    session.execute(stmt)


def record_rejection(db: Database, rejected: Rejected, *, authenticated: str | None, source: str,
                     message_id: str | None, now: int) -> None:
    """An audit entry for an authenticated sender's refused message; a counter otherwise."""
    with db.write() as session:
        if authenticated is None:
            _count_rejection(session, source=source, category=rejected.category.value, now=now, sqlite=db.sqlite)
            return
        append_entry(session, event="rejected", at=now, peer=authenticated, message_id=message_id,
                     envelope_sha256=rejected.sha256, details={"category": rejected.category.value})


def open_inbound(
    raw: bytes, *, me: str, decryption_keys: Mapping[str, OKPKey], lookup_peer: Callable[[str], Keyset | None],
    now: int, limits: InboxLimits,
) -> OpenedEnvelope:
    opened = open_envelope(raw, me=me, decryption_keys=decryption_keys, lookup_peer=lookup_peer, now=now,
                           skew=limits.skew, max_lifetime=limits.max_lifetime, max_bytes=limits.max_bytes)
    attachments = opened.content.attachments
    total = sum(a.size for a in attachments)
    detail = None
    if len(attachments) > limits.max_attachments:
        detail = f"{len(attachments)} attachments; this node takes {limits.max_attachments}"
    elif total > limits.max_attachment_bytes:
        detail = f"{total} bytes of attachments; this node takes {limits.max_attachment_bytes}"
    if detail is not None:
        err = EnvelopeError(Category.ATTACHMENT_TOO_LARGE, detail)
        err.authenticated_sender = opened.content.iss
        raise err
    return opened


_INBOX_NAMES = ("sender", "message_id", "envelope_sha256", "envelope", "inner_jws", "kind", "thread", "request",
                "subject", "body", "iat", "exp", "received_at", "entry_id", "receipt_jws")
_INSERT_INBOX = DriverStatement(inbox_table.insert().values({n: bindparam(n) for n in _INBOX_NAMES})
                                .returning(inbox_table.c.seq))
# on PostgreSQL the row and its ``received`` entry in one statement (the entry's id read in the database)
# (no receipt yet: a NULL bound without a type would reach the bytea column as text)
_STORE_ROW_NAMES = tuple(n for n in _INBOX_NAMES if n not in ("entry_id", "receipt_jws"))
_INSERT_INBOX_WITH_ENTRY = DriverStatement(inbox_table.insert().from_select(
    [*_STORE_ROW_NAMES, "entry_id"],
    select(*(bindparam(n, type_=inbox_table.c[n].type) for n in _STORE_ROW_NAMES), ENTRY_CTE.c.id),
).returning(inbox_table.c.seq))
_HELD = select(inbox_table.c.envelope_sha256).where(inbox_table.c.sender == bindparam("sender"),
                                                   inbox_table.c.message_id == bindparam("message_id"))


def store_inbound_in(session: Session, opened: OpenedEnvelope, raw: bytes, *, now: int, check_held: bool = True
                     ) -> Accepted | Duplicate | Rejected:
    """Store the message and its ``received`` entry in the caller's transaction; a message id already
    held is answered as a duplicate (same bytes) or a conflict (other bytes).  ``check_held=False``
    skips the look-up (the writer's fast path): a held id then raises ``IntegrityError`` from the
    unique constraints, and the caller decides with ``store_inbound``."""
    c = opened.content
    conn = session.connection()
    held = conn.execute(_HELD, {"sender": c.iss, "message_id": c.id}).scalar() if check_held else None
    if held is not None:
        return Duplicate(opened.sha256) if held == opened.sha256 else _conflict(session, opened, now=now)
    entry: dict[str, Any] = {"event": "received", "at": now, "message_id": c.id, "peer": c.iss,
                             "envelope_sha256": opened.sha256, "details": {"kind": c.kind}}
    values = {
        "sender": c.iss, "message_id": c.id, "envelope_sha256": opened.sha256, "envelope": raw,
        "inner_jws": opened.inner_jws, "kind": c.kind, "thread": c.thread, "request": c.request,
        "subject": c.subject, "body": json.dumps(c.body, ensure_ascii=False), "iat": c.iat, "exp": c.exp,
        "received_at": now, "receipt_jws": None,
    }
    if conn.dialect.name == "postgresql":
        params = entry_params(session, **entry)
        _, row = _INSERT_INBOX_WITH_ENTRY.execute(conn, {**values, **params})
        leaf_index = params["e_leaf_index"]
    else:
        appended = append_entry(session, **entry)
        _, row = _INSERT_INBOX.execute(conn, {**values, "entry_id": appended.id})
        leaf_index = appended.leaf_index
    seq = int(row[0])
    if leaf_index is not None:  # sequenced at once: the batch ending this transaction signs its receipt
        sequencer = sequencer_of(session)
        assert sequencer is not None
        sequencer.received.append(Received(seq, leaf_index, c.iss, c.id, opened.sha256, now))
    return Accepted(seq)


def _conflict(session: Session, opened: OpenedEnvelope, *, now: int) -> Rejected:
    c = opened.content
    append_entry(session, event="conflict", at=now, message_id=c.id, peer=c.iss,
                 envelope_sha256=opened.sha256, details={"category": Category.MSG_ID_CONFLICT.value})
    return Rejected(Category.MSG_ID_CONFLICT, f"message {c.id} from {c.iss} was received with other bytes",
                    c.iss, opened.sha256)


def store_inbound(db: Database, opened: OpenedEnvelope, raw: bytes, *, now: int) -> Accepted | Duplicate | Rejected:
    """Commit the message and its ``received`` entry; a lost race is answered as a duplicate or conflict."""
    c = opened.content
    try:
        with db.write() as session:
            return store_inbound_in(session, opened, raw, now=now)
    except IntegrityError:  # another process stored it between our check and our insert
        pass
    with db.write() as session:
        held = session.connection().execute(_HELD, {"sender": c.iss, "message_id": c.id}).scalar()
        if held == opened.sha256 or held is None:
            return Duplicate(opened.sha256)
        return _conflict(session, opened, now=now)


def sign_rejection(rejected: Rejected, *, authority: str, signer: Signer, now: int) -> bytes:
    return sign_error(SignedError(iss=authority, aud=rejected.aud, category=rejected.category,
                                  envelope_sha256=rejected.sha256, at=now), signer=signer)


def rejected_from(e: ProtocolError, raw: bytes) -> Rejected:
    aud = e.authenticated_sender if isinstance(e, EnvelopeError) and e.authenticated_sender else None
    return Rejected(e.category, e.detail, aud or _claimed_sender(raw), envelope_sha256(raw))
