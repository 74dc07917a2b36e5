"""Audit log entries: written in the caller's transaction, sequenced by the integrator (at once,
when the transaction is one of the integrating writer's: ``sequencer``).

A leaf is RFC 8785 JSON of ``{v, log, event, at, ...metadata}``: metadata and envelope
digests only — never subjects, bodies, names, or digests of plaintext.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from sqlalchemy import Connection, FromClause, Insert, bindparam, select
from sqlalchemy.orm import Session

from protocol.merkle import leaf_hash
from protocol.strictjson import canonical, parse_object

from ..storage.db import DriverStatement, ManyRows, unnest_arrays
from ..storage.models import audit_entries_table
from .sequencer import Sequencer, sequencer_of

LOGS = ("exchange", "access")

#: Metadata a leaf may carry besides the derived columns; anything else is refused, so that
#: content can never slip into a log entry by accident.
DETAIL_NAMES = frozenset(
    {
        "attempt", "category", "status", "receipt_sha256", "peer_tree_size", "peer_root", "peer_leaf_index",
        "keyset_version", "kid", "source", "kind", "state", "fingerprint", "endpoint", "previous_version",
        "reason", "count", "error_sha256",
        # access log: who (a token id or ``cli:<user>``, never a secret), which message ids, which action
        "actor", "ids", "method", "route", "action", "names", "exported_log", "first", "second",
        # restores and witnessing: sizes and roots of signed heads only
        "tree_size", "root", "lost_tree_size", "lost_root", "after_tree_size", "held_tree_size", "held_root",
        "requeued", "request_sha256",
    }
)
#: Columns of ``audit_entries`` derived from the leaf (checked by ``comity audit verify``).
DERIVED = ("log", "event", "at", "message_id", "peer", "envelope_sha256", "leaf_hash")


def encode_leaf(
    *, log: str, event: str, at: int, message_id: str | None = None, peer: str | None = None,
    envelope_sha256: str | None = None, details: Mapping[str, Any] | None = None,
) -> bytes:
    if log not in LOGS:
        raise ValueError(f"unknown log {log!r}")
    leaf: dict[str, Any] = {"v": 1, "log": log, "event": event, "at": at}
    if message_id is not None:
        leaf["message_id"] = message_id
    if peer is not None:
        leaf["peer"] = peer
    if envelope_sha256 is not None:
        leaf["envelope_sha256"] = envelope_sha256
    for name, value in (details or {}).items():
        if name not in DETAIL_NAMES:
            raise ValueError(f"audit detail {name!r} is not an allowed metadata name")
        if value is not None:
            leaf[name] = value
    return canonical(leaf)


def derive_columns(leaf: bytes) -> dict[str, Any]:
    """The values every derived column must hold for ``leaf``."""
    obj = parse_object(leaf, max_bytes=64 * 1024)
    return {
        "log": obj.get("log"), "event": obj.get("event"), "at": obj.get("at"),
        "message_id": obj.get("message_id"), "peer": obj.get("peer"),
        "envelope_sha256": obj.get("envelope_sha256"), "leaf_hash": leaf_hash(leaf).hex(),
    }


class Appended(NamedTuple):
    """The row ``append_entry`` wrote, and its leaf index if it got one at once (else the
    integrator gives it one later)."""

    id: int
    leaf_index: int | None = None


_ROW_NAMES = ("log", "leaf_index", "leaf", "leaf_hash", "event", "at", "message_id", "peer", "envelope_sha256")
_INSERT = audit_entries_table.insert().values({name: bindparam(name) for name in _ROW_NAMES})
_INSERT_ENTRY = DriverStatement(_INSERT.returning(audit_entries_table.c.id))
# several at once, no ids back; on PostgreSQL one statement over arrays, rows taken in the order given
_ROWS = unnest_arrays({n: audit_entries_table.c[n].type for n in _ROW_NAMES}, ordinality="ord")
_INSERT_ENTRIES = ManyRows(_INSERT, audit_entries_table.insert().from_select(
    list(_ROW_NAMES), select(*(_ROWS.c[n] for n in _ROW_NAMES)).order_by(_ROWS.c.ord)))
#: A message's row and its entry in one PostgreSQL statement (no round trip between them): the
#: entry's values bound as ``e_<column>`` (``entry_params``), typed (PostgreSQL casts them in an
#: ``INSERT ... SELECT``).  ``ENTRY_CTE`` inserts it first and yields its ``id``;
#: ``entry_for_each(source)`` inserts it once per row of ``source`` (none if none).
_ENTRY_BINDS = {n: bindparam(f"e_{n}", type_=audit_entries_table.c[n].type) for n in _ROW_NAMES}
ENTRY_CTE = audit_entries_table.insert().values(_ENTRY_BINDS).returning(audit_entries_table.c.id).cte("entry")


def entry_for_each(source: FromClause) -> Insert:
    return audit_entries_table.insert().from_select(list(_ROW_NAMES),
                                                    select(*_ENTRY_BINDS.values()).select_from(source))


def entry_params(session: Session, *, event: str, at: int, log: str = "exchange", message_id: str | None = None,
                 peer: str | None = None, envelope_sha256: str | None = None,
                 details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``append_entry``'s values for ``ENTRY_CTE`` and ``entry_for_each``.  The statement must write
    the entry before anything else is given an index, or hand these to ``retract_entry``: when it
    wrote none (a source without rows), or failed and the job goes on (a job that raises rolls
    the whole transaction back, indices included)."""
    values = _entry_values(session.connection(), sequencer_of(session), event=event, at=at, log=log,
                           message_id=message_id, peer=peer, envelope_sha256=envelope_sha256, details=details)
    return {f"e_{n}": values[n] for n in _ROW_NAMES}


def retract_entry(session: Session, params: Mapping[str, Any]) -> None:
    """``entry_params``' entry was not written (its statement's source had no row): the leaf index
    it was given, if any, is free again."""
    _give_back(session, [{"log": params["e_log"], "leaf_index": params["e_leaf_index"]}])


def _entry_values(conn: Connection, sequencer: Sequencer | None, *, event: str, at: int, log: str = "exchange",
                  message_id: str | None = None, peer: str | None = None, envelope_sha256: str | None = None,
                  details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    leaf = encode_leaf(log=log, event=event, at=at, message_id=message_id, peer=peer,
                       envelope_sha256=envelope_sha256, details=details)
    digest = leaf_hash(leaf)
    index = None if sequencer is None else sequencer.assign(conn, log, digest)
    return {"log": log, "leaf_index": index, "leaf": leaf, "leaf_hash": digest.hex(), "event": event,
            "at": at, "message_id": message_id, "peer": peer, "envelope_sha256": envelope_sha256}


def append_entry(
    session: Session, *, event: str, at: int, log: str = "exchange", message_id: str | None = None,
    peer: str | None = None, envelope_sha256: str | None = None, details: Mapping[str, Any] | None = None,
) -> Appended:
    """Add an entry in ``session``'s transaction; the integrator assigns its index (at once in the
    integrating writer's transactions)."""
    conn = session.connection()
    values = _entry_values(conn, sequencer_of(session), event=event, at=at, log=log, message_id=message_id,
                           peer=peer, envelope_sha256=envelope_sha256, details=details)
    # on the driver's cursor: this runs for every message sent, received and settled
    try:
        _, row = _INSERT_ENTRY.execute(conn, values)
    except Exception:
        _give_back(session, [values])  # (a caller that goes on after the error leaves no gap)
        raise
    return Appended(int(row[0]), values["leaf_index"])


def append_entries(session: Session, entries: Sequence[Mapping[str, Any]]) -> None:
    """``append_entry`` for several entries (keyword arguments each), their ids not returned: one
    statement on PostgreSQL, one driver call on SQLite.  They get their rows, and later their leaf
    indices, in the order given."""
    if entries:
        conn, seq = session.connection(), sequencer_of(session)
        rows = [_entry_values(conn, seq, **e) for e in entries]
        try:
            _INSERT_ENTRIES.execute(conn, rows)
        except Exception:
            _give_back(session, rows)
            raise


def _give_back(session: Session, rows: Sequence[Mapping[str, Any]]) -> None:
    """The indices given to ``rows`` (the last ones given): they were not written."""
    seq = sequencer_of(session)
    if seq is not None:
        for row in reversed(rows):
            if row["leaf_index"] is not None:
                seq.retract(row["log"], row["leaf_index"])


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
