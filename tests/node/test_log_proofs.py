"""Proofs from the stored log's tile roots agree with RFC 9162 over the whole leaf list.

The peer endpoints used to read every leaf hash up to the requested size per request; they now take
large subtrees from a per-process cache of tile roots and small ones from the tiles at a proof's
edges.  Tiles of 4 leaves here, so that 0-70 leaves cross many tile and level boundaries.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest

from node.services import log_proofs
from node.services.log_proofs import StoredTree, TileRoots
from node.services.proofs import LevelTree
from node.storage.db import Database
from node.storage.models import AuditEntry
from protocol.merkle import consistency_proof, inclusion_proof, leaf_hash


@pytest.fixture
def db(migrated_url: str) -> Iterator[Database]:
    database = Database(migrated_url)
    yield database
    database.dispose()


def add_leaves(db: Database, lo: int, hi: int) -> list[bytes]:
    leaves = [b'{"n":%d}' % i for i in range(lo, hi)]
    with db.write() as session:
        session.add_all(AuditEntry(log="exchange", leaf_index=i, leaf=leaf, leaf_hash=leaf_hash(leaf).hex(),
                                   event="queued", at=i) for i, leaf in zip(range(lo, hi), leaves, strict=True))
        # the access log's leaves, interleaved in the table, are not the exchange log's
        session.add(AuditEntry(log="access", leaf_index=hi, leaf=b"{}", leaf_hash=hashlib.sha256(b"x").hexdigest(),
                               event="token_used", at=0))
    return [leaf_hash(leaf) for leaf in leaves]


def test_every_proof_matches_rfc_9162_as_the_log_grows(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(log_proofs, "_TILES_PER_READ", 3)  # catching up takes several reads
    roots = TileRoots("exchange", tile_level=2)
    hashes = add_leaves(db, 0, 37)
    with db.read() as session:
        for size in range(1, 38):
            tree = StoredTree(session, roots, size)
            for first in range(size + 1):
                assert tree.consistency(first, size) == consistency_proof(hashes, first, size), (first, size)
            for index in range(size):
                assert tree.inclusion(index, size) == inclusion_proof(hashes, index, size), (index, size)
            assert tree.frontier(size) == LevelTree(hashes).frontier(size)  # what a bundle starts from
    assert roots.tree.size == 9  # 36 of the 37 leaves make complete tiles; the 37th is read per request
    hashes += add_leaves(db, 37, 70)  # the cache catches up with a grown log
    with db.read() as session:
        tree = StoredTree(session, roots, 70)
        assert roots.tree.size == 17
        for first in range(71):
            assert tree.consistency(first, 70) == consistency_proof(hashes, first, 70)
        for index in range(70):
            assert tree.inclusion(index, 70) == inclusion_proof(hashes, index, 70)


def test_a_proof_reads_only_the_tiles_at_its_edges(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    roots = TileRoots("exchange", tile_level=2)
    add_leaves(db, 0, 64)
    with db.read() as session:
        StoredTree(session, roots, 64)  # the cache is warm
        reads: list[tuple[int, int]] = []
        real = log_proofs.leaf_hashes

        def counted(session: object, log: str, lo: int, hi: int) -> list[bytes]:
            reads.append((lo, hi))
            return real(session, log, lo, hi)  # type: ignore[arg-type]

        monkeypatch.setattr(log_proofs, "leaf_hashes", counted)
        StoredTree(session, roots, 63).consistency(33, 63)
        assert sorted(reads) == [(32, 36), (60, 63)]  # 2 tiles of 4, not 63 leaves


def test_a_gap_in_the_sequenced_log_is_an_error_not_a_wrong_proof(db: Database) -> None:
    add_leaves(db, 0, 8)
    add_leaves(db, 9, 12)  # leaf 8 missing: only an edit of the database does this
    with db.read() as session:
        with pytest.raises(LookupError, match=r"has 11 leaves in \[0, 12\), not 12"):
            StoredTree(session, TileRoots("exchange", tile_level=2), 12)
        with pytest.raises(LookupError, match=r"has 2 leaves in \[8, 11\), not 3"):
            StoredTree(session, TileRoots("exchange", tile_level=2), 11).inclusion(9, 11)
