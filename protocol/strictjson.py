"""Strict JSON: our own parse of every header and payload before a JOSE library sees it.

Refused: invalid UTF-8, duplicate member names, NaN/Infinity, integers beyond I-JSON's
+-(2**53 - 1), nesting deeper than a cap, documents larger than a cap, and lone surrogates.
``canonical`` is RFC 8785 (JCS), used wherever bytes must be reproduced.
"""

from __future__ import annotations

import json
import math
from typing import Any

import rfc8785

from .errors import Category, ProtocolError

MAX_DEPTH = 32
MAX_SAFE_INTEGER = 2**53 - 1
#: 2**53 - 1 has 16 digits: an integer literal of fewer digits is within I-JSON's range.
_SAFE_DIGITS = 15


class _DuplicateKeyError(ValueError):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKeyError(key)
        obj[key] = value
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is beyond the range of a double")
    return value


def _safe_int(text: str) -> int:
    """An integer literal, refused outside I-JSON's range as the decoder meets it (a regex over the
    whole document for long runs of digits cost four times the parse itself)."""
    value = int(text)
    if len(text) > _SAFE_DIGITS and abs(value) > MAX_SAFE_INTEGER:
        raise _OutOfRangeError(text)
    return value


class _OutOfRangeError(ValueError):
    pass


_DECODER = json.JSONDecoder(object_pairs_hook=_pairs, parse_constant=_no_constant, parse_float=_finite_float,
                            parse_int=_safe_int)


def _check(value: Any, depth: int, max_depth: int) -> None:
    """Depth and lone surrogates (the decoder has checked integers already, ``_safe_int``)."""
    if depth > max_depth:
        raise ProtocolError(Category.MALFORMED, f"JSON nested deeper than {max_depth}")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_str(key)
            if isinstance(item, (dict, list)):
                _check(item, depth + 1, max_depth)
            elif isinstance(item, str):
                _check_str(item)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, (dict, list)):
                _check(item, depth + 1, max_depth)
            elif isinstance(item, str):
                _check_str(item)
    elif isinstance(value, str):
        _check_str(value)


def _check_str(value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ProtocolError(Category.MALFORMED, "JSON string holds a lone surrogate") from e


def parse_strict(data: bytes, *, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """Parse ``data`` as strict I-JSON; raise ``ProtocolError(MALFORMED | TOO_LARGE)``."""
    if len(data) > max_bytes:
        raise ProtocolError(Category.TOO_LARGE, f"JSON document of {len(data)} bytes exceeds {max_bytes}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolError(Category.MALFORMED, "JSON is not valid UTF-8") from e
    try:
        value = _DECODER.decode(text)
    except _DuplicateKeyError as e:
        raise ProtocolError(Category.MALFORMED, f"duplicate JSON member {str(e)!r:.40}") from e
    except RecursionError as e:
        raise ProtocolError(Category.MALFORMED, f"JSON nested deeper than {max_depth}") from e
    except _OutOfRangeError as e:
        raise ProtocolError(Category.MALFORMED, "JSON integer outside +-(2**53 - 1)") from e
    except ValueError as e:
        raise ProtocolError(Category.MALFORMED, f"not strict JSON: {e}") from e
    if _needs_walk(data, max_depth):
        _check(value, 1, max_depth)
    return value


def _needs_walk(data: bytes, max_depth: int) -> bool:
    """Whether the parsed value could break a rule the decoder does not enforce (integers it
    checks itself, ``_safe_int``).

    After a strict UTF-8 decode a lone surrogate can only come from a ``\\u`` escape; nesting
    cannot exceed the cap with fewer opening brackets than the cap.  Anything else is walked.
    """
    return b"\\u" in data or data.count(b"[") + data.count(b"{") > max_depth


def parse_object(data: bytes, *, max_bytes: int, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """Parse strict JSON that must be an object."""
    value = parse_strict(data, max_bytes=max_bytes, max_depth=max_depth)
    if not isinstance(value, dict):
        raise ProtocolError(Category.MALFORMED, "JSON document is not an object")
    return value


def _plain(value: Any) -> bool:
    """True when ``json.dumps`` with sorted keys already produces RFC 8785 bytes for ``value``:
    no floats (ECMAScript number formatting), integers within I-JSON's range, strings free of
    lone surrogates, and member names within the BMP (so code-point order equals UTF-16 order)."""
    if isinstance(value, str):
        return value.isascii() or not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        return abs(value) <= MAX_SAFE_INTEGER
    if isinstance(value, dict):
        return all(isinstance(k, str) and (k.isascii() or max(map(ord, k)) <= 0xFFFF) and _plain(k) and _plain(v)
                   for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return False


def canonical(value: Any) -> bytes:
    """RFC 8785 (JCS) canonical bytes of ``value``."""
    if _plain(value):
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as e:
        raise ProtocolError(Category.MALFORMED, f"cannot canonicalise: {e}") from e
