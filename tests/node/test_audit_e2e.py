"""Issue 6 end to end, with real node processes on SQLite and PostgreSQL: no content in any log
entry of a busy node, exports that verify (the CLI and the standalone tool agree), a rewritten log
caught by the peer that witnesses it, and a restore from backup that loses nothing."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.engine import make_url

from keys.keystore import Keystore
from node.storage.models import AuditEntry, OutboxMessage, PeerLog
from tests.conftest import _admin_engine
from tests.node.audit_world import Side
from tests.node.harness import NodeHandle, federation
from tests.node.test_audit_verify import rewrite

pytestmark = pytest.mark.slow

TOOL = Path(__file__).resolve().parents[2] / "tools" / "verify_bundle.py"



def wait_until(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"not {what} after {timeout}s")


def peers_of(node: NodeHandle) -> dict[str, dict[str, Any]]:
    listing = json.loads(node.comity("peer", "list", "--home", str(node.home), "--json").stdout)
    return {p["authority"]: p for p in listing}


def leaves(node: NodeHandle) -> list[bytes]:
    db = node.database()
    try:
        with db.read() as s:
            return [bytes(x) for x in s.scalars(select(AuditEntry.leaf))]
    finally:
        db.dispose()


def verify_file(node: NodeHandle, path: Path, fingerprint: str) -> dict[str, Any]:
    """`comity audit verify --bundle` and tools/verify_bundle.py: the same verdict."""
    cli = node.comity("audit", "verify", "--bundle", str(path), "--fingerprint", fingerprint, "--json", check=False)
    spec = importlib.util.spec_from_file_location("verify_bundle_e2e", TOOL)
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    standalone = tool.verify_file(path.read_bytes(), fingerprint)
    assert json.loads(cli.stdout) == standalone
    return dict(standalone)


def receipt_sizes(node: NodeHandle) -> list[int]:
    """The tree sizes signed in the receipts ``node`` holds."""
    db = node.database()
    try:
        with db.read() as s:
            return [int(x) for x in s.scalars(select(OutboxMessage.receipt_tree_size)
                                               .where(OutboxMessage.receipt_tree_size.is_not(None)))]
    finally:
        db.dispose()


def allow_check(node: NodeHandle) -> None:
    db = node.database()
    try:
        with db.write() as s:
            s.execute(update(PeerLog).values(checked_at=0))
    finally:
        db.dispose()


def test_a_busy_node_logs_no_content_and_its_exports_verify(tmp_path: Path, backend: str) -> None:
    with federation(tmp_path, backend, ["GB-UKCA", "FR-DACG"]) as n:
        a, b = n["GB-UKCA"], n["FR-DACG"]
        secrets = [(f"Subject-Marker-{i}-Qx", f"Body text marker {i} with a name, Jane Roe-{i}") for i in range(12)]
        ids = [a.send("FR-DACG", subject=s, body=body, kind="consultation") for s, body in secrets]
        back = [b.send("GB-UKCA", subject=f"Reply-Marker-{i}", body=f"Reply body {i}") for i in range(3)]
        a.wait_for(ids)
        b.wait_for(back)
        assert b.api("GET", "/api/v1/inbox").status_code == 200
        for mid in ids[:4]:
            assert b.api("GET", f"/api/v1/inbox/{mid}").json()["subject"].startswith("Subject-Marker-")
        assert a.api("GET", f"/api/v1/messages/{ids[0]}").status_code == 200
        b.inbox()
        evidence = tmp_path / "received.evidence.json"
        b.comity("evidence", "export", "--home", str(b.home), ids[0], "--out", str(evidence))
        bundle = tmp_path / "a.bundle.json"
        wait_until(lambda: peers_of(a)["FR-DACG"]["log_status"] == "ok", "witnessed")
        a.stop()
        b.stop()
        a.comity("evidence", "export", "--home", str(a.home), ids[1], "--out", str(tmp_path / "sent.evidence.json"))
        a.comity("audit", "export", "--home", str(a.home), "--out", str(bundle))
        b.comity("audit", "export", "--home", str(b.home), "--log", "access", "--out", str(tmp_path / "b.access.json"))
        for node in (a, b):
            proc = node.audit_verify()
            assert proc.returncode == 0 and all(r["ok"] and r["held_checked"] == 1 for r in json.loads(proc.stdout))
            everything = b"\n".join(leaves(node))
            for subject, body in secrets + [(f"Reply-Marker-{i}", f"Reply body {i}") for i in range(3)]:
                assert subject.encode() not in everything and body.encode() not in everything
            assert node.token.encode() not in everything
        access = [json.loads(x) for x in leaves(b) if b'"log":"access"' in x]
        reads = [e for e in access if e["event"] == "content_read"]
        assert {e["actor"] for e in reads} >= {"token:" + hashlib.sha256(b.token.encode()).hexdigest()[:8]}
        assert any(e["route"] == "cli:inbox" for e in reads)
        assert set(ids) <= {i for e in reads for i in e["ids"]}
        assert any(e["event"] == "content_exported" and e["ids"] == [ids[0]] for e in access)
        assert any(e["event"] == "token_used" for e in access)
        for path, node in ((evidence, b), (tmp_path / "sent.evidence.json", a), (bundle, a),
                           (tmp_path / "b.access.json", b)):
            result = verify_file(node, path, node.fingerprint())
            assert result["ok"] and result["fingerprint"] == node.fingerprint(), result


def test_a_rewritten_log_is_caught_by_the_peer_that_witnesses_it(tmp_path: Path, backend: str) -> None:
    with federation(tmp_path, backend, ["GB-UKCA", "FR-DACG"]) as n:
        a, b = n["GB-UKCA"], n["FR-DACG"]
        a.wait_for([a.send("FR-DACG") for _ in range(3)])
        # A must hold B's newest commitment before B is rewritten. Were A still holding an older one (the
        # receipts' sizes here are 3, 4, 5, in any order), its next check could be 4 -> 5: a proof made of
        # leaf 4 alone, untouched by the rewrite, which passes and spends the once-a-minute check that
        # allow_check grants below, so the commitment that does expose the rewrite would wait 60 s.
        # (allow_check while waiting: a 3 -> 4 check just made would hold 5 back for a minute too)
        newest = max(receipt_sizes(a))

        def witnessed() -> bool:
            allow_check(a)
            return bool(peers_of(a)["FR-DACG"]["log_tree_size"] == newest)
        wait_until(witnessed, f"witnessed up to size {newest}")
        b.stop()
        side = Side("FR-DACG", b.home, Keystore.open(b.home, None), b.database())
        # entry 1 (A pinned) lies inside every commitment A holds; every hash, column and head after it is
        # recomputed and re-signed with B's own key
        rewrite(side, "exchange", index=1)
        side.db.dispose()
        refused = b.comity("serve", "--home", str(b.home), "--insecure-http", "--port", str(b.port), check=False)
        assert refused.returncode == 4 and "comity db restored" in refused.stderr  # B's heads file catches it
        (b.home / "heads" / "exchange.jws").unlink()  # the operator hides that too
        b.start()
        allow_check(a)
        a.wait_for([a.send("FR-DACG")])
        wait_until(lambda: peers_of(a)["FR-DACG"]["log_status"] == "inconsistent", "caught", timeout=30)
        assert any(json.loads(line).get("event") == "peer_log_inconsistent" and json.loads(line)["level"] == "error"
                   for line in a.log_path.read_text().splitlines() if line.startswith("{"))
        assert any(b'"event":"peer_log_inconsistent"' in x for x in leaves(a))
        a.stop()
        bundle = tmp_path / "a.bundle.json"
        a.comity("audit", "export", "--home", str(a.home), "--out", str(bundle))
        result = verify_file(a, bundle, a.fingerprint())
        assert result["ok"] and [f["peer"] for f in result["peer_log_failures"]] == ["FR-DACG"]


def _copy_database(src: str, dst_name: str) -> str:
    engine = _admin_engine()
    try:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{dst_name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{dst_name}" TEMPLATE "{make_url(src).database}"'))
    finally:
        engine.dispose()
    return make_url(src).set(database=dst_name).render_as_string(hide_password=False)


def test_a_restore_from_backup_loses_nothing_its_peers_hold_receipts_for(tmp_path: Path, backend: str) -> None:
    with federation(tmp_path, backend, ["GB-UKCA", "FR-DACG"]) as n:
        a, b = n["GB-UKCA"], n["FR-DACG"]
        early = [a.send("FR-DACG", subject=f"early {i}") for i in range(4)]
        a.wait_for(early)
        b.stop()
        backup_home = tmp_path / "backup-home"
        shutil.copytree(b.home, backup_home)  # SQLite: the database is in the home
        backup_db = _copy_database(b.database_url, f"{make_url(b.database_url).database}_bak") \
            if b.database_url else None
        b.start()
        late = [a.send("FR-DACG", subject=f"late {i}") for i in range(4)]
        a.wait_for(late)
        wait_until(lambda: peers_of(a)["FR-DACG"]["log_tree_size"] is not None, "witnessed")
        b.stop()
        if backup_db is None:  # the whole home comes back: nothing in it can tell, the operator declares it
            shutil.rmtree(b.home)
            shutil.copytree(backup_home, b.home)
        else:  # only the database comes back: the heads file in the home is newer, and serve says so
            assert b.database_url is not None
            _copy_database(backup_db, make_url(b.database_url).database or "")
            refused = b.comity("serve", "--home", str(b.home), "--insecure-http", "--port", str(b.port), check=False)
            assert refused.returncode == 4 and "comity db restored" in refused.stderr
        declared = json.loads(b.comity("db", "restored", "--home", str(b.home), "--json").stdout)
        assert declared["redelivery_requested_from"] == ["GB-UKCA"]
        b.start()
        wait_until(lambda: {m["id"] for m in b.inbox()} >= set(early + late), "redelivered")
        a.wait_for(late)
        assert peers_of(a)["FR-DACG"]["log_status"] == "restored"
        assert len(b.inbox()) == len(early) + len(late)
        assert any(b'"event":"restored_from_backup"' in x for x in leaves(b))
        assert any(b'"event":"redelivery_requested"' in x for x in leaves(a))
        for node in (a, b):
            proc = node.audit_verify()
            assert proc.returncode == 0, proc.stdout
        if backup_db is not None:
            from tests.conftest import drop_pg_database

            drop_pg_database(backup_db)
