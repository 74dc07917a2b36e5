"""Claiming and settling deliveries.  A claim is a short committed transaction with a lease.

No transaction is held during HTTP.  A claim sets a lease (``lease_seconds``, default 60 s); an expired lease is
claimable again.  At most one message is in flight per conversation (peer + thread or
request), so conversations stay in order; a peer in backoff holds up only its own messages, and
a peer slow to answer holds at most its share of a worker's slots (``DeliveryWorker``).
"""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, bindparam, exists, func, literal, or_, select, update
from sqlalchemy.orm import Session, aliased

from ..services.audit import append_entries, append_entry, entry_for_each, entry_params, retract_entry, sha256_hex
from ..storage.db import Database, DriverStatement, planned_for_values
from ..storage.models import OutboxMessage, Peer, outbox_table, peers_table

LEASE_SECONDS = 60
BACKOFF_BASE = 1.0
BACKOFF_CAP = 300.0
RETRY_AFTER_CAP = 3600
ACTIVE = ("queued", "sending")


@dataclass(frozen=True)
class Claim:
    seq: int
    message_id: str
    peer: str
    endpoint: str
    envelope: bytes
    envelope_sha256: str
    inner_jws: bytes
    recipient_kid: str
    attempt: int
    exp: int


def backoff_delay(failures: int, *, rng: random.Random | None = None, retry_after: int | None = None) -> float:
    """Exponential backoff with full jitter (base 1 s, cap 5 min); ``Retry-After`` honoured up to 1 h."""
    r = rng or random.SystemRandom()
    delay = r.uniform(0.0, min(BACKOFF_CAP, BACKOFF_BASE * (2 ** min(failures, 20))))
    if retry_after is not None:
        delay = max(delay, float(min(max(retry_after, 0), RETRY_AFTER_CAP)))
    return delay


def fail_expired(session: Session, *, now: int, skew: int) -> int:
    """Messages past their lifetime end ``failed`` (category ``expired``), each with its entry."""
    rows = session.scalars(
        select(OutboxMessage).where(OutboxMessage.state.in_(ACTIVE), OutboxMessage.exp + skew < now,
                                    or_(OutboxMessage.lease_until.is_(None), OutboxMessage.lease_until < now))
    ).all()
    for row in rows:
        row.state, row.last_error_category, row.last_error_at, row.lease_until = "failed", "expired", now, None
        append_entry(session, event="failed", at=now, message_id=row.message_id, peer=row.peer,
                     envelope_sha256=row.envelope_sha256, details={"category": "expired"})
    return len(rows)


def _const(value: str | int) -> Any:
    """A constant of the code, written into the statement's text (never a value from outside)."""
    return literal(value, literal_execute=True)


def _due_query(state: str, now: Any, limit: Any, skip_locked: bool, excluding: bool = False) -> Any:
    """Due messages in one state, oldest first.  One state per query so that the index on
    (state, seq, ...) yields them in order and the scan stops after ``limit`` (an IN over two
    states would sort every active message, every claim).  ``excluding``: not to the peers bound
    as ``b_exclude`` (peers holding their share of the worker's slots)."""
    earlier = aliased(OutboxMessage)
    # the peer's backoff as a lookup per message walked, not a join: a join (hashed, on PostgreSQL)
    # loses the index's order, and the planner then sorted every queued message to return the first
    # few, each claim.  A peer no longer known (removed) gives NULL: its messages are not due.
    peer_due_at = (select(Peer.next_attempt_at).where(Peer.authority == OutboxMessage.peer)
                   .correlate(OutboxMessage).scalar_subquery())
    q = (
        select(OutboxMessage.seq)
        .where(
            # the states are written into the SQL, not bound: PostgreSQL's generic plan for a
            # prepared statement cannot see through ``state IN ($1, $2)`` to the partial index
            # (it then scanned every active row once per due row) nor estimate ``state = $1``
            OutboxMessage.state == _const(state),
            OutboxMessage.next_attempt_at <= now,
            peer_due_at <= now,
            # no lease, or a lapsed one; one expression, not an OR (which PostgreSQL turned into a
            # bitmap scan and a sort of every queued row instead of walking the index in order)
            func.coalesce(OutboxMessage.lease_until, _const(0)) < now,
            ~exists().where(and_(earlier.conversation == OutboxMessage.conversation,
                                 earlier.seq < OutboxMessage.seq, earlier.state.in_([_const(s) for s in ACTIVE]))),
        )
        # (state, seq): state is fixed by the WHERE, so this is seq order; naming the index's columns
        # keeps PostgreSQL on it even when its statistics lag behind (else it walks the primary key
        # through every delivered message)
        .order_by(OutboxMessage.state, OutboxMessage.seq)
        .limit(limit)
    )
    if excluding:
        q = q.where(OutboxMessage.peer.not_in(bindparam("b_exclude", expanding=True)))
    if skip_locked:
        q = q.with_for_update(of=OutboxMessage, skip_locked=True)
    return q


def claim_due_deliveries(db: Database, *, owner: str, now: int, limit: int, skew: int = 300,
                         lease: int = LEASE_SECONDS, expire: bool = True, exclude: Collection[str] = ()
                         ) -> list[Claim]:
    """Claim up to ``limit`` due messages for ``owner`` for ``lease`` seconds (``FOR UPDATE SKIP LOCKED``
    on PostgreSQL), none to the peers in ``exclude``; with ``expire``, first end the messages past
    their lifetime."""
    with db.write() as session:
        return claim_due(session, owner=owner, now=now, limit=limit, skew=skew, lease=lease, expire=expire,
                         exclude=exclude)


def claim_due(session: Session, *, owner: str, now: int, limit: int, skew: int = 300, lease: int = LEASE_SECONDS,
              expire: bool = True, exclude: Collection[str] = ()) -> list[Claim]:
    """``claim_due_deliveries`` in the caller's transaction."""
    if expire:
        fail_expired(session, now=now, skew=skew)
        session.flush()  # the statements below run on the connection: they must see those as failed
    conn = session.connection()
    params: dict[str, Any] = {"b_now": now, "b_limit": limit}
    if exclude:  # (rare: a peer holds its share of the slots; the usual claim keeps its one plan)
        params["b_exclude"] = sorted(exclude)
    queries = _DUE[conn.dialect.name != "sqlite", bool(exclude)]
    # walked in the index's order, whatever the tables' statistics; the claimed rows by key
    with planned_for_values(conn, ordered=True):
        due = [seq for query in queries  # queued, and sending with a lapsed lease
               for seq in conn.execute(query, params).scalars()]
        seqs = sorted(due)[:limit]
        if not seqs:
            return []
        conn.execute(_CLAIM, {"b_seqs": seqs, "b_lease_until": now + lease, "b_owner": owner})
        rows = conn.execute(_CLAIMED, {"b_seqs": seqs}).all()
    claims = [Claim(r.seq, r.message_id, r.peer, r.endpoint, r.envelope, r.envelope_sha256, r.inner_jws,
                    r.recipient_kid, r.attempts, r.exp) for r in rows]
    append_entries(session, [dict(event="attempt", at=now, message_id=c.message_id, peer=c.peer,
                                  envelope_sha256=c.envelope_sha256, details={"attempt": c.attempt})
                             for c in claims])
    return claims


_o = outbox_table.c
# built once (a claim runs many times a second under load; building the statements cost more than
# running them): the due messages per state, by (with row locks — PostgreSQL —, leaving peers out)
_DUE = {(locking, excluding): tuple(_due_query(s, bindparam("b_now"), bindparam("b_limit"), skip_locked=locking,
                                               excluding=excluding) for s in ACTIVE)
        for locking in (False, True) for excluding in (False, True)}
_CLAIM = outbox_table.update().where(_o.seq.in_(bindparam("b_seqs", expanding=True))).values(
    state="sending", lease_until=bindparam("b_lease_until"), lease_owner=bindparam("b_owner"),
    attempts=_o.attempts + 1)
_CLAIMED = (
    select(_o.seq, _o.message_id, _o.peer, peers_table.c.endpoint, _o.envelope, _o.envelope_sha256, _o.inner_jws,
           _o.recipient_kid, _o.attempts, _o.exp)
    .join_from(outbox_table, peers_table, peers_table.c.authority == _o.peer)
    .where(_o.seq.in_(bindparam("b_seqs", expanding=True))).order_by(_o.seq)
)
_SETTLE_DELIVERED_ROW = outbox_table.update().where(
    # still ours (as in ``_owned``)
    _o.seq == bindparam("b_seq"), _o.state == "sending", _o.lease_owner == bindparam("b_owner"),
    _o.attempts == bindparam("b_attempt"),
).values(state="delivered", lease_until=None, lease_owner=None, delivered_at=bindparam("b_now"),
         receipt_jws=bindparam("b_receipt"), receipt_received_at=bindparam("b_received_at"),
         receipt_leaf_index=bindparam("b_leaf_index"), receipt_tree_size=bindparam("b_tree_size"),
         receipt_root=bindparam("b_root"))
_SETTLE_DELIVERED = DriverStatement(_SETTLE_DELIVERED_ROW)
#: PostgreSQL: the settle and its ``delivered`` entry in one statement (the entry only if it settled)
_SETTLE_DELIVERED_WITH_ENTRY = DriverStatement(
    entry_for_each(_SETTLE_DELIVERED_ROW.returning(_o.seq).cte("settled")))
_PEER_SUCCESS = DriverStatement(peers_table.update().where(peers_table.c.authority == bindparam("b_peer")).values(
    failures=0, next_attempt_at=0, last_success_at=bindparam("b_now")))


def _owned(session: Session, claim: Claim, owner: str) -> OutboxMessage | None:
    row = session.get(OutboxMessage, claim.seq)
    if row is None or row.state != "sending" or row.lease_owner != owner or row.attempts != claim.attempt:
        return None  # the lease expired and a newer claim (another worker, or this one) owns the message
    return row


def settle_delivered(db: Database, claim: Claim, *, owner: str, receipt_jws: bytes, received_at: int,
                     leaf_index: int, tree_size: int, root: str, now: int) -> bool:
    with db.write() as session:
        return settle_delivered_in(session, claim, owner=owner, receipt_jws=receipt_jws, received_at=received_at,
                                   leaf_index=leaf_index, tree_size=tree_size, root=root, now=now)


def settle_delivered_in(session: Session, claim: Claim, *, owner: str, receipt_jws: bytes, received_at: int,
                        leaf_index: int, tree_size: int, root: str, now: int) -> bool:
    # plain UPDATEs (no ORM load of the row and its envelope): this runs for every message delivered
    conn = session.connection()
    values = {
        "b_seq": claim.seq, "b_owner": owner, "b_attempt": claim.attempt, "b_now": now, "b_receipt": receipt_jws,
        "b_received_at": received_at, "b_leaf_index": leaf_index, "b_tree_size": tree_size, "b_root": root,
    }
    entry: dict[str, Any] = {
        "event": "delivered", "at": now, "message_id": claim.message_id, "peer": claim.peer,
        "envelope_sha256": claim.envelope_sha256,
        "details": {"receipt_sha256": sha256_hex(receipt_jws), "peer_leaf_index": leaf_index,
                    "peer_tree_size": tree_size, "peer_root": root, "attempt": claim.attempt},
    }
    together = conn.dialect.name == "postgresql"
    if together:
        params = entry_params(session, **entry)
        settled, _ = _SETTLE_DELIVERED_WITH_ENTRY.execute(conn, {**values, **params})
        if settled != 1:
            retract_entry(session, params)  # (the statement wrote no entry either)
    else:
        settled, _ = _SETTLE_DELIVERED.execute(conn, values)
    if settled != 1:
        return False  # the lease expired and a newer claim owns the message
    # the peer's success once per transaction and second (a batch settles many messages to one peer)
    done = session.info.setdefault("peer_success", set())
    if (claim.peer, now) not in done:
        _PEER_SUCCESS.execute(conn, {"b_peer": claim.peer, "b_now": now})
        done.add((claim.peer, now))
    if not together:
        append_entry(session, **entry)
    return True


def settle_failed_in(session: Session, claim: Claim, *, owner: str, category: str, now: int) -> bool:
    """A verified permanent error from the peer: the message ends ``failed``."""
    row = _owned(session, claim, owner)
    if row is None:
        return False
    row.state, row.lease_until, row.lease_owner = "failed", None, None
    row.last_error_category, row.last_error_at = category, now
    append_entry(session, event="failed", at=now, message_id=claim.message_id, peer=claim.peer,
                 envelope_sha256=claim.envelope_sha256, details={"category": category, "attempt": claim.attempt})
    return True


def settle_retry_in(session: Session, claim: Claim, *, owner: str, category: str, now: int,
                    retry_after: int | None = None, per_peer: bool = True, delay: float | None = None) -> bool:
    """Release the claim for a later attempt; a peer-wide failure backs off the whole peer."""
    row = _owned(session, claim, owner)
    if row is None:
        return False
    peer = session.get(Peer, claim.peer, with_for_update=True)
    if peer is not None and per_peer:
        session.info.get("peer_success", set()).discard((claim.peer, now))  # a later success resets again
        # One round of failures (every message in flight to a peer that is down) counts once:
        # only the first failure after the peer's backoff ended moves the backoff on.
        if peer.next_attempt_at <= now:
            peer.failures += 1
            wait = delay if delay is not None else backoff_delay(peer.failures, retry_after=retry_after)
            peer.next_attempt_at = now + max(1, round(wait))
        peer.last_error_category, peer.last_error_at = category, now
        next_at = peer.next_attempt_at
    else:
        wait = delay if delay is not None else backoff_delay(claim.attempt, retry_after=retry_after)
        next_at = now + max(1, round(wait))
    row.state, row.lease_until, row.lease_owner = "queued", None, None
    row.next_attempt_at = next_at
    row.last_error_category, row.last_error_at = category, now
    return True


def replace_envelope_in(session: Session, claim: Claim, *, owner: str, envelope: bytes, sha256: str,
                        recipient_kid: str, now: int) -> bool:
    """After ``retry-after-refresh``: the same inner JWS, re-encrypted to the peer's new key."""
    row = _owned(session, claim, owner)
    if row is None:
        return False
    old = row.envelope_sha256
    row.envelope, row.envelope_sha256, row.recipient_kid = envelope, sha256, recipient_kid
    row.state, row.lease_until, row.lease_owner, row.next_attempt_at = "queued", None, None, now
    append_entry(session, event="resealed", at=now, message_id=claim.message_id, peer=claim.peer,
                 envelope_sha256=sha256, details={"kid": recipient_kid, "reason": f"replaces {old}"})
    return True


def extend_lease(db: Database, claim: Claim, *, owner: str, now: int, lease: int = LEASE_SECONDS,
                 acknowledged: dict[int, int] | None = None) -> bool:
    """Keep the claim of a long attachment transfer (and record its progress: chunks acknowledged per
    attachment); False if the lease was lost, and the transfer must stop."""
    from ..storage.models import OutboxAttachment

    with db.write() as session:
        row = _owned(session, claim, owner)
        if row is None:
            return False
        row.lease_until = max(row.lease_until or 0, now + lease)
        for att, count in (acknowledged or {}).items():
            session.execute(update(OutboxAttachment).where(
                OutboxAttachment.message_id == claim.message_id, OutboxAttachment.att == att,
            ).values(acknowledged=count))
        return True
