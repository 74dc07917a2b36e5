"""``comity audit verify``: recompute leaves, derived columns, the tree and every signed head.

Entries are streamed in leaf order (constant memory); the first bad entry is named with its
column, and a head whose root does not match names the range between the last good head
and it.  Unsequenced entries are counted as pending, not failures.

Heads held outside the database (``HOME/heads/<log>.jws``, a bundle, a head a peer holds) are
checked too: each must verify, and the database's tree must reach its size with its root — so a
truncated tail, or a log rewritten with every hash and head recomputed, is caught and named.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from protocol.artifacts import ArchivalKeys
from protocol.errors import ProtocolError
from protocol.heads import verify_head
from protocol.keysets import Keyset
from protocol.merkle import EMPTY_ROOT

from ..storage.models import AuditEntry, AuditHead
from .audit import DERIVED, derive_columns
from .headsfile import HeldHead


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
    held_checked: int = 0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return d


_sha256 = hashlib.sha256
BATCH = 8192  # leaves hashed, checked and folded into the tree at a time (a power of two)
_STRING_COLUMNS = ((3, "event"), (5, "message_id"), (6, "peer"), (7, "envelope_sha256"))
_COLUMNS = "leaf_index, leaf, log, event, at, message_id, peer, envelope_sha256, leaf_hash"


def _stream_batches(session: Session, log: str) -> Iterator[list[Any]]:
    """Sequenced entries of ``log`` in leaf order, ``BATCH`` tuples of ``_COLUMNS`` at a time, through
    the driver's own cursor (server-side on PostgreSQL): a million rows stream in constant memory."""
    conn = session.connection()
    raw: Any = conn.connection.driver_connection
    sqlite = conn.dialect.name == "sqlite"
    sql = (f"SELECT {_COLUMNS} FROM audit_entries WHERE log = {'?' if sqlite else '%s'} "  # noqa: S608
           "AND leaf_index IS NOT NULL ORDER BY leaf_index")
    cur = raw.cursor() if sqlite else raw.cursor(name="comity_audit_verify")
    try:
        cur.execute(sql, (log,))
        while batch := cur.fetchmany(BATCH):
            yield batch
    finally:
        cur.close()


def _columns_match(row: Sequence[Any], text: str, log: str) -> bool:
    """Fast check that every derived column equals the leaf's member (a False is re-checked strictly).

    In RFC 8785 JSON of a flat object, ``"name":value`` followed by ``,`` or ``}`` occurs only as that
    member, since a quote inside a string is escaped; a value holding a quote or a backslash, or a
    leaf in any other shape, takes the strict path."""
    if row[2] != log or f'"log":"{log}"' not in text:
        return False
    at = row[4]
    if type(at) is not int or (f'"at":{at},' not in text and f'"at":{at}}}' not in text):
        return False
    for i, name in _STRING_COLUMNS:
        value = row[i]
        if value is None:
            if f'"{name}":' in text:
                return False
        elif type(value) is not str or '"' in value or "\\" in value or f'"{name}":"{value}"' not in text:
            return False
    return True


def _first_mismatch(batch: Sequence[Sequence[Any]], leaves: Sequence[bytes], hashes: Sequence[bytes],
                    log: str) -> int:
    """Index in ``batch`` of the first entry whose leaf hash or derived columns may not match, or -1.

    The common case — every string column present, without quote or backslash — is tested inline."""
    log_member = f'"log":"{log}"'
    for i, row in enumerate(batch):
        text = leaves[i].decode("utf-8", "replace")
        try:
            joined = row[3] + row[5] + row[6] + row[7]
            fast = '"' not in joined and "\\" not in joined and type(row[4]) is int
        except TypeError:  # a column is NULL (or not a string): the general check
            fast = False
        if fast:
            ok = (row[8] == hashes[i].hex() and row[2] == log and log_member in text
                  and (f'"at":{row[4]},' in text or f'"at":{row[4]}}}' in text)
                  and f'"event":"{row[3]}"' in text and f'"message_id":"{row[5]}"' in text
                  and f'"peer":"{row[6]}"' in text and f'"envelope_sha256":"{row[7]}"' in text)
        else:
            ok = row[8] == hashes[i].hex() and _columns_match(row, text, log)
        if not ok:
            return i
    return -1


def _first_bad_column(row: Sequence[Any], leaf: bytes, log: str) -> tuple[str, str] | None:
    """The first derived column that differs from the strictly parsed leaf, with the reason."""
    try:
        derived = derive_columns(leaf)
    except ProtocolError as e:
        return "leaf", f"the leaf is not strict JSON: {e.detail}"
    if derived.get("log") not in (None, log):
        return "leaf", "the leaf names another log"
    values = dict(zip(("log", "event", "at", "message_id", "peer", "envelope_sha256", "leaf_hash"),
                      (*row[2:8], row[8]), strict=True))
    for column in DERIVED:
        if values[column] != derived[column]:
            return column, f"{column} does not match the leaf"
    return None


class _Tree:
    """The log's tree grown a batch at a time: a frontier of perfect subtrees (hash, height), and the
    levels of the current batch, so that the root at any size inside the batch costs O(log n)."""

    def __init__(self) -> None:
        self.size = 0
        self.nodes: list[tuple[bytes, int]] = []
        self.levels: list[list[bytes]] = [[]]

    def load(self, hashes: list[bytes]) -> None:
        self.levels = [hashes]
        while len(self.levels[-1]) > 1:
            below = self.levels[-1]
            self.levels.append([_sha256(b"\x01" + a + b).digest() for a, b in zip(below[0::2], below[1::2],
                                                                                   strict=False)])

    def _pieces(self, count: int) -> list[tuple[bytes, int]]:
        out, offset = [], 0
        for height in reversed(range(count.bit_length())):
            if count >> height & 1:
                out.append((self.levels[height][offset >> height], height))
                offset += 1 << height
        return out

    def root_at(self, count: int) -> str:
        """The root once ``count`` leaves of the loaded batch are appended."""
        nodes = self.nodes + self._pieces(count)
        if not nodes:
            return EMPTY_ROOT.hex()
        r = nodes[-1][0]
        for left, _ in reversed(nodes[:-1]):
            r = _sha256(b"\x01" + left + r).digest()
        return r.hex()

    def advance(self, count: int) -> None:
        for piece in self._pieces(count):
            self.nodes.append(piece)
            while len(self.nodes) > 1 and self.nodes[-2][1] == self.nodes[-1][1]:
                (left, height), (right, _) = self.nodes[-2], self.nodes.pop()
                self.nodes[-1] = (_sha256(b"\x01" + left + right).digest(), height + 1)
        self.size += count


def verify_log(session: Session, log: str, *, authority: str, chain: Sequence[Keyset],
               held: Sequence[HeldHead] = ()) -> LogReport:
    """Verify one log against the node's own keyset chain (archival key rules) and the heads ``held``
    outside the database."""
    keys = ArchivalKeys(chain)
    pending = session.scalar(select(func.count()).select_from(AuditEntry)
                             .where(AuditEntry.log == log, AuditEntry.leaf_index.is_(None))) or 0
    heads = list(session.execute(
        select(AuditHead.tree_size, AuditHead.root, AuditHead.head_jws).where(AuditHead.log == log)
        .order_by(AuditHead.tree_size)
    ))
    first_bad: BadEntry | None = None
    bad_range: list[int] | None = None
    last_good_head = 0
    checked = 0

    def set_bad(index: int, column: str, reason: str) -> None:
        nonlocal first_bad
        if first_bad is None:
            first_bad = BadEntry(index, column, reason)

    def check_head(h: Any, root: str) -> None:
        nonlocal last_good_head, bad_range, checked
        checked += 1
        try:
            th = verify_head(h.head_jws, keys=keys, authority=authority, log=log)
            if th.tree_size != h.tree_size or th.root != h.root:
                raise ValueError("the head's stored columns differ from its signed payload")
            if th.root != root:
                raise ValueError("the recomputed root differs from the signed head")
        except (ProtocolError, ValueError) as e:
            if bad_range is None:
                bad_range = [last_good_head, h.tree_size]
                set_bad(max(h.tree_size - 1, 0), "head", f"head at size {h.tree_size}: {e}")
            return
        if bad_range is None:
            last_good_head = h.tree_size

    outside: dict[int, list[HeldHead]] = {}
    for hh in held:
        try:
            th = verify_head(hh.jws, keys=keys, authority=authority, log=log)
        except ProtocolError as e:
            set_bad(0, "head", f"the head held in {hh.source} does not verify: {e.category.value}: {e.detail}")
            continue
        outside.setdefault(th.tree_size, []).append(HeldHead(hh.source, hh.jws, th.tree_size, th.root))

    def check_outside(size: int, root: str) -> None:
        for hh in outside.pop(size, ()):
            if hh.root != root:
                set_bad(max(size - 1, 0), "head", f"the head held in {hh.source} (size {size}) has root "
                        f"{hh.root}; the database gives {root}: the log was rewritten")

    tree = _Tree()
    head_pos = 0
    for h in heads:
        if h.tree_size:
            break
        check_head(h, EMPTY_ROOT.hex())
        head_pos += 1
    check_outside(0, EMPTY_ROOT.hex())
    for batch in _stream_batches(session, log):
        start = tree.size
        gap = batch[0][0] != start or batch[-1][0] != start + len(batch) - 1
        if gap:
            at = next(i for i, row in enumerate(batch) if row[0] != start + i)
            set_bad(start + at, "leaf_index", f"entry {start + at} is missing (next found: {batch[at][0]})")
            batch = batch[:at]
            if not batch:
                break
        leaves = [bytes(row[1]) for row in batch]
        hashes = [_sha256(b"\x00" + leaf).digest() for leaf in leaves]
        offset = 0
        while first_bad is None and (i := _first_mismatch(batch[offset:], leaves[offset:], hashes[offset:],
                                                          log)) >= 0:
            offset += i
            bad = _first_bad_column(batch[offset], leaves[offset], log)
            if bad is not None:
                set_bad(start + offset, *bad)
            offset += 1
        tree.load(hashes)
        end = start + len(batch)
        while head_pos < len(heads) and heads[head_pos].tree_size <= end:
            h = heads[head_pos]
            check_head(h, tree.root_at(h.tree_size - start))
            head_pos += 1
        for size in sorted(s for s in outside if start < s <= end):
            check_outside(size, tree.root_at(size - start))
        tree.advance(len(batch))
        if gap:
            break
    expected = tree.size
    root = tree.root_at(0) if tree.size else EMPTY_ROOT.hex()
    if head_pos < len(heads):
        h = heads[head_pos]
        if bad_range is None:
            bad_range = [last_good_head, h.tree_size]
        set_bad(expected, "leaf_index",
                f"signed head covers {heads[-1].tree_size} entries but only {expected} are present (truncated)")
    for size in sorted(outside):
        source = outside[size][0].source
        set_bad(expected, "leaf_index", f"the head held in {source} covers {size} entries but the database "
                f"has only {expected} (truncated)")
    ok = first_bad is None and bad_range is None
    return LogReport(log, ok, expected, root, pending, checked, first_bad, bad_range, held_checked=len(held))
