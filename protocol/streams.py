"""Attachments as streams (SPEC §7): seal and open a file chunk by chunk, in constant memory.

Pure: the caller passes in a ``read(n)`` function (an open file's ``read``, say) and an ``emit``
callback that stores or sends each sealed chunk; nothing here opens a file.  At most two chunks
of plaintext are held at once — the current one and the look-ahead that decides whether the
current one is ``last`` — and the size and plaintext SHA-256 are computed on the way, so a
file is read exactly once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .chunks import CHUNK_SIZE, open_chunk, seal_chunk
from .envelope import chunk_count
from .errors import Category, ChunkError

#: Room for the protected header, IV and tag segments and the dots around the ciphertext.
CHUNK_OVERHEAD = 1024


@dataclass(frozen=True)
class StreamDigest:
    """What streaming a whole attachment produced: plaintext size, SHA-256 (hex) and chunk count."""

    size: int
    sha256: str
    chunks: int


def chunk_plaintext_length(size: int, seq: int) -> int:
    """The plaintext length chunk ``seq`` of an attachment of ``size`` bytes must have (SPEC §7.1)."""
    if not 0 <= seq < chunk_count(size):
        raise ChunkError(Category.BAD_CHUNK, f"chunk {seq} is beyond an attachment of {size} bytes")
    return min(CHUNK_SIZE, size - seq * CHUNK_SIZE)


def chunk_token_bound(plaintext_length: int) -> int:
    """An upper bound on the compact JWE of a chunk with that much plaintext."""
    return -(-4 * plaintext_length // 3) + CHUNK_OVERHEAD


def sealed_size_bound(size: int) -> int:
    """An upper bound on the bytes all sealed chunks of a ``size``-byte attachment take."""
    full, rest = divmod(size, CHUNK_SIZE)
    return full * chunk_token_bound(CHUNK_SIZE) + (chunk_token_bound(rest) if rest or not full else 0)


def _read_full(read: Callable[[int], bytes], n: int) -> bytes:
    """``n`` bytes, or fewer only at the end of the stream (short reads of pipes are joined)."""
    data = read(n)
    if len(data) >= n or not data:
        return data
    parts = bytearray(data)
    while len(parts) < n:
        more = read(n - len(parts))
        if not more:
            break
        parts += more
    return bytes(parts)


def seal_stream(
    read: Callable[[int], bytes], *, key: bytes, att: int, emit: Callable[[int, bytes], None],
) -> StreamDigest:
    """Seal the plaintext ``read`` yields as chunks of attachment ``att``; ``emit(seq, token)`` each one.

    Returns the size, SHA-256 and chunk count the manifest entry needs.  A 0-byte stream is one
    empty chunk.  ``read(n)`` returns at most ``n`` bytes and ``b""`` at the end.
    """
    digest = hashlib.sha256()
    size, seq = 0, 0
    current = _read_full(read, CHUNK_SIZE)
    while True:
        upcoming = _read_full(read, CHUNK_SIZE) if len(current) == CHUNK_SIZE else b""
        last = not upcoming
        digest.update(current)
        size += len(current)
        emit(seq, seal_chunk(current, key=key, att=att, seq=seq, last=last))
        if last:
            return StreamDigest(size, digest.hexdigest(), seq + 1)
        current, seq = upcoming, seq + 1


def open_stream(
    tokens: Iterable[bytes], *, key: bytes, att: int, chunks: int, emit: Callable[[bytes], None] | None = None,
) -> StreamDigest:
    """Open the chunks of attachment ``att`` in order, each at its expected position (SPEC §7.2).

    Passes each chunk's plaintext to ``emit`` (if given) and returns the size and SHA-256 of the
    whole.  Fewer chunks than ``chunks`` is ``attachments_incomplete``; more is ``bad_chunk``.
    """
    digest = hashlib.sha256()
    size, seen = 0, 0
    for seq, token in enumerate(tokens):
        if seq >= chunks:
            raise ChunkError(Category.BAD_CHUNK, f"more than the {chunks} chunks declared")
        plaintext = open_chunk(token, key=key, att=att, seq=seq, chunks=chunks)
        digest.update(plaintext)
        size += len(plaintext)
        seen = seq + 1
        if emit is not None:
            emit(plaintext)
    if seen != chunks:
        raise ChunkError(Category.ATTACHMENTS_INCOMPLETE, f"{seen} of {chunks} chunks")
    return StreamDigest(size, digest.hexdigest(), seen)


def verify_digest(digest: StreamDigest, *, size: int, sha256: str) -> None:
    """Raise ``manifest_mismatch`` unless the streamed plaintext has the manifest entry's size and SHA-256."""
    if digest.size != size:
        raise ChunkError(Category.MANIFEST_MISMATCH, f"{digest.size} bytes received, the manifest says {size}")
    if digest.sha256 != sha256:
        raise ChunkError(Category.MANIFEST_MISMATCH, "the plaintext SHA-256 differs from the manifest's")


class RunningDigest:
    """Hashes an attachment's chunks as they arrive, in order.

    ``feed(seq, plaintext)`` takes the plaintext of a verified chunk just stored if it is the next
    one (``expected``); ``hold(seq, plaintext)`` keeps the plaintext of one that came ahead of it
    (its predecessor still in flight), hashed as soon as its turn comes — the caller bounds how
    many are held.  A chunk fed out of order stops the running digest for good (``result()`` then
    stays None and the caller streams the stored chunks instead).
    """

    def __init__(self, chunks: int) -> None:
        self.chunks = chunks
        self._next = 0
        self._size = 0
        self._hash = hashlib.sha256()
        self._broken = False
        self._ahead: dict[int, bytes] = {}

    @property
    def expected(self) -> int:
        """The sequence number the digest can take next."""
        return self._next

    @property
    def held(self) -> int:
        """How many chunks' plaintexts are held, waiting for their turn."""
        return len(self._ahead)

    def hold(self, seq: int, plaintext: bytes) -> bool:
        """Keep the plaintext of chunk ``seq``, ahead of ``expected``, until its turn; False if it cannot be."""
        if self._broken or not self._next < seq < self.chunks or seq in self._ahead:
            return False
        self._ahead[seq] = plaintext
        return True

    def feed(self, seq: int, plaintext: bytes) -> None:
        if self._broken or seq != self._next:
            self._broken = True
            self._ahead.clear()
            return
        self._take(plaintext)
        while (early := self._ahead.pop(self._next, None)) is not None:
            self._take(early)

    def _take(self, plaintext: bytes) -> None:
        self._hash.update(plaintext)
        self._size += len(plaintext)
        self._next += 1

    def result(self) -> StreamDigest | None:
        """The digest of every chunk, or None if they did not all arrive in order."""
        if self._broken or self._next != self.chunks:
            return None
        return StreamDigest(self._size, self._hash.hexdigest(), self.chunks)
