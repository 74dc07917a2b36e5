"""The card: every keyset version of a node in one document, oldest first (SPEC §3).

    {"comity_card": 1, "keysets": [<keyset document as a JSON object>, ...]}

A card is exchanged out of band (mail, file), so its own formatting is free: any strict
JSON with exactly these members.  Each keyset inside is re-serialised in RFC 8785 form,
which reproduces the exact bytes of the keyset document; a keyset whose signed parts
(protected headers, payload) are not canonical is ``malformed`` (see ``read_keyset``).
``build_card`` emits the card itself in RFC 8785 form.  Nothing here verifies a signature:
``keychain.verify_chain`` or ``keychain.update_chain`` does that with the result.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import Category, KeysetError, ProtocolError
from .keychain import read_keyset
from .strictjson import canonical, parse_object

CARD_VERSION = 1
#: Cap on a card's bytes: room for hundreds of keyset versions.
CARD_MAX_BYTES = 2 * 1024 * 1024
_CARD_NAMES = frozenset({"comity_card", "keysets"})


def build_card(docs: Sequence[bytes]) -> bytes:
    """The RFC 8785 card of keyset documents ``docs`` (oldest first)."""
    if not docs:
        raise KeysetError(Category.MALFORMED, "a card holds at least one keyset")
    keysets = [parse_object(read_keyset(d).doc, max_bytes=CARD_MAX_BYTES) for d in docs]
    return canonical({"comity_card": CARD_VERSION, "keysets": keysets})


def parse_card(data: bytes) -> list[bytes]:
    """The keyset documents of a card, oldest first, as their exact canonical bytes.

    Refused: over ``CARD_MAX_BYTES`` (``too_large``); not strict JSON, members other than
    ``{comity_card, keysets}``, ``comity_card`` other than the integer 1, an empty list or a
    non-object entry (``malformed``); any keyset that ``read_keyset`` refuses (its category).
    """
    try:
        obj = parse_object(data, max_bytes=CARD_MAX_BYTES)
        if set(obj) != _CARD_NAMES:
            raise KeysetError(Category.MALFORMED, f"card members {sorted(obj)}")
        version, keysets = obj["comity_card"], obj["keysets"]
        if isinstance(version, bool) or version != CARD_VERSION or not isinstance(version, int):
            raise KeysetError(Category.MALFORMED, f"comity_card {version!r:.20} is not 1")
        if not isinstance(keysets, list) or not keysets:
            raise KeysetError(Category.MALFORMED, "card keysets is not a non-empty list")
        if not all(isinstance(k, dict) for k in keysets):
            raise KeysetError(Category.MALFORMED, "a card keyset is not a JSON object")
        return [read_keyset(canonical(k)).doc for k in keysets]
    except KeysetError:
        raise
    except ProtocolError as e:
        raise KeysetError(e.category, e.detail) from e
