"""Signing and verifying keyset versions and keyset chains (SPEC §3).

A keyset version travels as a JWS in the General JSON Serialization (RFC 7515 §7.2.1)
whose bytes are RFC 8785 canonical JSON, so every version is reproducible and two
documents for one version can be compared byte for byte::

    {"payload": B64(JCS(keyset)),
     "signatures": [{"protected": B64(JCS({"alg":"Ed25519","kid":K,"typ":"comity-keyset+jws"})),
                     "signature": B64(sig)}, ...]}

Signer sets are checked here, never left to a JOSE library, and every signature is
verified on its own:

* version 1: exactly one signature, by its own identity key (self-signed);
* a later version with the same identity key: exactly one, by the previous identity key;
* an identity rotation: exactly two, the previous identity first, then the new one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from .errors import Category, KeysetError, ProtocolError
from .ids import is_kid
from .jose import (
    ALG_ED25519,
    JWS_HEADER_NAMES,
    Signer,
    b64d,
    b64e,
    check_algorithms,
    check_exact_header,
    decode_protected,
    verify_signature,
)
from .keysets import DEFAULT_KEYSET_VALIDITY, KEYSET_TYP, KeyEntry, Keyset
from .strictjson import canonical, parse_object

#: Cap on one keyset document's bytes.
KEYSET_MAX_BYTES = 64 * 1024
_DOC_NAMES = frozenset({"payload", "signatures"})
_SIGNATURE_NAMES = frozenset({"protected", "signature"})


@dataclass(frozen=True)
class KeysetSignature:
    """One signature of a keyset document, not yet verified."""

    kid: str
    signing_input: bytes  # ASCII(protected) || "." || ASCII(payload)
    signature: bytes


@dataclass(frozen=True)
class KeysetDocument:
    """A strictly read keyset document: its exact bytes, its payload and its signatures."""

    keyset: Keyset
    doc: bytes
    signatures: tuple[KeysetSignature, ...]

    @property
    def version(self) -> int:
        return self.keyset.version

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(s.kid for s in self.signatures)


def _keyset_error(e: ProtocolError) -> KeysetError:
    """The same refusal as a ``KeysetError`` (errors from strictjson and jose are plain)."""
    return e if isinstance(e, KeysetError) else KeysetError(e.category, e.detail)


# --- signing -------------------------------------------------------------------------------------


def sign_keyset(keyset: Keyset, signers: Sequence[Signer]) -> bytes:
    """Sign ``keyset``: ``[own identity]``, or ``[previous identity, new identity]`` on rotation.

    The last signer is always the keyset's own identity key; its signature is checked against
    ``identity_jwk`` before the document is returned, so a misconfigured signer is caught here.
    """
    kids = [s.kid for s in signers]
    if not 1 <= len(kids) <= 2 or len(set(kids)) != len(kids) or not all(is_kid(k) for k in kids):
        raise KeysetError(Category.BAD_SIGNER_SET, f"signers {kids} are not one or two distinct thumbprints")
    if kids[-1] != keyset.identity_kid:
        raise KeysetError(Category.BAD_SIGNER_SET, "the last signer is not the keyset's own identity key")
    if keyset.version == 1 and len(kids) != 1:
        raise KeysetError(Category.BAD_SIGNER_SET, "version 1 is signed by its own identity key alone")
    payload = b64e(canonical(keyset.to_payload()))
    signatures: list[dict[str, str]] = []
    for signer in signers:
        protected = b64e(canonical({"alg": ALG_ED25519, "kid": signer.kid, "typ": KEYSET_TYP}))
        signing_input = protected + b"." + payload
        sig = signer.sign(signing_input)
        if signer.kid == keyset.identity_kid:
            try:
                verify_signature(signing_input, sig, keyset.identity_key)
            except ProtocolError as e:
                raise KeysetError(Category.BAD_SIGNATURE, f"signer {signer.kid} is not identity_jwk") from e
        signatures.append({"protected": protected.decode("ascii"), "signature": b64e(sig).decode("ascii")})
    return canonical({"payload": payload.decode("ascii"), "signatures": signatures})


# --- reading -------------------------------------------------------------------------------------


def _read_signature(item: Any, payload_segment: bytes) -> KeysetSignature:
    if not isinstance(item, dict):
        raise KeysetError(Category.MALFORMED, "a keyset signature is not an object")
    if "header" in item:
        raise KeysetError(Category.BAD_HEADER, "unprotected header members are not allowed")
    if set(item) != _SIGNATURE_NAMES or not all(isinstance(v, str) for v in item.values()):
        raise KeysetError(Category.MALFORMED, f"keyset signature members {sorted(item)}")
    protected = item["protected"].encode("ascii")
    header = decode_protected(protected)
    check_algorithms(header, allowed_alg=ALG_ED25519)
    check_exact_header(header, typ=KEYSET_TYP, names=JWS_HEADER_NAMES)
    if not is_kid(header["kid"]):
        raise KeysetError(Category.BAD_HEADER, "keyset signature kid is not an RFC 7638 thumbprint")
    if canonical(header) != b64d(protected, what="protected header"):
        raise KeysetError(Category.MALFORMED, "keyset protected header is not RFC 8785 canonical")
    signature = b64d(item["signature"], what="keyset signature")
    return KeysetSignature(header["kid"], protected + b"." + payload_segment, signature)


def read_keyset(doc: bytes) -> KeysetDocument:
    """Strictly read a keyset document; nothing is verified yet.

    Refused: more than ``KEYSET_MAX_BYTES`` (``too_large``); not strict JSON, not exactly
    ``{payload, signatures}`` with each signature exactly ``{protected, signature}``, or any
    part not in RFC 8785 form (``malformed``); an unprotected ``header`` or a protected header
    other than ``{alg: Ed25519, typ: comity-keyset+jws, kid}`` (``bad_header``, ``wrong_type``,
    ``forbidden_algorithm``); no or more than two signatures (``bad_signer_set``); a payload
    the keyset model refuses, or that is not exactly the model's own serialisation of its
    fields (``keyset_invalid``).
    """
    try:
        obj = parse_object(doc, max_bytes=KEYSET_MAX_BYTES)
        if set(obj) != _DOC_NAMES:
            raise KeysetError(Category.MALFORMED, f"keyset document members {sorted(obj)}")
        payload_segment, items = obj["payload"], obj["signatures"]
        if not isinstance(payload_segment, str) or not isinstance(items, list):
            raise KeysetError(Category.MALFORMED, "keyset payload is not a string or signatures not a list")
        if not 1 <= len(items) <= 2:
            raise KeysetError(Category.BAD_SIGNER_SET, f"a keyset carries {len(items)} signatures")
        segment = payload_segment.encode("ascii")
        signatures = tuple(_read_signature(item, segment) for item in items)
        payload_bytes = b64d(segment, what="keyset payload")
        payload = parse_object(payload_bytes, max_bytes=KEYSET_MAX_BYTES)
        if canonical(payload) != payload_bytes:
            raise KeysetError(Category.MALFORMED, "keyset payload is not RFC 8785 canonical JSON")
        keyset = Keyset.from_payload(payload)
        if canonical(keyset.to_payload()) != payload_bytes:
            raise KeysetError(Category.KEYSET_INVALID, "keyset payload is not the JCS form of its fields")
        if canonical(obj) != doc:
            raise KeysetError(Category.MALFORMED, "keyset document is not RFC 8785 canonical JSON")
    except UnicodeEncodeError as e:
        raise KeysetError(Category.MALFORMED, "keyset document holds non-ASCII base64url") from e
    except KeysetError:
        raise
    except ProtocolError as e:
        raise _keyset_error(e) from e
    return KeysetDocument(keyset, doc, signatures)


# --- verifying -----------------------------------------------------------------------------------


def verify_signer_set(prev: Keyset | None, doc: KeysetDocument) -> None:
    """Check who signed ``doc`` (``prev`` is None for version 1) and verify each signature on its own."""
    new = doc.keyset
    if prev is None:
        required = [(new.identity_kid, new)]
    elif new.identity_kid == prev.identity_kid:
        required = [(prev.identity_kid, prev)]
    else:
        required = [(prev.identity_kid, prev), (new.identity_kid, new)]
    expected = [kid for kid, _ in required]
    if list(doc.kids) != expected:
        raise KeysetError(
            Category.BAD_SIGNER_SET, f"keyset v{new.version} signed by {list(doc.kids)}, required {expected}"
        )
    for sig, (kid, owner) in zip(doc.signatures, required, strict=True):
        try:
            verify_signature(sig.signing_input, sig.signature, owner.identity_key)
        except ProtocolError as e:
            raise KeysetError(Category.BAD_SIGNATURE, f"keyset v{new.version}: signature by {kid}") from e


def verify_successor(prev: Keyset, doc: KeysetDocument) -> Keyset:
    """Verify that ``doc`` is the version right after ``prev``; return its keyset."""
    new = doc.keyset
    if new.authority != prev.authority:
        raise KeysetError(Category.BROKEN_CHAIN, f"keyset of {new.authority} follows one of {prev.authority}")
    if new.version != prev.version + 1:
        raise KeysetError(Category.BROKEN_CHAIN, f"keyset v{new.version} does not follow v{prev.version}")
    if new.issued_at < prev.issued_at:
        raise KeysetError(Category.BROKEN_CHAIN, f"keyset v{new.version} issued before v{prev.version}")
    verify_signer_set(prev, doc)
    return new


def _verify_first(doc: KeysetDocument) -> None:
    if doc.version != 1:
        raise KeysetError(Category.BROKEN_CHAIN, f"chain starts at v{doc.version}, not v1")
    verify_signer_set(None, doc)


def verify_chain(docs: Sequence[bytes], *, fingerprint: str, now: int) -> list[KeysetDocument]:
    """Verify a whole chain, oldest first, against a pinned ``fingerprint``.

    Order: read every document; ``fingerprint`` must be the identity of some version
    (``fingerprint_mismatch``); v1 self-signed and each next a verified successor; only the
    newest version's ``expires_at`` counts (``keyset_expired``).
    """
    if not docs:
        raise KeysetError(Category.BROKEN_CHAIN, "no keyset versions")
    chain = [read_keyset(d) for d in docs]
    if all(d.keyset.identity_kid != fingerprint for d in chain):
        raise KeysetError(Category.FINGERPRINT_MISMATCH, f"no version has identity {fingerprint:.50}")
    _verify_first(chain[0])
    for prev, doc in pairwise(chain):
        verify_successor(prev.keyset, doc)
    chain[-1].keyset.check_usable(now)
    return chain


def update_chain(
    held: Sequence[KeysetDocument], offered: Sequence[bytes], *, now: int
) -> list[KeysetDocument]:
    """Apply an offered chain (or suffix of one) to the verified chain ``held`` of a pinned peer.

    Order: the offer must be non-empty, of the held authority, strictly ascending
    (``broken_chain``); each offered version we hold must be byte-identical — one that differs
    is verified against our chain and, if it verifies, is ``equivocation``; an offer whose
    newest is older than ours is ``rollback``; newer versions are walked from our newest
    (a gap is ``broken_chain``).  An offer with nothing newer returns ``held`` unchanged.  In
    every case the newest version of the result must not be expired at ``now``.
    """
    if not held:
        raise KeysetError(Category.BROKEN_CHAIN, "no held keyset versions to update")
    if not offered:
        raise KeysetError(Category.BROKEN_CHAIN, "the offer holds no keyset version")
    docs = [read_keyset(d) for d in offered]
    newest = held[-1].keyset
    by_version = {d.version: d for d in held}
    for prev_doc, doc in pairwise(docs):
        if doc.version <= prev_doc.version:
            raise KeysetError(Category.BROKEN_CHAIN, "offered keyset versions are not strictly ascending")
    for doc in docs:
        if doc.keyset.authority != newest.authority:
            raise KeysetError(Category.BROKEN_CHAIN, f"offered keyset of {doc.keyset.authority}")
        if doc.version > newest.version:
            continue
        mine = by_version.get(doc.version)
        if mine is None:
            raise KeysetError(Category.BROKEN_CHAIN, f"offered v{doc.version} is older than the held chain")
        if mine.doc != doc.doc:
            before = by_version.get(doc.version - 1)
            if doc.version == 1:
                verify_signer_set(None, doc)
            elif before is None:
                raise KeysetError(Category.BROKEN_CHAIN, f"held chain lacks v{doc.version - 1}")
            else:
                verify_successor(before.keyset, doc)
            raise KeysetError(Category.EQUIVOCATION, f"two signed documents for keyset v{doc.version}")
    if docs[-1].version < newest.version:
        raise KeysetError(
            Category.ROLLBACK, f"offered newest v{docs[-1].version} is older than held v{newest.version}"
        )
    result = list(held)
    for doc in docs:
        if doc.version > newest.version:
            verify_successor(result[-1].keyset, doc)
            result.append(doc)
    result[-1].keyset.check_usable(now)
    return result


# --- building the next version -------------------------------------------------------------------


def next_keyset(
    prev: Keyset,
    *,
    now: int,
    signing_keys: Sequence[KeyEntry],
    encryption_keys: Sequence[KeyEntry],
    identity_jwk: dict[str, str] | None = None,
    endpoint: str | None = None,
    name: str | None = None,
    validity: int = DEFAULT_KEYSET_VALIDITY,
) -> Keyset:
    """The version after ``prev``, issued at ``now``; the caller passes every key entry it keeps.

    ``identity_jwk`` set to a new key makes it an identity rotation (sign it with the previous
    and the new identity).  The result is validated as a received payload would be.
    """
    if now < prev.issued_at:
        raise KeysetError(Category.KEYSET_INVALID, f"next keyset issued at {now}, before v{prev.version}")
    draft = Keyset(
        authority=prev.authority, name=prev.name if name is None else name,
        endpoint=prev.endpoint if endpoint is None else endpoint,
        version=prev.version + 1, issued_at=now, expires_at=now + validity,
        identity_jwk=dict(prev.identity_jwk if identity_jwk is None else identity_jwk),
        signing_keys=tuple(signing_keys), encryption_keys=tuple(encryption_keys),
        tls_cert_sha256=prev.tls_cert_sha256, profile_sha256=prev.profile_sha256,
    )
    try:
        return Keyset.from_payload(draft.to_payload())
    except ProtocolError as e:
        raise _keyset_error(e) from e
