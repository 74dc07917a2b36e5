"""Attachment chunks on disk, kept exactly as they travel (sealed compact JWE), one file per chunk.

    ROOT/out/<message id>/<att>/<seq>.jwe            chunks this node sends
    ROOT/in/<sender>/<message id>/<att>/<seq>.jwe    chunks this node received

A chunk file appears under its final name only once it is complete (written to a temporary
name, then linked or renamed), so a file that exists is a chunk that is held.  The database
holds only metadata; a received attachment's content key is kept wrapped with the node's
storage key (AES key wrap, RFC 3394).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ctypes
import functools
import gc
import os
import queue
import re
import secrets
import shutil
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ParamSpec, TypeVar

from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from ..errors import EnvironmentError_

_CHUNK_NAME = re.compile(r"(0|[1-9][0-9]{0,9})\.jwe")
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
_FADV_DONTNEED: int | None = getattr(os, "POSIX_FADV_DONTNEED", None)


class BlobError(EnvironmentError_):
    """A chunk file or a wrapped key cannot be used (disk trouble, or damage at rest)."""

    category = "storage_error"


def wrap_content_key(storage_key: bytes, content_key: bytes) -> bytes:
    """The 40-byte AES key wrap (RFC 3394) of a 32-byte content key under the storage key."""
    return aes_key_wrap(storage_key, content_key)


def unwrap_content_key(storage_key: bytes, wrapped: bytes) -> bytes:
    try:
        return aes_key_unwrap(storage_key, wrapped)
    except InvalidUnwrap as e:
        raise BlobError("a wrapped content key does not unwrap under this node's storage key") from e


_chunks_seen = [0]


def release_chunk_garbage(every: int = 1) -> None:
    """Call once per chunk sealed (or failed to open); collects every ``every`` chunks.

    joserfc's JWE objects form reference cycles (message <-> recipient) that keep a chunk's
    plaintext and base64 forms alive until Python's collector runs — which it does by counts
    of objects, not of bytes, so a stream of 1 MiB chunks could pile up hundreds of MiB.
    ``protocol.chunks.open_chunk`` breaks the cycle of a chunk it opens; ``encrypt_compact``
    returns none of its objects, so sealing collects the young generations every few chunks,
    and so does the receiver after a chunk whose decryption failed.
    """
    _chunks_seen[0] += 1
    if _chunks_seen[0] % every == 0:
        gc.collect(1)


#: glibc ``mallopt`` parameters (malloc.h) and the values ``tune_allocator`` sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 4 * 1024 * 1024
_TRIM_THRESHOLD = 8 * 1024 * 1024
_allocator_tuned: list[bool] = []


def tune_allocator() -> bool:
    """Let malloc keep chunk-sized buffers for reuse in a process that moves chunks; True if done.

    Each chunk sent or received goes through a few buffers of 1 to 1.4 MiB (the body, the
    base64 segments and their decoding, the plaintext).  With glibc's default, adaptive
    thresholds such buffers are fresh ``mmap``s, or the free top of a thread's heap — some
    5 MiB after every chunk opened in a worker thread — is handed back to the kernel, so every
    chunk costs about a thousand page faults: a quarter of the receiver's CPU time.  Fixed
    thresholds (buffers under 4 MiB come from the heaps; up to 8 MiB free at the top of a heap
    is kept) cost a few MiB of resident memory per heap instead.  Process-wide and glibc only
    (elsewhere, or if ``mallopt`` refuses, nothing changes); called by the node's chunk endpoint
    (the sender's buffers fault far less: it decodes nothing), repeated calls do nothing.
    """
    if not _allocator_tuned:
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError):
            _allocator_tuned.append(False)
        else:
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            _allocator_tuned.append(bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD))
                                    and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)))
    return _allocator_tuned[0]


P = ParamSpec("P")
T = TypeVar("T")


class ChunkThreads:
    """A few threads of their own for the work on whole chunks (``asyncio.to_thread`` otherwise).

    glibc gives each thread that allocates its own heap (arena); spread over every thread of the
    default executor, chunk-sized buffers would keep a few MiB free in each of them (see
    ``tune_allocator``).  Two threads serve the two chunks one transfer has in flight.
    """

    def __init__(self, name: str, workers: int = 2) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)

    async def run(self, func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        call = functools.partial(contextvars.copy_context().run, func, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ChunkWriter:
    """Writes sealed chunks to their files on a thread, while the caller seals the next one.

    At most one chunk waits in the queue, so with the one being written and the one being
    sealed no more than three are in memory; ``close`` waits for the last write and re-raises
    a write failure.  Files are not fsynced one by one (the kernel writes them back meanwhile):
    the caller syncs the folder once, before it records the chunks anywhere.
    """

    def __init__(self, blobs: BlobStore, folder: Path) -> None:
        self._blobs = blobs
        self._folder = folder
        self._queue: queue.Queue[tuple[int, int, bytes] | None] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="comity-chunk-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._blobs.write_chunk(self._folder, *item, durable=False)
                except BaseException as e:  # handed to the caller by put/close
                    self._error = e

    def put(self, att: int, seq: int, token: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((att, seq, token))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


class BlobStore:
    """The chunk files under one root folder (the ``attachments_dir`` setting, default HOME/blobs)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def outgoing(self, message_id: str) -> Path:
        return self.root / "out" / message_id

    def incoming(self, sender: str, message_id: str) -> Path:
        return self.root / "in" / sender / message_id

    @staticmethod
    def chunk_path(folder: Path, att: int, seq: int) -> Path:
        return folder / str(att) / f"{seq}.jwe"

    def write_chunk(self, folder: Path, att: int, seq: int, token: bytes, *, durable: bool = True,
                    replace: bool = True, cached: bool = True) -> bool:
        """Store one chunk atomically; False if ``replace`` is off and the chunk is already held.

        ``durable`` fsyncs the file before it gets its final name, so that a chunk that can be
        seen is a chunk that is on disk (the receiver, which acknowledges each chunk; the sealing
        CLI syncs the whole folder once instead, before its outbox row commits).  ``cached=False``
        (with ``durable``) then lets the kernel drop the file's pages from the page cache: the
        receiver reads a chunk again only for an export, and a gigabyte written into an ever
        larger page cache costs several times the copy of one whose pages are reused.  Plain
        ``os`` calls: a few system calls per chunk, each of which gives up the GIL.
        """
        target = self.chunk_path(folder, att, seq)
        tmp = target.parent / f".{seq}.{secrets.token_hex(6)}.tmp"
        try:
            try:
                fd = os.open(tmp, _CREATE, 0o666)
            except FileNotFoundError:  # the attachment's first chunk
                target.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(tmp, _CREATE, 0o666)
            try:
                view = memoryview(token)
                while view:
                    view = view[os.write(fd, view):]
                if durable:
                    os.fsync(fd)
                    if not cached and _FADV_DONTNEED is not None:
                        os.posix_fadvise(fd, 0, 0, _FADV_DONTNEED)  # clean now: dropped, not written
            finally:
                os.close(fd)
            if replace:
                os.replace(tmp, target)
                return True
            try:
                os.link(tmp, target)
            except FileExistsError:
                return False
            return True
        except OSError as e:
            raise BlobError(f"cannot store chunk {att}/{seq}: {e.strerror or e}") from e
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def read_chunk(self, folder: Path, att: int, seq: int) -> bytes:
        try:
            return self.chunk_path(folder, att, seq).read_bytes()
        except OSError as e:
            raise BlobError(f"cannot read chunk {att}/{seq}: {e.strerror or e}") from e

    def iter_chunks(self, folder: Path, att: int, chunks: int) -> Iterator[bytes]:
        """The chunks of one attachment in order, one file at a time (missing ones end the stream)."""
        for seq in range(chunks):
            path = self.chunk_path(folder, att, seq)
            try:
                yield path.read_bytes()
            except FileNotFoundError:
                return
            except OSError as e:
                raise BlobError(f"cannot read chunk {att}/{seq}: {e.strerror or e}") from e

    def held(self, folder: Path, att: int) -> list[int]:
        """The sequence numbers of the chunks of ``att`` held under ``folder``, ascending."""
        try:
            names = os.listdir(folder / str(att))
        except FileNotFoundError:
            return []
        return sorted(int(m.group(1)) for m in map(_CHUNK_NAME.fullmatch, names) if m is not None)

    def discard_chunk(self, folder: Path, att: int, seq: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.chunk_path(folder, att, seq).unlink()

    def sync(self, folder: Path, atts: int) -> None:
        """Make every chunk under ``folder`` durable (before a receipt is signed for them)."""
        try:
            for att in range(atts):
                sub = folder / str(att)
                for seq in self.held(folder, att):
                    fd = os.open(self.chunk_path(folder, att, seq), os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                if sub.exists():
                    _fsync_dir(sub)
            _fsync_dir(folder)
        except OSError as e:
            raise BlobError(f"cannot sync {folder}: {e.strerror or e}") from e

    def remove(self, folder: Path) -> None:
        shutil.rmtree(folder, ignore_errors=True)

    def free_bytes(self) -> int:
        """Free space on the file system that holds (or will hold) the root."""
        path = self.root
        while not path.exists() and path != path.parent:
            path = path.parent
        return shutil.disk_usage(path).free
