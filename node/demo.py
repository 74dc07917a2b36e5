"""``make demo``: a local federation of three authorities on 127.0.0.1, in plain-HTTP dev mode.

Creates (or reuses) ``./demo/<authority>`` homes, pins every node to the others, starts the
three nodes, sends a few sample messages, prints each node's URL and token, and stops all
three cleanly on Ctrl-C.  A rerun reuses the state.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

AUTHORITIES = [
    ("GB-UKCA", "United Kingdom Central Authority", 8701),
    ("FR-DACG", "France, Direction des affaires criminelles et des grâces", 8702),
    ("ZA-DOJCD", "South Africa, Department of Justice and Constitutional Development", 8703),
]
ROOT = Path(os.environ.get("COMITY_DEMO_DIR", "demo")).absolute()
SAMPLES = [
    ("GB-UKCA", "FR-DACG", "consultation", "Dual criminality: fraud by false representation",
     "Before we send a formal MLA request: would s.2 Fraud Act 2006 conduct meet dual criminality "
     "under art. 313-1 Code pénal? Informal consultation; no request exists yet."),
    ("FR-DACG", "ZA-DOJCD", "note", "Urgent contact point this weekend",
     "Our duty officer for urgent requests this weekend can be reached through the central authority line."),
    ("ZA-DOJCD", "GB-UKCA", "consultation", "Video-link hearing requirements",
     "Which requirements apply to a witness heard by video link under UNTOC art. 18(18)?"),
]


def comity(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node.cli.main", *args], capture_output=True, text=True,
                           check=check, env={**os.environ, "COMITY_LOG_FORMAT": "console"})


def ensure_homes() -> None:
    for authority, name, port in AUTHORITIES:
        home = ROOT / authority
        if (home / "keystore.json").exists() or (home / "admin.token").exists():
            continue
        home.parent.mkdir(parents=True, exist_ok=True)
        comity("init", "--home", str(home), "--authority", authority, "--name", name,
               "--endpoint", f"http://127.0.0.1:{port}/", "--insecure-no-passphrase")
        print(f"created {home}")
    for authority, _, _ in AUTHORITIES:
        home = ROOT / authority
        for other, _, _ in AUTHORITIES:
            if other == authority:
                continue
            card = ROOT / f"{other}.card.json"
            card.write_text(comity("card", "--home", str(ROOT / other)).stdout)
            fp = comity("fingerprint", "--home", str(ROOT / other)).stdout.strip()
            comity("peer", "add", "--home", str(home), "--card", str(card), "--fingerprint", fp)


def wait_ready(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the node on port {port} did not become ready; see {ROOT}/*.log")


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupt)  # stop the nodes on SIGTERM as on Ctrl-C
    print(f"Comity demo in {ROOT} — INSECURE plain-HTTP mode (--insecure-http), 127.0.0.1 only\n")
    ensure_homes()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for authority, _, port in AUTHORITIES:
            logf = (ROOT / f"{authority}.log").open("ab")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "node.cli.main", "serve", "--home", str(ROOT / authority), "--insecure-http",
                 "--port", str(port)], stdout=logf, stderr=logf, start_new_session=True,
                env={**os.environ, "COMITY_LOG_FORMAT": "json"}))
        deadline = time.monotonic() + 30
        for _, _, port in AUTHORITIES:
            wait_ready(port, deadline)
        tokens = {a: (ROOT / a / "admin.token").read_text().strip() for a, _, _ in AUTHORITIES}
        ports = {a: p for a, _, p in AUTHORITIES}
        sent = []
        for src, dst, kind, subject, body in SAMPLES:
            r = httpx.post(f"http://127.0.0.1:{ports[src]}/api/v1/messages",
                           headers={"Authorization": f"Bearer {tokens[src]}"},
                           json={"to": dst, "kind": kind, "subject": subject, "body": body}, timeout=10)
            r.raise_for_status()
            sent.append((src, dst, r.json()["id"]))
        time.sleep(1.5)
        print("Nodes (JSON API; a web interface comes with a later issue):")
        for authority, _, port in AUTHORITIES:
            print(f"  {authority:<9} http://127.0.0.1:{port}/   token: {tokens[authority]}")
        print("\nSample messages:")
        for src, dst, mid in sent:
            doc = httpx.get(f"http://127.0.0.1:{ports[src]}/api/v1/messages/{mid}",
                            headers={"Authorization": f"Bearer {tokens[src]}"}, timeout=10).json()
            print(f"  {src} -> {dst}  {mid}  {doc['state']}")
        gb = ports["GB-UKCA"]
        print("\nTry:")
        print(f"  curl -s -H 'Authorization: Bearer {tokens['GB-UKCA']}' http://127.0.0.1:{gb}/api/v1/inbox")
        auth = f"-H 'Authorization: Bearer {tokens['GB-UKCA']}'"
        print(f"  curl -s -X POST {auth} -H 'Content-Type: application/json' \\")
        print(f"       -d '{json.dumps({'to': 'FR-DACG', 'kind': 'note', 'subject': 'hello', 'body': 'hi'})}' "
              f"http://127.0.0.1:{gb}/api/v1/messages")
        print(f"  .venv/bin/comity status --home {ROOT}/GB-UKCA <id>")
        print(f"  .venv/bin/comity audit verify --home {ROOT}/FR-DACG")
        print("\nLogs in demo/*.log. Press Ctrl-C to stop all three nodes.")
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        print("a node stopped unexpectedly; see the logs", file=sys.stderr)
    except KeyboardInterrupt:
        print("\nstopping…")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        print("stopped")


if __name__ == "__main__":
    main()
