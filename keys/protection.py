"""Encryption at rest of a keystore's secrets, with library primitives only.

With a passphrase: scrypt (``cryptography``'s KDF; salt and cost stored beside the keys)
derives a 32-byte master secret, and HKDF-SHA256 splits it into

* the password of every private key file, PKCS#8 PEM under ``BestAvailableEncryption``
  (the master secret goes in rather than the passphrase itself, because PKCS#8's own
  PBKDF2 cost is low: guessing the passphrase must always cost a scrypt);
* an AES-256-GCM key that wraps the local storage key; its tag tells a wrong passphrase
  from a right one before any key file is touched.

Without a passphrase (only on explicit request) keys are PKCS#8 ``NoEncryption`` and the
storage key is stored as is.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

PrivateKey = Ed25519PrivateKey | X25519PrivateKey

KIND_SCRYPT = "scrypt"
KIND_NONE = "none"
_PEM_INFO = b"comity/keystore pkcs8 password"
_WRAP_INFO = b"comity/keystore storage-key wrap"


class UnwrapError(Exception):
    """A wrapped secret does not decrypt: a wrong passphrase, or tampered bytes."""


@dataclass(frozen=True)
class ScryptParams:
    """scrypt cost; the default is OWASP's minimum for scrypt (about 0.4 s, 128 MiB)."""

    n: int = 2**17
    r: int = 8
    p: int = 1


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64d(text: object) -> bytes:
    if not isinstance(text, str):
        raise ValueError("not a base64url string")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as e:
        raise ValueError("not base64url") from e


class Protection:
    """How the secrets of one keystore are protected at rest."""

    kind: str = KIND_NONE

    def to_json(self) -> dict[str, Any]:
        return {"kind": KIND_NONE}

    def _pem_encryption(self) -> serialization.KeySerializationEncryption:
        return serialization.NoEncryption()

    def _pem_password(self) -> bytes | None:
        return None

    def wrap(self, secret: bytes, *, label: bytes, randbytes: Callable[[int], bytes]) -> dict[str, str]:
        return {"raw": _b64e(secret)}

    def unwrap(self, record: Mapping[str, Any], *, label: bytes) -> bytes:
        try:
            return _b64d(record["raw"])
        except (KeyError, ValueError) as e:
            raise UnwrapError("the stored secret is not base64url") from e

    def seal_private_key(self, key: PrivateKey) -> bytes:
        """PKCS#8 PEM of ``key``, encrypted unless this is the no-passphrase protection."""
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 self._pem_encryption())

    def open_private_key(self, pem: bytes) -> PrivateKey:
        """Load a key written by ``seal_private_key``; ``ValueError`` if it does not load."""
        key = serialization.load_pem_private_key(pem, password=self._pem_password())
        if not isinstance(key, Ed25519PrivateKey | X25519PrivateKey):
            raise ValueError(f"unexpected key type {type(key).__name__}")
        return key


class PassphraseProtection(Protection):
    """Secrets protected by a scrypt-derived master secret (see the module docstring)."""

    kind = KIND_SCRYPT

    def __init__(self, passphrase: bytes, *, salt: bytes, params: ScryptParams) -> None:
        if not passphrase:
            raise ValueError("an empty passphrase protects nothing")
        self.salt = salt
        self.params = params
        master = Scrypt(salt=salt, length=32, n=params.n, r=params.r, p=params.p).derive(passphrase)
        self._pem_secret = _b64e(_hkdf(master, _PEM_INFO)).encode("ascii")
        self._wrap_key = AESGCM(_hkdf(master, _WRAP_INFO))

    def to_json(self) -> dict[str, Any]:
        p = self.params
        return {"kind": KIND_SCRYPT, "salt": _b64e(self.salt), "n": p.n, "r": p.r, "p": p.p}

    def _pem_encryption(self) -> serialization.KeySerializationEncryption:
        return serialization.BestAvailableEncryption(self._pem_secret)

    def _pem_password(self) -> bytes | None:
        return self._pem_secret

    def wrap(self, secret: bytes, *, label: bytes, randbytes: Callable[[int], bytes]) -> dict[str, str]:
        nonce = randbytes(12)
        return {"nonce": _b64e(nonce), "ciphertext": _b64e(self._wrap_key.encrypt(nonce, secret, label))}

    def unwrap(self, record: Mapping[str, Any], *, label: bytes) -> bytes:
        try:
            nonce, ciphertext = _b64d(record["nonce"]), _b64d(record["ciphertext"])
            return self._wrap_key.decrypt(nonce, ciphertext, label)
        except (KeyError, ValueError, InvalidTag) as e:
            raise UnwrapError("the wrapped secret does not decrypt") from e


def _hkdf(master: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(master)


def new_protection(passphrase: bytes | None, *, params: ScryptParams,
                   randbytes: Callable[[int], bytes]) -> Protection:
    """The protection for a new keystore: a fresh salt, or none at all when ``passphrase`` is None."""
    if passphrase is None:
        return Protection()
    return PassphraseProtection(passphrase, salt=randbytes(16), params=params)


def load_protection(record: Mapping[str, Any], passphrase: bytes | None) -> Protection:
    """Rebuild the protection described by ``record`` (from ``to_json``); ``ValueError`` if unusable."""
    kind = record.get("kind")
    if kind == KIND_NONE:
        return Protection()
    if kind != KIND_SCRYPT:
        raise ValueError(f"unknown protection {kind!r:.40}")
    if passphrase is None:
        raise ValueError("this keystore needs a passphrase")
    params = ScryptParams(n=record["n"], r=record["r"], p=record["p"])
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (params.n, params.r, params.p)):
        raise ValueError("scrypt parameters are not positive integers")
    return PassphraseProtection(passphrase, salt=_b64d(record["salt"]), params=params)


def needs_passphrase(record: Mapping[str, Any]) -> bool:
    return record.get("kind") != KIND_NONE
