"""Strict base64url: only the one canonical encoding of each byte string is accepted."""

from __future__ import annotations

import base64
import os

import pytest

from protocol.errors import Category, ProtocolError
from protocol.jose import b64d, b64e


@pytest.mark.parametrize("n", range(0, 40))
def test_round_trip_every_length(n: int) -> None:
    data = os.urandom(n)
    assert b64d(b64e(data)) == data


@pytest.mark.parametrize("segment", [
    "QR",  # 2 chars: the last one's low 4 bits must be zero ("QQ" is canonical)
    "AAB",  # 3 chars: the last one's low 2 bits must be zero ("AAA" is canonical)
    "QQ==",  # padding
    "QQ+/",  # the standard alphabet
    "A",  # a length of 4k+1 never decodes
    "QQ Q",  # white space
])
def test_non_canonical_or_foreign_encodings_are_malformed(segment: str) -> None:
    with pytest.raises(ProtocolError) as e:
        b64d(segment)
    assert e.value.category == Category.MALFORMED


def test_every_non_canonical_last_character_is_refused() -> None:
    # for each of 1- and 2-byte tails, exactly the canonical final character is accepted
    for tail in (b"\x01", b"\x01\x02"):
        good = b64e(tail).decode()
        for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_":
            candidate = good[:-1] + c
            decoded = base64.urlsafe_b64decode(candidate + "=" * (-len(candidate) % 4))
            if b64e(decoded).decode() == candidate:  # the canonical encoding of these (or other) bytes
                assert b64d(candidate) == decoded
            else:  # set unused bits: the library alone would have accepted it
                with pytest.raises(ProtocolError):
                    b64d(candidate)
