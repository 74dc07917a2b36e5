"""Proofs over a stored log, and keyset chains checked the archival way — shared by bundles and evidence.

``SubtreeProofs`` computes inclusion and consistency proofs (SPEC §9.3) from any source of subtree
roots; ``LevelTree`` keeps every level of perfect subtrees of a log's leaf hashes in memory, so that
any number of proofs cost O(log² n) each after one O(n) build (``log_proofs`` reads them from the
database instead, for the peer endpoints and evidence).
``archival_chain`` walks a card's keyset chain (SPEC §3.5) without judging expiry: an archive is
checked years later, when every version has long expired (§3.9, archival rules).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

from protocol.card import parse_card
from protocol.errors import Category, KeysetError
from protocol.keychain import KeysetDocument, read_keyset, verify_signer_set, verify_successor
from protocol.merkle import EMPTY_ROOT, node_hash
from protocol.strictjson import canonical


class SubtreeProofs(ABC):
    """RFC 9162 proofs over a tree of ``size`` leaves, given the roots of its aligned perfect subtrees."""

    size: int

    @abstractmethod
    def perfect(self, lo: int, n: int) -> bytes:
        """The root of the perfect subtree of ``n`` (a power of two) leaves from ``lo`` (a multiple of ``n``)."""

    def mth(self, lo: int, hi: int) -> bytes:
        """``MTH(D[lo:hi])`` for a range the RFC 9162 recursion produces (``lo`` aligned to its split)."""
        n = hi - lo
        if n == 0:
            return EMPTY_ROOT
        if n & (n - 1) == 0 and lo % n == 0:
            return self.perfect(lo, n)
        k = 1 << ((n - 1).bit_length() - 1)
        return node_hash(self.mth(lo, lo + k), self.mth(lo + k, hi))

    def frontier(self, size: int) -> list[bytes]:
        """The compact range of ``D[0:size]``: its perfect-subtree roots, largest (leftmost) first."""
        nodes, lo = [], 0
        for bit in reversed(range(size.bit_length())):
            if size >> bit & 1:
                nodes.append(self.perfect(lo, 1 << bit))
                lo += 1 << bit
        return nodes

    def inclusion(self, index: int, tree_size: int) -> list[bytes]:
        """``PATH(index, D[tree_size])``, leaf end first."""
        if not 0 <= index < tree_size <= self.size:
            raise ValueError(f"no leaf {index} in a tree of {tree_size}")
        path: list[bytes] = []
        lo, hi = 0, tree_size
        while hi - lo > 1:
            k = 1 << ((hi - lo - 1).bit_length() - 1)
            if index < lo + k:
                path.append(self.mth(lo + k, hi))
                hi = lo + k
            else:
                path.append(self.mth(lo, lo + k))
                lo += k
        return path[::-1]

    def consistency(self, first: int, second: int) -> list[bytes]:
        """``PROOF(first, D[second])``; empty when ``first`` is 0 or ``second``."""
        if not 0 <= first <= second <= self.size:
            raise ValueError(f"no consistency proof from {first} to {second} in a tree of {self.size}")
        if first in (0, second):
            return []
        top_down: list[bytes] = []
        lo, hi, m, whole = 0, second, first, True
        while m != hi - lo:
            k = 1 << ((hi - lo - 1).bit_length() - 1)
            if m <= k:
                top_down.append(self.mth(lo + k, hi))
                hi = lo + k
            else:
                top_down.append(self.mth(lo, lo + k))
                lo, m, whole = lo + k, m - k, False
        top_down.reverse()
        return top_down if whole else [self.mth(lo, hi), *top_down]


class LevelTree(SubtreeProofs):
    """All perfect-subtree roots of a list of leaf hashes: ``levels[k][i]`` covers ``[i·2^k, (i+1)·2^k)``."""

    def __init__(self, leaf_hashes: Sequence[bytes]) -> None:
        self.size = 0
        self.levels: list[list[bytes]] = [[]]
        self.extend(leaf_hashes)

    def extend(self, leaf_hashes: Sequence[bytes]) -> None:
        """Append leaves; only the subtrees they complete are hashed."""
        self.levels[0].extend(leaf_hashes)
        self.size = len(self.levels[0])
        k = 0
        while len(self.levels[k]) > 1:
            if k + 1 == len(self.levels):
                self.levels.append([])
            below, above = self.levels[k], self.levels[k + 1]
            above.extend(node_hash(below[i], below[i + 1]) for i in range(2 * len(above), len(below) - 1, 2))
            k += 1

    def perfect(self, lo: int, n: int) -> bytes:
        return self.levels[n.bit_length() - 1][lo // n]



def archival_chain(card: Any, *, authority: str | None = None) -> list[KeysetDocument]:
    """Read a card (as a JSON object) and verify its chain from version 1, with no expiry check.

    Raises ``KeysetError``: the §3.4 reading categories, ``broken_chain``, ``bad_signer_set``,
    ``bad_signature``; ``broken_chain`` also when the chain is not ``authority``'s.
    """
    docs = [read_keyset(d) for d in parse_card(canonical(card))]
    first = docs[0]
    if first.version != 1:
        raise KeysetError(Category.BROKEN_CHAIN, f"chain starts at v{first.version}, not v1")
    verify_signer_set(None, first)
    for prev, doc in pairwise(docs):
        verify_successor(prev.keyset, doc)
    if authority is not None and first.keyset.authority != authority:
        raise KeysetError(Category.BROKEN_CHAIN, f"the card is {first.keyset.authority}'s, not {authority}'s")
    return docs


def check_fingerprint(docs: Sequence[KeysetDocument], fingerprint: str | None) -> None:
    """``fingerprint`` (if given) must be the identity of some version of the chain (SPEC §3.6 step 3)."""
    if fingerprint is not None and all(d.keyset.identity_kid != fingerprint for d in docs):
        raise KeysetError(Category.FINGERPRINT_MISMATCH, f"no version of the chain has identity {fingerprint:.50}")
