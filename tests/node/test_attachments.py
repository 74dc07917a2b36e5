"""Issue 7 end to end: attachments between real node processes, on SQLite and on PostgreSQL.

Files are generated in ``tmp_path`` from ``os.urandom`` one MiB at a time and compared by
SHA-256, never held whole in memory.  Resumption is checked on the receiver's own log: every
chunk a PUT stores is logged ``chunk_stored`` and every PUT of a chunk already held
``chunk_held``, so a chunk sent twice would show.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from keys.keystore import Keystore
from node.services.attachment_files import export_attachment, pick_attachment, received_attachments
from node.storage.blobs import BlobStore
from node.storage.models import AuditEntry
from protocol.artifacts import LiveKeys
from protocol.chunks import CHUNK_SIZE, seal_chunk
from protocol.envelope import AttachmentEntry, EnvelopeContent, chunk_count, seal_envelope
from protocol.errors import Category
from protocol.jose import b64e
from protocol.receipts import verify_receipt
from protocol.rejections import verify_error
from tests.node.harness import NodeHandle, federation

pytestmark = pytest.mark.slow

MiB = CHUNK_SIZE


def make_file(path: Path, size: int) -> str:
    """A file of ``size`` random bytes, written a MiB at a time; its SHA-256."""
    digest = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            piece = os.urandom(min(left, MiB))
            digest.update(piece)
            f.write(piece)
            left -= len(piece)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while piece := f.read(MiB):
            digest.update(piece)
    return digest.hexdigest()



def send_files(node: NodeHandle, to: str, files: list[Path], **kw: str) -> str:
    args = ["send", "--home", str(node.home), "--to", to, "--kind", "note", "--subject", kw.get("subject", "files"),
            "--body", "see attached"]
    for f in files:
        args += ["--attach", str(f)]
    return node.comity(*args).stdout.strip()


def get_attachment(node: NodeHandle, mid: str, att: str, out: Path, *, force: bool = False,
                   check: bool = True) -> int:
    args = ["attachment", "get", "--home", str(node.home), mid, att, "--out", str(out)]
    return node.comity(*args, *(["--force"] if force else []), check=check).returncode


def log_events(node: NodeHandle, event: str, message_id: str) -> int:
    count = 0
    for line in node.log_path.read_text().splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if doc.get("event") == event and doc.get("message_id") == message_id:
            count += 1
    return count


def held_chunks(receiver: NodeHandle, sender: str, mid: str) -> int:
    folder = receiver.home / "blobs" / "in" / sender / mid
    return sum(1 for p in folder.glob("*/*.jwe")) if folder.exists() else 0




def inbox_ids(node: NodeHandle) -> list[str]:
    resp = node.api("GET", "/api/v1/inbox")
    assert resp.status_code == 200, resp.text
    return [m["id"] for m in resp.json()]


def wait_until(predicate, timeout: float, what: str, poll: float = 0.005) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll)


def assert_logs_verify(*nodes: NodeHandle) -> None:
    for node in nodes:
        proc = node.audit_verify()
        assert proc.returncode == 0, f"{node.authority}: {proc.stdout} {proc.stderr}"


def test_round_trips_refusals_and_limits(tmp_path: Path, backend: str) -> None:
    files = tmp_path / "files"
    files.mkdir()
    sizes = {"empty.bin": 0, "one.bin": 1, "exact.pdf": MiB, "plus.bin": MiB + 1}
    digests = {name: make_file(files / name, size) for name, size in sizes.items()}
    with federation(tmp_path, backend, ["GB-UKCA", "FR-DACG"]) as n:
        a, b = n["GB-UKCA"], n["FR-DACG"]
        check_round_trips(tmp_path, a, b, files, sizes, digests)
        check_refusals_on_arrival_and_commit(tmp_path, a, b)
        check_limits(a, b, files)
        assert_logs_verify(a, b)


def check_round_trips(tmp_path: Path, a: NodeHandle, b: NodeHandle, files: Path, sizes: dict[str, int],
                      digests: dict[str, str]) -> None:
    # two attachments with one name are refused before anything is sealed
    (tmp_path / "other").mkdir()
    make_file(tmp_path / "other" / "one.bin", 3)
    dup = a.comity("send", "--home", str(a.home), "--to", "FR-DACG", "--kind", "note", "--subject", "s",
                   "--body", "b", "--attach", str(files / "one.bin"), "--attach",
                   str(tmp_path / "other" / "one.bin"), check=False)
    assert dup.returncode == 3, dup.stderr
    assert "one.bin" in dup.stderr

    mid = send_files(a, "FR-DACG", [files / name for name in sizes])
    a.wait_for([mid])
    status = a.status_cli(mid)
    assert status["state"] == "delivered"
    assert status["attachments"] == {"count": 4, "chunks_total": 5, "chunks_acknowledged": 5}
    assert mid in [m["id"] for m in b.inbox()]  # the CLI listing, once
    # each attachment comes back bit for bit (the CLI by name and by index; the same code in process)
    out = tmp_path / "by-name.pdf"
    assert get_attachment(b, mid, "exact.pdf", out) == 0
    assert sha256_file(out) == digests["exact.pdf"]
    for i, name in enumerate(sizes):
        exported = export_in_process(b, mid, name if i % 2 else str(i), tmp_path / f"in-process-{i}")
        assert exported.stat().st_size == sizes[name] and sha256_file(exported) == digests[name]
    # --out is not overwritten without --force
    assert get_attachment(b, mid, "3", out, check=False) == 3
    assert sha256_file(out) == digests["exact.pdf"]
    assert get_attachment(b, mid, "3", out, force=True) == 0
    assert sha256_file(out) == digests["plus.bin"]
    assert get_attachment(b, mid, "nope.bin", tmp_path / "x", check=False) == 3
    # every download through the CLI is an access-log entry: who and which message, never the name
    db = b.database()
    try:
        with db.read() as session:
            leaves = session.scalars(select(AuditEntry.leaf).where(AuditEntry.log == "access",
                                                                   AuditEntry.event == "attachment_exported")).all()
    finally:
        db.dispose()
    assert len(leaves) == 2  # the two that succeeded
    assert all(mid.encode() in leaf and b"cli:" in leaf and b".pdf" not in leaf and b".bin" not in leaf
               for leaf in leaves)
    assert log_events(b, "chunk_stored", mid) == 5 and log_events(b, "chunk_held", mid) == 0
    # the receiver keeps sealed chunks only: no plaintext copy anywhere in its blobs
    stored = sorted((b.home / "blobs" / "in" / "GB-UKCA" / mid).glob("*/*.jwe"))
    assert len(stored) == 5 and all(p.read_bytes().count(b".") == 4 for p in stored)


def export_in_process(node: NodeHandle, mid: str, ref: str, out: Path) -> Path:
    db = node.database()
    try:
        with db.read() as session:
            row = pick_attachment(received_attachments(session, mid)[1], ref)
        export_attachment(BlobStore(node.home / "blobs"), Keystore.open(node.home, None).storage_key, row, out,
                          force=False)
    finally:
        db.dispose()
    return out


def _alive(node: NodeHandle) -> bool:
    try:
        return httpx.get(f"{node.url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def check_limits(a: NodeHandle, b: NodeHandle, files: Path) -> None:
    """Over the count or the bytes: attachment_too_large (permanent); over the disk: insufficient_storage."""
    b.stop()
    b.start(extra_env={"COMITY_MAX_ATTACHMENTS": "2", "COMITY_MAX_ATTACHMENT_BYTES": str(MiB),
                       "COMITY_DISK_RESERVE_BYTES": str(10**18)}, wait=False)
    # alive, though not ready for attachments: its disk is below the reserve
    wait_until(lambda: _alive(b), 30, "the receiver's listener", poll=0.1)
    ready = httpx.get(f"{b.url}/readyz", timeout=5)
    assert ready.status_code == 503 and ready.json()["reason"].startswith("storage:")
    a.make_due()
    three = send_files(a, "FR-DACG", [files / "empty.bin", files / "one.bin", files / "exact.pdf"])
    big = send_files(a, "FR-DACG", [files / "plus.bin"])
    later = send_files(a, "FR-DACG", [files / "one.bin"])
    a.wait_for([three, big], state="failed")
    assert a.status(three)["last_error"]["category"] == "attachment_too_large"
    assert a.status(big)["last_error"]["category"] == "attachment_too_large"
    wait_until(lambda: (a.status(later)["last_error"] or {}).get("category") == "insufficient_storage", 30,
               "insufficient_storage", poll=0.2)
    assert a.status(later)["state"] in ("queued", "sending")
    # with room again, the same message goes through
    b.stop()
    b.start()
    a.make_due()
    a.wait_for([later])
    assert later in inbox_ids(b)


def _manifest_entry(name: str, data_chunks: list[bytes], key: bytes, *, sha: str | None = None) -> AttachmentEntry:
    data = b"".join(data_chunks)
    return AttachmentEntry(name, "application/octet-stream", len(data), sha or hashlib.sha256(data).hexdigest(),
                           chunk_count(len(data)), b64e(key).decode())


def _sealed(data: bytes, key: bytes, att: int) -> list[bytes]:
    pieces = [data[i:i + MiB] for i in range(0, max(len(data), 1), MiB)] or [b""]
    return [seal_chunk(p, key=key, att=att, seq=i, last=i == len(pieces) - 1) for i, p in enumerate(pieces)]


def check_refusals_on_arrival_and_commit(tmp_path: Path, a: NodeHandle, b: NodeHandle) -> None:
    ks = Keystore.open(a.home, None)
    b_keyset = b.newest_keyset()
    now = int(time.time())
    rkey = b_keyset.current_encryption_key(now)
    k0, k1, k2 = os.urandom(32), os.urandom(32), os.urandom(32)
    data0, data1 = os.urandom(2 * MiB + 10), os.urandom(100)
    chunks0, chunks1 = _sealed(data0, k0, 0), _sealed(data1, k1, 1)

    def envelope(entries: tuple[AttachmentEntry, ...]) -> tuple[str, bytes, str]:
        mid = os.urandom(16).hex()
        sealed = seal_envelope(EnvelopeContent(iss="GB-UKCA", aud="FR-DACG", id=mid, iat=now, exp=now + 3600,
                                               kind="note", subject="crafted", body="x", attachments=entries),
                               signer=ks.signer, recipient_kid=rkey.kid, recipient_key=rkey.key)
        return mid, sealed.raw, sealed.sha256

    mid, raw, sha = envelope((_manifest_entry("a.bin", [data0], k0), _manifest_entry("b.txt", [data1], k1)))
    base = f"{b.url}/comity/v1/inbox/{mid}"

    def put(att: object, seq: object, body: bytes, message: str = mid) -> httpx.Response:
        return httpx.put(f"{b.url}/comity/v1/inbox/{message}/attachments/{att}/{seq}", content=body,
                         headers={"Content-Type": "application/jose"}, timeout=30)

    def refused(resp: httpx.Response, category: Category, *, signed: bool = True) -> None:
        assert resp.status_code == {Category.BAD_CHUNK: 400, Category.TOO_LARGE: 413,
                                    Category.UNKNOWN_MESSAGE: 404, Category.ATTACHMENTS_INCOMPLETE: 409,
                                    Category.MANIFEST_MISMATCH: 422}[category], resp.text
        doc = resp.json()
        assert doc["category"] == category.value
        if signed:
            err = verify_error(doc["error_jws"].encode(), keys=LiveKeys(b_keyset, int(time.time())),
                               peer="FR-DACG", sender="GB-UKCA", envelope_sha256=doc_sha)
            assert err.category == category

    doc_sha = sha
    first = httpx.post(f"{b.url}/comity/v1/inbox", content=raw, headers={"Content-Type": "application/jose"})
    assert first.status_code == 202, first.text
    assert first.json() == {"state": "pending", "received": {"0": [], "1": []}}
    assert httpx.post(f"{b.url}/comity/v1/inbox", content=raw).json() == first.json()
    assert mid not in inbox_ids(b)  # not visible while pending

    # tampered, moved, from another attachment, outside the manifest: refused, nothing stored
    head, ek, iv, ct, tag = chunks0[0].split(b".")
    tampered = b".".join([head, ek, iv, (b"A" if ct[:1] != b"A" else b"B") + ct[1:], tag])
    refused(put(0, 0, tampered), Category.BAD_CHUNK)
    refused(put(0, 1, chunks0[0]), Category.BAD_CHUNK)  # chunk 0 replayed at position 1
    refused(put(0, 2, chunks1[0]), Category.BAD_CHUNK)  # attachment 1's chunk at attachment 0
    relabelled = seal_chunk(data1, key=k1, att=0, seq=2, last=True)  # right place, other attachment's key
    refused(put(0, 2, relabelled), Category.BAD_CHUNK)
    refused(put(2, 0, chunks1[0]), Category.BAD_CHUNK)
    refused(put(0, 3, chunks0[2]), Category.BAD_CHUNK)
    refused(put("01", 0, chunks0[0]), Category.BAD_CHUNK)
    refused(put(1, 0, chunks0[0]), Category.TOO_LARGE)  # bigger than attachment 1's one chunk can be
    refused(put(0, 0, chunks0[0], message="0" * 32), Category.UNKNOWN_MESSAGE, signed=False)
    assert httpx.get(f"{b.url}/comity/v1/inbox/{'0' * 32}/attachments").status_code == 404
    refused(httpx.post(f"{base}/commit", content=b""), Category.ATTACHMENTS_INCOMPLETE)
    assert held_chunks(b, "GB-UKCA", mid) == 0

    # the right chunks are stored; a PUT is idempotent; the listing says what is held
    for seq, token in enumerate(chunks0[:2]):
        assert put(0, seq, token).status_code == 204
    assert put(0, 1, chunks0[1]).status_code == 204
    listing = httpx.get(f"{base}/attachments")
    assert listing.json() == {"state": "pending", "received": {"0": [0, 1], "1": []}}
    refused(httpx.post(f"{base}/commit", content=b""), Category.ATTACHMENTS_INCOMPLETE)
    assert put(0, 2, chunks0[2]).status_code == 204
    assert put(1, 0, chunks1[0]).status_code == 204
    assert log_events(b, "chunk_held", mid) == 1 and log_events(b, "chunk_stored", mid) == 4

    # commit: one receipt covering everything, the same one again when repeated
    commit = httpx.post(f"{base}/commit", content=b"", timeout=60)
    assert commit.status_code == 201, commit.text
    receipt = verify_receipt(commit.content, keys=LiveKeys(b_keyset, int(time.time())), sender="GB-UKCA",
                             receiver="FR-DACG", message_id=mid, envelope_sha256=sha)
    assert receipt.received_at >= now
    again = httpx.post(f"{base}/commit", content=b"")
    assert again.status_code == 200 and again.headers["comity-duplicate"] == "true"
    assert again.content == commit.content
    repost = httpx.post(f"{b.url}/comity/v1/inbox", content=raw)
    assert repost.status_code == 200 and repost.content == commit.content
    refused(put(0, 0, chunks0[0]), Category.UNKNOWN_MESSAGE, signed=False)  # no longer pending
    assert mid in inbox_ids(b)
    out = export_in_process(b, mid, "a.bin", tmp_path / "a.bin")
    assert sha256_file(out) == hashlib.sha256(data0).hexdigest()

    # a manifest whose SHA-256 does not match what arrives fails the commit with manifest_mismatch
    chunks2 = _sealed(data1, k2, 0)
    mid2, raw2, sha2 = envelope((_manifest_entry("c.bin", [data1], k2, sha="ab" * 32),))
    doc_sha = sha2
    assert httpx.post(f"{b.url}/comity/v1/inbox", content=raw2).status_code == 202
    assert put(0, 0, chunks2[0], message=mid2).status_code == 204
    refused(httpx.post(f"{b.url}/comity/v1/inbox/{mid2}/commit", content=b""), Category.MANIFEST_MISMATCH)
    assert mid2 not in inbox_ids(b)


def test_fifty_megabytes_resume_after_kill_9_of_either_side(tmp_path: Path, backend: str) -> None:
    size = 50 * MiB + 12345
    src = tmp_path / "disk-image.raw"
    digest = make_file(src, size)
    total = chunk_count(size)
    slow = {"COMITY_TESTING": "1", "COMITY_CHUNK_DELAY": "0.04"}  # the receiver answers each PUT 40 ms late
    with federation(tmp_path, backend, ["GB-UKCA", "FR-DACG"], start=False) as n:
        a, b = n["GB-UKCA"], n["FR-DACG"]
        a.start(wait=False)
        b.start(extra_env=slow)
        a.wait_ready()
        mid = send_files(a, "FR-DACG", [src], subject="image")
        # the receiver dies mid-way (kill -9) and stays down for a while: the peer is down
        wait_until(lambda: held_chunks(b, "GB-UKCA", mid) >= 8, 60, "8 chunks at the receiver")
        b.kill()
        held_at_kill = held_chunks(b, "GB-UKCA", mid)
        assert held_at_kill < total
        wait_until(lambda: (a.status(mid)["last_error"] or {}).get("category") == "unreachable", 30,
                   "an unreachable attempt", poll=0.1)
        progress = a.status(mid)["attachments"]
        assert progress["chunks_total"] == total and 0 < progress["chunks_acknowledged"] < total
        assert mid not in [m["id"] for m in b.inbox()]  # the CLI reads the database: b is down
        # back up: the transfer goes on from what the receiver holds; then the sender dies (kill -9)
        b.start(extra_env=slow)
        a.make_due()  # (a runs: its lease, if it claimed the message again already, stands)
        wait_until(lambda: held_chunks(b, "GB-UKCA", mid) >= held_at_kill + 10, 60, "10 more chunks")
        a.kill()
        assert held_chunks(b, "GB-UKCA", mid) < total
        a.make_due(dead_leases=True)  # the killed process's lease (before a new process can hold one)
        a.start()
        a.wait_for([mid], timeout=120)
        doc = a.status(mid)
        assert doc["attachments"] == {"count": 1, "chunks_total": total, "chunks_acknowledged": total}
        # nothing held was sent again: no PUT found its chunk already stored
        assert log_events(b, "chunk_held", mid) == 0
        assert log_events(b, "chunk_stored", mid) <= total
        assert held_chunks(b, "GB-UKCA", mid) == total
        out = tmp_path / "received.raw"
        assert get_attachment(b, mid, "0", out) == 0
        assert out.stat().st_size == size and sha256_file(out) == digest
        assert_logs_verify(a, b)
