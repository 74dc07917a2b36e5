"""Receipts: the receiver's signed word that it committed a message (SPEC §6).

A receipt that does not verify against what was sent does not count as delivery.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .artifacts import KeyRules, require_fields, require_int, verify_artifact
from .errors import ArtifactError, Category
from .ids import is_authority_id, is_message_id, is_sha256_hex
from .jose import Signer, sign_compact

RECEIPT_TYP = "comity-receipt+jws"
RECEIPT_NAMES = frozenset(
    {"v", "iss", "aud", "id", "envelope_sha256", "received_at", "leaf_index", "tree_size", "root"}
)


@dataclass(frozen=True)
class Receipt:
    iss: str  # the receiver
    aud: str  # the sender
    id: str
    envelope_sha256: str
    received_at: int
    leaf_index: int
    tree_size: int
    root: str

    def to_payload(self) -> dict[str, Any]:
        return {
            "v": 1, "iss": self.iss, "aud": self.aud, "id": self.id, "envelope_sha256": self.envelope_sha256,
            "received_at": self.received_at, "leaf_index": self.leaf_index, "tree_size": self.tree_size,
            "root": self.root,
        }


def _check(r: Receipt) -> None:
    if not (is_authority_id(r.iss) and is_authority_id(r.aud) and is_message_id(r.id)):
        raise ArtifactError(Category.MALFORMED, "receipt iss/aud/id malformed")
    if not (is_sha256_hex(r.envelope_sha256) and is_sha256_hex(r.root)):
        raise ArtifactError(Category.MALFORMED, "receipt digests are not SHA-256 hex")
    if not 0 <= r.leaf_index < r.tree_size:
        raise ArtifactError(Category.MALFORMED, "receipt leaf_index is not inside tree_size")


def sign_receipt(receipt: Receipt, *, signer: Signer) -> bytes:
    _check(receipt)
    return sign_compact(typ=RECEIPT_TYP, payload=receipt.to_payload(), signer=signer)


def parse_receipt(payload: dict[str, Any]) -> Receipt:
    require_fields(payload, RECEIPT_NAMES, "receipt")
    for name in ("iss", "aud", "id", "envelope_sha256", "root"):
        if not isinstance(payload[name], str):
            raise ArtifactError(Category.MALFORMED, f"receipt {name} is not a string")
    r = Receipt(
        iss=payload["iss"], aud=payload["aud"], id=payload["id"], envelope_sha256=payload["envelope_sha256"],
        received_at=require_int(payload, "received_at", "receipt"),
        leaf_index=require_int(payload, "leaf_index", "receipt"),
        tree_size=require_int(payload, "tree_size", "receipt"), root=payload["root"],
    )
    _check(r)
    return r


def verify_receipt(
    token: bytes, *, keys: KeyRules, sender: str, receiver: str, message_id: str, envelope_sha256: str,
    now: int | None = None, skew: int = 300,
) -> Receipt:
    """Verify signer, typ and every field against what was sent; raise ``ArtifactError``.

    ``now`` (live use) also refuses a ``received_at`` later than now plus the skew.
    """
    verified = verify_artifact(token, typ=RECEIPT_TYP, keys=keys, time_field="received_at")
    r = parse_receipt(verified.payload)
    expected = {"iss": receiver, "aud": sender, "id": message_id, "envelope_sha256": envelope_sha256}
    for name, want in expected.items():
        if getattr(r, name) != want:
            raise ArtifactError(Category.RECEIPT_MISMATCH, f"receipt {name} is not {want}")
    if now is not None and r.received_at > now + skew:
        raise ArtifactError(Category.RECEIPT_MISMATCH, "receipt received_at is in the future")
    return r
