"""Inclusion and consistency proofs over a stored log, for the peer endpoints (SPEC §10.4) and
evidence and bundle exports, without holding the whole log in memory or reading it per request.

Those endpoints answer anyone who reaches the peer listener, and used to read every leaf hash up to
the requested size (1.6 s at a million entries, every request).  Leaves never
change once sequenced, so each process keeps the roots of the log's complete *tiles* (aligned runs
of 256 leaves), read once and extended as the log grows; a proof then takes its large subtrees from
those roots and its small ones from at most a few tiles read from the database (a proof touches the
tiles at its two edges only).  A restore from a backup rewrites the log's tail, but only with the
node stopped, and these roots live and die with the node's process.  (Evidence and bundle exports,
commands of their own, read the tile roots afresh, in slices of 65,536 leaves.)
"""

from __future__ import annotations

import threading

from sqlalchemy import select
from sqlalchemy.orm import Session

from protocol.merkle import root_from_leaf_hashes

from ..storage.models import AuditEntry
from .proofs import LevelTree, SubtreeProofs

#: a tile is 2**TILE_LEVEL leaves
TILE_LEVEL = 8
#: tiles whose roots one database read brings in while the cache catches up
_TILES_PER_READ = 256
#: tiles of leaves a StoredTree keeps (a bundle's proofs walk the log upwards, head after head)
_TILES_KEPT = 8


def leaf_hashes(session: Session, log: str, lo: int, hi: int) -> list[bytes]:
    """The hashes of sequenced leaves ``lo <= leaf_index < hi`` of ``log``, in order."""
    rows = session.scalars(select(AuditEntry.leaf_hash).where(
        AuditEntry.log == log, AuditEntry.leaf_index >= lo, AuditEntry.leaf_index < hi,
    ).order_by(AuditEntry.leaf_index))
    hashes = [bytes.fromhex(h) for h in rows]
    if len(hashes) != hi - lo:  # the integrator sequences without gaps: this is a damaged log
        raise LookupError(f"the {log} log has {len(hashes)} leaves in [{lo}, {hi}), not {hi - lo}")
    return hashes


def sequenced_entries(session: Session, log: str, envelope_sha256: str) -> list[AuditEntry]:
    """The sequenced entries of ``log`` that record one envelope (a few), found by the envelope's index.

    Only the hash is in SQL: with the log, a bound on the leaf index or an order there too, SQLite
    planned on the ``(log, leaf_index)`` index instead and walked the whole log."""
    rows = session.scalars(select(AuditEntry).where(AuditEntry.envelope_sha256 == envelope_sha256)).all()
    return [e for e in rows if e.log == log and e.leaf_index is not None]


class TileRoots:
    """One process's roots of a log's complete tiles, and the subtrees above them."""

    def __init__(self, log: str, tile_level: int | None = None) -> None:
        self.tile_level = TILE_LEVEL if tile_level is None else tile_level
        self.log, self.tile = log, 1 << self.tile_level
        self.tree = LevelTree([])  # its leaves are tile roots
        self._lock = threading.Lock()

    def covering(self, session: Session, tiles: int) -> LevelTree:
        """The tree over (at least) the first ``tiles`` tile roots, reading the tiles not seen yet."""
        with self._lock:
            while self.tree.size < tiles:
                lo = self.tree.size
                hi = min(tiles, lo + _TILES_PER_READ)
                hashes = leaf_hashes(session, self.log, lo * self.tile, hi * self.tile)
                self.tree.extend([root_from_leaf_hashes(hashes[i:i + self.tile])
                                  for i in range(0, len(hashes), self.tile)])
            return self.tree


class StoredTree(SubtreeProofs):
    """Proofs over the first ``size`` leaves of a stored log, within one read transaction."""

    def __init__(self, session: Session, roots: TileRoots, size: int) -> None:
        self.size, self._session, self._roots = size, session, roots
        self._upper = roots.covering(session, size >> roots.tile_level)
        self._tiles: dict[int, LevelTree] = {}

    def perfect(self, lo: int, n: int) -> bytes:
        level = n.bit_length() - 1
        if level >= self._roots.tile_level:
            return self._upper.levels[level - self._roots.tile_level][lo // n]
        t = lo >> self._roots.tile_level
        tile = self._tiles.get(t)
        if tile is None:
            first = t << self._roots.tile_level
            last = min(first + self._roots.tile, self.size)
            if len(self._tiles) >= _TILES_KEPT:
                del self._tiles[next(iter(self._tiles))]  # the oldest read
            tile = self._tiles[t] = LevelTree(leaf_hashes(self._session, self._roots.log, first, last))
        return tile.levels[level][(lo - (t << self._roots.tile_level)) // n]
