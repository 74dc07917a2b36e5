"""Deterministic keys for test vectors: every key is derived from a label, so vectors regenerate byte-for-byte.

Ed25519 signatures are deterministic (RFC 8032), so every JWS built from these keys and fixed
times is reproducible; JWE output is not (joserfc draws CEK, IV and ephemeral keys from the OS),
so JWE vectors are committed files checked against the regenerated inner JWS.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from joserfc.jwk import OKPKey

from protocol.jose import LocalSigner, public_jwk
from protocol.keysets import KeyEntry, Keyset

#: The fixed "now" of every vector: 2027-01-15T08:00:00Z.
T0 = 1_799_913_600


def seed(label: str) -> bytes:
    return hashlib.sha256(b"comity-test-vector:" + label.encode()).digest()


def ed25519(label: str) -> OKPKey:
    return OKPKey.import_key(Ed25519PrivateKey.from_private_bytes(seed(label)))


def x25519(label: str) -> OKPKey:
    return OKPKey.import_key(X25519PrivateKey.from_private_bytes(seed(label)))


def signer(label: str) -> LocalSigner:
    return LocalSigner(ed25519(label))


def entry(key: OKPKey, *, nbf: int = T0 - 86400, exp: int = T0 + 365 * 86400,
          retired_at: int | None = None, revoked_at: int | None = None) -> KeyEntry:
    j = public_jwk(key)
    return KeyEntry(kid=key.thumbprint(), crv=j["crv"], x=j["x"], nbf=nbf, exp=exp,
                    retired_at=retired_at, revoked_at=revoked_at)


def keyset(authority: str, *, label: str | None = None, version: int = 1, issued_at: int = T0 - 86400,
           validity: int = 90 * 86400, endpoint: str | None = None) -> Keyset:
    """A one-version keyset of ``authority`` with keys from labels ``<label>/identity|signing|encryption``."""
    lab = label or authority
    return Keyset(
        authority=authority, name=f"{authority} central authority",
        endpoint=endpoint or f"https://{authority.lower()}.example/",
        version=version, issued_at=issued_at, expires_at=issued_at + validity,
        identity_jwk=public_jwk(ed25519(f"{lab}/identity")),
        signing_keys=(entry(ed25519(f"{lab}/signing")),),
        encryption_keys=(entry(x25519(f"{lab}/encryption")),),
    )
