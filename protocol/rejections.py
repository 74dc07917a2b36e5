"""Signed errors (SPEC §8): a refusal the sender can trust.

A sender acts only on the signed ``error_jws`` of a problem response, never on the unsigned
fields around it, and gives up only on a *permanent* category signed by the peer and bound
to the bytes it sent — so nobody on the path can cancel a delivery with a forged 4xx.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .artifacts import KeyRules, require_fields, require_int, verify_artifact
from .errors import ERROR_TABLE, ArtifactError, Category, ErrorClass
from .ids import is_authority_id, is_sha256_hex
from .jose import Signer, sign_compact

ERROR_TYP = "comity-error+jws"
ERROR_NAMES = frozenset({"v", "iss", "aud", "category", "envelope_sha256", "at"})


@dataclass(frozen=True)
class SignedError:
    iss: str  # the authority refusing
    aud: str | None  # the sender, when it could be read from the outer header
    category: Category
    envelope_sha256: str | None
    at: int

    @property
    def error_class(self) -> ErrorClass:
        return ERROR_TABLE[self.category].error_class

    def to_payload(self) -> dict[str, Any]:
        return {
            "v": 1, "iss": self.iss, "aud": self.aud, "category": self.category.value,
            "envelope_sha256": self.envelope_sha256, "at": self.at,
        }


def sign_error(error: SignedError, *, signer: Signer) -> bytes:
    return sign_compact(typ=ERROR_TYP, payload=error.to_payload(), signer=signer)


def parse_error(payload: dict[str, Any]) -> SignedError:
    require_fields(payload, ERROR_NAMES, "error")
    try:
        category = Category(payload["category"])
    except (ValueError, TypeError) as e:
        raise ArtifactError(Category.MALFORMED, f"unknown error category {payload['category']!r:.40}") from e
    if not is_authority_id(payload["iss"]):
        raise ArtifactError(Category.MALFORMED, "error iss is not an authority id")
    if payload["aud"] is not None and not is_authority_id(payload["aud"]):
        raise ArtifactError(Category.MALFORMED, "error aud is neither null nor an authority id")
    if payload["envelope_sha256"] is not None and not is_sha256_hex(payload["envelope_sha256"]):
        raise ArtifactError(Category.MALFORMED, "error envelope_sha256 is neither null nor SHA-256 hex")
    return SignedError(payload["iss"], payload["aud"], category, payload["envelope_sha256"],
                       require_int(payload, "at", "error"))


def verify_error(
    token: bytes, *, keys: KeyRules, peer: str, sender: str, envelope_sha256: str | None
) -> SignedError:
    """Verify a signed error from ``peer`` about what ``sender`` sent (bytes ``envelope_sha256``).

    An error bound to other bytes, or to another sender, raises ``receipt_mismatch``.
    """
    verified = verify_artifact(token, typ=ERROR_TYP, keys=keys, time_field="at")
    err = parse_error(verified.payload)
    if err.iss != peer:
        raise ArtifactError(Category.RECEIPT_MISMATCH, f"error signed for {err.iss}, not {peer}")
    if err.aud != sender:
        raise ArtifactError(Category.RECEIPT_MISMATCH, "error is not addressed to this sender")
    if err.envelope_sha256 != envelope_sha256:
        raise ArtifactError(Category.RECEIPT_MISMATCH, "error is bound to other bytes")
    return err
