"""Signed errors: round trips, every refusal (a forged or misdirected error never counts), vectors."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from protocol.artifacts import ArchivalKeys, KeyRules, LiveKeys
from protocol.errors import ERROR_TABLE, ArtifactError, Category, ErrorClass
from protocol.jose import sign_compact
from protocol.keysets import Keyset
from protocol.receipts import sign_receipt
from protocol.rejections import ERROR_TYP, SignedError, parse_error, sign_error, verify_error
from tests import seeds
from tests.protocol import vectorgen_artifacts as a
from tests.protocol.vectorgen_envelopes import RECEIVER, SENDER, THIRD, VECTORS

T0 = seeds.T0


def verify(token: bytes, keys: KeyRules | None = None, **expect: Any) -> SignedError:
    kw: dict[str, Any] = {"peer": RECEIVER, "sender": SENDER, "envelope_sha256": a.ENVELOPE_SHA256}
    kw.update(expect)
    return verify_error(token, keys=keys or LiveKeys(seeds.keyset(RECEIVER), now=T0), **kw)


def refused(token: bytes, category: Category, *, keys: KeyRules | None = None, **expect: Any) -> None:
    with pytest.raises(ArtifactError) as info:
        verify(token, keys, **expect)
    assert info.value.category == category, info.value


def signed(**changes: Any) -> bytes:
    return sign_error(a.signed_error(**changes), signer=a.receiver_signer())


@pytest.mark.parametrize("category", list(Category), ids=[c.value for c in Category])
def test_round_trip_every_category(category: Category) -> None:
    err = verify(signed(category=category))
    assert err == a.signed_error(category=category)
    assert err.error_class == ERROR_TABLE[category].error_class


def test_round_trip_archival() -> None:
    assert verify(signed(), ArchivalKeys([seeds.keyset(RECEIVER)])).category == Category.BAD_SIGNATURE


def test_error_about_unreadable_bytes() -> None:
    """A body too broken to name its sender: aud and envelope_sha256 may be null."""
    token = signed(aud=None, envelope_sha256=None, category=Category.MALFORMED)
    assert verify(token, sender=None, envelope_sha256=None).aud is None
    refused(token, Category.RECEIPT_MISMATCH)


def test_bound_to_other_bytes() -> None:
    refused(signed(envelope_sha256=a.OTHER_SHA256), Category.RECEIPT_MISMATCH)
    refused(signed(), Category.RECEIPT_MISMATCH, envelope_sha256=a.OTHER_SHA256)


def test_other_sender_or_peer() -> None:
    refused(signed(aud=THIRD), Category.RECEIPT_MISMATCH)
    refused(signed(iss=THIRD), Category.RECEIPT_MISMATCH)
    refused(signed(), Category.RECEIPT_MISMATCH, peer=THIRD)


def test_unknown_category_is_malformed() -> None:
    token = sign_compact(typ=ERROR_TYP, payload={**a.signed_error().to_payload(), "category": "overloaded"},
                         signer=a.receiver_signer())
    refused(token, Category.MALFORMED)


@pytest.mark.parametrize(
    "change", [{"extra": 1}, {"v": 2}, {"category": 7}, {"iss": "nobody"}, {"aud": "x"},
               {"envelope_sha256": "ABC"}, {"at": -1}, {"at": 1.5}],
)
def test_malformed_payload(change: dict[str, Any]) -> None:
    token = sign_compact(typ=ERROR_TYP, payload={**a.signed_error().to_payload(), **change},
                         signer=a.receiver_signer())
    refused(token, Category.MALFORMED)


def test_tampered_payload_is_bad_signature() -> None:
    """Nobody on the path turns a retryable error into a permanent one."""
    forged = a.swap_payload(signed(category=Category.NOT_YET_VALID), signed(category=Category.BAD_SIGNATURE))
    refused(forged, Category.BAD_SIGNATURE)


def test_signed_by_another_key() -> None:
    refused(sign_error(a.signed_error(), signer=a.stranger_signer()), Category.UNKNOWN_SIGNING_KEY)
    forged = sign_error(a.signed_error(), signer=seeds.signer(f"{SENDER}/signing"))
    refused(forged, Category.UNKNOWN_SIGNING_KEY)


def test_revoked_key() -> None:
    key = seeds.ed25519(f"{RECEIVER}/signing")
    ks = dataclasses.replace(seeds.keyset(RECEIVER), signing_keys=(seeds.entry(key, revoked_at=T0),))
    refused(signed(), Category.REVOKED_KEY, keys=LiveKeys(ks, now=T0))


def test_wrong_type() -> None:
    refused(sign_receipt(a.receipt(), signer=a.receiver_signer()), Category.WRONG_TYPE)
    refused(a.head_token(), Category.WRONG_TYPE)


def test_parse_error_refuses_unknown_category() -> None:
    with pytest.raises(ArtifactError) as info:
        parse_error({**a.signed_error().to_payload(), "category": None})
    assert info.value.category == Category.MALFORMED


# --- committed vectors -------------------------------------------------------------------------------------------


def _index() -> dict[str, Any]:
    index: dict[str, Any] = json.loads((VECTORS / "errors" / "index.json").read_text())
    return index


def test_error_vectors_regenerate_byte_for_byte() -> None:
    files = {rel: data for rel, data in a.artifact_files().items() if rel.startswith("errors/")}
    for rel, data in files.items():
        assert (VECTORS / rel).read_bytes() == data, rel
    assert {p.name for p in (VECTORS / "errors").iterdir()} == {rel.split("/")[1] for rel in files}


@pytest.mark.parametrize("vector", _index()["vectors"], ids=[v["file"] for v in _index()["vectors"]])
def test_error_vector(vector: dict[str, Any]) -> None:
    ctx = _index()["context"]
    token = (VECTORS / "errors" / vector["file"]).read_bytes()
    keys = LiveKeys(Keyset.from_payload(ctx["peer_keyset"]), now=vector["now"])
    e = ctx["expected"]
    kw = {"keys": keys, "peer": e["iss"], "sender": e["aud"], "envelope_sha256": e["envelope_sha256"]}
    if vector["expect"] == "ok":
        err = verify_error(token, **kw)
        assert ctx["classes"][err.category.value] == err.error_class.value
        assert err.error_class in ErrorClass
    else:
        with pytest.raises(ArtifactError) as info:
            verify_error(token, **kw)
        assert info.value.category == Category(vector["expect"])
