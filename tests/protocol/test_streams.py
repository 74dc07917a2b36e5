"""Streaming attachments: sizes at the chunk edges, order and tamper refusals, constant memory."""

from __future__ import annotations

import gc
import hashlib
import io
import itertools
import tracemalloc
from collections.abc import Callable, Iterator

import pytest

from protocol.chunks import CHUNK_MAX_BYTES, CHUNK_SIZE, open_chunk, read_chunk_header, seal_chunk
from protocol.envelope import chunk_count
from protocol.errors import Category, ChunkError
from protocol.streams import (
    RunningDigest,
    StreamDigest,
    chunk_plaintext_length,
    chunk_token_bound,
    open_stream,
    seal_stream,
    sealed_size_bound,
    verify_digest,
)
from tests import seeds

KEY = seeds.seed("streams/key/0")
OTHER_KEY = seeds.seed("streams/key/1")
SIZES = [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE]


def pattern(size: int) -> bytes:
    """Deterministic plaintext (not a repetition of one chunk, so that moved chunks would show)."""
    block = hashlib.sha256(b"streams").digest()
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(block + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


def sealed(data: bytes, *, att: int = 0, key: bytes = KEY) -> tuple[list[bytes], StreamDigest]:
    tokens: list[bytes] = []

    def emit(seq: int, token: bytes) -> None:
        assert seq == len(tokens)
        tokens.append(token)

    digest = seal_stream(io.BytesIO(data).read, key=key, att=att, emit=emit)
    return tokens, digest


def refused(category: Category, call: Callable[[], object]) -> ChunkError:
    with pytest.raises(ChunkError) as info:
        call()
    assert info.value.category == category, info.value
    return info.value


@pytest.mark.parametrize("size", SIZES)
def test_round_trip_at_the_chunk_edges(size: int) -> None:
    data = pattern(size)
    tokens, digest = sealed(data, att=2)
    assert digest == StreamDigest(size, hashlib.sha256(data).hexdigest(), chunk_count(size))
    assert len(tokens) == chunk_count(size)
    assert [read_chunk_header(t) for t in tokens] == [(2, i, i == len(tokens) - 1) for i in range(len(tokens))]
    for seq, token in enumerate(tokens):
        assert len(token) <= chunk_token_bound(chunk_plaintext_length(size, seq)) <= CHUNK_MAX_BYTES
    assert sum(len(t) for t in tokens) <= sealed_size_bound(size)
    out = io.BytesIO()
    opened = open_stream(tokens, key=KEY, att=2, chunks=len(tokens), emit=out.write)
    assert opened == digest
    assert out.getvalue() == data
    verify_digest(opened, size=size, sha256=hashlib.sha256(data).hexdigest())


def test_short_reads_are_joined_into_full_chunks() -> None:
    data = pattern(2 * CHUNK_SIZE + 10)
    source = io.BytesIO(data)

    def trickle(n: int) -> bytes:
        return source.read(min(n, 100_000))

    tokens: list[bytes] = []
    digest = seal_stream(trickle, key=KEY, att=0, emit=lambda _seq, t: tokens.append(t))
    assert digest.chunks == 3 and len(tokens) == 3
    assert open_stream(tokens, key=KEY, att=0, chunks=3).sha256 == hashlib.sha256(data).hexdigest()


def test_each_file_is_read_once() -> None:
    source = io.BytesIO(pattern(CHUNK_SIZE * 2))
    asked: list[int] = []

    def read(n: int) -> bytes:
        data = source.read(n)
        asked.append(len(data))
        return data

    sealed_stream = seal_stream(read, key=KEY, att=0, emit=lambda _s, _t: None)
    assert sum(asked) == CHUNK_SIZE * 2 and sealed_stream.size == CHUNK_SIZE * 2


def test_chunk_moved_to_another_position_is_refused() -> None:
    tokens, _ = sealed(pattern(3 * CHUNK_SIZE))
    refused(Category.BAD_CHUNK, lambda: open_stream([tokens[1], tokens[0], tokens[2]], key=KEY, att=0, chunks=3))


def test_chunk_from_another_attachment_is_refused() -> None:
    mine, _ = sealed(pattern(2 * CHUNK_SIZE), att=0)
    theirs, _ = sealed(pattern(2 * CHUNK_SIZE), att=1, key=OTHER_KEY)
    refused(Category.BAD_CHUNK, lambda: open_stream([mine[0], theirs[1]], key=KEY, att=0, chunks=2))
    # the same position and index, but another attachment's content key: it does not open
    relabelled, _ = sealed(pattern(2 * CHUNK_SIZE), att=0, key=OTHER_KEY)
    refused(Category.BAD_CHUNK, lambda: open_stream([mine[0], relabelled[1]], key=KEY, att=0, chunks=2))


def test_tampered_chunk_is_refused() -> None:
    tokens, _ = sealed(pattern(CHUNK_SIZE + 5))
    head, key, iv, ct, tag = tokens[1].split(b".")
    flipped = bytes([ct[0] ^ 1]) + ct[1:] if ct[:1] != b"A" else b"B" + ct[1:]
    bad = b".".join([head, key, iv, flipped, tag])
    refused(Category.BAD_CHUNK, lambda: open_stream([tokens[0], bad], key=KEY, att=0, chunks=2))


def test_missing_and_extra_chunks() -> None:
    tokens, _ = sealed(pattern(2 * CHUNK_SIZE + 1))
    refused(Category.ATTACHMENTS_INCOMPLETE, lambda: open_stream(tokens[:2], key=KEY, att=0, chunks=3))
    refused(Category.ATTACHMENTS_INCOMPLETE, lambda: open_stream([], key=KEY, att=0, chunks=1))
    extra = [*tokens, seal_chunk(b"x", key=KEY, att=0, seq=3, last=True)]
    refused(Category.BAD_CHUNK, lambda: open_stream(extra, key=KEY, att=0, chunks=3))
    # a last chunk cut short of the declared count is refused where it stands
    early_last = seal_chunk(b"", key=KEY, att=0, seq=1, last=True)
    refused(Category.BAD_CHUNK, lambda: open_stream([tokens[0], early_last], key=KEY, att=0, chunks=3))


def test_digest_mismatch_is_manifest_mismatch() -> None:
    data = pattern(10)
    _, digest = sealed(data)
    sha = hashlib.sha256(data).hexdigest()
    refused(Category.MANIFEST_MISMATCH, lambda: verify_digest(digest, size=11, sha256=sha))
    refused(Category.MANIFEST_MISMATCH, lambda: verify_digest(digest, size=10, sha256="0" * 64))
    verify_digest(digest, size=10, sha256=sha)


def test_running_digest_only_for_chunks_in_order() -> None:
    data = pattern(2 * CHUNK_SIZE + 3)
    tokens, digest = sealed(data)
    plain = [open_chunk(t, key=KEY, att=0, seq=i, chunks=3) for i, t in enumerate(tokens)]
    running = RunningDigest(3)
    for seq, p in enumerate(plain):
        assert running.result() is None
        running.feed(seq, p)
    assert running.result() == digest
    out_of_order = RunningDigest(3)
    for seq in (0, 2, 1):
        out_of_order.feed(seq, plain[seq])
    assert out_of_order.result() is None


def test_running_digest_holds_chunks_that_overtook_their_predecessor() -> None:
    """Every arrival order of four chunks gives the in-order digest when the early ones are held."""
    data = pattern(3 * CHUNK_SIZE + 5)
    tokens, digest = sealed(data)
    plain = [open_chunk(t, key=KEY, att=0, seq=i, chunks=4) for i, t in enumerate(tokens)]
    for order in itertools.permutations(range(4)):
        running = RunningDigest(4)
        for seq in order:
            if seq == running.expected:
                running.feed(seq, plain[seq])
            else:
                assert running.hold(seq, plain[seq]), (order, seq)
        assert running.held == 0 and running.result() == digest, order
    running = RunningDigest(4)
    assert running.hold(2, plain[2])
    assert not running.hold(2, plain[2])  # held already
    assert not running.hold(0, plain[0])  # its turn: fed, not held
    assert not running.hold(4, b"")  # past the last chunk
    running.feed(0, plain[0])
    assert not running.hold(0, plain[0])  # behind: taken already
    running.feed(3, plain[3])  # fed out of turn: the digest stops for good, held plaintexts go
    assert running.held == 0 and not running.hold(2, plain[2])
    running.feed(1, plain[1])
    assert running.result() is None


def test_chunk_lengths_and_bounds() -> None:
    assert chunk_plaintext_length(0, 0) == 0
    assert chunk_plaintext_length(CHUNK_SIZE + 1, 0) == CHUNK_SIZE
    assert chunk_plaintext_length(CHUNK_SIZE + 1, 1) == 1
    refused(Category.BAD_CHUNK, lambda: chunk_plaintext_length(CHUNK_SIZE, 1))
    refused(Category.BAD_CHUNK, lambda: chunk_plaintext_length(5, -1))
    assert chunk_token_bound(CHUNK_SIZE) == CHUNK_MAX_BYTES
    assert sealed_size_bound(0) == chunk_token_bound(0)
    assert sealed_size_bound(3 * CHUNK_SIZE) == 3 * CHUNK_MAX_BYTES


def test_streaming_holds_at_most_two_chunks() -> None:
    """Sealing 12 MiB and opening it again never holds more than a few chunks of memory."""
    total = 12 * CHUNK_SIZE
    block = pattern(CHUNK_SIZE)
    sent = [0]

    def read(n: int) -> bytes:
        n = min(n, total - sent[0])
        sent[0] += n
        return block[:n]

    kept: list[bytes] = []

    def emit(seq: int, token: bytes) -> None:
        if seq < 2:
            kept.append(token)
        gc.collect(1)  # the JOSE library's reference cycles; the node does the same (blobs.release_chunk_garbage)

    tracemalloc.start()
    try:
        digest = seal_stream(read, key=KEY, att=0, emit=emit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert digest.size == total and digest.chunks == 12
    # two plaintext chunks in flight, one chunk being sealed and the two kept: far below the 12 MiB streamed
    assert peak < 8 * CHUNK_SIZE, peak

    def lazily_sealed() -> Iterator[bytes]:
        for seq in range(12):
            yield seal_chunk(block, key=KEY, att=0, seq=seq, last=seq == 11)

    tracemalloc.start()
    try:
        opened = open_stream(lazily_sealed(), key=KEY, att=0, chunks=12, emit=lambda _p: gc.collect(1))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert opened.size == total
    assert peak < 12 * CHUNK_SIZE, peak
