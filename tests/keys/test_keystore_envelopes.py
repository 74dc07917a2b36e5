"""Keystore keys in use: an envelope signed by one keystore opens with another's decryption keys,
before and after the recipient rotates its encryption key."""

from __future__ import annotations

import pytest

from protocol.envelope import EnvelopeContent, Kind, open_envelope, seal_envelope
from protocol.errors import Category, EnvelopeError
from protocol.ids import message_id_from_bytes
from protocol.keysets import DEFAULT_MAX_LIFETIME, DEFAULT_SKEW
from tests.keys.conftest import MakeStore
from tests.seeds import T0


def test_envelope_round_trip_across_an_encryption_rotation(make_store: MakeStore) -> None:
    fr, de = make_store("fr", authority="FR-MJ"), make_store("de", authority="DE-BFJ")
    recipient = de.keyset.current_encryption_key(T0)
    content = EnvelopeContent(
        iss="FR-MJ", aud="DE-BFJ", id=message_id_from_bytes(bytes(16)), iat=T0, exp=T0 + 3600,
        kind=Kind.NOTE.value, subject="test", body="hello",
    )
    sealed = seal_envelope(content, signer=fr.signer, recipient_kid=recipient.kid, recipient_key=recipient.key)
    peers = {"FR-MJ": fr.keyset}

    def open_at(now: int) -> str:
        opened = open_envelope(sealed.raw, me="DE-BFJ", decryption_keys=de.decryption_keys(now),
                               lookup_peer=peers.get, now=now)
        return opened.content.body  # type: ignore[return-value]

    assert open_at(T0 + 10) == "hello"
    de.rotate(T0 + 20, signing=False)
    assert de.keyset.current_encryption_key(T0 + 20).kid != recipient.kid
    assert open_at(T0 + 30) == "hello"  # the retired key still decrypts
    late = T0 + 20 + DEFAULT_MAX_LIFETIME + DEFAULT_SKEW + 1
    with pytest.raises(EnvelopeError) as e:
        open_at(late)
    assert e.value.category is Category.UNKNOWN_RECIPIENT_KEY
