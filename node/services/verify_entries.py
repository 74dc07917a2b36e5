"""The entry checks of ``comity audit verify``, shared by the one-process path (``verify.py``) and the
worker processes (``verify_parallel.py``): this module imports no database layer, so that a worker
starts quickly.

Each sequenced entry is checked in leaf order: its leaf index, ``SHA-256(0x00 || leaf)`` against the
stored ``leaf_hash``, and every derived column against the leaf.  The leaf hashes are folded into
the tree a batch at a time (``Tree``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

from protocol.errors import ProtocolError
from protocol.merkle import EMPTY_ROOT, node_hash

BATCH = 8192  # leaves hashed, checked and folded into the tree at a time (a power of two)
#: The columns streamed, in this order: the leaf index, the leaf, and every derived column but ``log``
#: (the query selects one log, so each row's ``log`` is that log).
COLUMNS = "leaf_index, leaf, leaf_hash, event, at, message_id, peer, envelope_sha256"
_INDEX, _LEAF, _HASH, _EVENT, _AT, _MESSAGE_ID, _PEER, _ENVELOPE = range(8)
_STRING_COLUMNS = ((_EVENT, "event"), (_MESSAGE_ID, "message_id"), (_PEER, "peer"), (_ENVELOPE, "envelope_sha256"))
_index_of = itemgetter(_INDEX)
_leaf_of = itemgetter(_LEAF)

_sha256 = hashlib.sha256


def select_entries(log_param: str, *, bounded: bool = False) -> str:
    """The query streaming the sequenced entries of one log in leaf order (``bounded``: those with
    ``?start <= leaf_index < ?end`` only); ``log_param`` is the driver's placeholder."""
    p = log_param
    where = f"log = {p} AND leaf_index >= {p} AND leaf_index < {p}" if bounded \
        else f"log = {p} AND leaf_index IS NOT NULL"
    return f"SELECT {COLUMNS} FROM audit_entries WHERE {where} ORDER BY leaf_index"  # noqa: S608


def first_gap(batch: Sequence[Sequence[Any]], start: int) -> int:
    """The offset of the first entry of ``batch`` whose leaf index is not ``start`` + its offset, or -1."""
    if tuple(map(_index_of, batch)) == tuple(range(start, start + len(batch))):
        return -1
    return next(i for i, row in enumerate(batch) if row[_INDEX] != start + i)


def leaves_of(batch: Sequence[Sequence[Any]]) -> list[bytes]:
    return list(map(bytes, map(_leaf_of, batch)))


def leaf_hashes(leaves: Sequence[bytes]) -> list[bytes]:
    return [_sha256(b"\x00" + leaf).digest() for leaf in leaves]


def _columns_match(row: Sequence[Any], text: str, log: str) -> bool:
    """Fast check that every derived column equals the leaf's member (a False is re-checked strictly).

    In RFC 8785 JSON of a flat object, ``"name":value`` followed by ``,`` or ``}`` occurs only as that
    member, since a quote inside a string is escaped; a value holding a quote or a backslash, or a
    leaf in any other shape, takes the strict path.  (The row's ``log`` is the log selected.)"""
    if f'"log":"{log}"' not in text:
        return False
    at = row[_AT]
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
                    log: str, offset: int = 0) -> int:
    """Index in ``batch`` (from ``offset``) of the first entry whose leaf hash or derived columns may not
    match, or -1.  The common case — every string column present, without quote or backslash — is
    tested inline, the rest by ``_columns_match``; either way a mismatch is re-checked strictly."""
    log_member = f'"log":"{log}"'
    for i in range(offset, len(batch)):
        _, _, stored, event, at, message_id, peer, envelope = batch[i]
        text = leaves[i].decode("utf-8", "replace")
        try:
            joined = event + message_id + peer + envelope
            fast = '"' not in joined and "\\" not in joined and type(at) is int
        except TypeError:  # a column is NULL (or not a string): the general check
            fast = False
        if fast:
            # the members one by one, unless they sit as in an exchange entry: "at" first, "envelope_sha256"
            # next to "event", "log" next to "message_id" and "peer" (each run implies its members)
            ok = stored == hashes[i].hex() and (
                (text.startswith(f'{{"at":{at},') and f'"envelope_sha256":"{envelope}","event":"{event}"' in text
                 and f'{log_member},"message_id":"{message_id}","peer":"{peer}"' in text)
                or (log_member in text and (f'"at":{at},' in text or f'"at":{at}}}' in text)
                    and f'"event":"{event}"' in text and f'"message_id":"{message_id}"' in text
                    and f'"peer":"{peer}"' in text and f'"envelope_sha256":"{envelope}"' in text))
        else:
            ok = stored == hashes[i].hex() and _columns_match(batch[i], text, log)
        if not ok:
            return i
    return -1


def _first_bad_column(row: Sequence[Any], leaf: bytes, log: str) -> tuple[str, str] | None:
    """The first derived column that differs from the strictly parsed leaf, with the reason."""
    from .audit import DERIVED, derive_columns  # the database layer, only for an entry that may be bad

    try:
        derived = derive_columns(leaf)
    except ProtocolError as e:
        return "leaf", f"the leaf is not strict JSON: {e.detail}"
    if derived.get("log") not in (None, log):
        return "leaf", "the leaf names another log"
    values = {"log": log, "event": row[_EVENT], "at": row[_AT], "message_id": row[_MESSAGE_ID], "peer": row[_PEER],
              "envelope_sha256": row[_ENVELOPE], "leaf_hash": row[_HASH]}
    for column in DERIVED:
        if values[column] != derived[column]:
            return column, f"{column} does not match the leaf"
    return None


def first_bad_entry(batch: Sequence[Sequence[Any]], leaves: Sequence[bytes], hashes: Sequence[bytes],
                    log: str) -> tuple[int, str, str] | None:
    """The first entry of ``batch`` whose leaf hash or a derived column does not match its leaf: its
    offset, the column and the reason; None when every entry matches."""
    offset = 0
    while (i := _first_mismatch(batch, leaves, hashes, log, offset)) >= 0:
        bad = _first_bad_column(batch[i], leaves[i], log)
        if bad is not None:
            return i, *bad
        offset = i + 1
    return None


Frontier = list[tuple[bytes, int]]  # perfect subtrees (root, height), left to right


def merged(nodes: Frontier) -> Frontier:
    """``nodes`` (perfect subtrees, left to right) with neighbours of equal height joined, as appending
    them one by one to a tree would: the frontier of the tree they cover."""
    out: Frontier = []
    for node in nodes:
        out.append(node)
        while len(out) > 1 and out[-2][1] == out[-1][1]:
            (left, height), (right, _) = out[-2], out.pop()
            out[-1] = (node_hash(left, right), height + 1)
    return out


def fold(nodes: Frontier) -> bytes:
    """The root of the tree whose frontier is ``nodes`` (RFC 9162: the right part folded in first)."""
    if not nodes:
        return EMPTY_ROOT
    r = nodes[-1][0]
    for left, _ in reversed(nodes[:-1]):
        r = node_hash(left, r)
    return r


class Tree:
    """A tree grown a batch at a time: a frontier of perfect subtrees (hash, height), and the levels of
    the current batch, so that the root at any size inside the batch costs O(log n).  A batch starts
    at a multiple of its own size rounded up to a power of two."""

    def __init__(self) -> None:
        self.size = 0
        self.nodes: Frontier = []
        self.levels: list[list[bytes]] = [[]]

    def load(self, hashes: list[bytes]) -> None:
        self.levels = [hashes]
        while len(self.levels[-1]) > 1:
            below = self.levels[-1]
            # ``node_hash`` inlined: this hashes every node of every batch
            self.levels.append([_sha256(b"\x01" + a + b).digest() for a, b in zip(below[0::2], below[1::2],
                                                                                   strict=False)])

    def _pieces(self, count: int) -> Frontier:
        out, offset = [], 0
        for height in reversed(range(count.bit_length())):
            if count >> height & 1:
                out.append((self.levels[height][offset >> height], height))
                offset += 1 << height
        return out

    def frontier_at(self, count: int) -> Frontier:
        """The frontier once ``count`` leaves of the loaded batch are appended."""
        return self.nodes + self._pieces(count)

    def root_at(self, count: int) -> str:
        """The root once ``count`` leaves of the loaded batch are appended."""
        return fold(self.frontier_at(count)).hex()

    def advance(self, count: int) -> None:
        self.nodes = merged(self.nodes + self._pieces(count))
        self.size += count
