"""Receipts: round trips under live and archival rules, every refusal, and the committed vectors."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from protocol.artifacts import ArchivalKeys, KeyRules, LiveKeys
from protocol.errors import ArtifactError, Category
from protocol.jose import b64e, sign_compact
from protocol.keysets import Keyset
from protocol.receipts import RECEIPT_TYP, Receipt, parse_receipt, sign_receipt, verify_receipt
from protocol.rejections import sign_error
from tests import seeds
from tests.protocol import vectorgen_artifacts as a
from tests.protocol.vectorgen_envelopes import MESSAGE_ID, RECEIVER, SENDER, VECTORS, dump_json

T0 = seeds.T0


def live(now: int = T0, keyset: Keyset | None = None) -> LiveKeys:
    return LiveKeys(keyset or seeds.keyset(RECEIVER), now=now)


def verify(token: bytes, keys: KeyRules | None = None, **expect: Any) -> Receipt:
    kw: dict[str, Any] = {"sender": SENDER, "receiver": RECEIVER, "message_id": MESSAGE_ID,
                          "envelope_sha256": a.ENVELOPE_SHA256}
    kw.update(expect)
    return verify_receipt(token, keys=keys or live(), **kw)


def refused(token: bytes, category: Category, *, keys: KeyRules | None = None, **expect: Any) -> None:
    with pytest.raises(ArtifactError) as info:
        verify(token, keys, **expect)
    assert info.value.category == category, info.value


def ok_token() -> bytes:
    return sign_receipt(a.receipt(), signer=a.receiver_signer())


def test_round_trip_live() -> None:
    assert verify(ok_token()) == a.receipt()
    assert verify(ok_token(), now=T0) == a.receipt()


def test_round_trip_archival_years_later() -> None:
    """Two years on, with the key retired since, the receipt still verifies under archival rules."""
    key = seeds.ed25519(f"{RECEIVER}/signing")
    v1 = seeds.keyset(RECEIVER)
    v2 = dataclasses.replace(v1, version=2, issued_at=T0 + 86400,
                             signing_keys=(seeds.entry(key, retired_at=T0 + 86400),))
    assert verify(ok_token(), ArchivalKeys([v1, v2])) == a.receipt()
    # the same key under live rules, two years later, no longer counts
    refused(ok_token(), Category.RETIRED_KEY, keys=LiveKeys(v2, now=T0 + 2 * 365 * 86400))


def test_archival_refuses_after_learnt_revocation() -> None:
    keys = ArchivalKeys([seeds.keyset(RECEIVER)],
                        revocations_learned={a.receiver_signer().kid: T0})
    refused(ok_token(), Category.REVOKED_KEY, keys=keys)


def test_live_refuses_revoked_key() -> None:
    key = seeds.ed25519(f"{RECEIVER}/signing")
    revoked = dataclasses.replace(seeds.keyset(RECEIVER), signing_keys=(seeds.entry(key, revoked_at=T0 + 10),))
    refused(ok_token(), Category.REVOKED_KEY, keys=live(keyset=revoked))


@pytest.mark.parametrize("token", [lambda: sign_error_token(), lambda: a.head_token()], ids=["error", "head"])
def test_wrong_type(token: Any) -> None:
    refused(token(), Category.WRONG_TYPE)


def sign_error_token() -> bytes:
    return sign_error(a.signed_error(), signer=a.receiver_signer())


@pytest.mark.parametrize(
    "field,value",
    [("iss", "DE-BFJ"), ("aud", "DE-BFJ"), ("id", a.OTHER_ID), ("envelope_sha256", a.OTHER_SHA256)],
)
def test_each_field_mismatch(field: str, value: str) -> None:
    token = sign_receipt(a.receipt(**{field: value}), signer=a.receiver_signer())
    refused(token, Category.RECEIPT_MISMATCH)


@pytest.mark.parametrize(
    "expect", [{"receiver": "DE-BFJ"}, {"sender": "DE-BFJ"}, {"message_id": a.OTHER_ID},
               {"envelope_sha256": a.OTHER_SHA256}],
)
def test_receipt_for_something_else_than_what_was_sent(expect: dict[str, Any]) -> None:
    refused(ok_token(), Category.RECEIPT_MISMATCH, **expect)


def test_received_at_in_the_future() -> None:
    token = sign_receipt(a.receipt(received_at=T0 + 301), signer=a.receiver_signer())
    refused(token, Category.RECEIPT_MISMATCH, now=T0)
    assert verify(token, now=T0 + 1).received_at == T0 + 301


def test_tampered_payload() -> None:
    good = ok_token()
    h, _, s = good.split(b".")
    other = b64e(json.dumps({**a.receipt().to_payload(), "leaf_index": 40}, separators=(",", ":")).encode())
    refused(b".".join([h, other, s]), Category.BAD_SIGNATURE)
    refused(a.swap_payload(good, sign_receipt(a.receipt(id=a.OTHER_ID), signer=a.receiver_signer())),
            Category.BAD_SIGNATURE)


def test_tampered_signature() -> None:
    h, p, s = ok_token().split(b".")
    flipped = (b"A" if s[:1] != b"A" else b"B") + s[1:]
    refused(b".".join([h, p, flipped]), Category.BAD_SIGNATURE)


def test_unknown_kid() -> None:
    refused(sign_receipt(a.receipt(), signer=a.stranger_signer()), Category.UNKNOWN_SIGNING_KEY)
    refused(sign_receipt(a.receipt(), signer=a.stranger_signer()), Category.UNKNOWN_SIGNING_KEY,
            keys=ArchivalKeys([seeds.keyset(RECEIVER)]))


@pytest.mark.parametrize(
    "change",
    [{"note": "x"}, {"leaf_index": 42}, {"v": 2}, {"received_at": "soon"}, {"root": "00"}, {"id": "X" * 32},
     {"iss": "fr-dacg"}, {"tree_size": -1}],
)
def test_malformed_payload(change: dict[str, Any]) -> None:
    token = sign_compact(typ=RECEIPT_TYP, payload={**a.receipt().to_payload(), **change}, signer=a.receiver_signer())
    refused(token, Category.MALFORMED)


def test_sign_receipt_refuses_a_malformed_receipt() -> None:
    with pytest.raises(ArtifactError) as info:
        sign_receipt(a.receipt(leaf_index=42), signer=a.receiver_signer())
    assert info.value.category == Category.MALFORMED
    with pytest.raises(ArtifactError):
        parse_receipt({**a.receipt().to_payload(), "root": 7})


def test_oversize_and_not_compact() -> None:
    refused(ok_token() + b"." + b"A" * 10, Category.MALFORMED)
    refused(b"A" * (64 * 1024 + 1), Category.TOO_LARGE)


# --- committed vectors -----------------------------------------------------------------------------------------


def _index() -> dict[str, Any]:
    index: dict[str, Any] = json.loads((VECTORS / "receipts" / "index.json").read_text())
    return index


def test_receipt_vectors_regenerate_byte_for_byte() -> None:
    files = {rel: data for rel, data in a.artifact_files().items() if rel.startswith("receipts/")}
    for rel, data in files.items():
        assert (VECTORS / rel).read_bytes() == data, rel
    assert {p.name for p in (VECTORS / "receipts").iterdir()} == {rel.split("/")[1] for rel in files}
    assert (VECTORS / "receipts" / "index.json").read_bytes() == dump_json(_index())


@pytest.mark.parametrize("vector", _index()["vectors"], ids=[v["file"] for v in _index()["vectors"]])
def test_receipt_vector(vector: dict[str, Any]) -> None:
    ctx = _index()["context"]
    token = (VECTORS / "receipts" / vector["file"]).read_bytes()
    keys = LiveKeys(Keyset.from_payload(ctx["receiver_keyset"]), now=vector["now"])
    e = ctx["expected"]
    kw = {"keys": keys, "sender": e["aud"], "receiver": e["iss"], "message_id": e["id"],
          "envelope_sha256": e["envelope_sha256"], "now": vector["now"]}
    if vector["expect"] == "ok":
        assert verify_receipt(token, **kw) == a.receipt()
    else:
        with pytest.raises(ArtifactError) as info:
            verify_receipt(token, **kw)
        assert info.value.category == Category(vector["expect"])
