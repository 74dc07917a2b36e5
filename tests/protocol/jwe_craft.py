"""Hand-built JWEs for tamper tests and vectors: any protected-header bytes, seeded randomness.

joserfc serialises the header itself and draws CEK, IV and ephemeral keys from the OS, so a
tampered header (extra or duplicate member, forbidden ``alg``) cannot be made with it.  These
functions implement the two JWE forms of comity/1 directly on ``cryptography`` (RFC 7516
compact serialization; RFC 7518 §4.6 ECDH-ES+A256KW with the Concat KDF, §4.4 AES key
wrap, §5.3 A256GCM) with the protected header given as raw bytes, which become the AEAD's
additional data exactly as a receiver sees them.  ``test_envelope`` proves that an envelope
built here with the profile's header opens with ``open_envelope``.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.keywrap import aes_key_wrap
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from joserfc.jwk import OKPKey

from protocol.jose import b64e


def seeded(label: str, n: int) -> bytes:
    """``n`` deterministic bytes from ``label`` (the vectors' stand-in for a random source)."""
    out = b""
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(f"comity-jwe-craft:{label}:{counter}".encode()).digest()
        counter += 1
    return out[:n]


def _len_prefixed(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _raw_public(key: OKPKey) -> bytes:
    pub = key.public_key
    assert isinstance(pub, X25519PublicKey)
    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw)


def ecdh_es_kek(shared_secret: bytes, alg: str = "ECDH-ES+A256KW") -> bytes:
    """RFC 7518 §4.6.2: Concat KDF (SHA-256) with empty apu/apv, keydatalen 256."""
    other_info = _len_prefixed(alg.encode()) + _len_prefixed(b"") + _len_prefixed(b"") + struct.pack(">I", 256)
    return ConcatKDFHash(algorithm=hashes.SHA256(), length=32, otherinfo=other_info).derive(shared_secret)


HeaderBuilder = Callable[[dict[str, str]], bytes]


def encrypt_ecdh(plaintext: bytes, *, header: HeaderBuilder, recipient: OKPKey, label: str) -> bytes:
    """A compact ECDH-ES+A256KW / A256GCM JWE to ``recipient`` whose protected header is
    ``header(epk)`` verbatim (``epk`` is the ephemeral public JWK ``{kty, crv, x}``)."""
    eph = X25519PrivateKey.from_private_bytes(seeded(label + "/epk", 32))
    epk_x = b64e(eph.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
    epk = {"kty": "OKP", "crv": "X25519", "x": epk_x}
    shared = eph.exchange(X25519PublicKey.from_public_bytes(_raw_public(recipient)))
    cek = seeded(label + "/cek", 32)
    wrapped = aes_key_wrap(ecdh_es_kek(shared), cek)
    protected = b64e(header(epk))
    return _seal_content(protected, b64e(wrapped), cek, plaintext, label)


def encrypt_dir(plaintext: bytes, *, header: bytes, key: bytes, label: str) -> bytes:
    """A compact ``dir`` / A256GCM JWE under ``key`` whose protected header is ``header`` verbatim."""
    return _seal_content(b64e(header), b"", key, plaintext, label)


def _seal_content(protected: bytes, encrypted_key: bytes, cek: bytes, plaintext: bytes, label: str) -> bytes:
    iv = seeded(label + "/iv", 12)
    sealed = AESGCM(cek).encrypt(iv, plaintext, protected)
    ciphertext, tag = sealed[:-16], sealed[-16:]
    return b".".join([protected, encrypted_key, b64e(iv), b64e(ciphertext), b64e(tag)])


def flip_segment(token: bytes, index: int, position: int = 0) -> bytes:
    """Change one base64url character of segment ``index`` (keeping it canonical base64url)."""
    segments = token.split(b".")
    seg = bytearray(segments[index])
    seg[position] = ord("B") if seg[position] != ord("B") else ord("C")
    segments[index] = bytes(seg)
    return b".".join(segments)
