"""Interoperability with an independent JOSE implementation: npm ``jose`` (v6) under Node.js.

Keys cross as JWKs; each test runs its operations as one batch in one ``node`` process.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from joserfc.jwk import OKPKey

from protocol.chunks import CHUNK_SIZE, open_chunk, seal_chunk
from protocol.envelope import (
    AttachmentEntry,
    EnvelopeContent,
    Kind,
    chunk_count,
    open_envelope,
    seal_envelope,
)
from protocol.errors import Category, EnvelopeError, KeysetError
from protocol.jose import LocalSigner, public_jwk
from protocol.keychain import next_keyset, sign_keyset, verify_chain
from protocol.keysets import Keyset
from protocol.receipts import Receipt, sign_receipt
from protocol.rejections import SignedError, sign_error
from protocol.strictjson import canonical
from tests.interop.conftest import JoseRunner
from tests.seeds import T0, ed25519, entry, keyset, signer, x25519

pytestmark = pytest.mark.interop

SENDER, RECEIVER = "FR-DACG", "DE-BFJ"
SENDER_KS = keyset(SENDER)
RECEIVER_KS = keyset(RECEIVER)
SENDER_SIGNING = ed25519(f"{SENDER}/signing")
RECEIVER_SIGNING = ed25519(f"{RECEIVER}/signing")
RECEIVER_ENC = x25519(f"{RECEIVER}/encryption")
MSG_ID = "0123456789abcdef0123456789abcdef"
SHA = hashlib.sha256(b"envelope bytes").hexdigest()


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def private_jwk(key: OKPKey) -> dict[str, Any]:
    return dict(key.as_dict(private=True))


def lookup(authority: str) -> Keyset | None:
    return {SENDER: SENDER_KS, RECEIVER: RECEIVER_KS}.get(authority)


def ok(result: dict[str, Any]) -> dict[str, Any]:
    assert result["ok"], result.get("error")
    return result


def contents() -> list[EnvelopeContent]:
    key = b64e(bytes(range(32)))
    manifest = (
        AttachmentEntry("empty.txt", "text/plain", 0, hashlib.sha256(b"").hexdigest(), 1, key),
        AttachmentEntry("scan.pdf", "application/pdf", 3 * CHUNK_SIZE + 1, "ab" * 32,
                        chunk_count(3 * CHUNK_SIZE + 1), key),
    )
    return [
        EnvelopeContent(iss=SENDER, aud=RECEIVER, id=MSG_ID, iat=T0, exp=T0 + 3600, kind=Kind.CONSULTATION,
                        subject="Entraide — question préalable", body="x" * 2048),
        EnvelopeContent(iss=SENDER, aud=RECEIVER, id="f" * 32, iat=T0 - 60, exp=T0 + 86400,
                        kind=Kind.MLA_REQUEST, subject="Ersuchen \u00fc\u00e4 \U0001f4c4",
                        body={"measures": ["bank records"], "urgent": True, "n": -1, "nested": {"a": [None]}},
                        thread=MSG_ID, request=MSG_ID, attachments=manifest),
    ]


# --- (a) jose opens what protocol seals ----------------------------------------------------------------


def test_jose_decrypts_and_verifies_envelopes_sealed_by_protocol(jose_node: JoseRunner) -> None:
    cases = contents()
    sealed = [seal_envelope(c, signer=signer(f"{SENDER}/signing"), recipient_kid=RECEIVER_ENC.thumbprint(),
                            recipient_key=RECEIVER_ENC) for c in cases]
    tampered = bytearray(sealed[0].raw)
    tampered[-30] = ord("A") if tampered[-30] != ord("A") else ord("B")  # inside the ciphertext
    op = {"op": "open_envelope", "decryption_jwk": private_jwk(RECEIVER_ENC),
          "verification_jwk": public_jwk(SENDER_SIGNING)}
    results = jose_node([{**op, "jwe": s.raw.decode()} for s in sealed] + [{**op, "jwe": tampered.decode()}])

    for content, s, r in zip(cases, sealed, results[:-1], strict=True):
        ok(r)
        outer = r["outer_header"]
        assert set(outer) == {"alg", "enc", "kid", "typ", "cty", "iss", "aud", "epk"}
        assert outer["epk"]["kty"] == "OKP" and outer["epk"]["crv"] == "X25519" and set(outer["epk"]) == {
            "kty", "crv", "x"}
        assert (outer["alg"], outer["enc"], outer["kid"], outer["cty"], outer["iss"], outer["aud"]) == (
            "ECDH-ES+A256KW", "A256GCM", RECEIVER_ENC.thumbprint(), "comity-envelope+jws", SENDER, RECEIVER)
        assert r["inner_jws"].encode() == s.inner_jws
        assert r["inner_header"] == {"alg": "Ed25519", "typ": "comity-envelope+jws",
                                     "kid": SENDER_SIGNING.thumbprint()}
        assert json.loads(r["payload"]) == content.to_payload()
        assert r["payload"].encode() == canonical(content.to_payload())  # RFC 8785 on the wire
    assert not results[-1]["ok"]
    assert results[-1]["error"].startswith("ERR_JWE_DECRYPTION_FAILED")


# --- (b) protocol opens what jose seals ----------------------------------------------------------------


def test_protocol_opens_envelopes_built_by_jose(jose_node: JoseRunner) -> None:
    cases = contents()
    payloads = [
        canonical(cases[0].to_payload()).decode(),  # RFC 8785
        json.dumps(cases[1].to_payload(), indent=2, ensure_ascii=True),  # any JSON: spaces, \u escapes
    ]
    op = {"op": "seal_envelope", "signing_jwk": private_jwk(SENDER_SIGNING),
          "signing_kid": SENDER_SIGNING.thumbprint(), "recipient_jwk": public_jwk(RECEIVER_ENC),
          "recipient_kid": RECEIVER_ENC.thumbprint(), "iss": SENDER, "aud": RECEIVER}
    results = jose_node([{**op, "payload": p} for p in payloads])

    for content, r in zip(cases, results, strict=True):
        raw = ok(r)["jwe"].encode()
        opened = open_envelope(raw, me=RECEIVER, decryption_keys={RECEIVER_ENC.thumbprint(): RECEIVER_ENC},
                               lookup_peer=lookup, now=T0)
        assert opened.content == content
        assert opened.inner_jws == r["inner_jws"].encode()
        assert opened.signing_kid == SENDER_SIGNING.thumbprint()


def test_protocol_refuses_a_jose_envelope_addressed_elsewhere(jose_node: JoseRunner) -> None:
    """The same jose-built envelope addressed to another authority: our step (5) refuses it."""
    content = contents()[0]
    [r] = jose_node([{
        "op": "seal_envelope", "payload": canonical(content.to_payload()).decode(),
        "signing_jwk": private_jwk(SENDER_SIGNING), "signing_kid": SENDER_SIGNING.thumbprint(),
        "recipient_jwk": public_jwk(RECEIVER_ENC), "recipient_kid": RECEIVER_ENC.thumbprint(),
        "iss": SENDER, "aud": "GB-UKCA",
    }])
    with pytest.raises(EnvelopeError) as e:
        open_envelope(ok(r)["jwe"].encode(), me=RECEIVER,
                      decryption_keys={RECEIVER_ENC.thumbprint(): RECEIVER_ENC}, lookup_peer=lookup, now=T0)
    assert e.value.category is Category.WRONG_RECIPIENT


# --- (c) jose verifies receipts, signed errors and keysets ---------------------------------------------


def test_jose_verifies_receipts_and_signed_errors(jose_node: JoseRunner) -> None:
    receipt = Receipt(iss=RECEIVER, aud=SENDER, id=MSG_ID, envelope_sha256=SHA, received_at=T0,
                      leaf_index=41, tree_size=42, root="cd" * 32)
    errors = [
        SignedError(iss=RECEIVER, aud=SENDER, category=Category.EXPIRED, envelope_sha256=SHA, at=T0),
        SignedError(iss=RECEIVER, aud=None, category=Category.MALFORMED, envelope_sha256=None, at=T0),
    ]
    rs = signer(f"{RECEIVER}/signing")
    tokens = [(sign_receipt(receipt, signer=rs), "comity-receipt+jws", receipt.to_payload())]
    tokens += [(sign_error(e, signer=rs), "comity-error+jws", e.to_payload()) for e in errors]
    jwk = public_jwk(RECEIVER_SIGNING)
    ops = [{"op": "verify_compact", "jws": t.decode(), "jwk": jwk, "typ": typ} for t, typ, _ in tokens]
    ops.append({"op": "verify_compact", "jws": tokens[0][0].decode(), "jwk": public_jwk(SENDER_SIGNING),
                "typ": "comity-receipt+jws"})  # wrong key
    results = jose_node(ops)

    for (_, typ, payload), r in zip(tokens, results[:-1], strict=True):
        assert ok(r)["header"] == {"alg": "Ed25519", "typ": typ, "kid": RECEIVER_SIGNING.thumbprint()}
        assert json.loads(r["payload"]) == payload
    assert not results[-1]["ok"]
    assert results[-1]["error"].startswith("ERR_JWS_SIGNATURE_VERIFICATION_FAILED")


def keyset_chain() -> tuple[list[bytes], list[list[OKPKey]]]:
    """v1 self-signed; v2 an operational rotation; v3 an identity rotation. Returns docs and signers."""
    id1, id2 = ed25519(f"{SENDER}/identity"), ed25519(f"{SENDER}/identity-2")
    v1 = SENDER_KS
    v2 = next_keyset(v1, now=T0 - 7200, signing_keys=(entry(ed25519(f"{SENDER}/signing-2")),),
                     encryption_keys=v1.encryption_keys)
    v3 = next_keyset(v2, now=T0 - 3600, signing_keys=v2.signing_keys, encryption_keys=v2.encryption_keys,
                     identity_jwk=public_jwk(id2))
    signers = [[id1], [id1], [id1, id2]]
    docs = [sign_keyset(ks, [LocalSigner(k) for k in keys]) for ks, keys in zip((v1, v2, v3), signers, strict=True)]
    return docs, signers


def flattened(doc: bytes) -> list[dict[str, str]]:
    """One flattened JWS per signature of a General JSON keyset document."""
    general = json.loads(doc)
    return [{"protected": s["protected"], "payload": general["payload"], "signature": s["signature"]}
            for s in general["signatures"]]


def test_jose_verifies_a_keyset_chain_signature_by_signature(jose_node: JoseRunner) -> None:
    docs, signers = keyset_chain()
    verify_chain(docs, fingerprint=ed25519(f"{SENDER}/identity").thumbprint(), now=T0)  # ours agrees
    ops, expected = [], []
    for doc, keys in zip(docs, signers, strict=True):
        for jws, key in zip(flattened(doc), keys, strict=True):
            ops.append({"op": "verify_flattened", "jws": jws, "jwk": public_jwk(key), "typ": "comity-keyset+jws"})
            expected.append((key.thumbprint(), json.loads(b64d(jws["payload"]))))
    results = jose_node(ops)
    assert len(results) == 4
    for (kid, payload), r in zip(expected, results, strict=True):
        assert ok(r)["header"] == {"alg": "Ed25519", "typ": "comity-keyset+jws", "kid": kid}
        assert json.loads(r["payload"]) == payload


def test_general_verify_accepts_keysets_that_protocol_refuses(jose_node: JoseRunner) -> None:
    """Why SPEC says: never generalVerify. It succeeds when ANY one signature verifies: a rotation
    keyset with a bad second signature, without it, or with the first one twice."""
    docs, _ = keyset_chain()
    id1 = ed25519(f"{SENDER}/identity")
    rotation = json.loads(docs[2])
    sig = rotation["signatures"][1]["signature"]
    bad_second = json.loads(docs[2])
    bad_second["signatures"][1]["signature"] = sig[:10] + ("A" if sig[10] != "A" else "B") + sig[11:]
    missing_second = json.loads(docs[2])
    del missing_second["signatures"][1]
    first_twice = json.loads(docs[2])
    first_twice["signatures"][1] = first_twice["signatures"][0]
    variants = [(bad_second, Category.BAD_SIGNATURE), (missing_second, Category.BAD_SIGNER_SET),
                (first_twice, Category.BAD_SIGNER_SET)]

    results = jose_node(
        [{"op": "verify_general", "jws": v, "jwk": public_jwk(id1)} for v, _ in variants]
        + [{"op": "verify_flattened", "jws": flattened(canonical(bad_second))[1],
            "jwk": public_jwk(ed25519(f"{SENDER}/identity-2")), "typ": "comity-keyset+jws"}]
    )
    for (variant, category), r in zip(variants, results, strict=False):
        assert ok(r)["header"]["kid"] == id1.thumbprint()  # jose: "verified"
        with pytest.raises(KeysetError) as e:  # ours: refused
            verify_chain([*docs[:2], canonical(variant)], fingerprint=id1.thumbprint(), now=T0)
        assert e.value.category is category
    assert not results[-1]["ok"]  # signature by signature, jose finds the bad one too
    assert results[-1]["error"].startswith("ERR_JWS_SIGNATURE_VERIFICATION_FAILED")


# --- (d) attachment chunks -----------------------------------------------------------------------------

CONTENT_KEY = hashlib.sha256(b"interop content key").digest()
FULL = hashlib.sha256(b"chunk").digest() * (CHUNK_SIZE // 32)
CHUNK_CASES = [  # (plaintext, att, seq, last)
    (b"", 0, 0, True),  # a 0-byte attachment is one empty chunk
    (FULL, 1, 0, False),  # a full 1 MiB chunk
    (b"tail \x00\xff", 1, 1, True),
]


def test_jose_decrypts_chunks_sealed_by_protocol(jose_node: JoseRunner) -> None:
    tokens = [seal_chunk(p, key=CONTENT_KEY, att=a, seq=s, last=last) for p, a, s, last in CHUNK_CASES]
    results = jose_node([{"op": "open_chunk", "jwe": t.decode(), "key": b64e(CONTENT_KEY)} for t in tokens])
    for (plaintext, att, seq, last), r in zip(CHUNK_CASES, results, strict=True):
        assert b64d(ok(r)["plaintext"]) == plaintext
        assert r["header"] == {"alg": "dir", "enc": "A256GCM", "typ": "comity-chunk+jwe", "att": att,
                               "seq": seq, "last": last, "crit": ["att", "seq", "last"]}


def test_protocol_opens_chunks_sealed_by_jose(jose_node: JoseRunner) -> None:
    results = jose_node([{"op": "seal_chunk", "plaintext": b64e(p), "key": b64e(CONTENT_KEY), "att": a,
                          "seq": s, "last": last} for p, a, s, last in CHUNK_CASES])
    for (plaintext, att, seq, _), r in zip(CHUNK_CASES, results, strict=True):
        chunks = 1 if att == 0 else 2
        assert open_chunk(ok(r)["jwe"].encode(), key=CONTENT_KEY, att=att, seq=seq, chunks=chunks) == plaintext


def test_jose_refuses_a_chunk_unless_its_crit_names_are_declared(jose_node: JoseRunner) -> None:
    """SPEC tells implementers to declare att/seq/last as understood; jose refuses otherwise."""
    token = seal_chunk(b"data", key=CONTENT_KEY, att=0, seq=0, last=True)
    [r] = jose_node([{"op": "open_chunk", "jwe": token.decode(), "key": b64e(CONTENT_KEY),
                      "declare_crit": False}])
    assert not r["ok"]
    assert r["error"].startswith("ERR_JOSE_NOT_SUPPORTED")
