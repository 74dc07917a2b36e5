"""Generate the keyset vectors in ``protocol/vectors/keysets/`` from ``tests.seeds`` keys.

Run ``python -m tests.protocol.vectorgen_keysets`` to rewrite the files;
``test_keyset_vectors`` regenerates them and compares byte for byte.

The chain of authority XA-ALPHA (times relative to T0, in days):

* v1  issued -80, expires +10: identity-1, signing-1, encryption-1; self-signed.
* v2  issued -60, expires +30: operational rotation; signing-1 and encryption-1 kept retired
  at -60, signing-2 and encryption-2 current; signed by identity-1.
* v3  issued -40, expires +50: identity rotation to identity-2; retired keys dropped;
  signed by identity-1, then identity-2.
* v4  issued -20, expires +70: signing-2 revoked (revoked_at -21), signing-3 current;
  signed by identity-2.

Tampered documents are built here by hand (``_jws``), independently of ``sign_keyset``,
which refuses to produce a wrong signer set.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.card import build_card
from protocol.jose import LocalSigner, b64d, b64e
from protocol.keychain import next_keyset, sign_keyset
from protocol.keysets import KEYSET_TYP, Keyset
from protocol.strictjson import canonical
from tests.seeds import T0, ed25519, entry, signer, x25519

DAY = 86400
YEAR = 365 * DAY
AUTHORITY = "XA-ALPHA"
VECTOR_DIR = Path(__file__).resolve().parents[2] / "protocol" / "vectors" / "keysets"


def _label(name: str) -> str:
    return f"{AUTHORITY}/{name}"


ID1 = signer(_label("identity-1"))
ID2 = signer(_label("identity-2"))
INTRUDER = signer(_label("intruder"))


@dataclass(frozen=True)
class Chain:
    """The valid chain, as keysets and as signed documents."""

    keysets: tuple[Keyset, ...]
    docs: tuple[bytes, ...]


def build_chain() -> Chain:
    sig1, sig2, sig3 = (ed25519(_label(f"signing-{i}")) for i in (1, 2, 3))
    enc1, enc2 = (x25519(_label(f"encryption-{i}")) for i in (1, 2))
    t1, t2, t3, t4 = T0 - 80 * DAY, T0 - 60 * DAY, T0 - 40 * DAY, T0 - 20 * DAY
    v1 = Keyset(
        authority=AUTHORITY, name="Alpha central authority", endpoint="https://alpha.example/comity",
        version=1, issued_at=t1, expires_at=t1 + 90 * DAY, identity_jwk=ID1.public_jwk,
        signing_keys=(entry(sig1, nbf=t1, exp=t1 + YEAR),),
        encryption_keys=(entry(enc1, nbf=t1, exp=t1 + YEAR),),
    )
    v2 = next_keyset(
        v1, now=t2,
        signing_keys=(entry(sig1, nbf=t1, exp=t1 + YEAR, retired_at=t2), entry(sig2, nbf=t2, exp=t2 + YEAR)),
        encryption_keys=(entry(enc1, nbf=t1, exp=t1 + YEAR, retired_at=t2), entry(enc2, nbf=t2, exp=t2 + YEAR)),
    )
    v3 = next_keyset(
        v2, now=t3, identity_jwk=ID2.public_jwk,
        signing_keys=(entry(sig2, nbf=t2, exp=t2 + YEAR),),
        encryption_keys=(entry(enc2, nbf=t2, exp=t2 + YEAR),),
    )
    v4 = next_keyset(
        v3, now=t4,
        signing_keys=(
            entry(sig2, nbf=t2, exp=t2 + YEAR, revoked_at=t4 - DAY), entry(sig3, nbf=t4, exp=t4 + YEAR),
        ),
        encryption_keys=(entry(enc2, nbf=t2, exp=t2 + YEAR),),
    )
    keysets = (v1, v2, v3, v4)
    signers: tuple[list[LocalSigner], ...] = ([ID1], [ID1], [ID1, ID2], [ID2])
    return Chain(keysets, tuple(sign_keyset(ks, s) for ks, s in zip(keysets, signers, strict=True)))


def _jws(keyset: Keyset, signers: Sequence[LocalSigner]) -> bytes:
    """A keyset document with any signer list at all (for tampered vectors)."""
    payload = b64e(canonical(keyset.to_payload()))
    sigs = []
    for s in signers:
        protected = b64e(canonical({"alg": "Ed25519", "kid": s.kid, "typ": KEYSET_TYP}))
        sigs.append({"protected": protected.decode(), "signature": b64e(s.sign(protected + b"." + payload)).decode()})
    return canonical({"payload": payload.decode(), "signatures": sigs})


def _flip_signature(doc: bytes, index: int) -> bytes:
    obj: dict[str, Any] = json.loads(doc)
    raw = bytearray(b64d(obj["signatures"][index]["signature"]))
    raw[0] ^= 0x01
    obj["signatures"][index]["signature"] = b64e(bytes(raw)).decode()
    return canonical(obj)


def _verify(name: str, description: str, chain: list[str], fingerprint: str, now: int,
            expect: str, versions: list[int] | None = None) -> dict[str, Any]:
    v: dict[str, Any] = {
        "name": name, "description": description, "operation": "verify_chain",
        "chain": chain, "fingerprint": fingerprint, "now": now, "expect": expect,
    }
    if versions is not None:
        v["versions"] = versions
    return v


def _update(name: str, description: str, held: list[str], held_now: int, offered: list[str], now: int,
            expect: str, versions: list[int] | None = None) -> dict[str, Any]:
    v: dict[str, Any] = {
        "name": name, "description": description, "operation": "update_chain",
        "held": held, "held_fingerprint": ID1.kid, "held_now": held_now,
        "offered": offered, "now": now, "expect": expect,
    }
    if versions is not None:
        v["versions"] = versions
    return v


def build_vectors() -> dict[str, bytes]:
    """Every file of ``protocol/vectors/keysets/``: name -> exact bytes."""
    chain = build_chain()
    v1, v2, v3, _ = chain.keysets
    files: dict[str, bytes] = {f"v{i}.json": d for i, d in enumerate(chain.docs, start=1)}
    files["card.json"] = build_card(chain.docs)
    files["v1_not_self_signed.json"] = _jws(v1, [INTRUDER])
    files["v2_bad_signature.json"] = _flip_signature(chain.docs[1], 0)
    files["v2_wrong_signer.json"] = _jws(v2, [INTRUDER])
    files["v2_duplicated_signer.json"] = _jws(v2, [ID1, ID1])
    files["v2_equivocating.json"] = sign_keyset(
        next_keyset(v1, now=v2.issued_at, endpoint="https://mirror.alpha.example/comity",
                    signing_keys=v2.signing_keys, encryption_keys=v2.encryption_keys),
        [ID1],
    )
    files["v3_bad_new_signature.json"] = _flip_signature(chain.docs[2], 1)
    files["v3_missing_new_signer.json"] = _jws(v3, [ID1])
    files["v3_missing_old_signer.json"] = _jws(v3, [ID2])
    files["v3_duplicated_signer.json"] = _jws(v3, [ID1, ID1])
    files["v3_reversed_signers.json"] = _jws(v3, [ID2, ID1])

    full = ["v1.json", "v2.json", "v3.json", "v4.json"]
    nowok = T0
    expires = chain.keysets[-1].expires_at
    vectors = [
        _verify("chain_valid", "v1..v4 pinned by the original identity", full, ID1.kid, nowok, "ok", [1, 2, 3, 4]),
        _verify("chain_valid_new_fingerprint", "v1..v4 pinned by the rotated identity", full, ID2.kid, nowok,
                "ok", [1, 2, 3, 4]),
        _verify("chain_expired_intermediate", "v1 and v2 have expired; only the newest counts", full, ID1.kid,
                T0 + 40 * DAY, "ok", [1, 2, 3, 4]),
        _verify("chain_newest_at_expiry", "now equals the newest expires_at: still usable", full, ID1.kid,
                expires, "ok", [1, 2, 3, 4]),
        _verify("chain_expired_newest", "now is one second after the newest expires_at", full, ID1.kid,
                expires + 1, "keyset_expired"),
        _verify("fingerprint_mismatch", "no version has the pinned identity", full, INTRUDER.kid, nowok,
                "fingerprint_mismatch"),
        _verify("not_self_signed", "v1 signed by another key", ["v1_not_self_signed.json"], ID1.kid, nowok,
                "bad_signer_set"),
        _verify("bad_signature", "v2's one signature altered", ["v1.json", "v2_bad_signature.json"], ID1.kid,
                nowok, "bad_signature"),
        _verify("bad_signature_new_identity", "v3's second (new identity) signature altered",
                ["v1.json", "v2.json", "v3_bad_new_signature.json"], ID1.kid, nowok, "bad_signature"),
        _verify("wrong_signer", "v2 signed by a key that is not v1's identity",
                ["v1.json", "v2_wrong_signer.json"], ID1.kid, nowok, "bad_signer_set"),
        _verify("duplicated_signer", "v2 carries identity-1's signature twice",
                ["v1.json", "v2_duplicated_signer.json"], ID1.kid, nowok, "bad_signer_set"),
        _verify("missing_new_signer", "identity rotation signed by the old identity alone",
                ["v1.json", "v2.json", "v3_missing_new_signer.json"], ID1.kid, nowok, "bad_signer_set"),
        _verify("missing_old_signer", "identity rotation signed by the new identity alone",
                ["v1.json", "v2.json", "v3_missing_old_signer.json"], ID1.kid, nowok, "bad_signer_set"),
        _verify("duplicated_rotation_signer", "identity rotation signed twice by the old identity",
                ["v1.json", "v2.json", "v3_duplicated_signer.json"], ID1.kid, nowok, "bad_signer_set"),
        _verify("reversed_rotation_signers", "identity rotation signatures new first, then old",
                ["v1.json", "v2.json", "v3_reversed_signers.json"], ID1.kid, nowok, "bad_signer_set"),
        _verify("broken_chain_gap", "v3 missing between v2 and v4", ["v1.json", "v2.json", "v4.json"], ID1.kid,
                nowok, "broken_chain"),
        _verify("broken_chain_no_v1", "a chain must start at v1", full[1:], ID2.kid, nowok, "broken_chain"),
        _verify("equivocating_version_alone", "the other v2 is valid on its own; only comparison finds it",
                ["v1.json", "v2_equivocating.json"], ID1.kid, nowok, "ok", [1, 2]),
        _update("update_walk", "held v1..v2, offered the whole card", full[:2], nowok, full, nowok, "ok",
                [1, 2, 3, 4]),
        _update("update_walk_suffix", "held v1..v2, offered v3..v4 only", full[:2], nowok, full[2:], nowok,
                "ok", [1, 2, 3, 4]),
        _update("update_walk_expired_intermediate", "held v1 only; v1..v3 have expired when v4 arrives",
                full[:1], T0 - 70 * DAY, full[1:], T0 + 60 * DAY, "ok", [1, 2, 3, 4]),
        _update("update_unchanged", "offered exactly the newest held version", full, nowok, full[3:], nowok,
                "ok", [1, 2, 3, 4]),
        _update("rollback", "held v1..v4, offered the older card v1..v3", full, nowok, full[:3], nowok,
                "rollback"),
        _update("update_gap", "held v1..v2, offered v4 without v3", full[:2], nowok, full[3:], nowok,
                "broken_chain"),
        _update("equivocation", "held v1..v2, offered another validly signed v2",
                full[:2], nowok, ["v1.json", "v2_equivocating.json"], nowok, "equivocation"),
        _update("update_expired_newest", "v4 offered after it expired", full[:2], nowok, full[2:], expires + 1,
                "keyset_expired"),
        {"name": "card", "description": "the card of v1..v4 yields their exact bytes", "operation": "parse_card",
         "card": "card.json", "chain": full, "expect": "ok"},
    ]
    index = {
        "description": (
            "comity/1 keyset chains, SPEC §3. Each vector names an operation: verify_chain (inputs: chain, "
            "oldest first; the pinned fingerprint; now), update_chain (a held chain, verified first with "
            "held_fingerprint at held_now; the offered documents; now) or parse_card (card; the chain it must "
            "yield). expect is ok or the category; versions lists the resulting chain's versions."
        ),
        "context": {
            "authority": AUTHORITY,
            "t0": T0,
            "fingerprints": {"identity-1": ID1.kid, "identity-2": ID2.kid, "intruder": INTRUDER.kid},
            "chain": full,
        },
        "vectors": vectors,
    }
    files["index.json"] = (json.dumps(index, indent=2, ensure_ascii=False) + "\n").encode()
    return files


def write_vectors(directory: Path = VECTOR_DIR) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in build_vectors().items():
        (directory / name).write_bytes(data)


if __name__ == "__main__":
    write_vectors()
    print(f"wrote {VECTOR_DIR}")
