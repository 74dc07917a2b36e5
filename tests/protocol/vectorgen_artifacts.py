"""Receipt, signed-error and chunk vectors of comity/1 (written by ``vectorgen_envelopes``).

Receipts and signed errors are JWS: Ed25519 is deterministic, so every file regenerates
byte-for-byte.  Chunks are JWE: committed once, opened by the test with the seeded keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from protocol.chunks import CHUNK_TYP, seal_chunk
from protocol.errors import ERROR_TABLE, Category
from protocol.jose import LocalSigner, b64e, sign_compact
from protocol.receipts import RECEIPT_TYP, Receipt, sign_receipt
from protocol.rejections import ERROR_TYP, SignedError, sign_error
from protocol.strictjson import canonical
from tests import seeds
from tests.protocol.jwe_craft import encrypt_dir, flip_segment
from tests.protocol.vectorgen_envelopes import (
    MESSAGE_ID,
    RECEIVER,
    SENDER,
    T0,
    THIRD,
    attachment_bytes,
    attachment_key,
    dump_json,
)

ENVELOPE_SHA256 = hashlib.sha256(b"comity/1 vector: the envelope bytes the sender sent").hexdigest()
OTHER_SHA256 = hashlib.sha256(b"comity/1 vector: other envelope bytes").hexdigest()
OTHER_ID = seeds.seed("envelope/other-id")[:16].hex()
ROOT = seeds.seed("exchange-log/root").hex()


def receiver_signer() -> LocalSigner:
    return seeds.signer(f"{RECEIVER}/signing")


def stranger_signer() -> LocalSigner:
    return seeds.signer(f"{RECEIVER}/next-signing")


def receipt(**changes: Any) -> Receipt:
    base = Receipt(iss=RECEIVER, aud=SENDER, id=MESSAGE_ID, envelope_sha256=ENVELOPE_SHA256,
                   received_at=T0 + 5, leaf_index=41, tree_size=42, root=ROOT)
    return replace(base, **changes)


def signed_error(**changes: Any) -> SignedError:
    base = SignedError(iss=RECEIVER, aud=SENDER, category=Category.BAD_SIGNATURE,
                       envelope_sha256=ENVELOPE_SHA256, at=T0 + 5)
    return replace(base, **changes)


def head_token() -> bytes:
    p = {"v": 1, "iss": RECEIVER, "log": "exchange", "tree_size": 42, "root": ROOT, "at": T0 + 5}
    return sign_compact(typ="comity-head+jws", payload=p, signer=receiver_signer())


def swap_payload(token: bytes, other: bytes) -> bytes:
    """``token``'s header and signature around ``other``'s payload (a tampered payload)."""
    h, _, s = token.split(b".")
    return b".".join([h, other.split(b".")[1], s])


@dataclass(frozen=True)
class JwsCase:
    name: str
    expect: str
    description: str
    build: Callable[[], bytes]
    now: int = T0


def _receipt_cases() -> list[JwsCase]:
    C = Category
    r = receipt().to_payload()
    return [
        JwsCase("ok", "ok", "a receipt for exactly what was sent",
                lambda: sign_receipt(receipt(), signer=receiver_signer())),
        JwsCase("wrong-type-error", C.WRONG_TYPE, "a signed error given as a receipt",
                lambda: sign_error(signed_error(), signer=receiver_signer())),
        JwsCase("wrong-type-head", C.WRONG_TYPE, "a tree head given as a receipt", head_token),
        JwsCase("mismatch-iss", C.RECEIPT_MISMATCH, f"iss is {THIRD}, not the receiver",
                lambda: sign_receipt(receipt(iss=THIRD), signer=receiver_signer())),
        JwsCase("mismatch-aud", C.RECEIPT_MISMATCH, f"aud is {THIRD}, not the sender",
                lambda: sign_receipt(receipt(aud=THIRD), signer=receiver_signer())),
        JwsCase("mismatch-id", C.RECEIPT_MISMATCH, "the receipt names another message id",
                lambda: sign_receipt(receipt(id=OTHER_ID), signer=receiver_signer())),
        JwsCase("mismatch-envelope-sha256", C.RECEIPT_MISMATCH, "the receipt is for other envelope bytes",
                lambda: sign_receipt(receipt(envelope_sha256=OTHER_SHA256), signer=receiver_signer())),
        JwsCase("mismatch-future", C.RECEIPT_MISMATCH, "received_at is an hour after now (live check)",
                lambda: sign_receipt(receipt(received_at=T0 + 3600), signer=receiver_signer())),
        JwsCase("bad-signature", C.BAD_SIGNATURE, "the payload of the mismatch-id receipt under the ok signature",
                lambda: swap_payload(sign_receipt(receipt(), signer=receiver_signer()),
                                     sign_receipt(receipt(id=OTHER_ID), signer=receiver_signer()))),
        JwsCase("unknown-signing-key", C.UNKNOWN_SIGNING_KEY, "signed by a key not in the receiver's keyset",
                lambda: sign_receipt(receipt(), signer=stranger_signer())),
        JwsCase("malformed-extra-member", C.MALFORMED, "the payload has an extra member 'note'",
                lambda: sign_compact(typ=RECEIPT_TYP, payload={**r, "note": "x"}, signer=receiver_signer())),
        JwsCase("malformed-leaf-index", C.MALFORMED, "leaf_index is not below tree_size",
                lambda: sign_compact(typ=RECEIPT_TYP, payload={**r, "leaf_index": 42}, signer=receiver_signer())),
    ]


def _error_cases() -> list[JwsCase]:
    C = Category
    e = signed_error().to_payload()
    return [
        JwsCase("ok-permanent", "ok", "bad_signature: permanent, the sender gives up",
                lambda: sign_error(signed_error(), signer=receiver_signer())),
        JwsCase("ok-retry-after-refresh", "ok", "unknown_recipient_key: refresh the keyset, re-encrypt",
                lambda: sign_error(signed_error(category=C.UNKNOWN_RECIPIENT_KEY), signer=receiver_signer())),
        JwsCase("ok-retryable", "ok", "not_yet_valid: retry the same bytes later",
                lambda: sign_error(signed_error(category=C.NOT_YET_VALID), signer=receiver_signer())),
        JwsCase("mismatch-other-bytes", C.RECEIPT_MISMATCH, "the error is bound to other envelope bytes",
                lambda: sign_error(signed_error(envelope_sha256=OTHER_SHA256), signer=receiver_signer())),
        JwsCase("mismatch-other-sender", C.RECEIPT_MISMATCH, f"the error is addressed to {THIRD}",
                lambda: sign_error(signed_error(aud=THIRD), signer=receiver_signer())),
        JwsCase("mismatch-other-peer", C.RECEIPT_MISMATCH, f"the error claims to come from {THIRD}",
                lambda: sign_error(signed_error(iss=THIRD), signer=receiver_signer())),
        JwsCase("malformed-unknown-category", C.MALFORMED, "category 'overloaded' is not in the error table",
                lambda: sign_compact(typ=ERROR_TYP, payload={**e, "category": "overloaded"},
                                     signer=receiver_signer())),
        JwsCase("bad-signature", C.BAD_SIGNATURE, "a permanent category swapped into a retryable error",
                lambda: swap_payload(sign_error(signed_error(category=C.NOT_YET_VALID), signer=receiver_signer()),
                                     sign_error(signed_error(), signer=receiver_signer()))),
        JwsCase("wrong-type", C.WRONG_TYPE, "a receipt given as an error",
                lambda: sign_receipt(receipt(), signer=receiver_signer())),
        JwsCase("unknown-signing-key", C.UNKNOWN_SIGNING_KEY, "signed by a key not in the receiver's keyset",
                lambda: sign_error(signed_error(), signer=stranger_signer())),
    ]


RECEIPT_CASES = _receipt_cases()
ERROR_CASES = _error_cases()


def _jws_index(cases: list[JwsCase], description: str, context: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": description,
        "context": context,
        "vectors": [
            {"file": f"{c.name}.jws", "expect": str(c.expect), "now": c.now, "description": c.description}
            for c in cases
        ],
    }


def artifact_files() -> dict[str, bytes]:
    keyset = seeds.keyset(RECEIVER).to_payload()
    files = {
        "receipts/index.json": dump_json(_jws_index(
            RECEIPT_CASES,
            "comity/1 receipts verified by the sender against what it sent (context.expected), under the "
            "receiver's keyset (acceptance rules, skew 300 s); expect is 'ok' or the category refused.",
            {"receiver_keyset": keyset, "expected": {
                "iss": RECEIVER, "aud": SENDER, "id": MESSAGE_ID, "envelope_sha256": ENVELOPE_SHA256}},
        )),
        "errors/index.json": dump_json(_jws_index(
            ERROR_CASES,
            "comity/1 signed errors verified by the sender: signed by the peer, addressed to the sender, "
            "bound to the envelope bytes it sent (context.expected); expect is 'ok' or the category refused.",
            {"peer_keyset": keyset, "expected": {"iss": RECEIVER, "aud": SENDER, "envelope_sha256": ENVELOPE_SHA256},
             "classes": {c.value: ERROR_TABLE[c].error_class.value for c in
                         (Category.BAD_SIGNATURE, Category.UNKNOWN_RECIPIENT_KEY, Category.NOT_YET_VALID)}},
        )),
    }
    for c in RECEIPT_CASES:
        files[f"receipts/{c.name}.jws"] = c.build()
    for c in ERROR_CASES:
        files[f"errors/{c.name}.jws"] = c.build()
    return files


# --- chunks ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkCase:
    name: str
    expect: str
    description: str
    build: Callable[[], bytes]
    att: int  # where the receiver expects the chunk, and whose key it uses
    seq: int
    chunks: int
    plaintext: bytes | None = None


def chunk_header(**changes: Any) -> bytes:
    h: dict[str, Any] = {"alg": "dir", "enc": "A256GCM", "typ": CHUNK_TYP, "att": 1, "seq": 0, "last": True,
                         "crit": ["att", "seq", "last"]}
    h.update(changes)
    return canonical(h)


def _crafted(label: str, key_att: int = 1, plaintext: bytes | None = None, **changes: Any) -> Callable[[], bytes]:
    data = attachment_bytes(1) if plaintext is None else plaintext
    return lambda: encrypt_dir(data, header=chunk_header(**changes), key=attachment_key(key_att), label=label)


def _chunk_cases() -> list[ChunkCase]:
    C = Category
    short = attachment_bytes(1)

    def sealed(att: int, seq: int, last: bool, data: bytes) -> Callable[[], bytes]:
        return lambda: seal_chunk(data, key=attachment_key(att), att=att, seq=seq, last=last)

    return [
        ChunkCase("ok-empty", "ok", "attachment 0 is 0 bytes: one chunk, empty plaintext, last",
                  sealed(0, 0, True, b""), 0, 0, 1, b""),
        ChunkCase("ok-short", "ok", "attachment 1: one short last chunk", sealed(1, 0, True, short), 1, 0, 1, short),
        ChunkCase("ok-handbuilt", "ok", "attachment 1's chunk built by hand", _crafted("ok"), 1, 0, 1, short),
        ChunkCase("replay-other-seq", C.BAD_CHUNK, "chunk 0 presented as chunk 1 of 2", sealed(1, 0, False, short),
                  1, 1, 2),
        ChunkCase("other-attachment-header", C.BAD_CHUNK, "attachment 0's chunk presented as attachment 1's",
                  sealed(0, 0, True, b""), 1, 0, 1),
        ChunkCase("other-attachment-key", C.BAD_CHUNK, "header says attachment 1 but sealed under attachment 0's key",
                  _crafted("other-key", key_att=0), 1, 0, 1),
        ChunkCase("last-wrong", C.BAD_CHUNK, "the only chunk does not say last", sealed(1, 0, False, short), 1, 0, 1),
        ChunkCase("short-non-last", C.BAD_CHUNK, "chunk 0 of 2 is shorter than 1 MiB",
                  _crafted("short", last=False), 1, 0, 2),
        ChunkCase("tampered-ciphertext", C.BAD_CHUNK, "one ciphertext character changed",
                  lambda: flip_segment(_crafted("flip")(), 3), 1, 0, 1),
        ChunkCase("tampered-tag-empty", C.BAD_CHUNK, "the 0-byte chunk with one tag character changed",
                  lambda: flip_segment(sealed(0, 0, True, b"")(), 4), 0, 0, 1),
        ChunkCase("bad-header-extra-member", C.BAD_HEADER, "header has an extra member 'name'",
                  _crafted("extra", name="x.txt"), 1, 0, 1),
        ChunkCase("bad-header-crit", C.BAD_HEADER, 'crit is ["att", "seq"]', _crafted("crit", crit=["att", "seq"]),
                  1, 0, 1),
        ChunkCase("bad-header-encrypted-key", C.BAD_HEADER, "a dir chunk with an encrypted-key segment",
                  lambda: _with_encrypted_key(_crafted("ek")()), 1, 0, 1),
        ChunkCase("forbidden-alg", C.FORBIDDEN_ALGORITHM, "alg ECDH-ES+A256KW",
                  _crafted("alg", alg="ECDH-ES+A256KW"), 1, 0, 1),
        ChunkCase("wrong-type", C.WRONG_TYPE, "typ comity-envelope+jwe", _crafted("typ", typ="comity-envelope+jwe"),
                  1, 0, 1),
    ]


def _with_encrypted_key(token: bytes) -> bytes:
    parts = token.split(b".")
    parts[1] = b64e(b"\x00" * 40)
    return b".".join(parts)


CHUNK_CASES = _chunk_cases()


def chunk_index() -> dict[str, Any]:
    return {
        "description": (
            "comity/1 attachment chunks (dir / A256GCM), opened at (att, seq) of an attachment of "
            "'chunks' chunks with the content key of attachment 'att' from context.keys; expect is 'ok' "
            "(plaintext given as base64url) or the category refused. Chunk size 1 MiB."
        ),
        "context": {"keys": {str(a): b64e(attachment_key(a)).decode() for a in (0, 1)}, "chunk_size": 1024 * 1024},
        "vectors": [
            {
                "file": f"{c.name}.jwe", "expect": str(c.expect), "description": c.description,
                "att": c.att, "seq": c.seq, "chunks": c.chunks,
                **({"plaintext": b64e(c.plaintext).decode()} if c.plaintext is not None else {}),
            }
            for c in CHUNK_CASES
        ],
    }


def chunk_files() -> tuple[dict[str, bytes], dict[str, Callable[[], bytes]]]:
    return {"chunks/index.json": dump_json(chunk_index())}, {f"chunks/{c.name}.jwe": c.build for c in CHUNK_CASES}
