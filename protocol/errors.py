"""The protocol's error tree and SPEC's one error table.

    ProtocolError            every refusal by protocol/; carries a Category and a detail
    ├── EnvelopeError        envelopes (sealing and opening)
    ├── ArtifactError        receipts, signed errors, tree heads
    ├── KeysetError          keysets, chains, cards, key rules
    ├── ChunkError           attachment chunks
    └── ProofError           Merkle inclusion and consistency proofs

Every error names a ``Category``; ``ERROR_TABLE`` maps each category to its HTTP status,
its delivery class and its meaning.  Only ``node/`` turns errors into HTTP responses.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ErrorClass(StrEnum):
    """What a sender does on receiving a signed error of this category."""

    RETRYABLE = "retryable"
    RETRY_AFTER_REFRESH = "retry-after-refresh"
    PERMANENT = "permanent"


class Category(StrEnum):
    TOO_LARGE = "too_large"
    MALFORMED = "malformed"
    BAD_HEADER = "bad_header"
    FORBIDDEN_ALGORITHM = "forbidden_algorithm"
    WRONG_TYPE = "wrong_type"
    UNKNOWN_SENDER = "unknown_sender"
    SENDER_KEYSET_EXPIRED = "sender_keyset_expired"
    WRONG_RECIPIENT = "wrong_recipient"
    UNKNOWN_RECIPIENT_KEY = "unknown_recipient_key"
    DECRYPTION_FAILED = "decryption_failed"
    UNKNOWN_SIGNING_KEY = "unknown_signing_key"
    REVOKED_KEY = "revoked_key"
    RETIRED_KEY = "retired_key"
    BAD_SIGNATURE = "bad_signature"
    ISSUER_MISMATCH = "issuer_mismatch"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    MSG_ID_CONFLICT = "msg_id_conflict"
    ATTACHMENTS_INCOMPLETE = "attachments_incomplete"
    ATTACHMENT_TOO_LARGE = "attachment_too_large"
    INSUFFICIENT_STORAGE = "insufficient_storage"
    BAD_CHUNK = "bad_chunk"
    MANIFEST_MISMATCH = "manifest_mismatch"
    UNKNOWN_MESSAGE = "unknown_message"
    LENGTH_REQUIRED = "length_required"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    # artefacts checked against what was sent
    RECEIPT_MISMATCH = "receipt_mismatch"
    # keysets and chains
    KEYSET_INVALID = "keyset_invalid"
    KEYSET_EXPIRED = "keyset_expired"
    ROLLBACK = "rollback"
    BROKEN_CHAIN = "broken_chain"
    BAD_SIGNER_SET = "bad_signer_set"
    EQUIVOCATION = "equivocation"
    FINGERPRINT_MISMATCH = "fingerprint_mismatch"
    # logs
    BAD_PROOF = "bad_proof"


@dataclass(frozen=True)
class ErrorRule:
    status: int
    error_class: ErrorClass
    meaning: str


_P = ErrorClass.PERMANENT
_R = ErrorClass.RETRYABLE
_F = ErrorClass.RETRY_AFTER_REFRESH

#: SPEC §8: category -> HTTP status -> class -> meaning.
ERROR_TABLE: dict[Category, ErrorRule] = {
    Category.TOO_LARGE: ErrorRule(413, _P, "the body exceeds the size cap"),
    Category.MALFORMED: ErrorRule(400, _P, "not well-formed: compact form, strict JSON, payload schema"),
    Category.BAD_HEADER: ErrorRule(400, _P, "a protected header is not exactly the profile's parameter set"),
    Category.FORBIDDEN_ALGORITHM: ErrorRule(400, _P, "an algorithm or parameter outside the allow-list"),
    Category.WRONG_TYPE: ErrorRule(400, _P, "the artefact's typ is not the one this endpoint takes"),
    Category.UNKNOWN_SENDER: ErrorRule(403, _R, "iss is not a peer pinned by the receiver (yet)"),
    Category.SENDER_KEYSET_EXPIRED: ErrorRule(403, _R, "the receiver holds only an expired keyset of iss"),
    Category.WRONG_RECIPIENT: ErrorRule(421, _P, "aud is not the receiving authority"),
    Category.UNKNOWN_RECIPIENT_KEY: ErrorRule(
        422, _F, "the JWE kid is no current or kept encryption key of the receiver"
    ),
    Category.DECRYPTION_FAILED: ErrorRule(400, _P, "the JWE does not decrypt under the named key"),
    Category.UNKNOWN_SIGNING_KEY: ErrorRule(
        401, _R, "the signing kid is not in the keyset the receiver holds of iss"
    ),
    Category.REVOKED_KEY: ErrorRule(401, _P, "the signing key is revoked"),
    Category.RETIRED_KEY: ErrorRule(401, _P, "the signing key was retired before the artefact's time"),
    Category.BAD_SIGNATURE: ErrorRule(401, _P, "the signature does not verify"),
    Category.ISSUER_MISMATCH: ErrorRule(400, _P, "inner and outer iss/aud differ"),
    Category.NOT_YET_VALID: ErrorRule(425, _R, "iat is later than now plus the clock skew"),
    Category.EXPIRED: ErrorRule(400, _P, "now is later than exp plus the clock skew"),
    Category.MSG_ID_CONFLICT: ErrorRule(409, _P, "the message id was received before with other bytes"),
    Category.ATTACHMENTS_INCOMPLETE: ErrorRule(409, _R, "commit before every chunk has arrived"),
    Category.ATTACHMENT_TOO_LARGE: ErrorRule(413, _P, "the manifest exceeds the receiver's limits"),
    Category.INSUFFICIENT_STORAGE: ErrorRule(507, _R, "the receiver lacks the disk for the manifest"),
    Category.BAD_CHUNK: ErrorRule(400, _P, "a chunk does not open, or sits at the wrong place"),
    Category.MANIFEST_MISMATCH: ErrorRule(422, _P, "received attachment size or SHA-256 differs"),
    Category.UNKNOWN_MESSAGE: ErrorRule(404, _R, "no pending message with that id from this sender"),
    Category.LENGTH_REQUIRED: ErrorRule(411, _P, "the request has no Content-Length"),
    Category.RATE_LIMITED: ErrorRule(429, _R, "too many requests; honour Retry-After"),
    Category.UNAVAILABLE: ErrorRule(503, _R, "the receiver cannot take the message now"),
    Category.RECEIPT_MISMATCH: ErrorRule(502, _R, "a receipt does not match what was sent"),
    Category.KEYSET_INVALID: ErrorRule(422, _P, "a keyset is not well-formed or its fields contradict"),
    Category.KEYSET_EXPIRED: ErrorRule(422, _P, "the newest keyset version has expired"),
    Category.ROLLBACK: ErrorRule(422, _P, "a keyset version older than the one held"),
    Category.BROKEN_CHAIN: ErrorRule(422, _P, "keyset versions do not follow one another"),
    Category.BAD_SIGNER_SET: ErrorRule(422, _P, "a keyset is not signed by exactly the required keys"),
    Category.EQUIVOCATION: ErrorRule(422, _P, "the same keyset version with other bytes"),
    Category.FINGERPRINT_MISMATCH: ErrorRule(422, _P, "the chain does not lead from the pinned fingerprint"),
    Category.BAD_PROOF: ErrorRule(422, _P, "a Merkle proof or tree head does not verify"),
}


class ProtocolError(Exception):
    """A refusal by the protocol: ``category`` says which SPEC rule, ``detail`` says what was seen."""

    def __init__(self, category: Category, detail: str) -> None:
        super().__init__(f"{category.value}: {detail}")
        self.category = category
        self.detail = detail

    @property
    def rule(self) -> ErrorRule:
        return ERROR_TABLE[self.category]


class EnvelopeError(ProtocolError):
    """An envelope could not be sealed or opened.

    ``authenticated_sender`` is set when the refusal came after the inner signature verified
    (steps 11-13), so the receiver knows who sent it; before that it is None.
    """

    authenticated_sender: str | None = None


class ArtifactError(ProtocolError):
    """A receipt, signed error or tree head does not verify."""


class KeysetError(ProtocolError):
    """A keyset, keyset chain, card, or key rule refused."""


class ChunkError(ProtocolError):
    """An attachment chunk could not be sealed or opened."""


class ProofError(ProtocolError):
    """A Merkle proof or tree head is refused."""
