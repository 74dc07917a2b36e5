"""Identifiers used on the wire: authority ids, message ids, key ids."""

from __future__ import annotations

import re
from typing import NewType

from .errors import Category, ProtocolError

AuthorityId = NewType("AuthorityId", str)
MessageId = NewType("MessageId", str)
Kid = NewType("Kid", str)

#: Two letters (ISO 3166-1 alpha-2, or a reserved code such as EU, UN), a dash, 2-16 of A-Z0-9.
AUTHORITY_ID_RE = re.compile(r"[A-Z]{2}-[A-Z0-9]{2,16}")
#: 128 random bits as 32 lowercase hex characters.
MESSAGE_ID_RE = re.compile(r"[0-9a-f]{32}")
#: An RFC 7638 SHA-256 thumbprint, base64url without padding.
KID_RE = re.compile(r"[A-Za-z0-9_-]{43}")
SHA256_HEX_RE = re.compile(r"[0-9a-f]{64}")


def is_authority_id(value: object) -> bool:
    return isinstance(value, str) and AUTHORITY_ID_RE.fullmatch(value) is not None


def is_message_id(value: object) -> bool:
    return isinstance(value, str) and MESSAGE_ID_RE.fullmatch(value) is not None


def is_kid(value: object) -> bool:
    return isinstance(value, str) and KID_RE.fullmatch(value) is not None


def is_sha256_hex(value: object) -> bool:
    return isinstance(value, str) and SHA256_HEX_RE.fullmatch(value) is not None


def parse_authority_id(value: object) -> AuthorityId:
    if not is_authority_id(value):
        raise ProtocolError(Category.MALFORMED, f"not an authority id: {value!r:.40}")
    return AuthorityId(str(value))


def parse_message_id(value: object) -> MessageId:
    if not is_message_id(value):
        raise ProtocolError(Category.MALFORMED, f"not a message id (32 lowercase hex): {value!r:.40}")
    return MessageId(str(value))


def message_id_from_bytes(random16: bytes) -> MessageId:
    """Turn 16 caller-supplied random bytes into a message id (protocol/ draws no randomness)."""
    if len(random16) != 16:
        raise ValueError("a message id is made from exactly 16 random bytes")
    return MessageId(random16.hex())
