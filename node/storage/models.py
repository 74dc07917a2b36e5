"""Database rows (SQLAlchemy 2 declarative).  Every schema change is an Alembic migration.

Audit tables are named ``audit_*``; a leaf is stored as the exact bytes hashed and every
other column of ``audit_entries`` is derived from it (``comity audit verify`` checks that).
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: A 64-bit key that autoincrements on SQLite too (SQLite only does so for INTEGER PRIMARY KEY).
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class Peer(Base):
    """A pinned peer authority and the keyset chain we hold for it."""

    __tablename__ = "peers"

    authority: Mapped[str] = mapped_column(String(24), primary_key=True)
    name: Mapped[str] = mapped_column(String(512))
    endpoint: Mapped[str] = mapped_column(String(512))
    pending_endpoint: Mapped[str | None] = mapped_column(String(512))
    fingerprint: Mapped[str] = mapped_column(String(43))
    chain: Mapped[str] = mapped_column(Text)  # JSON array of keyset documents, oldest first
    keyset_version: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    pinned_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)
    refreshed_at: Mapped[int | None] = mapped_column(BigInteger)
    # delivery health, per peer
    failures: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[int] = mapped_column(BigInteger, default=0)
    last_error_category: Mapped[str | None] = mapped_column(String(64))
    last_error_at: Mapped[int | None] = mapped_column(BigInteger)
    last_success_at: Mapped[int | None] = mapped_column(BigInteger)


class OutboxMessage(Base):
    """A message we send: sealed once, its bytes resent unchanged until a receipt verifies."""

    __tablename__ = "outbox"

    seq: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(32), unique=True)
    peer: Mapped[str] = mapped_column(String(24), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    thread: Mapped[str | None] = mapped_column(String(32))
    request: Mapped[str | None] = mapped_column(String(32))
    conversation: Mapped[str] = mapped_column(String(64))
    inner_jws: Mapped[bytes] = mapped_column(LargeBinary)
    envelope: Mapped[bytes] = mapped_column(LargeBinary)
    envelope_sha256: Mapped[str] = mapped_column(String(64))
    recipient_kid: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[int] = mapped_column(BigInteger)
    exp: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16))  # queued | sending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[int] = mapped_column(BigInteger)
    lease_until: Mapped[int | None] = mapped_column(BigInteger)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    last_error_category: Mapped[str | None] = mapped_column(String(64))
    last_error_at: Mapped[int | None] = mapped_column(BigInteger)
    receipt_jws: Mapped[bytes | None] = mapped_column(LargeBinary)
    receipt_received_at: Mapped[int | None] = mapped_column(BigInteger)
    receipt_leaf_index: Mapped[int | None] = mapped_column(BigInteger)
    receipt_tree_size: Mapped[int | None] = mapped_column(BigInteger)
    receipt_root: Mapped[str | None] = mapped_column(String(64))
    delivered_at: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (
        # covering, in claim order: a claim reads index entries only, never the rows' large columns
        Index("ix_outbox_due", "state", "seq", "next_attempt_at", "lease_until", "exp", "peer", "conversation"),
        # only messages not yet settled: "is an earlier message of this conversation still active?"
        Index("ix_outbox_conversation_active", "conversation", "seq",
              sqlite_where=text("state IN ('queued', 'sending')"),
              postgresql_where=text("state IN ('queued', 'sending')")),
    )


class InboxMessage(Base):
    """A message we accepted; its receipt is signed by the integrator once its entry is sequenced."""

    __tablename__ = "inbox"

    seq: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    sender: Mapped[str] = mapped_column(String(24))
    message_id: Mapped[str] = mapped_column(String(32))
    envelope_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    envelope: Mapped[bytes] = mapped_column(LargeBinary)
    inner_jws: Mapped[bytes] = mapped_column(LargeBinary)
    kind: Mapped[str] = mapped_column(String(32))
    thread: Mapped[str | None] = mapped_column(String(32))
    request: Mapped[str | None] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)  # JSON text of the body (a string or an object)
    iat: Mapped[int] = mapped_column(BigInteger)
    exp: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[int] = mapped_column(BigInteger)
    entry_id: Mapped[int] = mapped_column(ForeignKey("audit_entries.id"))
    receipt_jws: Mapped[bytes | None] = mapped_column(LargeBinary)

    __table_args__ = (
        UniqueConstraint("message_id", "sender", name="uq_inbox_id_sender"),  # look-ups by id alone too
        Index("ix_inbox_entry", "entry_id"),  # the integrator finds the messages of the entries it sequences
    )


class InboxPending(Base):
    """A message whose manifest lists attachments, opened and verified, waiting for its chunks and commit.

    It is not in the inbox (nobody sees it) until the commit has checked every chunk; then an
    ``InboxMessage`` takes its place in one transaction.
    """

    __tablename__ = "inbox_pending"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    sender: Mapped[str] = mapped_column(String(24))
    message_id: Mapped[str] = mapped_column(String(32), unique=True)
    envelope_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    envelope: Mapped[bytes] = mapped_column(LargeBinary)
    inner_jws: Mapped[bytes] = mapped_column(LargeBinary)
    kind: Mapped[str] = mapped_column(String(32))
    thread: Mapped[str | None] = mapped_column(String(32))
    request: Mapped[str | None] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    iat: Mapped[int] = mapped_column(BigInteger)
    exp: Mapped[int] = mapped_column(BigInteger)
    posted_at: Mapped[int] = mapped_column(BigInteger)


class InboxAttachment(Base):
    """One received attachment: metadata, and its content key wrapped with the storage key (RFC 3394)."""

    __tablename__ = "inbox_attachments"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    sender: Mapped[str] = mapped_column(String(24))
    message_id: Mapped[str] = mapped_column(String(32))
    att: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(255))
    media_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    chunks: Mapped[int] = mapped_column(Integer)
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)

    __table_args__ = (UniqueConstraint("sender", "message_id", "att", name="uq_inbox_attachments_att"),)


class OutboxAttachment(Base):
    """One attachment of a message we send; its sealed chunks are files under ``blob_dir``."""

    __tablename__ = "outbox_attachments"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(32))
    att: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    chunks: Mapped[int] = mapped_column(Integer)
    #: chunks the peer has acknowledged (listed as held, or answered 204 to)
    acknowledged: Mapped[int] = mapped_column(Integer, default=0)
    blob_dir: Mapped[str] = mapped_column(Text)

    __table_args__ = (UniqueConstraint("message_id", "att", name="uq_outbox_attachments_att"),)


class AuditEntry(Base):
    """One log entry: ``leaf`` holds the exact bytes hashed; every other column derives from it."""

    __tablename__ = "audit_entries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    log: Mapped[str] = mapped_column(String(16))
    leaf_index: Mapped[int | None] = mapped_column(BigInteger)
    leaf: Mapped[bytes] = mapped_column(LargeBinary)
    leaf_hash: Mapped[str] = mapped_column(String(64))
    event: Mapped[str] = mapped_column(String(48))
    at: Mapped[int] = mapped_column(BigInteger)
    message_id: Mapped[str | None] = mapped_column(String(32))
    peer: Mapped[str | None] = mapped_column(String(24))
    envelope_sha256: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        UniqueConstraint("log", "leaf_index", name="uq_audit_entries_log_index"),
        Index("ix_audit_entries_envelope", "envelope_sha256"),
        # the integrator's queue: entries not sequenced yet, in order
        Index("ix_audit_entries_unsequenced", "id", sqlite_where=text("leaf_index IS NULL"),
              postgresql_where=text("leaf_index IS NULL")),
    )


class AuditHead(Base):
    """A signed tree head, one per integrator batch."""

    __tablename__ = "audit_heads"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    log: Mapped[str] = mapped_column(String(16))
    tree_size: Mapped[int] = mapped_column(BigInteger)
    root: Mapped[str] = mapped_column(String(64))
    at: Mapped[int] = mapped_column(BigInteger)
    head_jws: Mapped[bytes] = mapped_column(LargeBinary)

    __table_args__ = (UniqueConstraint("log", "tree_size", name="uq_audit_heads_log_size"),)


class AuditTree(Base):
    """The integrator's frontier: enough to extend the tree without re-reading every leaf."""

    __tablename__ = "audit_tree"

    log: Mapped[str] = mapped_column(String(16), primary_key=True)
    tree_size: Mapped[int] = mapped_column(BigInteger)
    frontier: Mapped[str] = mapped_column(Text)  # JSON state of the compact range
    root: Mapped[str] = mapped_column(String(64))


class PeerLog(Base):
    """What this node witnessed of one peer's exchange log: the newest commitment verified
    consistent (a signed head or a receipt), the newest one received and not yet checked, and the
    log status shown by ``peer list``."""

    __tablename__ = "audit_peer_logs"

    peer: Mapped[str] = mapped_column(String(24), primary_key=True)
    tree_size: Mapped[int | None] = mapped_column(BigInteger)
    root: Mapped[str | None] = mapped_column(String(64))
    evidence: Mapped[bytes | None] = mapped_column(LargeBinary)  # the signed head or receipt
    verified_at: Mapped[int | None] = mapped_column(BigInteger)
    pending_tree_size: Mapped[int | None] = mapped_column(BigInteger)
    pending_root: Mapped[str | None] = mapped_column(String(64))
    pending_evidence: Mapped[bytes | None] = mapped_column(LargeBinary)
    checked_at: Mapped[int | None] = mapped_column(BigInteger)  # last consistency request
    polled_at: Mapped[int | None] = mapped_column(BigInteger)  # last head fetched by polling
    status: Mapped[str] = mapped_column(String(16), default="unknown")  # unknown|ok|inconsistent|restored
    status_detail: Mapped[str | None] = mapped_column(String(500))
    status_at: Mapped[int | None] = mapped_column(BigInteger)
    restored_after: Mapped[int | None] = mapped_column(BigInteger)  # a declared restore's after_tree_size
    restored_at: Mapped[int | None] = mapped_column(BigInteger)


class PeerLogFailure(Base):
    """Evidence that a peer's exchange log was rewritten or truncated: both signed commitments and the
    proof that did not verify (exported in audit bundles)."""

    __tablename__ = "audit_peer_log_failures"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    peer: Mapped[str] = mapped_column(String(24), index=True)
    at: Mapped[int] = mapped_column(BigInteger)
    held_tree_size: Mapped[int] = mapped_column(BigInteger)
    held_root: Mapped[str] = mapped_column(String(64))
    held_evidence: Mapped[bytes] = mapped_column(LargeBinary)
    received_tree_size: Mapped[int] = mapped_column(BigInteger)
    received_root: Mapped[str] = mapped_column(String(64))
    received_evidence: Mapped[bytes] = mapped_column(LargeBinary)
    proof: Mapped[str | None] = mapped_column(Text)  # JSON array of hex, as the peer answered
    detail: Mapped[str] = mapped_column(String(500))


class Redelivery(Base):
    """A signed request, made after a restore from backup, that a peer redeliver what it holds
    receipts for after ``after_tree_size``; sent by the worker until the peer answers 200."""

    __tablename__ = "audit_redeliveries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    peer: Mapped[str] = mapped_column(String(24))
    after_tree_size: Mapped[int] = mapped_column(BigInteger)
    request_jws: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16))  # pending | done
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(String(200))
    done_at: Mapped[int | None] = mapped_column(BigInteger)
    requeued: Mapped[int | None] = mapped_column(Integer)


class SettingSeen(Base):
    """The last value of each setting a running node saw, to log ``settings_changed`` (passwords hidden)."""

    __tablename__ = "audit_settings_seen"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class RejectionCount(Base):
    """Refusals before the sender is authenticated: counted per source and category, not logged."""

    __tablename__ = "rejection_counts"

    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    category: Mapped[str] = mapped_column(String(64), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)
    first_at: Mapped[int] = mapped_column(BigInteger)
    last_at: Mapped[int] = mapped_column(BigInteger)


# Core tables of the hot paths (every message sent, received, settled and sequenced): statements on
# these skip the ORM's unit of work, which costs more than the SQL itself.
outbox_table = cast(Table, OutboxMessage.__table__)
inbox_table = cast(Table, InboxMessage.__table__)
audit_entries_table = cast(Table, AuditEntry.__table__)
peers_table = cast(Table, Peer.__table__)
audit_tree_table = cast(Table, AuditTree.__table__)
audit_heads_table = cast(Table, AuditHead.__table__)
