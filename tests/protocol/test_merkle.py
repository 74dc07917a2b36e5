"""protocol.merkle against RFC 6962 reference data, a naive RFC 9162 model, and corruption probes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from typing import overload

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.errors import Category, ProofError
from protocol.merkle import (
    EMPTY_ROOT,
    MAX_PROOF_LENGTH,
    CompactRange,
    consistency_proof,
    hash_from_hex,
    hash_hex,
    inclusion_proof,
    leaf_hash,
    node_hash,
    proof_from_hex,
    proof_to_hex,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)
from tests.protocol import vectorgen_merkle

# --- RFC 6962 reference data (transparency-dev/merkle proof/verify_test.go, certificate-transparency) ---

LEAVES = [bytes.fromhex(x) for x in vectorgen_merkle.REFERENCE_LEAVES]
HASHES = [leaf_hash(x) for x in LEAVES]

#: Published roots of the reference tree for sizes 1..8.
ROOTS = {
    1: "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    2: "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    3: "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    4: "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    5: "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    6: "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    7: "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    8: "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
}
EMPTY_HEX = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

#: Published inclusion proofs: (leaf index, tree size, proof).
INCLUSION = [
    (0, 1, []),
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]

#: Published consistency proofs: (first, second, proof).
CONSISTENCY = [
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]


def root(n: int) -> bytes:
    return bytes.fromhex(ROOTS[n]) if n else EMPTY_ROOT


def unhex(proof: list[str]) -> list[bytes]:
    return [bytes.fromhex(p) for p in proof]


# --- a naive model written straight from RFC 9162 §2.1 -------------------------------------------


def naive_mth(d: Sequence[bytes]) -> bytes:
    """MTH over entries (not leaf hashes)."""
    n = len(d)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + naive_mth(d[:k]) + naive_mth(d[k:])).digest()


def naive_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return [*naive_path(m, d[:k]), naive_mth(d[k:])]
    return [*naive_path(m - k, d[k:]), naive_mth(d[:k])]


def naive_subproof(m: int, d: Sequence[bytes], whole: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if whole else [naive_mth(d)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*naive_subproof(m, d[:k], whole), naive_mth(d[k:])]
    return [*naive_subproof(m - k, d[k:], False), naive_mth(d[:k])]


def entries(n: int) -> list[bytes]:
    return [b"entry %d" % i for i in range(n)]


# --- reference vectors ---------------------------------------------------------------------------


def test_hashing_primitives() -> None:
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    assert node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    assert EMPTY_ROOT.hex() == EMPTY_HEX
    assert root_from_leaf_hashes([]) == EMPTY_ROOT


@pytest.mark.parametrize("n", range(1, 9))
def test_reference_roots(n: int) -> None:
    assert root_from_leaf_hashes(HASHES[:n]).hex() == ROOTS[n]
    assert naive_mth(LEAVES[:n]).hex() == ROOTS[n]
    cr = CompactRange()
    cr.extend(HASHES[:n])
    assert cr.root().hex() == ROOTS[n]


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_reference_inclusion(index: int, size: int, proof: list[str]) -> None:
    assert proof_to_hex(inclusion_proof(HASHES, index, size)) == proof
    verify_inclusion(HASHES[index], index, size, unhex(proof), root(size))


@pytest.mark.parametrize(("first", "second", "proof"), CONSISTENCY)
def test_reference_consistency(first: int, second: int, proof: list[str]) -> None:
    assert proof_to_hex(consistency_proof(HASHES, first, second)) == proof
    verify_consistency(first, second, root(first), root(second), unhex(proof))


# --- corruption probes: every one is BAD_PROOF ---------------------------------------------------

SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


def flip(h: bytes, bit: int = 3) -> bytes:
    return bytes([h[0] ^ (1 << bit)]) + h[1:]


def inclusion_probes(index: int, size: int, proof: list[bytes]) -> Iterator[tuple[str, tuple[object, ...]]]:
    # A wrong size is probed with size * 2 and size / 2 (path lengths differ): a proof binds the size only
    # through its shape (5 and 6 leaves give index 1 paths of the same shape), the signed head binds the rest.
    leaf, r = HASHES[index], root(size)
    yield "index - 1", (leaf, index - 1, size, proof, r)
    yield "index + 1", (leaf, index + 1, size, proof, r)
    yield "index ^ 2", (leaf, index ^ 2, size, proof, r)
    yield "size * 2", (leaf, index, size * 2, proof, r)
    yield "size / 2", (leaf, index, size // 2, proof, r)
    yield "wrong leaf", (leaf_hash(b"WrongLeaf"), index, size, proof, r)
    yield "empty root", (leaf, index, size, proof, EMPTY_ROOT)
    yield "random root", (leaf, index, size, proof, SOME_HASH)
    yield "trailing root", (leaf, index, size, [*proof, r], r)
    yield "preceding root", (leaf, index, size, [r, *proof], r)
    yield "trailing short element", (leaf, index, size, [*proof, b""], r)
    for i in range(len(proof)):
        yield f"flipped bit in proof[{i}]", (leaf, index, size, [*proof[:i], flip(proof[i]), *proof[i + 1:]], r)
    if proof:
        yield "missing last element", (leaf, index, size, proof[:-1], r)
        yield "missing first element", (leaf, index, size, proof[1:], r)
    if len(proof) > 1:
        yield "extra element inside", (leaf, index, size, [proof[0], SOME_HASH, *proof[1:]], r)


INCLUSION_PROBES = [
    pytest.param(*args, id=f"{i}/{n}: {desc}")
    for i, n, p in INCLUSION
    for desc, args in inclusion_probes(i, n, unhex(p))
]


@pytest.mark.parametrize(("leaf", "index", "size", "proof", "r"), INCLUSION_PROBES)
def test_inclusion_probe_rejected(leaf: bytes, index: int, size: int, proof: list[bytes], r: bytes) -> None:
    with pytest.raises(ProofError) as e:
        verify_inclusion(leaf, index, size, proof, r)
    assert e.value.category is Category.BAD_PROOF


def consistency_probes(m: int, n: int, proof: list[bytes]) -> Iterator[tuple[str, tuple[object, ...]]]:
    r1, r2 = root(m), root(n)
    yield "size1 - 1", (m - 1, n, r1, r2, proof)
    yield "size1 + 1", (m + 1, n, r1, r2, proof)
    yield "size1 ^ 2", (m ^ 2, n, r1, r2, proof)
    yield "size2 * 2", (m, n * 2, r1, r2, proof)
    yield "size2 / 2", (m, n // 2, r1, r2, proof)
    yield "size1 > size2", (n, m, r2, r1, proof)
    yield "wrong root1", (m, n, SOME_HASH, r2, proof)
    yield "wrong root2", (m, n, r1, SOME_HASH, proof)
    yield "swapped roots", (m, n, r2, r1, proof)
    yield "empty proof", (m, n, r1, r2, [])
    yield "trailing root1", (m, n, r1, r2, [*proof, r1])
    yield "trailing root2", (m, n, r1, r2, [*proof, r2])
    yield "preceding root1", (m, n, r1, r2, [r1, *proof])
    yield "preceding root2", (m, n, r1, r2, [r2, *proof])
    yield "preceding proof[0]", (m, n, r1, r2, [proof[0], *proof])
    yield "trailing short element", (m, n, r1, r2, [*proof, b""])
    yield "missing last element", (m, n, r1, r2, proof[:-1])
    yield "missing first element", (m, n, r1, r2, proof[1:])
    for i in range(len(proof)):
        yield f"flipped bit in proof[{i}]", (m, n, r1, r2, [*proof[:i], flip(proof[i], 4), *proof[i + 1:]])


CONSISTENCY_PROBES = [
    pytest.param(*args, id=f"{m}->{n}: {desc}")
    for m, n, p in CONSISTENCY
    if p
    for desc, args in consistency_probes(m, n, unhex(p))
]


@pytest.mark.parametrize(("first", "second", "r1", "r2", "proof"), CONSISTENCY_PROBES)
def test_consistency_probe_rejected(first: int, second: int, r1: bytes, r2: bytes, proof: list[bytes]) -> None:
    with pytest.raises(ProofError) as e:
        verify_consistency(first, second, r1, r2, proof)
    assert e.value.category is Category.BAD_PROOF


# --- edge cases ------------------------------------------------------------------------------------


def test_consistency_edge_cases_accepted() -> None:
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    verify_consistency(0, 8, EMPTY_ROOT, root(8), [])
    verify_consistency(5, 5, root(5), root(5), [])
    assert consistency_proof(HASHES, 0, 8) == []
    assert consistency_proof(HASHES, 5, 5) == []


@pytest.mark.parametrize(
    ("first", "second", "r1", "r2", "proof"),
    [
        pytest.param(0, 0, EMPTY_ROOT, SOME_HASH, [], id="0->0 roots differ"),
        pytest.param(0, 8, SOME_HASH, bytes.fromhex(ROOTS[8]), [], id="0->8 root1 not the empty root"),
        pytest.param(0, 8, EMPTY_ROOT, bytes.fromhex(ROOTS[8]), [EMPTY_ROOT], id="0->8 non-empty proof"),
        pytest.param(1, 1, bytes.fromhex(ROOTS[1]), bytes.fromhex(ROOTS[2]), [], id="1->1 roots differ"),
        pytest.param(1, 1, bytes.fromhex(ROOTS[1]), bytes.fromhex(ROOTS[1]), [EMPTY_ROOT], id="1->1 non-empty"),
        pytest.param(1, 0, bytes.fromhex(ROOTS[1]), EMPTY_ROOT, [], id="size1 > size2, empty proof"),
        pytest.param(2, 1, bytes.fromhex(ROOTS[2]), bytes.fromhex(ROOTS[1]), [], id="2->1"),
        pytest.param(1, 2, bytes.fromhex(ROOTS[1]), bytes.fromhex(ROOTS[2]), [], id="1->2 empty proof"),
        pytest.param(-1, 2, bytes.fromhex(ROOTS[1]), bytes.fromhex(ROOTS[2]), [], id="negative size"),
        pytest.param(True, 2, bytes.fromhex(ROOTS[1]), bytes.fromhex(ROOTS[2]), [], id="bool size"),
        pytest.param(1, 2, ROOTS[1], bytes.fromhex(ROOTS[2]), [], id="root as str"),
        pytest.param(1, 2, bytes.fromhex(ROOTS[1]), bytes.fromhex(ROOTS[2])[:31], [HASHES[1]], id="short root2"),
        pytest.param(1, 2, bytes.fromhex(ROOTS[1]), bytes.fromhex(ROOTS[2]), [HASHES[1]] * (MAX_PROOF_LENGTH + 1),
                     id="overlong proof"),
    ],
)
def test_consistency_edge_cases_rejected(first: int, second: int, r1: bytes, r2: bytes, proof: list[bytes]) -> None:
    with pytest.raises(ProofError) as e:
        verify_consistency(first, second, r1, r2, proof)
    assert e.value.category is Category.BAD_PROOF


@pytest.mark.parametrize(
    ("leaf", "index", "size", "r"),
    [
        pytest.param(SOME_HASH, 0, 0, EMPTY_ROOT, id="empty tree"),
        pytest.param(SOME_HASH, 1, 1, SOME_HASH, id="index == size"),
        pytest.param(SOME_HASH, 2, 1, SOME_HASH, id="index > size"),
        pytest.param(SOME_HASH, -1, 1, SOME_HASH, id="negative index"),
        pytest.param(b"", 0, 1, b"", id="empty hashes"),
        pytest.param(SOME_HASH, 0, 1, flip(SOME_HASH), id="1-leaf root differs"),
        pytest.param(SOME_HASH + b"\x00", 0, 1, SOME_HASH + b"\x00", id="33-byte hashes"),
    ],
)
def test_inclusion_edge_cases_rejected(leaf: bytes, index: int, size: int, r: bytes) -> None:
    with pytest.raises(ProofError) as e:
        verify_inclusion(leaf, index, size, [], r)
    assert e.value.category is Category.BAD_PROOF


def test_single_leaf_tree_inclusion() -> None:
    verify_inclusion(SOME_HASH, 0, 1, [], SOME_HASH)


@pytest.mark.parametrize(
    ("call", "args"),
    [
        (inclusion_proof, (HASHES, 8, 8)),
        (inclusion_proof, (HASHES, 0, 9)),
        (inclusion_proof, (HASHES, -1, 8)),
        (consistency_proof, (HASHES, 5, 4)),
        (consistency_proof, (HASHES, 1, 9)),
        (consistency_proof, (HASHES, True, 4)),
    ],
)
def test_generation_refuses_impossible_requests(call: object, args: tuple[object, ...]) -> None:
    with pytest.raises(ValueError):
        call(*args)  # type: ignore[operator]


class CountingLeaves(Sequence[bytes]):
    """A leaf-hash source that counts how many hashes were read, as a database would be queried."""

    def __init__(self, hashes: list[bytes]) -> None:
        self._hashes = hashes
        self.read = 0

    def __len__(self) -> int:
        return len(self._hashes)

    @overload
    def __getitem__(self, i: int) -> bytes: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[bytes]: ...
    def __getitem__(self, i: int | slice) -> bytes | Sequence[bytes]:
        if isinstance(i, slice):
            part = self._hashes[i]
            self.read += len(part)
            return part
        self.read += 1
        return self._hashes[i]


def test_generation_reads_each_leaf_at_most_once() -> None:
    n = 1000
    source = CountingLeaves([leaf_hash(x) for x in entries(n)])
    for index in (0, 1, 511, 512, 998, 999):
        source.read = 0
        inclusion_proof(source, index, n)
        assert source.read <= n - 1
    for first in (1, 2, 3, 511, 512, 513, 999):
        source.read = 0
        consistency_proof(source, first, n)
        assert source.read <= n


# --- hex and compact range state ---------------------------------------------------------------------


def test_hex_round_trip() -> None:
    proof = unhex(INCLUSION[1][2])
    assert proof_from_hex(proof_to_hex(proof)) == proof
    assert hash_from_hex(hash_hex(EMPTY_ROOT)) == EMPTY_ROOT


@pytest.mark.parametrize(
    "value",
    [EMPTY_HEX.upper(), EMPTY_HEX[:-2], EMPTY_HEX + "00", "zz" * 32, 7, None, b"\x00" * 32],
)
def test_hash_from_hex_refuses(value: object) -> None:
    with pytest.raises(ProofError) as e:
        hash_from_hex(value)
    assert e.value.category is Category.MALFORMED


@pytest.mark.parametrize("value", ["ab", {"0": EMPTY_HEX}, [EMPTY_HEX.upper()], [EMPTY_HEX] * 129])
def test_proof_from_hex_refuses(value: object) -> None:
    with pytest.raises(ProofError) as e:
        proof_from_hex(value)
    assert e.value.category is Category.MALFORMED


def test_compact_range_state_round_trip() -> None:
    cr = CompactRange()
    cr.extend(HASHES[:7])
    state = json.loads(json.dumps(cr.to_json()))
    assert state["size"] == 7 and len(state["nodes"]) == 3
    restored = CompactRange.from_json(state)
    assert restored.size == 7 and restored.nodes == cr.nodes
    restored.append(HASHES[7])
    assert restored.root().hex() == ROOTS[8]
    assert restored.to_json() == {"size": 8, "nodes": [ROOTS[8]]}
    assert CompactRange.from_json({"size": 0, "nodes": []}).root() == EMPTY_ROOT


@pytest.mark.parametrize(
    "state",
    [
        {"size": 3, "nodes": [EMPTY_HEX]},
        {"size": 3, "nodes": [EMPTY_HEX, EMPTY_HEX, EMPTY_HEX]},
        {"size": -1, "nodes": []},
        {"size": True, "nodes": [EMPTY_HEX]},
        {"size": 1, "nodes": [EMPTY_HEX.upper()]},
        {"size": 1, "nodes": EMPTY_HEX},
        {"size": 1, "nodes": [EMPTY_HEX], "extra": 1},
        {"nodes": []},
    ],
)
def test_compact_range_refuses_bad_state(state: dict[str, object]) -> None:
    with pytest.raises(ProofError) as e:
        CompactRange.from_json(state)
    assert e.value.category is Category.MALFORMED


def test_compact_range_refuses_non_hash() -> None:
    with pytest.raises(ValueError):
        CompactRange().append(b"short")


# --- properties --------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(min_value=1, max_value=300), data=st.data())
def test_every_proof_verifies(n: int, data: st.DataObject) -> None:
    d = entries(n)
    hashes = [leaf_hash(x) for x in d]
    roots = [root_from_leaf_hashes(hashes[:i]) for i in range(n + 1)]
    assert roots[n] == naive_mth(d)
    cr = CompactRange()
    for i, h in enumerate(hashes):
        cr.append(h)
        assert cr.size == i + 1 and cr.root() == roots[i + 1]
    for i in range(n):
        proof = inclusion_proof(hashes, i, n)
        verify_inclusion(hashes[i], i, n, proof, roots[n])
    if n <= 40:
        pairs = [(m, k) for k in range(n + 1) for m in range(k + 1)]
    else:
        pairs = data.draw(st.lists(st.tuples(st.integers(0, n), st.integers(0, n)), min_size=20, max_size=40))
        pairs = [(min(a, b), max(a, b)) for a, b in pairs]
    for m, k in pairs:
        proof = consistency_proof(hashes, m, k)
        verify_consistency(m, k, roots[m], roots[k], proof)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(min_value=1, max_value=70), data=st.data())
def test_generation_matches_the_rfc_definitions(n: int, data: st.DataObject) -> None:
    d = entries(n)
    hashes = [leaf_hash(x) for x in d]
    i = data.draw(st.integers(0, n - 1))
    assert inclusion_proof(hashes, i, n) == naive_path(i, d)
    m = data.draw(st.integers(1, n))
    assert consistency_proof(hashes, m, n) == naive_subproof(m, d, True)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(min_value=2, max_value=64), data=st.data())
def test_a_proof_for_another_place_is_refused(n: int, data: st.DataObject) -> None:
    hashes = [leaf_hash(x) for x in entries(n)]
    r = root_from_leaf_hashes(hashes)
    i = data.draw(st.integers(0, n - 1))
    j = data.draw(st.integers(0, n - 1).filter(lambda j: j != i))
    with pytest.raises(ProofError) as e:
        verify_inclusion(hashes[i], j, n, inclusion_proof(hashes, i, n), r)
    assert e.value.category is Category.BAD_PROOF


# --- committed vectors ---------------------------------------------------------------------------------


def test_vectors_regenerate_byte_for_byte() -> None:
    committed = vectorgen_merkle.VECTOR_PATH.read_bytes()
    assert vectorgen_merkle.render(vectorgen_merkle.build_vectors()) == committed


def test_vectors_hold_the_published_values() -> None:
    v = json.loads(vectorgen_merkle.VECTOR_PATH.read_bytes())
    assert v["hashing"]["empty_root"] == EMPTY_HEX
    assert {r["tree_size"]: r["root"] for r in v["roots"] if r["tree_size"]} == ROOTS
    for case in v["inclusion"]:
        verify_inclusion(
            bytes.fromhex(case["leaf_hash"]), case["leaf_index"], case["tree_size"],
            proof_from_hex(case["proof"]), hash_from_hex(case["root"]),
        )
    for case in v["consistency"]:
        verify_consistency(
            case["first"], case["second"], hash_from_hex(case["first_root"]), hash_from_hex(case["second_root"]),
            proof_from_hex(case["proof"]),
        )
    published = {(i, n): p for i, n, p in INCLUSION}
    for case in v["inclusion"]:
        if (case["leaf_index"], case["tree_size"]) in published:
            assert case["proof"] == published[(case["leaf_index"], case["tree_size"])]
    published_c = {(m, n): p for m, n, p in CONSISTENCY}
    for case in v["consistency"]:
        if (case["first"], case["second"]) in published_c:
            assert case["proof"] == published_c[(case["first"], case["second"])]
