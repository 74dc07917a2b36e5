"""Attachment chunks: sizes at the edges, every misplacement and tamper, and the committed vectors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from protocol.chunks import (
    CHUNK_CRIT,
    CHUNK_MAX_BYTES,
    CHUNK_SIZE,
    CHUNK_TYP,
    open_chunk,
    read_chunk_header,
    seal_chunk,
)
from protocol.envelope import chunk_count
from protocol.errors import Category, ChunkError
from protocol.jose import b64d, b64e
from protocol.strictjson import canonical, parse_object
from tests.protocol import vectorgen_artifacts as a
from tests.protocol.jwe_craft import encrypt_dir, flip_segment
from tests.protocol.vectorgen_envelopes import VECTORS, attachment_key, dump_json

KEY = attachment_key(1)
OTHER_KEY = attachment_key(0)


def refused(token: bytes, category: Category, *, key: bytes = KEY, att: int = 1, seq: int = 0,
            chunks: int = 1) -> ChunkError:
    with pytest.raises(ChunkError) as info:
        open_chunk(token, key=key, att=att, seq=seq, chunks=chunks)
    assert info.value.category == category, info.value
    return info.value


def roundtrip(data: bytes, *, seq: int = 0, chunks: int = 1) -> bytes:
    last = seq == chunks - 1
    return open_chunk(seal_chunk(data, key=KEY, att=1, seq=seq, last=last), key=KEY, att=1, seq=seq, chunks=chunks)


def crafted(plaintext: bytes = b"abc", *, key: bytes = KEY, **changes: Any) -> bytes:
    h: dict[str, Any] = {"alg": "dir", "enc": "A256GCM", "typ": CHUNK_TYP, "att": 1, "seq": 0, "last": True,
                         "crit": CHUNK_CRIT}
    h.update(changes)
    return encrypt_dir(plaintext, header=canonical(h), key=key, label="test")


# --- sizes -----------------------------------------------------------------------------------------------------


def test_zero_byte_attachment_is_one_empty_chunk() -> None:
    assert chunk_count(0) == 1
    token = seal_chunk(b"", key=KEY, att=1, seq=0, last=True)
    assert open_chunk(token, key=KEY, att=1, seq=0, chunks=1) == b""
    assert token.split(b".")[3] == b""


def test_one_byte() -> None:
    assert roundtrip(b"\x00") == b"\x00"


def test_exactly_one_mib() -> None:
    data = bytes(range(256)) * (CHUNK_SIZE // 256)
    assert chunk_count(len(data)) == 1
    token = seal_chunk(data, key=KEY, att=1, seq=0, last=True)
    assert len(token) <= CHUNK_MAX_BYTES
    assert open_chunk(token, key=KEY, att=1, seq=0, chunks=1) == data


def test_full_chunk_then_one_byte_last_chunk() -> None:
    data = b"\xab" * (CHUNK_SIZE + 1)
    n = chunk_count(len(data))
    assert n == 2
    first = seal_chunk(data[:CHUNK_SIZE], key=KEY, att=1, seq=0, last=False)
    second = seal_chunk(data[CHUNK_SIZE:], key=KEY, att=1, seq=1, last=True)
    assert open_chunk(first, key=KEY, att=1, seq=0, chunks=n) + open_chunk(second, key=KEY, att=1, seq=1, chunks=n) \
        == data


def test_header_is_exactly_the_profile() -> None:
    token = seal_chunk(b"x", key=KEY, att=3, seq=7, last=False)
    header = parse_object(b64d(token.split(b".")[0]), max_bytes=4096)
    assert header == {"alg": "dir", "enc": "A256GCM", "typ": CHUNK_TYP, "att": 3, "seq": 7, "last": False,
                      "crit": ["att", "seq", "last"]}
    assert read_chunk_header(token) == (3, 7, False)


def test_handbuilt_chunk_opens() -> None:
    """The crafting used below is sound: with the profile's header it opens."""
    assert open_chunk(crafted(b"abc"), key=KEY, att=1, seq=0, chunks=1) == b"abc"


# --- misplaced or tampered chunks: bad_chunk ----------------------------------------------------------------------


def test_replay_at_another_seq() -> None:
    token = seal_chunk(b"\x01" * CHUNK_SIZE, key=KEY, att=1, seq=0, last=False)
    refused(token, Category.BAD_CHUNK, seq=1, chunks=3)


def test_chunk_from_another_attachment_with_another_key() -> None:
    token = seal_chunk(b"abc", key=OTHER_KEY, att=0, seq=0, last=True)
    refused(token, Category.BAD_CHUNK)  # the header names att 0
    refused(crafted(b"abc", key=OTHER_KEY), Category.BAD_CHUNK)  # the header says att 1; the key is att 0's


def test_chunk_from_another_attachment_with_the_same_key() -> None:
    token = seal_chunk(b"abc", key=KEY, att=2, seq=0, last=True)
    refused(token, Category.BAD_CHUNK)


@pytest.mark.parametrize("last,seq,chunks", [(True, 0, 2), (False, 1, 2), (False, 0, 1)])
def test_last_flag_wrong(last: bool, seq: int, chunks: int) -> None:
    token = seal_chunk(b"\x02" * (CHUNK_SIZE if not last else 10), key=KEY, att=1, seq=seq, last=last)
    refused(token, Category.BAD_CHUNK, seq=seq, chunks=chunks)


def test_short_non_last_chunk() -> None:
    token = seal_chunk(b"\x03" * (CHUNK_SIZE - 1), key=KEY, att=1, seq=0, last=False)
    refused(token, Category.BAD_CHUNK, chunks=2)


def test_seq_beyond_the_attachment() -> None:
    """A full, non-last chunk at seq 2 of a 2-chunk attachment sits at no place of it."""
    token = seal_chunk(b"\x04" * CHUNK_SIZE, key=KEY, att=1, seq=2, last=False)
    refused(token, Category.BAD_CHUNK, seq=2, chunks=2)


@pytest.mark.parametrize("segment", [2, 3, 4], ids=["iv", "ciphertext", "tag"])
def test_tampered(segment: int) -> None:
    refused(flip_segment(seal_chunk(b"some bytes", key=KEY, att=1, seq=0, last=True), segment), Category.BAD_CHUNK)


def test_wrong_key_length() -> None:
    refused(seal_chunk(b"x", key=KEY, att=1, seq=0, last=True), Category.BAD_CHUNK, key=KEY[:16])
    with pytest.raises(ChunkError) as info:
        seal_chunk(b"x", key=KEY[:31], att=1, seq=0, last=True)
    assert info.value.category == Category.BAD_CHUNK


# --- header refusals -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [{"name": "x.txt"}, {"crit": ["att", "seq"]}, {"crit": ["att", "seq", "last", "name"]},
     {"crit": ["last", "seq", "att"]}, {"seq": -1}, {"seq": True}, {"att": "1"}, {"last": 1}, {"kid": "k"}],
    ids=["extra-member", "crit-short", "crit-long", "crit-order", "seq-negative", "seq-bool", "att-string",
         "last-int", "kid"],
)
def test_bad_header(changes: dict[str, Any]) -> None:
    refused(crafted(**changes), Category.BAD_HEADER)


def test_missing_member_and_encrypted_key() -> None:
    h = {"alg": "dir", "enc": "A256GCM", "typ": CHUNK_TYP, "att": 1, "seq": 0, "crit": CHUNK_CRIT}
    refused(encrypt_dir(b"x", header=canonical(h), key=KEY, label="missing"), Category.BAD_HEADER)
    parts = crafted().split(b".")
    parts[1] = b64e(b"\x00" * 40)
    refused(b".".join(parts), Category.BAD_HEADER)


@pytest.mark.parametrize(
    "changes", [{"alg": "ECDH-ES+A256KW"}, {"alg": "A256KW"}, {"alg": "none"}, {"enc": "A128GCM"}, {"zip": "DEF"},
                {"jwk": {"kty": "oct", "k": "AA"}}],
    ids=["ecdh", "a256kw", "none", "enc", "zip", "jwk"],
)
def test_forbidden_algorithm(changes: dict[str, Any]) -> None:
    refused(crafted(**changes), Category.FORBIDDEN_ALGORITHM)


def test_wrong_type() -> None:
    refused(crafted(typ="comity-envelope+jwe"), Category.WRONG_TYPE)


def test_not_compact_or_duplicate_header_member() -> None:
    refused(b".".join(crafted().split(b".")[:4]), Category.MALFORMED)
    dup = canonical({"alg": "dir", "att": 1, "crit": CHUNK_CRIT, "enc": "A256GCM", "last": True, "seq": 0,
                     "typ": CHUNK_TYP})[:-1] + b',"seq":1}'
    refused(encrypt_dir(b"x", header=dup, key=KEY, label="dup"), Category.MALFORMED)


def test_oversize() -> None:
    with pytest.raises(ChunkError) as info:
        seal_chunk(b"\x00" * (CHUNK_SIZE + 1), key=KEY, att=1, seq=0, last=True)
    assert info.value.category == Category.TOO_LARGE
    refused(b"A" * (CHUNK_MAX_BYTES + 1), Category.TOO_LARGE)


# --- committed vectors --------------------------------------------------------------------------------


def _index() -> dict[str, Any]:
    index: dict[str, Any] = json.loads((VECTORS / "chunks" / "index.json").read_text())
    return index


def test_chunk_index_regenerates_and_lists_every_file() -> None:
    assert (VECTORS / "chunks" / "index.json").read_bytes() == dump_json(a.chunk_index())
    assert {p.name for p in (VECTORS / "chunks").iterdir()} == {v["file"] for v in _index()["vectors"]} | {"index.json"}
    assert any(v["expect"] == "ok" and v["plaintext"] == "" for v in _index()["vectors"])  # a 0-byte chunk


@pytest.mark.parametrize("vector", _index()["vectors"], ids=[v["file"] for v in _index()["vectors"]])
def test_chunk_vector(vector: dict[str, Any]) -> None:
    token = (VECTORS / "chunks" / vector["file"]).read_bytes()
    key = b64d(_index()["context"]["keys"][str(vector["att"])])
    where = {"att": vector["att"], "seq": vector["seq"], "chunks": vector["chunks"]}
    if vector["expect"] == "ok":
        assert open_chunk(token, key=key, **where) == b64d(vector["plaintext"])
    else:
        with pytest.raises(ChunkError) as info:
            open_chunk(token, key=key, **where)
        assert info.value.category == Category(vector["expect"])
