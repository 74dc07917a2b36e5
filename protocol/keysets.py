"""Keyset documents (the data model) and the two rule sets for keys.

A keyset lists an authority's endpoint and keys; ``keychain`` signs and verifies versions
of it.  Here: parsing and validating the payload, and deciding whether a key counts:

* *acceptance* (inbox, live receipts, keyset refresh) — ``accept_signing_key``;
* *archival verification* (audit verify, bundles, evidence) — ``archival_signing_key``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from joserfc.jwk import OKPKey

from .errors import Category, KeysetError, ProtocolError
from .ids import is_authority_id, is_kid, is_sha256_hex
from .jose import import_public_okp, thumbprint

KEYSET_TYP = "comity-keyset+jws"
KEYSET_VERSION_FIELD = 1
DEFAULT_KEYSET_VALIDITY = 90 * 86400
DEFAULT_SKEW = 300
DEFAULT_MAX_LIFETIME = 7 * 86400

_KEYSET_FIELDS = frozenset(
    {
        "v", "authority", "name", "endpoint", "version", "issued_at", "expires_at", "identity_jwk",
        "signing_keys", "encryption_keys", "tls_cert_sha256", "profile_sha256",
    }
)
_KEY_REQUIRED = frozenset({"kty", "crv", "x", "kid", "nbf", "exp"})
_KEY_OPTIONAL = frozenset({"retired_at", "revoked_at"})


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise KeysetError(Category.KEYSET_INVALID, f"{what} is not a non-negative integer")
    return value


@dataclass(frozen=True)
class KeyEntry:
    """One operational key as published: a JWK with validity window and life-cycle times."""

    kid: str
    crv: str
    x: str
    nbf: int
    exp: int
    retired_at: int | None = None
    revoked_at: int | None = None
    _key: list[OKPKey] = field(default_factory=list, compare=False, repr=False)

    @property
    def key(self) -> OKPKey:
        if not self._key:
            self._key.append(import_public_okp({"kty": "OKP", "crv": self.crv, "x": self.x}, crv=self.crv))
        return self._key[0]

    def to_jwk(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "kty": "OKP", "crv": self.crv, "x": self.x, "kid": self.kid, "nbf": self.nbf, "exp": self.exp,
        }
        if self.retired_at is not None:
            d["retired_at"] = self.retired_at
        if self.revoked_at is not None:
            d["revoked_at"] = self.revoked_at
        return d

    @classmethod
    def from_jwk(cls, jwk: Any, *, crv: str) -> KeyEntry:
        if not isinstance(jwk, dict):
            raise KeysetError(Category.KEYSET_INVALID, "a key entry is not an object")
        names = set(jwk)
        if not names.issuperset(_KEY_REQUIRED) or not names.issubset(_KEY_REQUIRED | _KEY_OPTIONAL):
            raise KeysetError(Category.KEYSET_INVALID, f"key entry members {sorted(names)}")
        try:
            import_public_okp(jwk, crv=crv)
        except ProtocolError as e:
            raise KeysetError(Category.KEYSET_INVALID, e.detail) from e
        if not is_kid(jwk["kid"]) or jwk["kid"] != thumbprint(jwk):
            raise KeysetError(Category.KEYSET_INVALID, "key kid is not its RFC 7638 thumbprint")
        entry = cls(
            kid=jwk["kid"], crv=crv, x=jwk["x"], nbf=_int(jwk["nbf"], "nbf"), exp=_int(jwk["exp"], "exp"),
            retired_at=None if "retired_at" not in jwk else _int(jwk["retired_at"], "retired_at"),
            revoked_at=None if "revoked_at" not in jwk else _int(jwk["revoked_at"], "revoked_at"),
        )
        if entry.exp <= entry.nbf:
            raise KeysetError(Category.KEYSET_INVALID, f"key {entry.kid} has exp <= nbf")
        return entry


@dataclass(frozen=True)
class Keyset:
    """One version of an authority's keyset (the verified payload of a ``comity-keyset+jws``)."""

    authority: str
    name: str
    endpoint: str
    version: int
    issued_at: int
    expires_at: int
    identity_jwk: dict[str, str]
    signing_keys: tuple[KeyEntry, ...]
    encryption_keys: tuple[KeyEntry, ...]
    tls_cert_sha256: str | None = None
    profile_sha256: str | None = None

    @property
    def identity_kid(self) -> str:
        """The node's fingerprint: RFC 7638 thumbprint of its identity key."""
        return thumbprint(self.identity_jwk)

    @property
    def identity_key(self) -> OKPKey:
        return import_public_okp(self.identity_jwk, crv="Ed25519")

    def signing_key(self, kid: str) -> KeyEntry | None:
        return next((k for k in self.signing_keys if k.kid == kid), None)

    def encryption_key(self, kid: str) -> KeyEntry | None:
        return next((k for k in self.encryption_keys if k.kid == kid), None)

    def current_encryption_key(self, now: int) -> KeyEntry:
        """The newest encryption key that is live at ``now``: what a sender encrypts to."""
        live = [
            k for k in self.encryption_keys
            if k.retired_at is None and k.revoked_at is None and k.nbf <= now < k.exp
        ]
        if not live:
            raise KeysetError(Category.UNKNOWN_RECIPIENT_KEY, f"{self.authority} has no live encryption key")
        return max(live, key=lambda k: (k.nbf, k.kid))

    def check_usable(self, now: int) -> None:
        if now > self.expires_at:
            raise KeysetError(Category.KEYSET_EXPIRED, f"keyset v{self.version} of {self.authority} expired")

    def to_payload(self) -> dict[str, Any]:
        return {
            "v": KEYSET_VERSION_FIELD,
            "authority": self.authority,
            "name": self.name,
            "endpoint": self.endpoint,
            "version": self.version,
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
            "identity_jwk": dict(self.identity_jwk),
            "signing_keys": [k.to_jwk() for k in self.signing_keys],
            "encryption_keys": [k.to_jwk() for k in self.encryption_keys],
            "tls_cert_sha256": self.tls_cert_sha256,
            "profile_sha256": self.profile_sha256,
        }

    @classmethod
    def from_payload(cls, p: Mapping[str, Any]) -> Keyset:
        if set(p) != _KEYSET_FIELDS:
            raise KeysetError(Category.KEYSET_INVALID, f"keyset members {sorted(p)}")
        if type(p["v"]) is not int or p["v"] != KEYSET_VERSION_FIELD:
            raise KeysetError(Category.KEYSET_INVALID, f"keyset v {p['v']!r}")
        if not is_authority_id(p["authority"]):
            raise KeysetError(Category.KEYSET_INVALID, "keyset authority is not an authority id")
        for name in ("name", "endpoint"):
            if not isinstance(p[name], str) or not p[name] or len(p[name]) > 512:
                raise KeysetError(Category.KEYSET_INVALID, f"keyset {name} is not a non-empty string")
        if not p["endpoint"].startswith(("https://", "http://")):
            raise KeysetError(Category.KEYSET_INVALID, "keyset endpoint is not an http(s) URL")
        for name in ("tls_cert_sha256", "profile_sha256"):
            if p[name] is not None and not is_sha256_hex(p[name]):
                raise KeysetError(Category.KEYSET_INVALID, f"{name} is neither null nor SHA-256 hex")
        ident = p["identity_jwk"]
        if not isinstance(ident, dict) or set(ident) != {"kty", "crv", "x"}:
            raise KeysetError(Category.KEYSET_INVALID, "identity_jwk is not exactly {kty, crv, x}")
        try:
            import_public_okp(ident, crv="Ed25519")
        except ProtocolError as e:
            raise KeysetError(Category.KEYSET_INVALID, "identity_jwk: " + e.detail) from e
        for name in ("signing_keys", "encryption_keys"):
            if not isinstance(p[name], list) or not p[name] or len(p[name]) > 64:
                raise KeysetError(Category.KEYSET_INVALID, f"{name} is not a non-empty list")
        ks = cls(
            authority=p["authority"], name=p["name"], endpoint=p["endpoint"],
            version=_int(p["version"], "version"), issued_at=_int(p["issued_at"], "issued_at"),
            expires_at=_int(p["expires_at"], "expires_at"), identity_jwk=dict(ident),
            signing_keys=tuple(KeyEntry.from_jwk(k, crv="Ed25519") for k in p["signing_keys"]),
            encryption_keys=tuple(KeyEntry.from_jwk(k, crv="X25519") for k in p["encryption_keys"]),
            tls_cert_sha256=p["tls_cert_sha256"], profile_sha256=p["profile_sha256"],
        )
        if ks.version < 1 or ks.expires_at <= ks.issued_at:
            raise KeysetError(Category.KEYSET_INVALID, "keyset version < 1 or expires_at <= issued_at")
        for keys in (ks.signing_keys, ks.encryption_keys):
            kids = [k.kid for k in keys]
            if len(set(kids)) != len(kids):
                raise KeysetError(Category.KEYSET_INVALID, "a kid appears twice in one keyset")
        return ks


def accept_signing_key(
    keyset: Keyset, kid: str, *, t: int, now: int,
    skew: int = DEFAULT_SKEW, max_lifetime: int = DEFAULT_MAX_LIFETIME,
) -> OKPKey:
    """Acceptance rules: may a live artefact of time ``t`` signed by ``kid`` be accepted ``now``?

    A revoked key counts for nothing; a retired key counts for artefacts whose own time is
    ``<= retired_at``, and only until ``retired_at + max_lifetime + skew``.
    """
    entry = keyset.signing_key(kid)
    if entry is None:
        raise KeysetError(Category.UNKNOWN_SIGNING_KEY, f"kid {kid} is not a signing key of {keyset.authority}")
    if entry.revoked_at is not None:
        raise KeysetError(Category.REVOKED_KEY, f"signing key {kid} of {keyset.authority} is revoked")
    if t + skew < entry.nbf:
        raise KeysetError(Category.UNKNOWN_SIGNING_KEY, f"signing key {kid} is not valid yet at {t}")
    if t > entry.exp:
        raise KeysetError(Category.RETIRED_KEY, f"signing key {kid} expired before {t}")
    if entry.retired_at is not None:
        if t > entry.retired_at:
            raise KeysetError(Category.RETIRED_KEY, f"signing key {kid} was retired before {t}")
        if now > entry.retired_at + max_lifetime + skew:
            raise KeysetError(Category.RETIRED_KEY, f"signing key {kid} was retired too long ago")
    return entry.key


@dataclass(frozen=True)
class ArchivalDecision:
    key: OKPKey
    rule: str
    version: int


def archival_signing_key(
    chain: Sequence[Keyset], kid: str, *, t: int, revocations_learned: Mapping[str, int] | None = None
) -> ArchivalDecision:
    """Archival rules: did ``kid`` validly sign an artefact whose own time is ``t``?

    The key must appear in a chain version with ``nbf <= t`` and ``t <= retired_at`` (when
    retired), and ``t`` must precede the time this node *learnt* of a revocation — never a
    signer-chosen time.  Only without a recorded learning time (a bundle checked elsewhere)
    does the issue time of the first version listing the key revoked stand in for it.
    """
    learned = dict(revocations_learned or {})
    if kid not in learned:
        listed = [ks.issued_at for ks in chain if (e := ks.signing_key(kid)) is not None and e.revoked_at is not None]
        if listed:
            learned[kid] = min(listed)
    candidates = [(ks, e) for ks in chain if (e := ks.signing_key(kid)) is not None]
    if not candidates:
        raise KeysetError(Category.UNKNOWN_SIGNING_KEY, f"kid {kid} appears in no keyset version of the chain")
    retired = [e.retired_at for _, e in candidates if e.retired_at is not None]
    retired_at = min(retired) if retired else None
    for ks, e in candidates:
        if e.nbf <= t <= e.exp and (retired_at is None or t <= retired_at):
            if kid in learned and t >= learned[kid]:
                raise KeysetError(
                    Category.REVOKED_KEY, f"signing key {kid} was revoked (learnt at {learned[kid]}) before {t}"
                )
            rule = f"archival: key {kid} in keyset v{ks.version}, nbf {e.nbf} <= t {t}"
            if retired_at is not None:
                rule += f" <= retired_at {retired_at}"
            return ArchivalDecision(e.key, rule, ks.version)
    raise KeysetError(Category.RETIRED_KEY, f"signing key {kid} was not valid at {t} in any keyset version")
