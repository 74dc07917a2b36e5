"""Audit-log throughput: `comity audit verify` against an in-memory RFC 9162 root, and the receiver
with this issue's work (heads file, access log, witnessing) against a baseline, in one run.

Run: ``.venv/bin/python bench/audit_bench.py [--entries 1000000] [--messages 2000] [--skip-receiver]``
(not in CI).

1. Seeds ``--entries`` realistic exchange-log entries straight into a fresh SQLite database
   (``executemany``), with a signed head every 1,000 entries and the heads file in the home, then
   times the verification ``comity audit verify`` runs (leaf hashes, derived columns, the tree,
   every signed head, the heads file) — in-process and as the real command, which check a large
   SQLite log in one worker process per usable core, and in-process in one process alone — next to
   ``leaf_hash`` + ``root_from_leaf_hashes`` over the same leaves in memory; then the peer log
   endpoints' consistency and inclusion proofs over that log (the first request, then medians).
2. Posts ``--messages`` pre-sealed envelopes to a receiver (the real peer app and integrator,
   in-process over ASGI, 16 at a time) and counts receipts per second: without, then with, the
   heads-file recorder and the access-log settings record; and the sender's witness recording one
   receipt commitment per message (what a delivery adds).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from keys.keystore import Keystore
from keys.layout import read_card
from node.config import Settings
from node.services.headsfile import sync_heads_file
from node.storage.db import Database
from node.storage.migrate import upgrade_url
from protocol.heads import TreeHead, sign_head
from protocol.keychain import read_keyset
from protocol.merkle import CompactRange, leaf_hash, root_from_leaf_hashes
from protocol.strictjson import canonical

HEAD_EVERY = 1000
EVENTS = ("queued", "attempt", "delivered", "received")


def make_home(root: Path, authority: str, *, age: int = 60) -> Keystore:
    return Keystore.create(root / authority, authority=authority, name=f"{authority} authority",
                           endpoint=f"http://{authority.lower()}.example/", passphrase=None,
                           insecure_no_passphrase=True, now=int(time.time()) - age)


def seed_log(home: Path, ks: Keystore, n: int) -> list[bytes]:
    url = f"sqlite:///{home / 'comity.db'}"
    upgrade_url(url)
    t0, leaves, rows, heads = int(time.time()) - n, [], [], []
    cr = CompactRange()
    for i in range(n):
        event = EVENTS[i % 4]
        entry = {"v": 1, "log": "exchange", "event": event, "at": t0 + i, "message_id": os.urandom(16).hex(),
                 "peer": "FR-DACG", "envelope_sha256": hashlib.sha256(os.urandom(8)).hexdigest()}
        if event == "attempt":
            entry["attempt"] = 1
        elif event == "delivered":
            entry.update(receipt_sha256=hashlib.sha256(os.urandom(8)).hexdigest(), peer_leaf_index=i,
                         peer_tree_size=i + 1, peer_root=hashlib.sha256(os.urandom(8)).hexdigest(), attempt=1)
        else:
            entry["kind"] = "note"
        leaf = canonical(entry)
        h = leaf_hash(leaf)
        leaves.append(leaf)
        cr.append(h)
        rows.append(("exchange", i, leaf, h.hex(), event, entry["at"], entry["message_id"], "FR-DACG",
                     entry["envelope_sha256"]))
        if cr.size % HEAD_EVERY == 0 or cr.size == n:
            head = TreeHead(iss=ks.authority, log="exchange", tree_size=cr.size, root=cr.root().hex(), at=t0 + i)
            heads.append(("exchange", cr.size, head.root, head.at, sign_head(head, signer=ks.signer)))
    con = sqlite3.connect(home / "comity.db")
    with con:
        con.executemany("INSERT INTO audit_entries (log, leaf_index, leaf, leaf_hash, event, at, message_id, peer, "
                        "envelope_sha256) VALUES (?,?,?,?,?,?,?,?,?)", rows)
        con.executemany("INSERT INTO audit_heads (log, tree_size, root, at, head_jws) VALUES (?,?,?,?,?)", heads)
        con.execute("INSERT INTO audit_tree (log, tree_size, frontier, root) VALUES (?,?,?,?)",
                    ("exchange", cr.size, json.dumps(cr.to_json()), cr.root().hex()))
    con.close()
    db = Database(url)
    sync_heads_file(db, home)
    db.dispose()
    return leaves


def bench_verify(root: Path, n: int) -> dict[str, float]:
    ks = make_home(root / "verify", "GB-UKCA", age=n + 3600)  # entries are one second apart, up to now
    t = time.perf_counter()
    leaves = seed_log(ks.home, ks, n)
    seeded = time.perf_counter() - t
    from node.services.headsfile import read_held_head
    from node.services.verify import verify_log
    from node.services.verify_parallel import usable_cores

    chain = [read_keyset(d).keyset for d in ks.keyset_docs()]
    held = read_held_head(ks.home, "exchange")
    assert held is not None

    def verify(workers: int | None) -> tuple[float, str]:
        db = Database(f"sqlite:///{ks.home / 'comity.db'}")
        t = time.perf_counter()
        with db.read() as session:
            report = verify_log(session, "exchange", authority=ks.authority, chain=chain, held=[held],
                                workers=workers)
        seconds = time.perf_counter() - t
        db.dispose()
        assert report.ok and report.tree_size == n, report
        return seconds, report.root

    verify_s, verify_root = verify(None)  # as `comity audit verify` runs: one worker process per usable core
    one_s, one_root = verify(1)  # in this process alone
    t = time.perf_counter()
    root_hex = root_from_leaf_hashes([leaf_hash(x) for x in leaves]).hex()
    memory_s = time.perf_counter() - t
    assert root_hex == verify_root == one_root
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "node.cli.main", "audit", "verify", "--home", str(ks.home),
                           "--log", "exchange"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent, check=False)
    cli_s = time.perf_counter() - t
    assert proc.returncode == 0, proc.stderr
    return {**bench_proofs(ks, n),
            "entries": n, "seed_s": seeded, "verify_s": verify_s, "one_s": one_s, "memory_s": memory_s, "cli_s": cli_s,
            "verify_eps": n / verify_s, "one_eps": n / one_s, "memory_eps": n / memory_s, "cli_eps": n / cli_s,
            "cores": usable_cores()}


def bench_proofs(ks: Keystore, n: int, requests: int = 50) -> dict[str, float]:
    """The peer log endpoints over the seeded log (in-process ASGI): the first consistency request,
    which reads the tile roots, then the median of ``requests`` consistency and inclusion requests
    at random sizes and leaves."""
    import random
    import statistics

    from sqlalchemy import select

    from node.api.app import build_app
    from node.runtime import Node
    from node.storage.models import AuditEntry

    node = Node(Settings(home=ks.home), ks)
    app = build_app(node, peer=True, local=False)
    pick = random.Random(9)
    with node.db.read() as session:
        shas = [session.scalars(select(AuditEntry.envelope_sha256).where(
            AuditEntry.log == "exchange", AuditEntry.leaf_index == pick.randrange(n))).one() for _ in range(requests)]

    async def timed(client: httpx.AsyncClient, path: str) -> float:
        t = time.perf_counter()
        r = await client.get(path)
        assert r.status_code == 200, r.text
        return time.perf_counter() - t

    async def run() -> tuple[float, list[float], list[float]]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://p") as c:
            cold = await timed(c, f"/comity/v1/log/exchange/consistency?first={n // 2}&second={n}")
            cons = [await timed(c, f"/comity/v1/log/exchange/consistency?first={pick.randrange(1, n)}&second={n}")
                    for _ in range(requests)]
            inc = [await timed(c, f"/comity/v1/log/exchange/inclusion?envelope_sha256={sha}&tree_size={n}")
                   for sha in shas]
            return cold, cons, inc

    try:
        cold, cons, inc = asyncio.run(run())
    finally:
        node.close()  # its WAL checkpointer too, which otherwise writes into the home being removed
    return {"proof_cold_s": cold, "consistency_ms": statistics.median(cons) * 1000,
            "inclusion_ms": statistics.median(inc) * 1000}


async def _post_all(app: object, envelopes: list[bytes], concurrency: int = 16) -> float:
    queue = list(envelopes)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://b.example") as client:
        async def worker() -> None:
            while queue:
                body = queue.pop()
                r = await client.post("/comity/v1/inbox", content=body, headers={"Content-Type": "application/jose"})
                assert r.status_code == 201, r.text
        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - t


def bench_receiver(root: Path, messages: int) -> dict[str, float]:
    from node.api.app import build_app
    from node.cli.audit_cmds import open_audit
    from node.runtime import Node
    from node.services.sending import Draft, queue_message
    from node.services.trust import pin_peer_card

    a, b = make_home(root, "GB-UKCA"), make_home(root, "FR-DACG")
    a_db_url = f"sqlite:///{a.home / 'comity.db'}"
    upgrade_url(a_db_url)
    a_db = Database(a_db_url)
    now = int(time.time())
    pin_peer_card(a_db, read_card(b.home), b.fingerprint, own_authority=a.authority, now=now)
    with a_db.write() as s:
        rows = [queue_message(s, Draft(to=b.authority, kind="note", subject="s", body="x" * 2048), me=a.authority,
                              signer=a.signer, message_id=os.urandom(16).hex(), now=now, lifetime=86400,
                              max_bytes=1 << 20) for _ in range(messages)]
        envelopes = [bytes(r.envelope) for r in rows]
    a_db.dispose()
    template = root / "b-template"
    shutil.copytree(b.home, template)
    results: dict[str, float] = {}
    for label in ("baseline", "with_audit", "baseline_2", "with_audit_2"):
        home = root / f"b-{label}"
        shutil.copytree(template, home)
        url = f"sqlite:///{home / 'comity.db'}"
        upgrade_url(url)
        db = Database(url)
        pin_peer_card(db, read_card(a.home), a.fingerprint, own_authority=b.authority, now=now)
        db.dispose()
        node = Node(Settings(home=home), Keystore.open(home, None))
        recorder = open_audit(node) if label.startswith("with_audit") else None
        node.start_integrator()
        app = build_app(node, peer=True, local=False)
        seconds = asyncio.run(_post_all(app, envelopes))
        if recorder is not None:
            recorder.close()
            assert (home / "heads" / "exchange.jws").exists()
        node.close()
        results[label] = messages / seconds
    results["witness_observe_per_s"] = _bench_witness(root, messages)
    return results


def _bench_witness(root: Path, n: int) -> float:
    """A sender's cost per delivery: recording the receipt's commitment (checks are once a minute)."""
    from node.delivery.witness import PeerWitness

    url = f"sqlite:///{root / 'witness.db'}"
    upgrade_url(url)
    db = Database(url)
    witness = PeerWitness(db, clock=lambda: int(time.time()))

    async def run() -> float:
        t = time.perf_counter()
        for i in range(n):
            await witness.observe("FR-DACG", i + 1, hashlib.sha256(str(i).encode()).hexdigest(), b"x.y.z")
        return time.perf_counter() - t
    seconds = asyncio.run(run())
    db.dispose()
    return n / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--skip-receiver", action="store_true", help="Run only the audit-verify part.")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="comity-audit-bench-") as tmp:
        v = bench_verify(Path(tmp), args.entries)
        print(f"## audit verify, {v['entries']:,} exchange-log entries (seeded in {v['seed_s']:.1f} s)\n")
        print("| what | seconds | entries/s | ratio to in-memory root |")
        print("|---|---|---|---|")
        print(f"| in-memory RFC 9162 root (leaf hashes + tree) | {v['memory_s']:.2f} | {v['memory_eps']:,.0f} | 1.00 |")
        print(f"| verify_log (hash, tree, derived columns, heads, heads file), {v['cores']} usable cores | "
              f"{v['verify_s']:.2f} | {v['verify_eps']:,.0f} | {v['verify_eps'] / v['memory_eps']:.2f} |")
        print(f"| verify_log in one process (`workers=1`) | {v['one_s']:.2f} | {v['one_eps']:,.0f} | "
              f"{v['one_eps'] / v['memory_eps']:.2f} |")
        print(f"| `comity audit verify --log exchange` (process, incl. start-up) | {v['cli_s']:.2f} | "
              f"{v['cli_eps']:,.0f} | {v['cli_eps'] / v['memory_eps']:.2f} |")
        print(f"\n## peer log endpoints over the same {v['entries']:,} entries (in-process ASGI)\n")
        print("| request | time |\n|---|---|")
        print(f"| first consistency proof (reads the tile roots once) | {v['proof_cold_s']:.2f} s |")
        print(f"| consistency proof, median of 50 | {v['consistency_ms']:.1f} ms |")
        print(f"| inclusion proof by envelope hash, median of 50 | {v['inclusion_ms']:.1f} ms |")
        if args.skip_receiver:
            return
        r = bench_receiver(Path(tmp), args.messages)
        base = (r["baseline"] + r["baseline_2"]) / 2
        audit = (r["with_audit"] + r["with_audit_2"]) / 2
        print(f"\n## receiver, {args.messages:,} envelopes of 2 KiB, 16 concurrent (in-process ASGI, SQLite)\n")
        print("| configuration | receipts/s (two runs) | ratio |")
        print("|---|---|---|")
        print(f"| baseline (no heads file) | {r['baseline']:,.0f} / {r['baseline_2']:,.0f} | 1.00 |")
        print(f"| with this issue's work | {r['with_audit']:,.0f} / {r['with_audit_2']:,.0f} | {audit / base:.2f} |")
        print(f"\nsender witness, recording one receipt commitment: {r['witness_observe_per_s']:,.0f} per second")


if __name__ == "__main__":
    main()
