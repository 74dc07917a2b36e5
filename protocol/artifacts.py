"""Signed artefacts (receipts, signed errors, tree heads): one way to verify them.

A verifier gets a ``KeyRules``: ``LiveKeys`` applies the acceptance rules against the
keyset held for the signer; ``ArchivalKeys`` applies the archival rules against a whole
keyset chain.  Order: typ and header first, then the key by kid, the signature, the strict
payload, and last the key's time rules at the artefact's own time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from joserfc.jwk import OKPKey

from .errors import ArtifactError, Category, ProtocolError
from .jose import read_signed_compact, verify_signature
from .keysets import (
    DEFAULT_MAX_LIFETIME,
    DEFAULT_SKEW,
    Keyset,
    accept_signing_key,
    archival_signing_key,
)

ARTIFACT_MAX_BYTES = 64 * 1024


class KeyRules(Protocol):
    def find(self, kid: str) -> OKPKey | None:
        """The public key named ``kid``, if the signer ever had it."""

    def check(self, kid: str, t: int) -> str:
        """Raise unless ``kid`` counts for an artefact of time ``t``; return the rule applied."""


@dataclass(frozen=True)
class LiveKeys:
    """Acceptance rules against the keyset held for the signer."""

    keyset: Keyset
    now: int
    skew: int = DEFAULT_SKEW
    max_lifetime: int = DEFAULT_MAX_LIFETIME

    def find(self, kid: str) -> OKPKey | None:
        entry = self.keyset.signing_key(kid)
        return None if entry is None else entry.key

    def check(self, kid: str, t: int) -> str:
        accept_signing_key(self.keyset, kid, t=t, now=self.now, skew=self.skew, max_lifetime=self.max_lifetime)
        return f"acceptance: key {kid} of keyset v{self.keyset.version} at {t}"


@dataclass(frozen=True)
class ArchivalKeys:
    """Archival rules against every version of the signer's keyset chain."""

    chain: Sequence[Keyset]
    revocations_learned: Mapping[str, int] | None = None

    def find(self, kid: str) -> OKPKey | None:
        for ks in self.chain:
            entry = ks.signing_key(kid)
            if entry is not None:
                return entry.key
        return None

    def check(self, kid: str, t: int) -> str:
        return archival_signing_key(self.chain, kid, t=t, revocations_learned=self.revocations_learned).rule


@dataclass(frozen=True)
class VerifiedArtifact:
    payload: dict[str, Any]
    kid: str
    rule: str


def verify_artifact(
    token: bytes, *, typ: str, keys: KeyRules, time_field: str, max_bytes: int = ARTIFACT_MAX_BYTES
) -> VerifiedArtifact:
    """Verify a compact JWS artefact of ``typ`` whose own time is ``payload[time_field]``."""
    try:
        signed = read_signed_compact(token, typ=typ, max_bytes=max_bytes)
        key = keys.find(signed.kid)
        if key is None:
            raise ArtifactError(Category.UNKNOWN_SIGNING_KEY, f"no signing key {signed.kid:.50} for {typ}")
        verify_signature(signed.signing_input, signed.signature, key)
        payload = signed.parse_payload()
        t = payload.get(time_field)
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise ArtifactError(Category.MALFORMED, f"{time_field} is not a NumericDate")
        rule = keys.check(signed.kid, t)
    except ArtifactError:
        raise
    except ProtocolError as e:
        raise ArtifactError(e.category, e.detail) from e
    return VerifiedArtifact(payload, signed.kid, rule)


def require_fields(payload: Mapping[str, Any], names: frozenset[str], what: str) -> None:
    if set(payload) != names:
        raise ArtifactError(
            Category.MALFORMED,
            f"{what} members: extra {sorted(set(payload) - names)}, missing {sorted(names - set(payload))}",
        )
    if payload.get("v") != 1 or isinstance(payload.get("v"), bool):
        raise ArtifactError(Category.MALFORMED, f"{what} v is not 1")


def require_int(payload: Mapping[str, Any], name: str, what: str) -> int:
    value = payload[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ArtifactError(Category.MALFORMED, f"{what} {name} is not a non-negative integer")
    return value
