"""Strict JSON: every refusal of our own parser, and RFC 8785 canonical bytes (with RFC 8785's examples)."""

from __future__ import annotations

import struct
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import Category, ProtocolError
from protocol.strictjson import MAX_DEPTH, MAX_SAFE_INTEGER, canonical, parse_object, parse_strict

BIG = 10 * 1024 * 1024


def refused(data: bytes, category: Category = Category.MALFORMED, **kw: Any) -> ProtocolError:
    kw.setdefault("max_bytes", BIG)
    with pytest.raises(ProtocolError) as info:
        parse_strict(data, **kw)
    assert info.value.category == category, info.value
    return info.value


# --- refusals ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b'{"a":1,"a":2}',
        b'{"a":1,"a":1}',
        b'{"a":1,"\\u0061":2}',  # the same name, once escaped
        b'{"x":{"b":1,"b":2}}',
        b'[{"k":[{"z":0,"z":0}]}]',
    ],
    ids=["top", "same-value", "escaped", "nested", "deep-in-array"],
)
def test_duplicate_member_names(data: bytes) -> None:
    assert "duplicate" in refused(data).detail


@pytest.mark.parametrize("data", [b"NaN", b"Infinity", b"-Infinity", b'{"a":NaN}', b"[1,Infinity]", b'{"a":-Infinity}'])
def test_nan_and_infinity(data: bytes) -> None:
    refused(data)


@pytest.mark.parametrize("data", [b"1e400", b"-1e400", b'{"a":1E999}', b"[2e308]"])
def test_numbers_beyond_double_range(data: bytes) -> None:
    """Python reads 1e400 as inf: that is Infinity by another spelling and must be refused too."""
    refused(data)


@pytest.mark.parametrize(
    "data",
    [b"9007199254740992", b"-9007199254740992", b'{"n":18446744073709551616}', b"[1,[2,[100000000000000000000]]]"],
)
def test_integers_beyond_2_53(data: bytes) -> None:
    assert "2**53" in refused(data).detail


def test_integer_with_thousands_of_digits() -> None:
    refused(b"1" + b"0" * 5000)
    refused(b"[-" + b"9" * 5000 + b"]")


def test_integers_at_the_limit() -> None:
    assert parse_strict(str(MAX_SAFE_INTEGER).encode(), max_bytes=64) == MAX_SAFE_INTEGER
    assert parse_strict(str(-MAX_SAFE_INTEGER).encode(), max_bytes=64) == -MAX_SAFE_INTEGER


def _nested(depth: int, kind: str) -> bytes:
    if kind == "array":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * (depth - 1) + b"{}" + b"}" * (depth - 1)


@pytest.mark.parametrize("kind", ["array", "object"])
def test_nesting_cap(kind: str) -> None:
    assert parse_strict(_nested(MAX_DEPTH, kind), max_bytes=BIG) is not None
    assert "deeper" in refused(_nested(MAX_DEPTH + 1, kind)).detail
    assert parse_strict(_nested(4, kind), max_bytes=BIG, max_depth=4) is not None
    refused(_nested(5, kind), max_depth=4)


@pytest.mark.parametrize("kind", ["array", "object", "open"])
def test_bracket_bomb_does_not_crash(kind: str) -> None:
    depth = 100_000
    data = b"[" * depth if kind == "open" else _nested(depth, kind)
    refused(data)


def test_oversize() -> None:
    doc = b'{"a":"' + b"x" * 100 + b'"}'
    assert parse_strict(doc, max_bytes=len(doc)) == {"a": "x" * 100}
    refused(doc, Category.TOO_LARGE, max_bytes=len(doc) - 1)
    refused(doc + b" ", Category.TOO_LARGE, max_bytes=len(doc))


@pytest.mark.parametrize(
    "data",
    [b'"\xff"', b'"\xc0\xaf"', b'"\xed\xa0\x80"', b'{"a":"\xe2\x82"}', b'"\xf8\x88\x80\x80\x80"'],
    ids=["ff", "overlong", "encoded-surrogate", "truncated", "five-byte"],
)
def test_invalid_utf8(data: bytes) -> None:
    assert "UTF-8" in refused(data).detail


@pytest.mark.parametrize(
    "data",
    [b'"\\ud800"', b'"\\udfff"', b'{"\\udc00":1}', b'["a\\ud83d"]', b'"\\ude00\\ud83d"', b'{"k":{"\\ud800x":0}}'],
    ids=["high", "low", "in-key", "truncated-pair", "reversed-pair", "nested-key"],
)
def test_lone_surrogate_escapes(data: bytes) -> None:
    assert "surrogate" in refused(data).detail


def test_surrogate_pair_escape_is_fine() -> None:
    assert parse_strict(b'"\\ud83d\\ude00"', max_bytes=64) == "\U0001f600"


@pytest.mark.parametrize(
    "data", [b"", b"{", b"[1,]", b"{'a':1}", b'"\x01"', b"\xef\xbb\xbf{}", b"{} {}", b"01", b"tru", b"{a:1}"]
)
def test_not_json(data: bytes) -> None:
    refused(data)


def test_parse_object_refuses_other_documents() -> None:
    for data in (b"[]", b'"x"', b"1", b"null"):
        with pytest.raises(ProtocolError) as info:
            parse_object(data, max_bytes=64)
        assert info.value.category == Category.MALFORMED
    assert parse_object(b' {"a" : [1, 2.5, null, true]} ', max_bytes=64) == {"a": [1, 2.5, None, True]}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_parse_or_raise_protocol_error(data: bytes) -> None:
    try:
        parse_strict(data, max_bytes=64)
    except ProtocolError as e:
        assert e.category in (Category.MALFORMED, Category.TOO_LARGE)


# --- RFC 8785 canonical encoding ----------------------------------------------------------------------------


def test_rfc8785_section_3_2_2_example() -> None:
    source = (
        b'{\n  "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],\n'
        b'  "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",\n'
        b'  "literals": [null, true, false]\n}'
    )
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    ).encode()
    assert canonical(parse_strict(source, max_bytes=1024)) == expected


def test_rfc8785_section_3_2_3_sorting_by_utf16_code_units() -> None:
    source = (
        b'{"\\u20ac": "Euro Sign", "\\r": "Carriage Return", "\\ufb33": "Hebrew Letter Dalet With Dagesh",'
        b' "1": "One", "\\ud83d\\ude00": "Emoji: Grinning Face", "\\u0080": "Control",'
        b' "\\u00f6": "Latin Small Letter O With Diaeresis"}'
    )
    out = canonical(parse_strict(source, max_bytes=1024)).decode()
    order = ["\\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]
    positions = [out.index(f'"{k}":') for k in order]
    assert positions == sorted(positions)
    # the emoji (UTF-16 D83D DE00) sorts before U+FB33, although its code point is larger
    assert canonical({"\ufb33": 1, "\U0001f600": 2}) == '{"\U0001f600":2,"\ufb33":1}'.encode()


#: RFC 8785 Appendix B: IEEE 754 double (hex) -> canonical text.
APPENDIX_B = {
    "0000000000000000": "0",
    "8000000000000000": "0",
    "0000000000000001": "5e-324",
    "8000000000000001": "-5e-324",
    "7fefffffffffffff": "1.7976931348623157e+308",
    "ffefffffffffffff": "-1.7976931348623157e+308",
    "4340000000000000": "9007199254740992",
    "c340000000000000": "-9007199254740992",
    "4430000000000000": "295147905179352830000",
    "44b52d02c7e14af5": "9.999999999999997e+22",
    "44b52d02c7e14af6": "1e+23",
    "44b52d02c7e14af7": "1.0000000000000001e+23",
    "444b1ae4d6e2ef4e": "999999999999999700000",
    "444b1ae4d6e2ef4f": "999999999999999900000",
    "444b1ae4d6e2ef50": "1e+21",
    "3eb0c6f7a0b5ed8c": "9.999999999999997e-7",
    "3eb0c6f7a0b5ed8d": "0.000001",
    "41b3de4355555553": "333333333.3333332",
    "41b3de4355555554": "333333333.33333325",
    "41b3de4355555555": "333333333.3333333",
    "41b3de4355555556": "333333333.3333334",
    "41b3de4355555557": "333333333.33333343",
    "becbf647612f3696": "-0.0000033333333333333333",
    "43143ff3c1cb0959": "1424953923781206.2",
}


@pytest.mark.parametrize("ieee,text", APPENDIX_B.items(), ids=list(APPENDIX_B))
def test_rfc8785_appendix_b_numbers(ieee: str, text: str) -> None:
    assert canonical(struct.unpack(">d", bytes.fromhex(ieee))[0]) == text.encode()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), 2**53, {"a": [-(2**60)]}, {1: "x"}])
def test_canonical_refuses_what_json_cannot_carry(value: Any) -> None:
    with pytest.raises(ProtocolError) as info:
        canonical(value)
    assert info.value.category == Category.MALFORMED


def test_canonical_is_compact_and_utf8() -> None:
    assert canonical({"b": [1, {"d": None, "c": "é"}], "a": True}) == '{"a":true,"b":[1,{"c":"é","d":null}]}'.encode()


_scalars = (
    st.none() | st.booleans() | st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER)
    | st.floats(min_value=-1e15, max_value=1e15, allow_nan=False) | st.text(max_size=8)
)
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=4), inner, max_size=4), max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(_json)
def test_canonical_round_trips_through_the_strict_parser(value: Any) -> None:
    text = canonical(value)
    assert parse_strict(text, max_bytes=BIG) == value
    assert canonical(parse_strict(text, max_bytes=BIG)) == text


_plain_scalars = (
    st.none() | st.booleans() | st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER)
    | st.text(st.characters(exclude_categories=["Cs"]), max_size=8)
)
_plain_json = st.recursive(
    _plain_scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(st.characters(exclude_categories=["Cs"]), max_size=4), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(_plain_json)
def test_canonical_agrees_with_the_reference_implementation(value: Any) -> None:
    """Whatever shortcut canonical() takes, its bytes are rfc8785's (control characters, astral
    member names, U+2028, DEL and all)."""
    assert canonical(value) == rfc8785.dumps(value)


@pytest.mark.parametrize(
    "value",
    [{"\u007f\u2028\u2029": "\x00\x1f\"\\/"}, {"\U0001f600": 1, "\uffff": 2, "\ue000": 3}, ["\ud7ff", "\U00010000"],
     {"a": [True, False, None, -0, MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER]}],
    ids=["escapes", "astral-keys", "edges", "literals"],
)
def test_canonical_edge_strings(value: Any) -> None:
    assert canonical(value) == rfc8785.dumps(value)
