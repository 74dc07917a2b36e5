"""Envelopes: sign, then encrypt, sealed once; opened in SPEC's exact order (§5).

``seal_envelope`` returns the bytes that are stored and resent unchanged on every retry;
``reseal_envelope`` re-encrypts the same inner JWS to a new recipient key (after the peer
rotated, ``retry-after-refresh``).  ``open_envelope`` applies SPEC §5 steps 1 and 3-13; step
2 (the receipt lookup by the raw body's SHA-256) belongs to the node and comes first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from joserfc import jwe
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey

from .errors import Category, EnvelopeError, ProtocolError
from .ids import is_authority_id, is_message_id, is_sha256_hex
from .jose import (
    ALG_ECDH,
    ENC_A256GCM,
    ENVELOPE_JWE_REGISTRY,
    SignedCompact,
    Signer,
    b64d,
    check_algorithms,
    check_exact_header,
    decode_protected,
    read_signed_compact,
    sign_compact,
    split_compact,
    verify_signature,
)
from .keysets import DEFAULT_MAX_LIFETIME, DEFAULT_SKEW, Keyset, accept_signing_key

ENVELOPE_JWS_TYP = "comity-envelope+jws"
ENVELOPE_JWE_TYP = "comity-envelope+jwe"
PROTOCOL_VERSION = 1
#: The one envelope size cap, measured on the outer compact JWE, at sealing and at opening.
ENVELOPE_MAX_BYTES = 1024 * 1024
CHUNK_SIZE = 1024 * 1024
MAX_SUBJECT_CHARS = 1000
MAX_ATTACHMENTS = 1000
MAX_NAME_CHARS = 255

OUTER_HEADER_NAMES = frozenset({"alg", "enc", "kid", "typ", "cty", "iss", "aud", "epk"})
PAYLOAD_NAMES = frozenset(
    {"v", "iss", "aud", "id", "iat", "exp", "kind", "thread", "request", "subject", "body", "attachments"}
)
MANIFEST_NAMES = frozenset({"name", "media_type", "size", "sha256", "chunks", "key"})


class Kind(StrEnum):
    CONSULTATION = "consultation"
    NOTE = "note"
    MLA_REQUEST = "mla_request"
    EXTRADITION_REQUEST = "extradition_request"
    STATUS_EVENT = "status_event"
    SUPPLEMENTARY = "supplementary"
    RESULT = "result"


TEXT_KINDS = frozenset({Kind.CONSULTATION, Kind.NOTE})


def chunk_count(size: int) -> int:
    """Chunks an attachment of ``size`` bytes travels in (a 0-byte file is one empty chunk)."""
    return max(1, -(-size // CHUNK_SIZE))


@dataclass(frozen=True)
class AttachmentEntry:
    """One manifest entry: the only place the content key and plaintext SHA-256 appear."""

    name: str
    media_type: str
    size: int
    sha256: str
    chunks: int
    key: str  # base64url of the 32-byte A256GCM content key

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "media_type": self.media_type, "size": self.size,
            "sha256": self.sha256, "chunks": self.chunks, "key": self.key,
        }

    @property
    def key_bytes(self) -> bytes:
        return b64d(self.key, what="attachment key")


@dataclass(frozen=True)
class EnvelopeContent:
    """What a sender puts inside an envelope (everything here is confidential)."""

    iss: str
    aud: str
    id: str
    iat: int
    exp: int
    kind: str
    subject: str
    body: str | dict[str, Any]
    thread: str | None = None
    request: str | None = None
    attachments: tuple[AttachmentEntry, ...] = ()

    def to_payload(self) -> dict[str, Any]:
        return {
            "v": PROTOCOL_VERSION, "iss": self.iss, "aud": self.aud, "id": self.id, "iat": self.iat,
            "exp": self.exp, "kind": self.kind, "thread": self.thread, "request": self.request,
            "subject": self.subject, "body": self.body, "attachments": [a.to_json() for a in self.attachments],
        }


@dataclass(frozen=True)
class SealedEnvelope:
    raw: bytes
    sha256: str
    inner_jws: bytes


@dataclass(frozen=True)
class OpenedEnvelope:
    content: EnvelopeContent
    inner_jws: bytes
    sha256: str
    signing_kid: str
    recipient_kid: str


def envelope_sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _malformed(detail: str) -> EnvelopeError:
    return EnvelopeError(Category.MALFORMED, detail)


def _int_time(p: Mapping[str, Any], name: str) -> int:
    value = p[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _malformed(f"{name} is not a NumericDate")
    return value


def _plain_file_name(name: object) -> bool:
    """A name a receiver can show and save: no path separators, no control characters, not . or .."""
    return (isinstance(name, str) and 0 < len(name) <= MAX_NAME_CHARS and name not in (".", "..")
            and not any(c in "/\\" or ord(c) < 0x20 or ord(c) == 0x7F for c in name))


def _parse_manifest(items: Any) -> tuple[AttachmentEntry, ...]:
    if not isinstance(items, list) or len(items) > MAX_ATTACHMENTS:
        raise _malformed("attachments is not a list within the cap")
    entries: list[AttachmentEntry] = []
    for item in items:
        if not isinstance(item, dict) or set(item) != MANIFEST_NAMES:
            raise _malformed("manifest entry is not exactly {name, media_type, size, sha256, chunks, key}")
        name, media_type, size = item["name"], item["media_type"], item["size"]
        if not _plain_file_name(name):
            raise _malformed("attachment name is not a plain file name")
        if not isinstance(media_type, str) or not 0 < len(media_type) <= 255 or "/" not in media_type:
            raise _malformed("attachment media_type is not type/subtype")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise _malformed("attachment size is not a non-negative integer")
        if not is_sha256_hex(item["sha256"]):
            raise _malformed("attachment sha256 is not 64 lowercase hex")
        if item["chunks"] != chunk_count(size) or isinstance(item["chunks"], bool):
            raise _malformed("attachment chunks does not match its size")
        if not isinstance(item["key"], str) or len(b64d(item["key"], what="attachment key")) != 32:
            raise _malformed("attachment key is not 32 bytes of base64url")
        entries.append(AttachmentEntry(name, media_type, size, item["sha256"], item["chunks"], item["key"]))
    if len({e.name for e in entries}) != len(entries):
        raise _malformed("two attachments share a name")
    return tuple(entries)


def parse_payload(p: Mapping[str, Any]) -> EnvelopeContent:
    """Schema-check an inner payload (SPEC §4.2); every failure is ``malformed``."""
    if set(p) != PAYLOAD_NAMES:
        raise _malformed(f"payload members: extra {sorted(set(p) - PAYLOAD_NAMES)}, "
                         f"missing {sorted(PAYLOAD_NAMES - set(p))}")
    if p["v"] != PROTOCOL_VERSION or isinstance(p["v"], bool):
        raise _malformed(f"unsupported payload version {p['v']!r:.20}")
    for name in ("iss", "aud"):
        if not is_authority_id(p[name]):
            raise _malformed(f"{name} is not an authority id")
    if not is_message_id(p["id"]):
        raise _malformed("id is not 32 lowercase hex characters")
    for name in ("thread", "request"):
        if p[name] is not None and not is_message_id(p[name]):
            raise _malformed(f"{name} is neither null nor a message id")
    try:
        kind = Kind(p["kind"])
    except (ValueError, TypeError) as e:
        raise _malformed(f"unknown kind {p['kind']!r:.40}") from e
    subject, body = p["subject"], p["body"]
    if not isinstance(subject, str) or len(subject) > MAX_SUBJECT_CHARS:
        raise _malformed("subject is not a string within the cap")
    if kind in TEXT_KINDS and not isinstance(body, str):
        raise _malformed(f"a {kind.value} body is text")
    if kind not in TEXT_KINDS and not isinstance(body, dict):
        raise _malformed(f"a {kind.value} body is an object")
    return EnvelopeContent(
        iss=p["iss"], aud=p["aud"], id=p["id"], iat=_int_time(p, "iat"), exp=_int_time(p, "exp"),
        kind=kind.value, subject=subject, body=body, thread=p["thread"], request=p["request"],
        attachments=_parse_manifest(p["attachments"]),
    )


def _encrypt(inner: bytes, *, iss: str, aud: str, recipient_kid: str, recipient_key: OKPKey, max_bytes: int) -> bytes:
    if recipient_key.curve_name != "X25519":
        raise EnvelopeError(Category.UNKNOWN_RECIPIENT_KEY, "the recipient key is not X25519")
    header = {
        "alg": ALG_ECDH, "enc": ENC_A256GCM, "kid": recipient_kid, "typ": ENVELOPE_JWE_TYP,
        "cty": ENVELOPE_JWS_TYP, "iss": iss, "aud": aud,
    }
    try:
        raw = jwe.encrypt_compact(header, inner, recipient_key, registry=ENVELOPE_JWE_REGISTRY).encode("ascii")
    except JoseError as e:
        raise EnvelopeError(Category.MALFORMED, f"cannot encrypt: {e}") from e
    if len(raw) > max_bytes:
        raise EnvelopeError(Category.TOO_LARGE, f"sealed envelope of {len(raw)} bytes exceeds {max_bytes}")
    return raw


def seal_envelope(
    content: EnvelopeContent, *, signer: Signer, recipient_kid: str, recipient_key: OKPKey,
    max_bytes: int = ENVELOPE_MAX_BYTES, max_lifetime: int = DEFAULT_MAX_LIFETIME,
) -> SealedEnvelope:
    """Sign ``content`` with ``signer``, encrypt to the recipient's X25519 key; the result is final."""
    payload = content.to_payload()
    parse_payload(payload)  # a sender never seals what a receiver must refuse
    if content.exp - content.iat > max_lifetime or content.exp < content.iat:
        raise EnvelopeError(Category.MALFORMED, "exp - iat is outside 0..max_lifetime")
    inner = sign_compact(typ=ENVELOPE_JWS_TYP, payload=payload, signer=signer)
    raw = _encrypt(inner, iss=content.iss, aud=content.aud, recipient_kid=recipient_kid,
                   recipient_key=recipient_key, max_bytes=max_bytes)
    return SealedEnvelope(raw=raw, sha256=envelope_sha256(raw), inner_jws=inner)


def reseal_envelope(
    inner_jws: bytes, *, iss: str, aud: str, recipient_kid: str, recipient_key: OKPKey,
    max_bytes: int = ENVELOPE_MAX_BYTES,
) -> SealedEnvelope:
    """Re-encrypt the same signed inner JWS (same id) to the recipient's new encryption key."""
    raw = _encrypt(inner_jws, iss=iss, aud=aud, recipient_kid=recipient_kid,
                   recipient_key=recipient_key, max_bytes=max_bytes)
    return SealedEnvelope(raw=raw, sha256=envelope_sha256(raw), inner_jws=inner_jws)


PeerLookup = Callable[[str], Keyset | None]


def open_envelope(
    raw: bytes, *, me: str, decryption_keys: Mapping[str, OKPKey], lookup_peer: PeerLookup, now: int,
    skew: int = DEFAULT_SKEW, max_lifetime: int = DEFAULT_MAX_LIFETIME, max_bytes: int = ENVELOPE_MAX_BYTES,
) -> OpenedEnvelope:
    """Open ``raw`` in SPEC §5's order; raise ``EnvelopeError`` naming the first failed step's category.

    ``decryption_keys`` maps kid -> private X25519 key (current and kept-retired);
    ``lookup_peer`` gives the keyset this node holds for an authority id, or None.
    """
    try:
        return _open(raw, me=me, decryption_keys=decryption_keys, lookup_peer=lookup_peer, now=now,
                     skew=skew, max_lifetime=max_lifetime, max_bytes=max_bytes)
    except EnvelopeError:
        raise
    except ProtocolError as e:
        raise EnvelopeError(e.category, e.detail) from e


def _open(
    raw: bytes, *, me: str, decryption_keys: Mapping[str, OKPKey], lookup_peer: PeerLookup, now: int,
    skew: int, max_lifetime: int, max_bytes: int,
) -> OpenedEnvelope:
    # (1) size cap on the raw bytes
    if len(raw) > max_bytes:
        raise EnvelopeError(Category.TOO_LARGE, f"envelope of {len(raw)} bytes exceeds {max_bytes}")
    # (3) compact form
    segments = split_compact(raw, 5, what="envelope")
    # (4) outer header: strict parse, allow-lists first, then typ and the exact set
    header = decode_protected(segments[0])
    check_algorithms(header, allowed_alg=ALG_ECDH, allowed_enc=ENC_A256GCM)
    if "crit" in header:
        raise EnvelopeError(Category.BAD_HEADER, "crit is not defined for envelopes")
    check_exact_header(header, typ=ENVELOPE_JWE_TYP, names=OUTER_HEADER_NAMES)
    if header["cty"] != ENVELOPE_JWS_TYP:
        raise EnvelopeError(Category.BAD_HEADER, "cty is not comity-envelope+jws")
    epk = header["epk"]
    if not isinstance(epk, dict) or set(epk) != {"kty", "crv", "x"} or epk.get("kty") != "OKP" \
            or epk.get("crv") != "X25519" or not isinstance(epk.get("x"), str):
        raise EnvelopeError(Category.BAD_HEADER, "epk is not exactly {kty: OKP, crv: X25519, x}")
    if not isinstance(header["kid"], str):
        raise EnvelopeError(Category.BAD_HEADER, "kid is not a string")
    iss, aud = header["iss"], header["aud"]
    if not is_authority_id(iss) or not is_authority_id(aud):
        raise EnvelopeError(Category.BAD_HEADER, "outer iss/aud are not authority ids")
    # (5) outer iss is a known, usable peer and aud is us
    if aud != me:
        raise EnvelopeError(Category.WRONG_RECIPIENT, f"envelope is addressed to {aud}, not {me}")
    keyset = lookup_peer(iss)
    if keyset is None:
        raise EnvelopeError(Category.UNKNOWN_SENDER, f"{iss} is not a pinned peer")
    if now > keyset.expires_at:
        raise EnvelopeError(Category.SENDER_KEYSET_EXPIRED, f"the keyset held for {iss} has expired")
    # (6) recipient kid is a current or kept-retired encryption key of ours
    private = decryption_keys.get(header["kid"])
    if private is None:
        raise EnvelopeError(Category.UNKNOWN_RECIPIENT_KEY, f"no encryption key {header['kid']!r:.50}")
    # (7) decryption
    try:
        inner = jwe.decrypt_compact(raw, private, registry=ENVELOPE_JWE_REGISTRY).plaintext
    except (JoseError, ValueError) as e:
        raise EnvelopeError(Category.DECRYPTION_FAILED, "the envelope does not decrypt") from e
    if inner is None:
        raise EnvelopeError(Category.DECRYPTION_FAILED, "the envelope decrypted to nothing")
    # (8) inner header parsed and checked
    signed = read_signed_compact(inner, typ=ENVELOPE_JWS_TYP, max_bytes=max_bytes)
    # (9) the signing kid belongs to the keyset of iss (and is not revoked)
    entry = keyset.signing_key(signed.kid)
    if entry is None:
        raise EnvelopeError(Category.UNKNOWN_SIGNING_KEY, f"kid {signed.kid:.50} is not a signing key of {iss}")
    if entry.revoked_at is not None:
        raise EnvelopeError(Category.REVOKED_KEY, f"signing key {signed.kid} of {iss} is revoked")
    # (10) signature
    verify_signature(signed.signing_input, signed.signature, entry.key)
    # The sender is authenticated from here on: refusals name it.
    try:
        return _check_authenticated(signed, keyset, raw, header, iss=iss, aud=aud, now=now, skew=skew,
                                    max_lifetime=max_lifetime)
    except ProtocolError as e:
        err = EnvelopeError(e.category, e.detail)
        err.authenticated_sender = iss
        raise err from e


def _check_authenticated(
    signed: SignedCompact, keyset: Keyset, raw: bytes, header: Mapping[str, Any], *, iss: str, aud: str,
    now: int, skew: int, max_lifetime: int,
) -> OpenedEnvelope:
    # (11) payload strictly parsed and schema-checked
    content = parse_payload(signed.parse_payload())
    # (12) inner and outer iss/aud agree
    if content.iss != iss or content.aud != aud:
        raise EnvelopeError(Category.ISSUER_MISMATCH, "inner iss/aud differ from the outer header")
    # (13) freshness
    if content.iat > now + skew:
        raise EnvelopeError(Category.NOT_YET_VALID, f"iat {content.iat} is after now {now} + skew {skew}")
    if now > content.exp + skew:
        raise EnvelopeError(Category.EXPIRED, f"exp {content.exp} + skew {skew} is before now {now}")
    if content.exp - content.iat > max_lifetime or content.exp < content.iat:
        raise EnvelopeError(Category.MALFORMED, "exp - iat is outside 0..max_lifetime")
    # (13.4) the signing key's time rules at iat (last, so a stale message is called expired)
    accept_signing_key(keyset, signed.kid, t=content.iat, now=now, skew=skew, max_lifetime=max_lifetime)
    return OpenedEnvelope(content=content, inner_jws=signed.token, sha256=envelope_sha256(raw),
                          signing_kid=signed.kid, recipient_kid=header["kid"])
