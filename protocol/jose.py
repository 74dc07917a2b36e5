"""The JOSE layer of comity/1: strict header checks first, joserfc for the cryptography.

Nothing here trusts a JOSE library with parsing: every protected header and payload is
parsed by ``strictjson`` and checked against an exact parameter set before joserfc sees
the bytes.  joserfc's own size limits are raised to at least 4/3 of our caps so that it
never refuses what SPEC accepts; our caps are enforced on the raw bytes by the callers.
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from joserfc.errors import JoseError
from joserfc.jwe import JWERegistry
from joserfc.jwk import OctKey, OKPKey
from joserfc.jws import JWSRegistry
from joserfc.registry import HeaderParameter

from .errors import Category, ProtocolError
from .strictjson import canonical, parse_object

ALG_ED25519 = "Ed25519"
ALG_ECDH = "ECDH-ES+A256KW"
ALG_DIR = "dir"
ENC_A256GCM = "A256GCM"

MAX_HEADER_BYTES = 4096
#: Header parameters that would let the sender choose keys or compression: never trusted.
UNTRUSTED_KEY_PARAMS = frozenset({"jwk", "jku", "x5u", "x5c", "x5t", "x5t#S256"})


class Signer(Protocol):
    """Anything that signs with an Ed25519 key named by ``kid`` (a local key, an HSM, a KMS)."""

    @property
    def kid(self) -> str: ...

    def sign(self, data: bytes) -> bytes: ...


class LocalSigner:
    """A ``Signer`` over an in-memory Ed25519 private key."""

    def __init__(self, key: OKPKey) -> None:
        if not key.is_private or key.curve_name != "Ed25519":
            raise ValueError("LocalSigner needs a private Ed25519 key")
        self._key = key
        self._kid = key.thumbprint()

    @property
    def kid(self) -> str:
        return self._kid

    @property
    def public_jwk(self) -> dict[str, str]:
        return public_jwk(self._key)

    def sign(self, data: bytes) -> bytes:
        return _JWS_ALG.sign(data, self._key)


def b64e(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


_B64URL_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
#: For a segment of length 4k+2 (4k+3), the low 4 (2) bits of the last character carry no data and
#: must be zero in the one canonical encoding.
_UNUSED_BITS = {2: 0x0F, 3: 0x03}
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")


def b64d(segment: bytes | str, *, what: str = "segment") -> bytes:
    """Strict, canonical base64url without padding; anything else is ``malformed``."""
    raw = segment.encode("ascii") if isinstance(segment, str) else segment
    rem = len(raw) % 4
    # deleting every alphabet character leaves nothing: a C-speed check (a regex walked each byte)
    if rem == 1 or raw.translate(None, _B64URL_ALPHABET):
        raise ProtocolError(Category.MALFORMED, f"{what} is not base64url without padding")
    if rem and _B64URL_ALPHABET.index(raw[-1]) & _UNUSED_BITS[rem]:
        raise ProtocolError(Category.MALFORMED, f"{what} is not canonical base64url")
    try:
        return binascii.a2b_base64(raw.translate(_TO_STANDARD) + b"=" * (-len(raw) % 4), strict_mode=True)
    except (binascii.Error, ValueError) as e:
        raise ProtocolError(Category.MALFORMED, f"{what} is not base64url") from e


def split_compact(token: bytes, parts: int, *, what: str) -> list[bytes]:
    segments = token.split(b".")
    if len(segments) != parts:
        raise ProtocolError(Category.MALFORMED, f"{what} is not a compact serialization of {parts} parts")
    return segments


def decode_protected(segment: bytes) -> dict[str, Any]:
    if len(segment) > MAX_HEADER_BYTES * 4 // 3 + 4:
        raise ProtocolError(Category.BAD_HEADER, "protected header too large")
    decoded = b64d(segment, what="protected header")
    if len(decoded) > MAX_HEADER_BYTES:
        raise ProtocolError(Category.BAD_HEADER, "protected header too large")
    return parse_object(decoded, max_bytes=MAX_HEADER_BYTES, max_depth=4)


def check_algorithms(header: Mapping[str, Any], *, allowed_alg: str, allowed_enc: str | None = None) -> None:
    """Refuse, before any expensive work, what the profile never allows."""
    if "zip" in header:
        raise ProtocolError(Category.FORBIDDEN_ALGORITHM, "compression (zip) is refused")
    for name in UNTRUSTED_KEY_PARAMS:
        if name in header:
            raise ProtocolError(Category.FORBIDDEN_ALGORITHM, f"header parameter {name!r} is never trusted")
    alg = header.get("alg")
    if alg != allowed_alg:
        raise ProtocolError(Category.FORBIDDEN_ALGORITHM, f"alg {alg!r:.40} is not allowed here")
    if allowed_enc is not None and header.get("enc") != allowed_enc:
        raise ProtocolError(Category.FORBIDDEN_ALGORITHM, f"enc {header.get('enc')!r:.40} is not allowed")


def check_exact_header(header: Mapping[str, Any], *, typ: str, names: frozenset[str]) -> None:
    """``typ`` first (one key signs several kinds of thing), then the exact parameter set."""
    if header.get("typ") != typ:
        raise ProtocolError(Category.WRONG_TYPE, f"typ {header.get('typ')!r:.60} where {typ!r} is required")
    keys = set(header)
    if keys != names:
        extra = sorted(keys - names)
        missing = sorted(names - keys)
        raise ProtocolError(Category.BAD_HEADER, f"header parameters: extra {extra}, missing {missing}")


@dataclass(frozen=True)
class SignedCompact:
    """A compact JWS whose header and payload have been strictly parsed but not yet verified."""

    token: bytes
    header: dict[str, Any]
    payload_bytes: bytes
    signing_input: bytes
    signature: bytes
    max_bytes: int

    @property
    def kid(self) -> str:
        return str(self.header["kid"])

    def parse_payload(self) -> dict[str, Any]:
        """Strictly parse the payload; call only after the signature has been verified."""
        return parse_object(self.payload_bytes, max_bytes=self.max_bytes)


JWS_HEADER_NAMES = frozenset({"alg", "typ", "kid"})


@functools.lru_cache(maxsize=64)
def _header_segment(kid: str, typ: str) -> bytes:
    return b64e(canonical({"alg": ALG_ED25519, "kid": kid, "typ": typ}))


def sign_compact(*, typ: str, payload: Mapping[str, Any], signer: Signer) -> bytes:
    """An RFC 7515 compact JWS with header exactly ``{alg, typ, kid}``, both parts RFC 8785."""
    signing_input = _header_segment(signer.kid, typ) + b"." + b64e(canonical(dict(payload)))
    return signing_input + b"." + b64e(signer.sign(signing_input))


def read_signed_compact(token: bytes, *, typ: str, max_bytes: int) -> SignedCompact:
    """Split a compact JWS of ``typ`` and strictly check its header; nothing is verified yet."""
    if len(token) > max_bytes:
        raise ProtocolError(Category.TOO_LARGE, f"JWS of {len(token)} bytes exceeds {max_bytes}")
    h, p, s = split_compact(token, 3, what="JWS")
    header = decode_protected(h)
    check_algorithms(header, allowed_alg=ALG_ED25519)
    check_exact_header(header, typ=typ, names=JWS_HEADER_NAMES)
    if not isinstance(header["kid"], str):
        raise ProtocolError(Category.BAD_HEADER, "kid is not a string")
    payload_bytes = b64d(p, what="JWS payload")
    signature = b64d(s, what="JWS signature")
    return SignedCompact(token, header, payload_bytes, h + b"." + p, signature, max_bytes)


def verify_signature(signing_input: bytes, signature: bytes, key: OKPKey) -> None:
    """Raise ``bad_signature`` unless ``signature`` is ``key``'s Ed25519 signature of ``signing_input``."""
    if key.curve_name != "Ed25519":
        raise ProtocolError(Category.BAD_SIGNATURE, "verification key is not Ed25519")
    try:
        ok = _JWS_ALG.verify(signing_input, signature, key)
    except (JoseError, ValueError) as e:
        raise ProtocolError(Category.BAD_SIGNATURE, "signature does not verify") from e
    if not ok:
        raise ProtocolError(Category.BAD_SIGNATURE, "signature does not verify")


# --- keys -------------------------------------------------------------------------------------------

OKP_PUBLIC_NAMES = frozenset({"kty", "crv", "x"})


def public_jwk(key: OKPKey) -> dict[str, str]:
    """The public JWK members ``{kty, crv, x}`` of an OKP key."""
    d = key.as_dict(private=False)
    return {"kty": "OKP", "crv": str(d["crv"]), "x": str(d["x"])}


def import_public_okp(jwk: Mapping[str, Any], *, crv: str) -> OKPKey:
    """Import ``{kty: OKP, crv, x}`` (other members ignored); refuse any other curve or shape."""
    if jwk.get("kty") != "OKP" or jwk.get("crv") != crv or not isinstance(jwk.get("x"), str):
        raise ProtocolError(Category.KEYSET_INVALID, f"not an OKP {crv} public key")
    if "d" in jwk:
        raise ProtocolError(Category.KEYSET_INVALID, "a published key must not carry private members")
    raw = b64d(str(jwk["x"]), what="JWK x")
    if len(raw) != 32:
        raise ProtocolError(Category.KEYSET_INVALID, f"{crv} public key is not 32 bytes")
    try:
        return OKPKey.import_key({"kty": "OKP", "crv": crv, "x": str(jwk["x"])})
    except (JoseError, ValueError) as e:
        raise ProtocolError(Category.KEYSET_INVALID, f"cannot import {crv} key") from e


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint of an OKP public JWK, base64url without padding."""
    return OKPKey.import_key({"kty": "OKP", "crv": str(jwk["crv"]), "x": str(jwk["x"])}).thumbprint()


def oct_key(raw: bytes) -> OctKey:
    return OctKey.import_key(raw)


# --- registries ---------------------------------------------------------------------------------------


def _jws_registry() -> JWSRegistry:
    reg = JWSRegistry(algorithms=[ALG_ED25519])
    reg.max_header_length = MAX_HEADER_BYTES
    reg.max_payload_length = 4 * 1024 * 1024
    return reg


def _jwe_registry(algorithms: list[str], extra: dict[str, HeaderParameter], max_ciphertext: int) -> JWERegistry:
    reg = JWERegistry(algorithms=algorithms, header_registry=extra)
    reg.max_protected_header_length = MAX_HEADER_BYTES
    reg.max_ciphertext_length = max_ciphertext
    return reg


JWS_REGISTRY = _jws_registry()
_JWS_ALG = JWS_REGISTRY.get_alg(ALG_ED25519)

#: Our caps apply to the raw bytes; the library's limits sit at >= 4/3 of them.
LIBRARY_CIPHERTEXT_LIMIT = 8 * 1024 * 1024

ENVELOPE_JWE_REGISTRY = _jwe_registry(
    [ALG_ECDH, ENC_A256GCM],
    {"iss": HeaderParameter("sending authority", "str"), "aud": HeaderParameter("receiving authority", "str")},
    LIBRARY_CIPHERTEXT_LIMIT,
)
CHUNK_JWE_REGISTRY = _jwe_registry(
    [ALG_DIR, ENC_A256GCM],
    {
        "att": HeaderParameter("attachment index", "int"),
        "seq": HeaderParameter("chunk number", "int"),
        "last": HeaderParameter("final chunk", "bool"),
    },
    LIBRARY_CIPHERTEXT_LIMIT,
)
