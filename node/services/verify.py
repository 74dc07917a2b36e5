"""``comity audit verify``: recompute leaves, derived columns, the tree and every signed head.

Entries are streamed in leaf order (constant memory); the first bad entry is named with its
column, and a head whose root does not match names the range between the last good head
and it.  Unsequenced entries are counted as pending, not failures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from protocol.artifacts import ArchivalKeys
from protocol.errors import ProtocolError
from protocol.heads import verify_head
from protocol.keysets import Keyset
from protocol.merkle import CompactRange, leaf_hash

from ..storage.models import AuditEntry, AuditHead
from .audit import DERIVED, derive_columns


@dataclass
class BadEntry:
    index: int
    column: str
    reason: str


@dataclass
class LogReport:
    log: str
    ok: bool
    tree_size: int
    root: str
    pending: int
    heads_checked: int
    first_bad: BadEntry | None
    bad_range: list[int] | None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return d


def verify_log(session: Session, log: str, *, authority: str, chain: Sequence[Keyset]) -> LogReport:
    """Verify one log against the node's own keyset chain (archival key rules)."""
    keys = ArchivalKeys(chain)
    pending = session.scalar(select(func.count()).select_from(AuditEntry)
                             .where(AuditEntry.log == log, AuditEntry.leaf_index.is_(None))) or 0
    heads = list(session.execute(
        select(AuditHead.tree_size, AuditHead.root, AuditHead.head_jws).where(AuditHead.log == log)
        .order_by(AuditHead.tree_size)
    ))
    cr = CompactRange()
    first_bad: BadEntry | None = None
    bad_range: list[int] | None = None
    last_good_head = 0
    head_pos = 0
    heads_checked = 0

    def check_heads_at(size: int) -> None:
        nonlocal head_pos, last_good_head, bad_range, heads_checked
        while head_pos < len(heads) and heads[head_pos].tree_size == size:
            h = heads[head_pos]
            head_pos += 1
            heads_checked += 1
            try:
                th = verify_head(h.head_jws, keys=keys, authority=authority, log=log)
                if th.tree_size != h.tree_size or th.root != h.root:
                    raise ValueError("the head's stored columns differ from its signed payload")
                if th.root != cr.root().hex():
                    raise ValueError("the recomputed root differs from the signed head")
            except (ProtocolError, ValueError) as e:
                if bad_range is None:
                    bad_range = [last_good_head, h.tree_size]
                    if first_bad is None:
                        _set_bad(h.tree_size - 1, "head", f"head at size {h.tree_size}: {e}")
                return
            if bad_range is None:
                last_good_head = size

    def _set_bad(index: int, column: str, reason: str) -> None:
        nonlocal first_bad
        if first_bad is None:
            first_bad = BadEntry(index, column, reason)

    check_heads_at(0)
    rows = session.execute(
        select(AuditEntry.leaf_index, AuditEntry.leaf, *[getattr(AuditEntry, c) for c in DERIVED])
        .where(AuditEntry.log == log, AuditEntry.leaf_index.is_not(None)).order_by(AuditEntry.leaf_index)
        .execution_options(yield_per=5000)
    )
    expected = 0
    for row in rows:
        if row.leaf_index != expected:
            _set_bad(expected, "leaf_index", f"entry {expected} is missing (next found: {row.leaf_index})")
            break
        leaf = bytes(row.leaf)
        try:
            derived = derive_columns(leaf)
        except ProtocolError as e:
            _set_bad(expected, "leaf", f"the leaf is not strict JSON: {e.detail}")
            derived = {}
        if derived.get("log") not in (None, log) and derived:
            _set_bad(expected, "leaf", "the leaf names another log")
        for column in DERIVED:
            if derived and getattr(row, column) != derived[column]:
                _set_bad(expected, column, f"{column} does not match the leaf")
                break
        cr.append(leaf_hash(leaf))
        expected += 1
        check_heads_at(expected)
    if head_pos < len(heads):
        h = heads[head_pos]
        if bad_range is None:
            bad_range = [last_good_head, h.tree_size]
        _set_bad(expected, "leaf_index",
                 f"signed head covers {heads[-1].tree_size} entries but only {expected} are present (truncated)")
    ok = first_bad is None and bad_range is None
    return LogReport(log, ok, cr.size, cr.root().hex(), pending, heads_checked, first_bad, bad_range)
