"""Issue 4, continued: TLS between peers, concurrent duplicates, refusal counters, the integrator lock."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from node.storage.models import OutboxMessage, RejectionCount
from tests.node.harness import Tls, federation
from tests.node.tls import make_loopback_pki

pytestmark = pytest.mark.slow



def test_peers_over_tls(tmp_path: Path, backend: str) -> None:
    ca, cert, key = make_loopback_pki(tmp_path / "pki")
    with federation(tmp_path, backend, ["GB-UKCA", "FR-DACG"], tls=Tls(ca, cert, key)) as n:
        a, b = n["GB-UKCA"], n["FR-DACG"]
        assert a.url.startswith("https://") and a.local_port != a.port
        mid = a.send("FR-DACG", subject="over TLS")
        a.wait_for([mid])
        assert [m["id"] for m in b.inbox()] == [mid]
        # the peer listener does not serve the local API, and plain HTTP is not spoken there
        peer_side = httpx.get(f"{a.url}/api/v1/inbox", verify=a.verify, timeout=5,
                              headers={"Authorization": f"Bearer {a.token}"})
        assert peer_side.status_code == 404
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{a.port}/healthz", timeout=5)


def test_serve_without_tls_settings_refuses_to_start(tmp_path: Path, backend: str) -> None:
    with federation(tmp_path, backend, ["FR-DACG"], pin=False, start=False) as n:
        b = n["FR-DACG"]
        proc = b.comity("serve", "--home", str(b.home), "--port", str(b.port), check=False, timeout=30)
        assert proc.returncode == 3 and "tls_cert" in proc.stderr and "Traceback" not in proc.stderr


def test_concurrent_identical_posts_get_one_receipt(tmp_path: Path, backend: str) -> None:
    with federation(tmp_path, backend, ["GB-UKCA", "FR-DACG"]) as n:
        a, b = n["GB-UKCA"], n["FR-DACG"]
        b.stop()
        mid = a.send("FR-DACG", subject="raced")
        a.stop()
        db = a.database()
        try:
            with db.read() as session:
                envelope = session.scalars(select(OutboxMessage.envelope).where(
                    OutboxMessage.message_id == mid)).one()
        finally:
            db.dispose()
        b.start()

        async def race() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=30) as client:
                return list(await asyncio.gather(*[
                    client.post(f"{b.url}/comity/v1/inbox", content=envelope,
                                headers={"Content-Type": "application/jose"}) for _ in range(8)]))

        responses = asyncio.run(race())
        assert sorted(r.status_code for r in responses).count(201) <= 1
        assert all(r.status_code in (200, 201) for r in responses), [(r.status_code, r.text) for r in responses]
        assert len({r.content for r in responses}) == 1  # one receipt, byte for byte
        assert [m["id"] for m in b.inbox()] == [mid]


def test_refusals_before_authentication_are_counted_not_logged(tmp_path: Path, backend: str) -> None:
    with federation(tmp_path, backend, ["FR-DACG"], pin=False) as n:
        b = n["FR-DACG"]
        for _ in range(5):
            r = httpx.post(f"{b.url}/comity/v1/inbox", content=b"not.a.jwe", timeout=10,
                           headers={"Content-Type": "application/jose"})
            assert r.status_code == 400 and r.json()["category"] == "malformed"
        garbage = os.urandom(64).hex().encode()
        r = httpx.post(f"{b.url}/comity/v1/inbox", content=garbage, timeout=10)
        assert r.status_code == 400
        db = b.database()
        try:
            with db.read() as session:
                counts = {(c.source, c.category): c.count for c in session.scalars(select(RejectionCount))}
        finally:
            db.dispose()
        assert counts == {("127.0.0.1", "malformed"): 6}
        verify = json.loads(b.audit_verify().stdout)
        exchange = next(r for r in verify if r["log"] == "exchange")
        assert exchange["ok"] and exchange["tree_size"] == 1  # only keyset_issued: refusals are not logged


def test_audit_integrate_refuses_while_the_node_runs(tmp_path: Path, backend: str) -> None:
    with federation(tmp_path, backend, ["FR-DACG"], pin=False) as n:
        b = n["FR-DACG"]
        busy = b.comity("audit", "integrate", "--home", str(b.home), check=False)
        assert busy.returncode == 4 and "integrat" in busy.stderr
        b.stop()
        assert b.comity("audit", "integrate", "--home", str(b.home), check=False).returncode == 0


def test_local_api_wants_the_token_and_health_answers(tmp_path: Path, backend: str) -> None:
    with federation(tmp_path, backend, ["FR-DACG"], pin=False) as n:
        b = n["FR-DACG"]
        assert httpx.get(f"{b.url}/healthz", timeout=5).json()["status"] == "ok"
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {b.token}"}):
            r = httpx.get(f"{b.local_url}/api/v1/inbox", headers=headers, timeout=5)
            assert r.status_code == 401 and r.json()["category"] == "unauthorized"
        bad = b.api("POST", "/api/v1/messages", json={"to": "not an id", "kind": "note", "subject": "s", "body": "b"})
        assert bad.status_code == 400 and bad.json()["category"] == "invalid_input"
        unknown = b.api("POST", "/api/v1/messages", json={"to": "XX-NOBODY", "kind": "note", "subject": "s",
                                                         "body": "b"})
        assert unknown.status_code == 404 and unknown.json()["category"] == "unknown_peer"
        assert b.api("GET", "/api/v1/messages/" + "0" * 32).status_code == 404


def test_plain_http_peers_only_in_insecure_mode(tmp_path: Path, backend: str) -> None:
    with federation(tmp_path, backend, ["GB-UKCA", "FR-DACG"], start=False) as n:
        a = n["GB-UKCA"]
        mid = a.comity("send", "--home", str(a.home), "--to", "FR-DACG", "--kind", "note", "--subject", "s",
                       "--body", "b").stdout.strip()
        # a worker without --insecure-http never sends to an http:// endpoint
        proc = subprocess.Popen([sys.executable, "-m", "node.cli.main", "worker", "--home", str(a.home)],
                                env=a.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # polled in the database, not through the CLI (a process per look): a refused attempt leaves
        # the message queued for about a second (the peer's backoff), then the worker tries again
        db = a.database()
        try:
            deadline = time.monotonic() + 20
            seen: tuple[str, str | None] = ("", None)
            while time.monotonic() < deadline and seen[1] is None:
                time.sleep(0.05)
                with db.read() as session:
                    row = session.execute(select(OutboxMessage.state, OutboxMessage.last_error_category)
                                          .where(OutboxMessage.message_id == mid)).one()
                seen = (row.state, row.last_error_category)
            assert seen == ("queued", "insecure_endpoint")
            doc = a.status_cli(mid)
            assert doc["state"] != "delivered" and doc["last_error"]["category"] == "insecure_endpoint"
        finally:
            db.dispose()
            proc.terminate()
            proc.wait(timeout=20)


def test_a_conversation_is_delivered_in_order(tmp_path: Path, backend: str) -> None:
    with federation(tmp_path, backend, ["GB-UKCA", "FR-DACG"]) as n:
        a, b = n["GB-UKCA"], n["FR-DACG"]
        b.stop()
        root = a.send("FR-DACG", subject="root", kind="consultation")
        replies = [a.send("FR-DACG", subject=f"reply {i}", kind="consultation", thread=root) for i in range(5)]
        others = [a.send("FR-DACG", subject=f"other {i}") for i in range(3)]
        b.start()
        a.make_due()  # instead of waiting out the peer's backoff
        a.wait_for([root, *replies, *others], timeout=60)
        received = [m["id"] for m in b.inbox()]
        thread = [m for m in received if m in (root, *replies)]
        assert thread == [root, *replies]
