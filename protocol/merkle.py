"""The audit-log Merkle tree of comity/1: RFC 9162 §2.1 hashing, inclusion and consistency proofs.

Hashes are raw 32-byte ``bytes``; on the wire they are 64 lowercase hex characters and a
proof is a JSON array of them (``hash_hex``, ``hash_from_hex``, ``proof_to_hex``,
``proof_from_hex``).

- leaf hash ``SHA-256(0x00 || entry)``, node hash ``SHA-256(0x01 || left || right)``;
- the root of the empty tree is ``SHA-256("")``;
- a tree of ``n > 1`` leaves splits at ``k``, the largest power of two below ``n``.

Generators take the leaf hashes as a ``Sequence[bytes]``: ``hashes[a:b]`` must give the leaf
hashes of leaves ``a .. b-1`` (a database-backed sequence answers a slice with one query).
They hash each leaf at most once, O(n).  Verifiers follow RFC 9162 §2.1.3.2 and §2.1.4.2
step for step and raise ``ProofError(BAD_PROOF)``; they never return a boolean.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .errors import Category, ProofError
from .ids import is_sha256_hex
from .strictjson import MAX_SAFE_INTEGER

HASH_SIZE = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
#: The root of the empty tree: SHA-256 of the empty string.
EMPTY_ROOT = hashlib.sha256(b"").digest()
#: No valid proof for a tree of at most 2**53 - 1 leaves is longer than this.
MAX_PROOF_LENGTH = 128

_sha256 = hashlib.sha256


def leaf_hash(entry: bytes) -> bytes:
    """``SHA-256(0x00 || entry)``: the hash of one log entry's exact bytes."""
    return _sha256(LEAF_PREFIX + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``."""
    return _sha256(NODE_PREFIX + left + right).digest()


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """The Merkle Tree Hash of the leaves whose hashes are ``hashes``, computed level by level.

    Pairing neighbours and lifting an odd last node unchanged builds the same tree as RFC 9162's
    split at the largest power of two below ``n``.
    """
    if len(hashes) == 0:
        return EMPTY_ROOT
    level = list(hashes)
    sha, prefix = _sha256, NODE_PREFIX
    while len(level) > 1:
        odd = level[-1] if len(level) & 1 else None
        level = [sha(prefix + a + b).digest() for a, b in zip(level[0::2], level[1::2], strict=False)]
        if odd is not None:
            level.append(odd)
    return level[0]


def _split(n: int) -> int:
    """The largest power of two strictly below ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def _subtree_root(hashes: Sequence[bytes], start: int, end: int) -> bytes:
    return root_from_leaf_hashes(hashes[start:end])


def _check_sizes(hashes: Sequence[bytes], *values: int) -> None:
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError("tree sizes and indices are non-negative integers")
    if values[-1] > len(hashes):
        raise ValueError(f"tree size {values[-1]} exceeds the {len(hashes)} leaf hashes given")


def inclusion_proof(hashes: Sequence[bytes], index: int, tree_size: int) -> list[bytes]:
    """RFC 9162 §2.1.3.1 ``PATH(index, D[tree_size])``: sibling roots, from the leaf up.

    Raises ``ValueError`` unless ``0 <= index < tree_size <= len(hashes)`` (a caller's bug).
    """
    _check_sizes(hashes, index, tree_size)
    if index >= tree_size:
        raise ValueError(f"leaf index {index} is not inside a tree of {tree_size}")
    top_down: list[bytes] = []
    lo, hi = 0, tree_size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            top_down.append(_subtree_root(hashes, lo + k, hi))
            hi = lo + k
        else:
            top_down.append(_subtree_root(hashes, lo, lo + k))
            lo += k
    top_down.reverse()
    return top_down


def consistency_proof(hashes: Sequence[bytes], first: int, second: int) -> list[bytes]:
    """RFC 9162 §2.1.4.1 ``PROOF(first, D[second])``; empty when ``first`` is 0 or ``second``.

    Raises ``ValueError`` unless ``0 <= first <= second <= len(hashes)`` (a caller's bug).
    """
    _check_sizes(hashes, first, second)
    if first > second:
        raise ValueError(f"first size {first} is larger than second size {second}")
    if first in (0, second):
        return []
    top_down: list[bytes] = []
    lo, hi, m, whole = 0, second, first, True  # SUBPROOF(m, D[lo:hi], whole)
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            top_down.append(_subtree_root(hashes, lo + k, hi))
            hi = lo + k
        else:
            top_down.append(_subtree_root(hashes, lo, lo + k))
            lo, m, whole = lo + k, m - k, False
    top_down.reverse()
    return top_down if whole else [_subtree_root(hashes, lo, hi), *top_down]


# --- verification -------------------------------------------------------------------------------


def _require_hash(value: object, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise ProofError(Category.BAD_PROOF, f"{what} is not a {HASH_SIZE}-byte hash")
    return value


def _require_size(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProofError(Category.BAD_PROOF, f"{what} is not a non-negative integer")
    return value


def _require_proof(proof: Sequence[bytes]) -> list[bytes]:
    if len(proof) > MAX_PROOF_LENGTH:
        raise ProofError(Category.BAD_PROOF, f"proof of {len(proof)} hashes is longer than {MAX_PROOF_LENGTH}")
    return [_require_hash(p, f"proof[{i}]") for i, p in enumerate(proof)]


def _equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Raise ``ProofError(BAD_PROOF)`` unless ``proof`` puts ``leaf_hash`` at ``index`` under ``root``.

    RFC 9162 §2.1.3.2, step for step.
    """
    leaf = _require_hash(leaf_hash, "leaf hash")
    want = _require_hash(root, "root")
    index = _require_size(index, "leaf index")
    tree_size = _require_size(tree_size, "tree size")
    path = _require_proof(proof)
    # 1. leaf_index >= tree_size fails.
    if index >= tree_size:
        raise ProofError(Category.BAD_PROOF, f"leaf index {index} is not inside a tree of {tree_size}")
    # 2.-3.
    fn, sn, r = index, tree_size - 1, leaf
    # 4.
    for p in path:
        if sn == 0:
            raise ProofError(Category.BAD_PROOF, "inclusion proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    # 5.
    if sn != 0:
        raise ProofError(Category.BAD_PROOF, "inclusion proof is shorter than the path to the root")
    if not _equal(r, want):
        raise ProofError(Category.BAD_PROOF, f"inclusion proof of leaf {index} does not lead to the root")


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> None:
    """Raise ``ProofError(BAD_PROOF)`` unless ``proof`` shows tree ``first`` is a prefix of ``second``.

    RFC 9162 §2.1.4.2 step for step when ``0 < first < second``.  Edge cases: ``first > second``
    fails; ``first == second`` needs an empty proof and equal roots; ``first == 0`` needs an empty
    proof and ``first_root`` equal to the empty tree's root (the empty tree is a prefix of every
    tree, so there is nothing to prove, but a size-0 head with another root is no head at all).
    """
    r1 = _require_hash(first_root, "first root")
    r2 = _require_hash(second_root, "second root")
    first = _require_size(first, "first size")
    second = _require_size(second, "second size")
    path = _require_proof(proof)
    if first > second:
        raise ProofError(Category.BAD_PROOF, f"first size {first} is larger than second size {second}")
    if first == 0 or first == second:
        if path:
            raise ProofError(Category.BAD_PROOF, f"consistency from size {first} to {second} takes an empty proof")
        if first == 0 and not _equal(r1, EMPTY_ROOT):
            raise ProofError(Category.BAD_PROOF, "a tree of size 0 has the root SHA-256(\"\")")
        if first == second and not _equal(r1, r2):
            raise ProofError(Category.BAD_PROOF, f"two different roots for the same tree size {first}")
        return
    # 1.
    if not path:
        raise ProofError(Category.BAD_PROOF, "consistency proof is empty")
    # 2.
    if first & (first - 1) == 0:
        path = [r1, *path]
    # 3.
    fn, sn = first - 1, second - 1
    # 4.
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    # 5.
    fr = sr = path[0]
    # 6.
    for c in path[1:]:
        if sn == 0:
            raise ProofError(Category.BAD_PROOF, "consistency proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    # 7.
    if sn != 0:
        raise ProofError(Category.BAD_PROOF, "consistency proof is shorter than the path to the root")
    if not _equal(fr, r1):
        raise ProofError(Category.BAD_PROOF, f"consistency proof does not lead to the root of size {first}")
    if not _equal(sr, r2):
        raise ProofError(Category.BAD_PROOF, f"consistency proof does not lead to the root of size {second}")


# --- hex on the wire ------------------------------------------------------------------------------


def hash_hex(h: bytes) -> str:
    """A hash as 64 lowercase hex characters."""
    return h.hex()


def hash_from_hex(value: object, *, what: str = "hash") -> bytes:
    """Decode 64 lowercase hex characters; anything else is ``ProofError(MALFORMED)``."""
    if not is_sha256_hex(value):
        raise ProofError(Category.MALFORMED, f"{what} is not 64 lowercase hex characters")
    return bytes.fromhex(str(value))


def proof_to_hex(proof: Iterable[bytes]) -> list[str]:
    return [h.hex() for h in proof]


def proof_from_hex(values: object) -> list[bytes]:
    """Decode a proof received as a JSON array of hex hashes; refuse other shapes as ``MALFORMED``."""
    if not isinstance(values, list):
        raise ProofError(Category.MALFORMED, "a proof is a JSON array of hex hashes")
    if len(values) > MAX_PROOF_LENGTH:
        raise ProofError(Category.MALFORMED, f"proof of {len(values)} hashes is longer than {MAX_PROOF_LENGTH}")
    return [hash_from_hex(v, what=f"proof[{i}]") for i, v in enumerate(values)]


# --- incremental building -------------------------------------------------------------------------


class CompactRange:
    """The frontier of an append-only tree: one root per perfect subtree, largest first.

    Holds ``popcount(size)`` hashes, so a node persists it (``to_json``) and extends the tree
    across batches without re-reading the leaves.
    """

    def __init__(self) -> None:
        self._size = 0
        self._nodes: list[bytes] = []

    @property
    def size(self) -> int:
        return self._size

    @property
    def nodes(self) -> tuple[bytes, ...]:
        return tuple(self._nodes)

    def append(self, leaf_hash: bytes) -> None:
        """Add the next leaf, given by its leaf hash."""
        if not isinstance(leaf_hash, bytes) or len(leaf_hash) != HASH_SIZE:
            raise ValueError("append takes a 32-byte leaf hash")
        if self._size >= MAX_SAFE_INTEGER:
            raise ValueError("the tree is full")
        nodes = self._nodes
        nodes.append(leaf_hash)
        self._size += 1
        s = self._size
        while not s & 1:
            right = nodes.pop()
            nodes[-1] = node_hash(nodes[-1], right)
            s >>= 1

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        for h in leaf_hashes:
            self.append(h)

    def root(self) -> bytes:
        """The Merkle Tree Hash of the ``size`` leaves appended so far."""
        if not self._nodes:
            return EMPTY_ROOT
        r = self._nodes[-1]
        for left in reversed(self._nodes[:-1]):
            r = node_hash(left, r)
        return r

    def to_json(self) -> dict[str, Any]:
        """``{"size": n, "nodes": [hex, ...]}``, perfect-subtree roots largest (leftmost) first."""
        return {"size": self._size, "nodes": [h.hex() for h in self._nodes]}

    @classmethod
    def from_json(cls, state: Mapping[str, Any]) -> CompactRange:
        """Restore ``to_json`` output; refuse an inconsistent state as ``ProofError(MALFORMED)``."""
        if not isinstance(state, Mapping) or set(state) != {"size", "nodes"}:
            raise ProofError(Category.MALFORMED, "compact range state is not {size, nodes}")
        size, nodes = state["size"], state["nodes"]
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_SAFE_INTEGER:
            raise ProofError(Category.MALFORMED, "compact range size is not a non-negative integer")
        if not isinstance(nodes, list) or len(nodes) != size.bit_count():
            raise ProofError(Category.MALFORMED, f"a compact range of size {size} has {size.bit_count()} nodes")
        cr = cls()
        cr._size = size
        cr._nodes = [hash_from_hex(n, what=f"compact range node {i}") for i, n in enumerate(nodes)]
        return cr
