"""Envelope vectors of comity/1: the seeded world, one case per opening-order rule, and the writer.

Run ``python -m tests.protocol.vectorgen_envelopes`` to (re)write ``protocol/vectors/``
(envelopes, receipts, errors, chunks).  JWS files and every ``index.json`` are rewritten and
must come out byte-for-byte identical (``test_vectors_*`` check it); JWE files (envelopes,
chunks) are written only when missing, or with ``--jwe``, because ``seal_envelope`` and
``seal_chunk`` draw their CEK, IV and ephemeral key from the OS.  Tampered envelopes are
built by hand (``jwe_craft``) so that any header can be expressed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc.jwk import OKPKey

from protocol.envelope import (
    ENVELOPE_JWE_TYP,
    ENVELOPE_JWS_TYP,
    AttachmentEntry,
    EnvelopeContent,
    chunk_count,
    seal_envelope,
)
from protocol.errors import Category
from protocol.ids import message_id_from_bytes
from protocol.jose import LocalSigner, Signer, b64e, sign_compact
from protocol.keysets import Keyset
from protocol.strictjson import canonical
from tests import seeds
from tests.protocol.jwe_craft import encrypt_ecdh, flip_segment

T0 = seeds.T0
SENDER = "GB-UKCA"
RECEIVER = "FR-DACG"
THIRD = "DE-BFJ"
STRANGER = "ZZ-NOBODY"
MESSAGE_ID = message_id_from_bytes(seeds.seed("envelope/id")[:16])
THREAD_ID = message_id_from_bytes(seeds.seed("envelope/thread")[:16])
VECTORS = Path(__file__).resolve().parents[2] / "protocol" / "vectors"
#: The cap a ``too_large`` vector is opened with (small, so that the file stays small).
SMALL_CAP = 1024

# --- the seeded world ---------------------------------------------------------------------------------


def sender_signer() -> LocalSigner:
    return seeds.signer(f"{SENDER}/signing")


def recipient_key() -> OKPKey:
    return seeds.x25519(f"{RECEIVER}/encryption")


def recipient_kid() -> str:
    return recipient_key().thumbprint()


def decryption_keys() -> dict[str, OKPKey]:
    return {recipient_kid(): recipient_key()}


def sender_keyset(variant: str = "current") -> Keyset:
    """The keyset the receiver holds for SENDER; variants change one life-cycle fact."""
    ks = seeds.keyset(SENDER)
    key = seeds.ed25519(f"{SENDER}/signing")
    if variant == "current":
        return ks
    if variant == "revoked":
        return dataclasses.replace(ks, signing_keys=(seeds.entry(key, revoked_at=T0 - 43200),))
    if variant == "retired":
        return dataclasses.replace(ks, signing_keys=(seeds.entry(key, retired_at=T0 - 3600),))
    if variant == "expired":
        return seeds.keyset(SENDER, issued_at=T0 - 100 * 86400)
    raise ValueError(variant)


KEYSET_VARIANTS = ("current", "revoked", "retired", "expired")


def attachment_key(att: int) -> bytes:
    return seeds.seed(f"attachment/{att}/key")


def attachment_bytes(att: int) -> bytes:
    """Attachment 0 is empty (one empty chunk); attachment 1 is a short text (one chunk)."""
    return b"" if att == 0 else b"Extract of the register of companies, 3 pages, certified.\n"


def manifest() -> tuple[AttachmentEntry, ...]:
    names = ("empty.txt", "register-extract.txt")
    return tuple(
        AttachmentEntry(
            name=names[att], media_type="text/plain", size=len(attachment_bytes(att)),
            sha256=hashlib.sha256(attachment_bytes(att)).hexdigest(),
            chunks=chunk_count(len(attachment_bytes(att))), key=b64e(attachment_key(att)).decode(),
        )
        for att in (0, 1)
    )


def content(**changes: Any) -> EnvelopeContent:
    base = EnvelopeContent(
        iss=SENDER, aud=RECEIVER, id=MESSAGE_ID, iat=T0, exp=T0 + 86400, kind="consultation",
        subject="Dual criminality: fraud by abuse of position",
        body="Would conduct under art. 4 of our Fraud Act be an offence in your law?",
        thread=THREAD_ID, request=None, attachments=manifest(),
    )
    return dataclasses.replace(base, **changes)


DELETE = object()


def payload(**changes: Any) -> dict[str, Any]:
    """The inner payload of ``content()`` with members changed (``DELETE`` removes one)."""
    p = content().to_payload()
    for name, value in changes.items():
        if value is DELETE:
            del p[name]
        else:
            p[name] = value
    return p


class ClaimedKid:
    """A signer that signs with one key but names another key's kid (a forged signature)."""

    def __init__(self, signer: LocalSigner, kid: str) -> None:
        self._signer, self._kid = signer, kid

    @property
    def kid(self) -> str:
        return self._kid

    def sign(self, data: bytes) -> bytes:
        return self._signer.sign(data)


def inner(p: dict[str, Any] | None = None, *, signer: Signer | None = None, typ: str = ENVELOPE_JWS_TYP) -> bytes:
    return sign_compact(typ=typ, payload=payload() if p is None else p, signer=signer or sender_signer())


def inner_raw(payload_bytes: bytes, *, signer: Signer | None = None) -> bytes:
    """An inner JWS over payload bytes given verbatim (e.g. with a duplicate member)."""
    s = signer or sender_signer()
    header = canonical({"alg": "Ed25519", "kid": s.kid, "typ": ENVELOPE_JWS_TYP})
    signing_input = b64e(header) + b"." + b64e(payload_bytes)
    return signing_input + b"." + b64e(s.sign(signing_input))


def outer_header(epk: dict[str, str], /, **changes: Any) -> dict[str, Any]:
    h: dict[str, Any] = {
        "alg": "ECDH-ES+A256KW", "enc": "A256GCM", "kid": recipient_kid(), "typ": ENVELOPE_JWE_TYP,
        "cty": ENVELOPE_JWS_TYP, "iss": SENDER, "aud": RECEIVER, "epk": epk,
    }
    for name, value in changes.items():
        if value is DELETE:
            del h[name]
        else:
            h[name] = value
    return h


def envelope(jws: bytes, *, label: str, recipient: OKPKey | None = None, **header_changes: Any) -> bytes:
    """A hand-built envelope around ``jws`` with the outer header changed as given."""
    return encrypt_ecdh(jws, header=lambda epk: canonical(outer_header(epk, **header_changes)),
                        recipient=recipient or recipient_key(), label=label)


def envelope_header_bytes(jws: bytes, *, label: str, header: Callable[[dict[str, str]], bytes]) -> bytes:
    return encrypt_ecdh(jws, header=header, recipient=recipient_key(), label=label)


def sealed_ok() -> tuple[bytes, bytes]:
    sealed = seal_envelope(content(), signer=sender_signer(), recipient_kid=recipient_kid(),
                           recipient_key=recipient_key())
    return sealed.raw, sealed.inner_jws


# --- cases: one per rule of the opening order -----------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    expect: str  # "ok" or a Category value
    description: str
    build: Callable[[], bytes]
    #: The inner JWS the envelope decrypts to (regenerated byte-for-byte), when it decrypts.
    inner: Callable[[], bytes] | None = None
    keyset: str = "current"
    now: int = T0
    max_bytes: int | None = None


def _hb(name: str, jws: Callable[[], bytes] = inner, **changes: Any) -> Callable[[], bytes]:
    return lambda: envelope(jws(), label=name, **changes)


def _dup_outer(epk: dict[str, str]) -> bytes:
    return canonical(outer_header(epk))[:-1] + b',"iss":"' + SENDER.encode() + b'"}'


def _bad_sig_inner() -> bytes:
    return inner(signer=ClaimedKid(seeds.signer("intruder/signing"), sender_signer().kid))


def _envelope_cases() -> list[Case]:
    C = Category
    epk_extra = {"kty": "OKP", "crv": "X25519", "x": "A" * 43, "kid": "x"}
    cases = [
        Case("ok", "ok", "a valid envelope sealed by seal_envelope", lambda: sealed_ok()[0], inner),
        Case("ok-handbuilt", "ok", "a valid envelope built by hand with the profile's header",
             _hb("ok-handbuilt"), inner),
        Case("too-large", C.TOO_LARGE, f"opened with a cap of {SMALL_CAP} bytes (step 1)",
             _hb("too-large"), inner, max_bytes=SMALL_CAP),
        Case("malformed-parts", C.MALFORMED, "four compact parts (step 3)",
             lambda: b".".join(envelope(inner(), label="parts").split(b".")[:4])),
        Case("malformed-base64", C.MALFORMED, "the protected header segment is not base64url (step 4)",
             lambda: b"e*" + envelope(inner(), label="b64")[2:]),
        Case("malformed-duplicate-header-member", C.MALFORMED, "outer header names iss twice (step 4)",
             lambda: envelope_header_bytes(inner(), label="dup-outer", header=_dup_outer)),
        Case("bad-header-extra-member", C.BAD_HEADER, "outer header has an extra member 'foo'",
             _hb("hdr-extra", foo="bar")),
        Case("bad-header-missing-member", C.BAD_HEADER, "outer header lacks cty", _hb("hdr-missing", cty=DELETE)),
        Case("bad-header-crit", C.BAD_HEADER, "outer header carries crit", _hb("hdr-crit", crit=["iss"])),
        Case("bad-header-epk-extra", C.BAD_HEADER, "epk has a member besides kty, crv, x",
             _hb("hdr-epk", epk=epk_extra)),
        Case("bad-header-cty", C.BAD_HEADER, "cty is not comity-envelope+jws", _hb("hdr-cty", cty="JWT")),
        Case("forbidden-zip", C.FORBIDDEN_ALGORITHM, "zip: DEF present", _hb("zip", zip="DEF")),
        Case("forbidden-alg-none", C.FORBIDDEN_ALGORITHM, "alg none", _hb("alg-none", alg="none")),
        Case("forbidden-alg-hs256", C.FORBIDDEN_ALGORITHM, "alg HS256", _hb("alg-hs256", alg="HS256")),
        Case("forbidden-alg-rsa1-5", C.FORBIDDEN_ALGORITHM, "alg RSA1_5", _hb("alg-rsa", alg="RSA1_5")),
        Case("forbidden-alg-pbes2", C.FORBIDDEN_ALGORITHM, "alg PBES2-HS256+A128KW",
             _hb("alg-pbes2", alg="PBES2-HS256+A128KW")),
        Case("forbidden-alg-dir", C.FORBIDDEN_ALGORITHM, "alg dir", _hb("alg-dir", alg="dir")),
        Case("forbidden-enc", C.FORBIDDEN_ALGORITHM, "enc A128GCM", _hb("enc", enc="A128GCM")),
        Case("forbidden-jwk", C.FORBIDDEN_ALGORITHM, "an embedded jwk",
             _hb("jwk", jwk={"kty": "OKP", "crv": "X25519", "x": "A" * 43})),
        Case("forbidden-jku", C.FORBIDDEN_ALGORITHM, "a jku URL", _hb("jku", jku="https://evil.example/k")),
        Case("forbidden-x5u", C.FORBIDDEN_ALGORITHM, "an x5u URL", _hb("x5u", x5u="https://evil.example/c")),
        Case("forbidden-x5c", C.FORBIDDEN_ALGORITHM, "an x5c chain", _hb("x5c", x5c=["MIIB"])),
        Case("wrong-type-outer", C.WRONG_TYPE, "outer typ is JWT", _hb("typ-outer", typ="JWT")),
        Case("wrong-type-inner", C.WRONG_TYPE, "inner typ is comity-receipt+jws (step 8)",
             _hb("typ-inner", lambda: inner(typ="comity-receipt+jws")),
             lambda: inner(typ="comity-receipt+jws")),
        Case("wrong-recipient", C.WRONG_RECIPIENT, f"outer and inner aud are {THIRD}",
             _hb("wrong-aud", lambda: inner(payload(aud=THIRD)), aud=THIRD)),
        Case("unknown-sender", C.UNKNOWN_SENDER, f"outer and inner iss are {STRANGER}, not pinned",
             _hb("stranger", lambda: inner(payload(iss=STRANGER)), iss=STRANGER)),
        Case("sender-keyset-expired", C.SENDER_KEYSET_EXPIRED, "the keyset held for the sender has expired",
             _hb("ks-expired"), inner, keyset="expired"),
        Case("unknown-recipient-key", C.UNKNOWN_RECIPIENT_KEY, "encrypted to another X25519 key, named by its kid",
             lambda: envelope(inner(), label="other-rk", recipient=seeds.x25519("FR-DACG/old-encryption"),
                              kid=seeds.x25519("FR-DACG/old-encryption").thumbprint())),
        Case("decryption-failed-ciphertext", C.DECRYPTION_FAILED, "one ciphertext character changed",
             lambda: flip_segment(envelope(inner(), label="flip-ct"), 3)),
        Case("decryption-failed-tag", C.DECRYPTION_FAILED, "one tag character changed",
             lambda: flip_segment(envelope(inner(), label="flip-tag"), 4)),
        Case("decryption-failed-other-key", C.DECRYPTION_FAILED, "encrypted to another key under our kid",
             lambda: envelope(inner(), label="other-key", recipient=seeds.x25519("intruder/encryption"))),
        Case("unknown-signing-key", C.UNKNOWN_SIGNING_KEY, "inner JWS signed by a key not in the sender's keyset",
             _hb("unknown-sk", lambda: inner(signer=seeds.signer("GB-UKCA/next-signing"))),
             lambda: inner(signer=seeds.signer("GB-UKCA/next-signing"))),
        Case("revoked-key", C.REVOKED_KEY, "the sender's keyset lists the signing key as revoked",
             _hb("revoked"), inner, keyset="revoked"),
        Case("retired-key", C.RETIRED_KEY, "the signing key was retired an hour before iat",
             _hb("retired"), inner, keyset="retired"),
        Case("bad-signature", C.BAD_SIGNATURE, "inner signature by another key claiming the sender's kid",
             _hb("bad-sig", _bad_sig_inner), _bad_sig_inner),
        Case("malformed-payload-id", C.MALFORMED, "payload id is not 32 lowercase hex",
             _hb("bad-id", lambda: inner(payload(id=MESSAGE_ID.upper()))),
             lambda: inner(payload(id=MESSAGE_ID.upper()))),
        Case("malformed-payload-kind", C.MALFORMED, "payload kind 'gossip' is not a kind",
             _hb("bad-kind", lambda: inner(payload(kind="gossip"))), lambda: inner(payload(kind="gossip"))),
        Case("malformed-payload-extra-member", C.MALFORMED, "payload has an extra member 'priority'",
             _hb("extra", lambda: inner(payload(priority=1))), lambda: inner(payload(priority=1))),
        Case("malformed-payload-duplicate-member", C.MALFORMED, "payload names kind twice",
             _hb("dup-payload", lambda: inner_raw(_dup_payload())), lambda: inner_raw(_dup_payload())),
        Case("malformed-lifetime", C.MALFORMED, "exp - iat is 7 days + 1 s",
             _hb("lifetime", lambda: inner(payload(exp=T0 + 7 * 86400 + 1))),
             lambda: inner(payload(exp=T0 + 7 * 86400 + 1))),
        Case("issuer-mismatch-iss", C.ISSUER_MISMATCH, f"inner iss {THIRD}, outer iss {SENDER}",
             _hb("iss-mismatch", lambda: inner(payload(iss=THIRD))), lambda: inner(payload(iss=THIRD))),
        Case("issuer-mismatch-aud", C.ISSUER_MISMATCH, f"inner aud {THIRD}, outer aud {RECEIVER}",
             _hb("aud-mismatch", lambda: inner(payload(aud=THIRD))), lambda: inner(payload(aud=THIRD))),
        Case("not-yet-valid", C.NOT_YET_VALID, "iat is now + skew + 1",
             _hb("nyv", lambda: inner(payload(iat=T0 + 301, exp=T0 + 3600))),
             lambda: inner(payload(iat=T0 + 301, exp=T0 + 3600))),
        Case("expired", C.EXPIRED, "exp + skew is one second before now",
             _hb("expired", lambda: inner(payload(iat=T0 - 3600, exp=T0 - 301))),
             lambda: inner(payload(iat=T0 - 3600, exp=T0 - 301))),
    ]
    return cases


def _dup_payload() -> bytes:
    return canonical(payload())[:-1] + b',"kind":"note"}'


ENVELOPE_CASES = _envelope_cases()


def envelope_index() -> dict[str, Any]:
    return {
        "description": (
            "comity/1 envelopes opened by the receiver with the keys in context; expect is 'ok' or the "
            "category of the first failed step of the opening order. JWE files are committed once; "
            "the decrypted inner JWS of each is regenerated from fixed seeds and compared byte-for-byte."
        ),
        "context": {
            "receiver": RECEIVER,
            "sender": SENDER,
            "skew": 300,
            "max_lifetime": 7 * 86400,
            "max_bytes": 1024 * 1024,
            "decryption_keys": {kid: key.as_dict(private=True) for kid, key in decryption_keys().items()},
            "sender_keysets": {v: sender_keyset(v).to_payload() for v in KEYSET_VARIANTS},
        },
        "vectors": [
            {
                "file": f"{c.name}.jwe", "expect": str(c.expect), "now": c.now, "description": c.description,
                "sender_keyset": c.keyset,
                **({"max_bytes": c.max_bytes} if c.max_bytes is not None else {}),
                **({"inner": f"{c.name}.inner.jws"} if c.inner is not None else {}),
            }
            for c in ENVELOPE_CASES
        ],
    }


def dump_json(value: Any) -> bytes:
    return (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode()


def envelope_files() -> tuple[dict[str, bytes], dict[str, Callable[[], bytes]]]:
    """``(deterministic files, JWE files)`` of ``envelopes/`` by relative path."""
    fixed = {"envelopes/index.json": dump_json(envelope_index())}
    jwe: dict[str, Callable[[], bytes]] = {}
    for c in ENVELOPE_CASES:
        if c.inner is not None:
            fixed[f"envelopes/{c.name}.inner.jws"] = c.inner()
        jwe[f"envelopes/{c.name}.jwe"] = c.build
    return fixed, jwe


def write_vectors(root: Path = VECTORS, *, jwe: bool = False) -> list[str]:
    """Write every vector; JWE files only when missing or ``jwe``.  Returns the paths written."""
    from tests.protocol.vectorgen_artifacts import artifact_files, chunk_files

    fixed: dict[str, bytes] = {}
    built: dict[str, Callable[[], bytes]] = {}
    for f, j in (envelope_files(), chunk_files()):
        fixed.update(f)
        built.update(j)
    fixed.update(artifact_files())
    written = []
    for rel, data in fixed.items():
        _write(root / rel, data)
        written.append(rel)
    for rel, make in built.items():
        if jwe or not (root / rel).exists():
            _write(root / rel, make())
            written.append(rel)
    return written


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


if __name__ == "__main__":
    for rel in write_vectors(jwe="--jwe" in sys.argv[1:]):
        print(rel)
