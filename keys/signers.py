"""Signers over keystore keys.

``protocol`` signs through the ``protocol.jose.Signer`` protocol (a ``kid`` and
``sign(data) -> bytes``), so nothing outside ``keys`` ever holds a private key.  The classes
here keep the key in process memory, loaded from the keystore; a hardware security module
or a cloud KMS can take their place later by implementing the same protocol (Ed25519
signatures are deterministic, so any correct implementation produces the same bytes).
"""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from joserfc.jwk import OKPKey

from protocol.jose import b64e, thumbprint


def public_jwk_of(key: Ed25519PrivateKey | X25519PrivateKey) -> dict[str, str]:
    """The public JWK ``{kty, crv, x}`` of a private key."""
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    crv = "Ed25519" if isinstance(key, Ed25519PrivateKey) else "X25519"
    return {"kty": "OKP", "crv": crv, "x": b64e(raw).decode("ascii")}


class KeystoreSigner:
    """A ``Signer`` over an Ed25519 private key held by the keystore."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self._public_jwk = public_jwk_of(key)
        self._kid = thumbprint(self._public_jwk)

    @property
    def kid(self) -> str:
        return self._kid

    @property
    def public_jwk(self) -> dict[str, str]:
        return dict(self._public_jwk)

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def __repr__(self) -> str:
        return f"KeystoreSigner(kid={self._kid!r})"


def decryption_key(key: X25519PrivateKey) -> OKPKey:
    """The joserfc form of an X25519 private key, as ``protocol`` opens envelopes with it."""
    return OKPKey.import_key(key)

