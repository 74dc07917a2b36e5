"""Leaf indices given as entries are written, by the writer of the process that integrates.

Entries are normally written unsequenced and given their leaf index by the next integrator batch
(ADR 0006), which means writing every entry's row twice.  The group-commit writer of the process
holding the integrator lock ends each of its transactions with an integrator batch (ADR 0007); in
those transactions it puts a ``Sequencer`` in the session (``session.info["sequencer"]``), and
entries written there take their index at once: the next one after the tree's size, read once per
log and transaction.  The batch then extends the tree with those leaves first, in index order, and
after them with whatever other transactions left unsequenced.  Nobody else assigns indices (the
lock), so the size read at the first entry stays right until the batch commits; a transaction that
rolls back takes its indices with it (the sequencer is the transaction's, and dropped with it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, select
from sqlalchemy.orm import Session

from protocol.merkle import CompactRange

from ..storage.models import audit_tree_table

_t = audit_tree_table.c
_TREE = select(_t.frontier).where(_t.log == bindparam("log"))


def load_tree(conn: Connection, log: str) -> tuple[bool, CompactRange]:
    """Whether ``log`` has a tree row yet, and its compact range (Core: this runs every batch)."""
    frontier = conn.execute(_TREE, {"log": log}).scalar()
    if frontier is None:
        return False, CompactRange()
    return True, CompactRange.from_json(json.loads(frontier))


@dataclass(frozen=True)
class Received:
    """A message stored with its ``received`` entry in a sequenced transaction: what its receipt names."""

    seq: int  # the inbox row
    leaf_index: int
    sender: str
    message_id: str
    envelope_sha256: str
    received_at: int


class Sequencer:
    """The leaf indices given in one transaction, per log, and the messages whose receipts they await."""

    def __init__(self) -> None:
        #: per log: whether its tree row exists, and the tree as it was when the transaction began
        self.trees: dict[str, tuple[bool, CompactRange]] = {}
        #: per log: the leaf hashes given indices here, in index order from that tree's size
        self.leaves: dict[str, list[bytes]] = {}
        self.received: list[Received] = []

    def assign(self, conn: Connection, log: str, leaf_hash: bytes) -> int:
        """The index of the next leaf of ``log`` (the caller writes it with that index)."""
        leaves = self.leaves.get(log)
        if leaves is None:
            self.trees[log] = load_tree(conn, log)
            leaves = self.leaves[log] = []
        leaves.append(leaf_hash)
        return self.trees[log][1].size + len(leaves) - 1

    def retract(self, log: str, index: int) -> None:
        """The entry given ``index`` was not written after all (its statement matched no row): the
        index is free again.  Only the last one given can be: an index is never left unused."""
        leaves = self.leaves[log]
        if index != self.trees[log][1].size + len(leaves) - 1:
            raise RuntimeError(f"only the last index given can be taken back, not {index}")
        leaves.pop()

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.leaves.values())


def sequencer_of(session: Session) -> Sequencer | None:
    """The transaction's sequencer, if entries written in it take their index at once."""
    found = session.info.get("sequencer")
    return found if isinstance(found, Sequencer) else None


def begin_sequencing(session: Session) -> Sequencer:
    """From now on in ``session``'s transaction, entries take their index when written; the
    transaction must end with ``integrate_batch`` (which extends and signs the tree with them)."""
    seq = session.info["sequencer"] = Sequencer()
    return seq
