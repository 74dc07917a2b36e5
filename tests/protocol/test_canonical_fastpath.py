"""The canonical fast path produces exactly what the rfc8785 library produces."""

from __future__ import annotations

import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.strictjson import canonical

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20),
)
_json = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=8), children,
                        max_size=5),
    ),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(_json)
def test_fast_path_matches_rfc8785(value: object) -> None:
    assert canonical(value) == rfc8785.dumps(value)


def test_astral_member_names_sort_by_utf16_code_units() -> None:
    # U+1F600 (surrogates D83D DE00) sorts before U+FF5E in UTF-16, after it by code point.
    value = {"\uff5e": 1, "\U0001f600": 2}
    assert canonical(value) == rfc8785.dumps(value)
    assert canonical(value).startswith('{"\U0001f600"'.encode())


def test_control_characters_escape_as_rfc8785() -> None:
    value = {"s": "\x00\x1f\x7f\u2028\b\t\n\f\r\"\\"}
    assert canonical(value) == rfc8785.dumps(value)
