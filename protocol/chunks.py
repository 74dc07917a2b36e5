"""Attachment chunks (SPEC §7): compact JWE, ``dir`` + ``A256GCM``, one per MiB of plaintext.

The protected header is exactly ``{alg, enc, typ, att, seq, last, crit}`` with ``crit``
``["att", "seq", "last"]``; it is the AEAD's additional data, so a chunk moved to another
position, or taken from another attachment (another content key), does not open.
"""

from __future__ import annotations

from joserfc import jwe
from joserfc.errors import JoseError
from joserfc.jwk import OctKey

from .errors import Category, ChunkError, ProtocolError
from .jose import (
    ALG_DIR,
    CHUNK_JWE_REGISTRY,
    ENC_A256GCM,
    check_algorithms,
    check_exact_header,
    decode_protected,
    oct_key,
)

CHUNK_TYP = "comity-chunk+jwe"
CHUNK_SIZE = 1024 * 1024
CHUNK_CRIT = ["att", "seq", "last"]
CHUNK_HEADER_NAMES = frozenset({"alg", "enc", "typ", "att", "seq", "last", "crit"})
#: The raw-bytes cap of one sealed chunk: a full chunk's base64url plus header, IV and tag.
CHUNK_MAX_BYTES = (CHUNK_SIZE * 4 + 2) // 3 + 1024


def _content_key(key: bytes) -> OctKey:
    if len(key) != 32:
        raise ChunkError(Category.BAD_CHUNK, "a content key is 32 bytes")
    return oct_key(key)


def seal_chunk(plaintext: bytes, *, key: bytes, att: int, seq: int, last: bool) -> bytes:
    """Encrypt one chunk of attachment ``att`` at position ``seq`` under its content key."""
    if len(plaintext) > CHUNK_SIZE:
        raise ChunkError(Category.TOO_LARGE, f"chunk plaintext of {len(plaintext)} bytes exceeds {CHUNK_SIZE}")
    if att < 0 or seq < 0:
        raise ChunkError(Category.BAD_CHUNK, "att and seq are non-negative")
    header = {"alg": ALG_DIR, "enc": ENC_A256GCM, "typ": CHUNK_TYP, "att": att, "seq": seq, "last": last,
              "crit": CHUNK_CRIT}
    try:
        token = jwe.encrypt_compact(header, plaintext, _content_key(key), registry=CHUNK_JWE_REGISTRY)
    except JoseError as e:
        raise ChunkError(Category.BAD_CHUNK, f"cannot encrypt chunk: {e}") from e
    return token.encode("ascii")


def read_chunk_header(token: bytes) -> tuple[int, int, bool]:
    """Check a chunk's form and header without decrypting; return ``(att, seq, last)``."""
    if len(token) > CHUNK_MAX_BYTES:
        raise ChunkError(Category.TOO_LARGE, f"chunk of {len(token)} bytes exceeds {CHUNK_MAX_BYTES}")
    try:
        # the five segments of split_compact, without copying the ciphertext segment out
        if token.count(b".") != 4:
            raise ProtocolError(Category.MALFORMED, "chunk is not a compact serialization of 5 parts")
        end = token.index(b".")
        if token[end + 1:end + 2] != b".":
            raise ChunkError(Category.BAD_HEADER, "a dir chunk has an empty encrypted-key segment")
        header = decode_protected(token[:end])
        check_algorithms(header, allowed_alg=ALG_DIR, allowed_enc=ENC_A256GCM)
        check_exact_header(header, typ=CHUNK_TYP, names=CHUNK_HEADER_NAMES)
    except ChunkError:
        raise
    except ProtocolError as e:
        raise ChunkError(e.category, e.detail) from e
    att, seq, last = header["att"], header["seq"], header["last"]
    if header["crit"] != CHUNK_CRIT:
        raise ChunkError(Category.BAD_HEADER, 'crit is not exactly ["att", "seq", "last"]')
    for name, value in (("att", att), ("seq", seq)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ChunkError(Category.BAD_HEADER, f"{name} is not a non-negative integer")
    if not isinstance(last, bool):
        raise ChunkError(Category.BAD_HEADER, "last is not a boolean")
    return att, seq, last


def open_chunk(token: bytes, *, key: bytes, att: int, seq: int, chunks: int) -> bytes:
    """Decrypt a chunk expected at ``(att, seq)`` of an attachment of ``chunks`` chunks."""
    h_att, h_seq, h_last = read_chunk_header(token)
    if not 0 <= seq < chunks:
        raise ChunkError(Category.BAD_CHUNK, f"chunk {seq} is beyond an attachment of {chunks} chunks")
    if (h_att, h_seq) != (att, seq):
        raise ChunkError(Category.BAD_CHUNK, f"chunk says att {h_att} seq {h_seq}, expected {att}/{seq}")
    if h_last != (seq == chunks - 1):
        raise ChunkError(Category.BAD_CHUNK, f"chunk {seq} of {chunks} has last={h_last}")
    try:
        opened = jwe.decrypt_compact(token, _content_key(key), registry=CHUNK_JWE_REGISTRY)
    except (JoseError, ValueError) as e:
        raise ChunkError(Category.BAD_CHUNK, f"chunk {att}/{seq} does not decrypt") from e
    plaintext = opened.plaintext
    # joserfc's message and its recipient refer to each other; the cycle would keep the chunk's
    # decoded segments (some 3.5 MiB) alive until a garbage collection: break it, and they go now
    opened.recipient = None
    del opened
    if plaintext is None or len(plaintext) > CHUNK_SIZE:
        raise ChunkError(Category.BAD_CHUNK, "chunk plaintext missing or over the chunk size")
    if not h_last and len(plaintext) != CHUNK_SIZE:
        raise ChunkError(Category.BAD_CHUNK, "only the last chunk may be shorter than the chunk size")
    return plaintext
