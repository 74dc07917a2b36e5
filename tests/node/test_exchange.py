"""Issue 4 end to end: real node processes on 127.0.0.1, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from keys.keystore import Keystore
from node.storage.models import AuditEntry, OutboxMessage, Peer
from protocol.artifacts import LiveKeys
from protocol.envelope import EnvelopeContent, reseal_envelope, seal_envelope
from protocol.errors import Category
from protocol.receipts import verify_receipt
from tests.node.harness import NodeHandle, federation

pytestmark = pytest.mark.slow



def outbox_row(node: NodeHandle, message_id: str) -> OutboxMessage:
    db = node.database()
    try:
        with db.read() as session:
            row = session.query(OutboxMessage).filter_by(message_id=message_id).one()
            session.expunge(row)
            return row
    finally:
        db.dispose()



def post_inbox(node: NodeHandle, body: bytes) -> httpx.Response:
    return httpx.post(f"{node.url}/comity/v1/inbox", content=body,
                      headers={"Content-Type": "application/jose"}, timeout=30)


def assert_logs_verify(*nodes: NodeHandle) -> None:
    for node in nodes:
        proc = node.audit_verify()
        assert proc.returncode == 0, f"{node.authority}: {proc.stdout} {proc.stderr}"
        reports = json.loads(proc.stdout)
        assert all(r["ok"] for r in reports), reports


def test_delivered_with_a_verified_receipt(tmp_path: Path, backend: str) -> None:
    with federation(tmp_path, backend, ["GB-UKCA", "FR-DACG"]) as n:
        a, b = n["GB-UKCA"], n["FR-DACG"]
        mid = a.send("FR-DACG", subject="Dual criminality", body="Is fraud by false representation covered?",
                     kind="consultation")
        a.wait_for([mid])
        doc = a.status_cli(mid)
        assert doc["state"] == "delivered" and doc["attempts"] == 1 and doc["last_error"] is None
        # the receipt verifies, independently, against B's keyset and what A sent
        row = outbox_row(a, mid)
        b_keyset = b.newest_keyset()
        receipt = verify_receipt(doc["receipt"]["jws"].encode(), keys=LiveKeys(b_keyset, int(time.time())),
                                 sender="GB-UKCA", receiver="FR-DACG", message_id=mid,
                                 envelope_sha256=row.envelope_sha256)
        assert receipt.leaf_index == doc["receipt"]["leaf_index"]
        inbox = b.inbox()
        assert [(m["id"], m["from"], m["kind"], m["subject"]) for m in inbox] == \
            [(mid, "GB-UKCA", "consultation", "Dual criminality")]
        assert set(inbox[0]) == {"id", "from", "kind", "subject", "received_at"}
        assert_logs_verify(a, b)


def test_peer_down_then_up_delivers_all_exactly_once(tmp_path: Path, backend: str) -> None:
    with federation(tmp_path, backend, ["GB-UKCA", "FR-DACG"]) as n:
        a, b = n["GB-UKCA"], n["FR-DACG"]
        b.stop()
        ids = [a.send("FR-DACG", subject=f"m{i}", body=f"body {i}") for i in range(50)]
        time.sleep(1.5)
        assert {a.status(i)["state"] for i in ids} <= {"queued", "sending"}
        health = {p["authority"]: p for p in json.loads(a.comity("peer", "list", "--home", str(a.home),
                                                                  "--json").stdout)}
        assert health["FR-DACG"]["backlog"] == 50
        assert health["FR-DACG"]["last_error"]["category"] == "unreachable"
        # the peer's backoff is per peer and capped at 5 minutes; make the retry due now rather than wait
        b.start()
        a.make_due()
        a.wait_for(ids, timeout=90)
        inbox = b.inbox()
        assert sorted(m["id"] for m in inbox) == sorted(ids)
        assert len(inbox) == 50
        assert_logs_verify(a, b)


def test_replay_duplicate_conflict_and_refusals(tmp_path: Path, backend: str) -> None:
    with federation(tmp_path, backend, ["GB-UKCA", "FR-DACG", "ZA-DOJCD"]) as n:
        a, b, c = n["GB-UKCA"], n["FR-DACG"], n["ZA-DOJCD"]
        mid = a.send("FR-DACG", subject="original")
        a.wait_for([mid])
        row = outbox_row(a, mid)
        stored = a.status(mid)["receipt"]["jws"]
        # a byte-identical replay gets the original receipt back, marked as a duplicate
        again = post_inbox(b, row.envelope)
        assert again.status_code == 200 and again.headers["comity-duplicate"] == "true"
        assert again.content.decode() == stored
        assert post_inbox(b, row.envelope).content == again.content
        db = b.database()
        try:  # replays are logged, but once per envelope per interval, not once per request
            with db.read() as session:
                dups = session.scalars(select(AuditEntry).where(AuditEntry.event == "duplicate")).all()
                assert [(d.envelope_sha256, d.peer, d.message_id) for d in dups] == \
                    [(row.envelope_sha256, "GB-UKCA", mid)]
        finally:
            db.dispose()
        # the same id with other bytes is a conflict
        key = b.newest_keyset().current_encryption_key(int(time.time()))
        other = reseal_envelope(row.inner_jws, iss="GB-UKCA", aud="FR-DACG", recipient_kid=key.kid,
                                recipient_key=key.key)
        conflict = post_inbox(b, other.raw)
        assert conflict.status_code == 409
        assert conflict.json()["category"] == Category.MSG_ID_CONFLICT.value
        assert conflict.json()["error_jws"]
        # tampered bytes
        raw = bytearray(row.envelope)
        raw[-10] = ord("A") if raw[-10] != ord("A") else ord("B")
        tampered = post_inbox(b, bytes(raw))
        assert tampered.status_code == 400 and tampered.json()["category"] == "decryption_failed"
        # an envelope for C posted to B: wrong recipient
        to_c = a.send("ZA-DOJCD", subject="for C")
        a.wait_for([to_c])
        wrong = post_inbox(b, outbox_row(a, to_c).envelope)
        assert wrong.status_code == 421 and wrong.json()["category"] == "wrong_recipient"
        # expired: sealed by A's own keys with times in the past
        ks = Keystore.open(a.home, None)
        old = int(time.time()) - 30 * 86400
        expired = seal_envelope(
            EnvelopeContent(iss="GB-UKCA", aud="FR-DACG", id=os.urandom(16).hex(), iat=old, exp=old + 3600,
                            kind="note", subject="late", body="late"),
            signer=ks.signer, recipient_kid=key.kid, recipient_key=key.key)
        late = post_inbox(b, expired.raw)
        assert late.status_code == 400 and late.json()["category"] == "expired"
        # every refusal is a problem document, never a 500 or a trace
        for r in (conflict, tampered, wrong, late):
            assert r.headers["content-type"].startswith("application/problem+json")
            assert "Traceback" not in r.text
        no_length = httpx.post(f"{b.url}/comity/v1/inbox", content=iter([b"x"]), timeout=10)
        assert no_length.status_code == 411
        assert_logs_verify(a, b, c)


def test_unknown_sender_is_refused(tmp_path: Path, backend: str) -> None:
    with federation(tmp_path, backend, ["GB-UKCA", "FR-DACG"], pin=False) as n:
        a, b = n["GB-UKCA"], n["FR-DACG"]
        a.pin(b)  # A knows B, B does not know A
        mid = a.send("FR-DACG")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and a.status(mid)["last_error"] is None:
            time.sleep(0.2)
        doc = a.status(mid)
        assert doc["state"] in ("queued", "sending")  # retryable: B may pin A later
        assert doc["last_error"]["category"] == "unknown_sender"
        assert b.inbox() == []


class _Unsigned4xx(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        body = json.dumps({"type": "about:blank", "title": "Forbidden", "status": 403, "category": "bad_signature",
                           "class": "permanent", "error_jws": None}).encode()
        self.send_response(403)
        self.send_header("Content-Type", "application/problem+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def unsigned_4xx_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Unsigned4xx)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()


def test_an_unsigned_4xx_does_not_fail_a_message(tmp_path: Path, backend: str, unsigned_4xx_server: str) -> None:
    with federation(tmp_path, backend, ["GB-UKCA", "FR-DACG"], start=False) as n:
        a = n["GB-UKCA"]
        db = a.database()
        try:
            with db.write() as session:  # a proxy on the path answers for B with a forged refusal
                session.get_one(Peer, "FR-DACG").endpoint = unsigned_4xx_server
        finally:
            db.dispose()
        a.start()
        mid = a.send("FR-DACG")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and a.status(mid)["last_error"] is None:
            time.sleep(0.2)
        doc = a.status(mid)
        assert doc["state"] in ("queued", "sending"), doc
        assert doc["last_error"]["category"] == "http_403"


def test_cli_send_while_the_node_is_busy_never_locks(tmp_path: Path, backend: str) -> None:
    with federation(tmp_path, backend, ["GB-UKCA", "FR-DACG"]) as n:
        a, b = n["GB-UKCA"], n["FR-DACG"]
        stop = threading.Event()
        api_ids: list[str] = []

        def blast() -> None:
            while not stop.is_set() and len(api_ids) < 200:
                api_ids.append(a.send("FR-DACG", subject="load"))

        threads = [threading.Thread(target=blast) for _ in range(4)]
        for t in threads:
            t.start()
        cli_ids = []
        try:
            for i in range(8):
                proc = a.comity("send", "--home", str(a.home), "--to", "FR-DACG", "--kind", "note",
                                "--subject", f"cli {i}", "--body", "from the command line", check=False)
                assert proc.returncode == 0, proc.stderr
                assert "locked" not in proc.stderr
                cli_ids.append(proc.stdout.strip())
        finally:
            stop.set()
            for t in threads:
                t.join()
        a.wait_for(cli_ids + api_ids, timeout=120)
        assert len({m["id"] for m in b.inbox()}) == len(cli_ids) + len(api_ids)
        assert_logs_verify(a, b)


def test_cli_send_works_with_the_node_stopped(tmp_path: Path, backend: str) -> None:
    with federation(tmp_path, backend, ["GB-UKCA", "FR-DACG"], start=False) as n:
        a, b = n["GB-UKCA"], n["FR-DACG"]
        body = tmp_path / "body.txt"
        body.write_text("Sent while the node was stopped.")
        proc = a.comity("send", "--home", str(a.home), "--to", "FR-DACG", "--kind", "note", "--subject", "offline",
                        "--body-file", str(body))
        mid = proc.stdout.strip()
        assert len(mid) == 32 and proc.stdout == mid + "\n"
        assert a.status_cli(mid)["state"] == "queued"
        b.start()
        a.start()
        a.wait_for([mid])
        unknown = a.comity("send", "--home", str(a.home), "--to", "XX-NOBODY", "--kind", "note", "--subject", "s",
                           "--body", "b", check=False)
        assert unknown.returncode == 3 and "XX-NOBODY" in unknown.stderr
