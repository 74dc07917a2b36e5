"""``comity audit verify``: recompute leaves, derived columns, the tree and every signed head.

Entries are streamed in leaf order (constant memory); the first bad entry is named with its
column, and a head whose root does not match names the range between the last good head
and it.  Unsequenced entries are counted as pending, not failures.

Heads held outside the database (``HOME/heads/<log>.jws``, a bundle, a head a peer holds) are
checked too: each must verify, and the database's tree must reach its size with its root — so a
truncated tail, or a log rewritten with every hash and head recomputed, is caught and named.

The entry checks themselves are in ``verify_entries``.  A large SQLite log has its entries checked
by worker processes, one per usable core (``verify_parallel``), while this process verifies the
signed heads; if any entry is out of place, the one-process path runs and names it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from protocol.artifacts import ArchivalKeys
from protocol.errors import ProtocolError
from protocol.heads import TreeHead, verify_head
from protocol.keysets import Keyset
from protocol.merkle import EMPTY_ROOT

from ..storage.models import AuditEntry, AuditHead
from .headsfile import HeldHead
from .verify_entries import BATCH, Tree, first_bad_entry, first_gap, leaf_hashes, leaves_of, select_entries
from .verify_parallel import usable_cores


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


def _stream_batches(session: Session, log: str) -> Iterator[list[Any]]:
    """Sequenced entries of ``log`` in leaf order, ``BATCH`` tuples of ``verify_entries.COLUMNS`` at a
    time, through the driver's own cursor (server-side on PostgreSQL): a million rows stream in
    constant memory."""
    conn = session.connection()
    raw: Any = conn.connection.driver_connection
    sqlite = conn.dialect.name == "sqlite"
    cur = raw.cursor() if sqlite else raw.cursor(name="comity_audit_verify")
    try:
        cur.execute(select_entries("?" if sqlite else "%s"), (log,))
        while batch := cur.fetchmany(BATCH):
            yield batch
    finally:
        cur.close()


def _parallel_roots(session: Session, log: str, heads: Sequence[Any], sizes: Iterable[int], workers: int,
                    while_waiting: Callable[[], None]) -> tuple[int, dict[int, bytes]] | None:
    """``(n, roots)`` when ``log`` is large enough to be checked by ``workers`` processes and every entry
    checks out (``verify_parallel``); None to take the one-process path."""
    from .verify_parallel import MIN_ENTRIES, chunk_roots

    conn = session.connection()
    url = conn.engine.url
    if workers < 2 or conn.dialect.name != "sqlite" or not url.database or url.database == ":memory:" or url.query:
        return None
    n, least, greatest = session.execute(
        select(func.count(), func.min(AuditEntry.leaf_index), func.max(AuditEntry.leaf_index))
        .where(AuditEntry.log == log, AuditEntry.leaf_index.is_not(None))).one()
    if n < MIN_ENTRIES or type(least) is not int or type(greatest) is not int or (least, greatest) != (0, n - 1):
        return None
    if any(type(h.tree_size) is not int or h.tree_size < 0 for h in heads):
        return None
    roots = chunk_roots(url.database, log, n, sizes, workers=workers, while_waiting=while_waiting)
    return None if roots is None else (n, roots)


def verify_log(session: Session, log: str, *, authority: str, chain: Sequence[Keyset],
               held: Sequence[HeldHead] = (), workers: int | None = None) -> LogReport:
    """Verify one log against the node's own keyset chain (archival key rules) and the heads ``held``
    outside the database.  The entries of a large SQLite log are checked by ``workers`` processes
    (default: one per usable core; ``verify_parallel``), with the same result; they read what is
    committed, so ``session`` must hold no uncommitted change to the log (``workers=1``: this process
    alone)."""
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
    verified: dict[int, TreeHead | ProtocolError] = {}

    def set_bad(index: int, column: str, reason: str) -> None:
        nonlocal first_bad
        if first_bad is None:
            first_bad = BadEntry(index, column, reason)

    def verify_at(pos: int) -> TreeHead | ProtocolError:
        """The signed head ``heads[pos]`` verified (or why not), once."""
        if pos not in verified:
            try:
                verified[pos] = verify_head(heads[pos].head_jws, keys=keys, authority=authority, log=log)
            except ProtocolError as e:
                verified[pos] = e
        return verified[pos]

    def check_head(pos: int, root: str) -> None:
        nonlocal last_good_head, bad_range, checked
        h = heads[pos]
        checked += 1
        try:
            th = verify_at(pos)
            if isinstance(th, ProtocolError):
                raise th
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

    head_pos = 0
    for h in heads:
        if h.tree_size:
            break
        check_head(head_pos, EMPTY_ROOT.hex())
        head_pos += 1
    check_outside(0, EMPTY_ROOT.hex())

    def verify_heads() -> None:
        """Verify every signed head now, while the workers check the entries (``check_head`` uses the result;
        a ``ValueError`` is not kept: ``check_head`` meets it again)."""
        for pos in range(len(heads)):
            with suppress(ValueError):
                verify_at(pos)

    parallel = _parallel_roots(session, log, heads, [*(h.tree_size for h in heads), *outside],
                               usable_cores() if workers is None else workers, verify_heads)
    if parallel is not None:
        # every entry checked out: the heads and the held heads in the order the one-process path meets them
        expected, roots = parallel
        order = sorted([((h.tree_size - 1) // BATCH, 0, h.tree_size, pos) for pos, h in enumerate(heads)
                        if pos >= head_pos and h.tree_size <= expected]
                       + [((size - 1) // BATCH, 1, size, 0) for size in outside if 0 < size <= expected])
        for _, kind, size, pos in order:
            if kind == 0:
                check_head(pos, roots[size].hex())
                head_pos += 1
            else:
                check_outside(size, roots[size].hex())
        root = roots[expected].hex()
    else:
        tree = Tree()
        for batch in _stream_batches(session, log):
            start = tree.size
            gap = first_gap(batch, start)
            if gap >= 0:
                set_bad(start + gap, "leaf_index", f"entry {start + gap} is missing (next found: {batch[gap][0]})")
                batch = batch[:gap]
                if not batch:
                    break
            end = start + len(batch)
            leaves = leaves_of(batch)
            hashes = leaf_hashes(leaves)
            if first_bad is None and (bad := first_bad_entry(batch, leaves, hashes, log)) is not None:
                set_bad(start + bad[0], bad[1], bad[2])
            tree.load(hashes)
            while head_pos < len(heads) and heads[head_pos].tree_size <= end:
                check_head(head_pos, tree.root_at(heads[head_pos].tree_size - start))
                head_pos += 1
            for size in sorted(s for s in outside if start < s <= end):
                check_outside(size, tree.root_at(size - start))
            tree.advance(len(batch))
            if gap >= 0:
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
