"""SPEC.md and the code cannot drift: §8.2's error table is ERROR_TABLE, row for row."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from protocol.chunks import CHUNK_TYP
from protocol.envelope import ENVELOPE_JWE_TYP, ENVELOPE_JWS_TYP
from protocol.errors import ERROR_TABLE, Category, ErrorClass, ErrorRule
from protocol.heads import HEAD_TYP
from protocol.keysets import KEYSET_TYP
from protocol.receipts import RECEIPT_TYP
from protocol.rejections import ERROR_TYP

SPEC = Path(__file__).resolve().parents[2] / "protocol" / "SPEC.md"
BEGIN, END = "<!-- error-table:begin -->", "<!-- error-table:end -->"
HEADER = ["category", "HTTP status", "class", "meaning"]
_CODE = re.compile(r"`([^`]+)`")


def _cells(line: str) -> list[str]:
    if not (line.startswith("|") and line.endswith("|")):
        raise ValueError(f"not a table row: {line!r}")
    return [c.strip() for c in line[1:-1].split("|")]


def _code(cell: str) -> str:
    m = _CODE.fullmatch(cell)
    if m is None:
        raise ValueError(f"cell is not one `code` span: {cell!r}")
    return m.group(1)


def parse_error_table(text: str) -> list[tuple[Category, ErrorRule]]:
    """The rows between the error-table markers, in order, as (category, rule)."""
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise ValueError("SPEC must hold exactly one error table between its markers")
    body = text.split(BEGIN, 1)[1].split(END, 1)[0]
    lines = [ln.strip() for ln in body.strip().splitlines()]
    if _cells(lines[0]) != HEADER or set(_cells(lines[1])) != {"---"}:
        raise ValueError(f"unexpected table head: {lines[:2]}")
    rows = []
    for line in lines[2:]:
        category, status, cls, meaning = _cells(line)
        rows.append((Category(_code(category)), ErrorRule(int(status), ErrorClass(_code(cls)), meaning)))
    return rows


def test_spec_error_table_is_error_table() -> None:
    rows = parse_error_table(SPEC.read_text(encoding="utf-8"))
    assert [c for c, _ in rows] == list(ERROR_TABLE), "categories differ or are out of order"
    assert dict(rows) == ERROR_TABLE


def test_parser_notices_drift() -> None:
    text = SPEC.read_text(encoding="utf-8")
    drifted = text.replace("| `not_yet_valid` | 425 | `retryable` |", "| `not_yet_valid` | 425 | `permanent` |")
    assert drifted != text
    assert dict(parse_error_table(drifted)) != ERROR_TABLE
    with pytest.raises(ValueError):
        parse_error_table(text.replace(END, ""))


@pytest.mark.parametrize(
    "typ", [ENVELOPE_JWS_TYP, ENVELOPE_JWE_TYP, RECEIPT_TYP, ERROR_TYP, KEYSET_TYP, HEAD_TYP, CHUNK_TYP]
)
def test_spec_names_every_typ(typ: str) -> None:
    section = SPEC.read_text(encoding="utf-8").split("### 1.5 Artefact types", 1)[1].split("### 1.6", 1)[0]
    assert f"| `{typ}` |" in section
