"""Generate ``protocol/vectors/merkle.json``: RFC 6962 reference leaves, roots, proofs and one signed head.

Run ``python -m tests.protocol.vectorgen_merkle`` to rewrite the file; ``test_merkle.py`` regenerates
it and compares bytes.  Ed25519 is deterministic and the key comes from ``tests.seeds``, so the head
token is reproducible.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from protocol.heads import HEAD_TYP, TreeHead, sign_head
from protocol.merkle import (
    EMPTY_ROOT,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    proof_to_hex,
    root_from_leaf_hashes,
)
from tests import seeds

VECTOR_PATH = Path(__file__).resolve().parents[2] / "protocol" / "vectors" / "merkle.json"

#: The leaves of the RFC 6962 reference tree (certificate-transparency test data), as hex.
REFERENCE_LEAVES = (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f",
)
INCLUSION_CASES = ((0, 1), (0, 8), (5, 8), (2, 3), (1, 5), (7, 8), (4, 7))
CONSISTENCY_CASES = ((1, 1), (1, 8), (6, 8), (2, 5), (6, 7), (3, 7), (4, 8), (0, 8))
HEAD_AUTHORITY = "GB-UKCA"
HEAD_SIGNER_LABEL = "GB-UKCA/signing"


def build_vectors() -> dict[str, Any]:
    leaves = [bytes.fromhex(x) for x in REFERENCE_LEAVES]
    hashes = [leaf_hash(x) for x in leaves]
    roots = {n: root_from_leaf_hashes(hashes[:n]) for n in range(len(hashes) + 1)}
    signer = seeds.signer(HEAD_SIGNER_LABEL)
    head = TreeHead(iss=HEAD_AUTHORITY, log="exchange", tree_size=8, root=roots[8].hex(), at=seeds.T0)
    token = sign_head(head, signer=signer)
    return {
        "description": "comity/1 audit-log Merkle tree (RFC 9162 §2.1): reference leaves, roots, "
        "inclusion and consistency proofs, one signed tree head",
        "hashing": {
            "leaf": "SHA-256(0x00 || entry)",
            "node": "SHA-256(0x01 || left || right)",
            "empty_root": EMPTY_ROOT.hex(),
        },
        "leaves": [
            {"index": i, "entry": x.hex(), "leaf_hash": h.hex()}
            for i, (x, h) in enumerate(zip(leaves, hashes, strict=True))
        ],
        "roots": [{"tree_size": n, "root": r.hex()} for n, r in roots.items()],
        "inclusion": [
            {
                "leaf_index": i, "tree_size": n, "leaf_hash": hashes[i].hex(), "root": roots[n].hex(),
                "proof": proof_to_hex(inclusion_proof(hashes, i, n)),
            }
            for i, n in INCLUSION_CASES
        ],
        "consistency": [
            {
                "first": m, "second": n, "first_root": roots[m].hex(), "second_root": roots[n].hex(),
                "proof": proof_to_hex(consistency_proof(hashes, m, n)),
            }
            for m, n in CONSISTENCY_CASES
        ],
        "head": {
            "typ": HEAD_TYP,
            "signer": {"label": HEAD_SIGNER_LABEL, "kid": signer.kid, "public_jwk": signer.public_jwk},
            "header": {"alg": "Ed25519", "kid": signer.kid, "typ": HEAD_TYP},
            "payload": head.to_payload(),
            "token": token.decode("ascii"),
        },
    }


def render(vectors: dict[str, Any]) -> bytes:
    return (json.dumps(vectors, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def main() -> None:
    VECTOR_PATH.parent.mkdir(parents=True, exist_ok=True)
    VECTOR_PATH.write_bytes(render(build_vectors()))
    print(f"wrote {VECTOR_PATH}")


if __name__ == "__main__":
    main()
