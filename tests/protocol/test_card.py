"""The card document (protocol.card)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from protocol.card import CARD_MAX_BYTES, build_card, parse_card
from protocol.errors import Category, KeysetError
from protocol.jose import b64e
from protocol.keychain import verify_chain
from protocol.strictjson import canonical
from tests.protocol.vectorgen_keysets import ID1, build_chain

CHAIN = build_chain()
DOCS = list(CHAIN.docs)
NOW = CHAIN.keysets[-1].issued_at


def _card_obj() -> dict[str, Any]:
    value: dict[str, Any] = json.loads(build_card(DOCS))
    return value


def test_card_round_trips_exact_documents_oldest_first() -> None:
    card = build_card(DOCS)
    assert card == canonical(json.loads(card))
    assert card.startswith(b'{"comity_card":1,"keysets":[' + DOCS[0] + b",")
    assert parse_card(card) == DOCS
    assert [d.version for d in verify_chain(parse_card(card), fingerprint=ID1.kid, now=NOW)] == [1, 2, 3, 4]


def test_a_reformatted_card_yields_the_same_documents() -> None:
    obj = _card_obj()
    pretty = json.dumps({"keysets": obj["keysets"], "comity_card": 1}, indent=4).encode() + b"\n"
    assert parse_card(pretty) == DOCS
    reordered = {"keysets": [dict(reversed(list(k.items()))) for k in obj["keysets"]], "comity_card": 1}
    assert parse_card(json.dumps(reordered).encode()) == DOCS


def test_parse_card_verifies_no_signature() -> None:
    obj = _card_obj()
    obj["keysets"][1]["signatures"][0]["signature"] = b64e(b"\1" * 64).decode()
    docs = parse_card(canonical(obj))
    with pytest.raises(KeysetError) as e:
        verify_chain(docs, fingerprint=ID1.kid, now=NOW)
    assert e.value.category == Category.BAD_SIGNATURE


def _non_canonical_header() -> dict[str, Any]:
    obj = _card_obj()
    protected = b'{"typ":"comity-keyset+jws","alg":"Ed25519","kid":"' + ID1.kid.encode() + b'"}'
    obj["keysets"][0]["signatures"][0]["protected"] = b64e(protected).decode()
    return obj


def _bad_payload() -> dict[str, Any]:
    obj = _card_obj()
    obj["keysets"][0]["payload"] = b64e(canonical({"v": 1})).decode()
    return obj


@pytest.mark.parametrize(
    ("data", "category"),
    [
        (b"not json", Category.MALFORMED),
        (b"[]", Category.MALFORMED),
        (b" " * (CARD_MAX_BYTES + 1), Category.TOO_LARGE),
        (b'{"comity_card":1,"comity_card":1,"keysets":[]}', Category.MALFORMED),
        (canonical({"comity_card": 2, "keysets": []}), Category.MALFORMED),
        (canonical({"comity_card": True, "keysets": [json.loads(DOCS[0])]}), Category.MALFORMED),
        (canonical({"comity_card": "1", "keysets": [json.loads(DOCS[0])]}), Category.MALFORMED),
        (b'{"comity_card":1.0,"keysets":[' + DOCS[0] + b"]}", Category.MALFORMED),
        (canonical({"comity_card": 1}), Category.MALFORMED),
        (canonical({"comity_card": 1, "keysets": [json.loads(DOCS[0])], "x": 1}), Category.MALFORMED),
        (canonical({"comity_card": 1, "keysets": []}), Category.MALFORMED),
        (canonical({"comity_card": 1, "keysets": {}}), Category.MALFORMED),
        (canonical({"comity_card": 1, "keysets": [DOCS[0].decode()]}), Category.MALFORMED),
        (canonical(_non_canonical_header()), Category.MALFORMED),
        (canonical(_bad_payload()), Category.KEYSET_INVALID),
    ],
)
def test_parse_card_refuses(data: bytes, category: Category) -> None:
    with pytest.raises(KeysetError) as e:
        parse_card(data)
    assert e.value.category == category


@pytest.mark.parametrize(
    ("docs", "category"),
    [
        ([], Category.MALFORMED),
        ([json.dumps(json.loads(DOCS[0]), indent=2).encode()], Category.MALFORMED),
        ([b"{}"], Category.MALFORMED),
    ],
)
def test_build_card_refuses(docs: list[bytes], category: Category) -> None:
    with pytest.raises(KeysetError) as e:
        build_card(docs)
    assert e.value.category == category
