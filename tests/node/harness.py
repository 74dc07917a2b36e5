"""Real node processes on 127.0.0.1 for integration tests.

Each node is a home made by ``comity init`` and a ``comity serve --insecure-http`` process on
one free port.  On PostgreSQL each node gets its own fresh database (dropped afterwards).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from node.storage.db import Database
from node.storage.models import OutboxMessage, Peer
from protocol.card import parse_card
from protocol.keychain import read_keyset
from protocol.keysets import Keyset
from tests.conftest import create_pg_database, drop_pg_database

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Tls:
    """A CA, and a certificate and key for 127.0.0.1 signed by it (see tests/node/tls.py)."""

    ca: Path
    cert: Path
    key: Path


class NodeHandle:
    def __init__(self, authority: str, home: Path, port: int, database_url: str | None,
                 tls: Tls | None = None) -> None:
        self.authority = authority
        self.home = home
        self.port = port
        self.database_url = database_url
        self.tls = tls
        self.local_port = free_port() if tls else port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = home.parent / f"{authority}.log"
        self._fingerprint: str | None = None

    @property
    def url(self) -> str:
        """The peer listener."""
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def local_url(self) -> str:
        """The local listener (the same port in --insecure-http mode)."""
        return f"http://127.0.0.1:{self.local_port}"

    @property
    def verify(self) -> ssl.SSLContext | bool:
        return ssl.create_default_context(cafile=str(self.tls.ca)) if self.tls else True

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("COMITY_")}
        env["COMITY_LOG_FORMAT"] = "json"
        env["PYTHONPATH"] = str(REPO)
        if self.database_url:
            env["COMITY_DATABASE_URL"] = self.database_url
        env.update(extra or {})
        return env

    def comity(self, *args: str, check: bool = True, extra_env: dict[str, str] | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "node.cli.main", *args], capture_output=True, text=True,
                              env=self.env(extra_env), timeout=timeout, cwd=REPO)
        if check and proc.returncode != 0:
            raise AssertionError(f"comity {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def init(self) -> None:
        self.comity("init", "--home", str(self.home), "--authority", self.authority,
                    "--name", f"{self.authority} central authority", "--endpoint", f"{self.url}/",
                    "--insecure-no-passphrase")
        if self.tls:
            (self.home / "comity.toml").write_text(
                f'tls_cert = "{self.tls.cert}"\ntls_key = "{self.tls.key}"\ntls_ca = "{self.tls.ca}"\n'
                f"local_port = {self.local_port}\n")

    @property
    def token(self) -> str:
        return (self.home / "admin.token").read_text().strip()

    def card(self) -> Path:
        """The node's card file (refreshed with ``fresh=True`` after a key rotation)."""
        path = self.home.parent / f"{self.authority}.card.json"
        if not path.exists():
            path.write_text(self.comity("card", "--home", str(self.home)).stdout)
        return path

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = self.comity("fingerprint", "--home", str(self.home)).stdout.strip()
        return self._fingerprint

    def pin(self, other: NodeHandle) -> None:
        self.comity("peer", "add", "--home", str(self.home), "--card", str(other.card()),
                    "--fingerprint", other.fingerprint())

    def start(self, *, extra_env: dict[str, str] | None = None, wait: bool = True) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        logf = self.log_path.open("ab")
        mode = [] if self.tls else ["--insecure-http"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli.main", "serve", "--home", str(self.home), *mode,
             "--port", str(self.port)],
            stdout=logf, stderr=logf, env=self.env(extra_env), cwd=REPO, start_new_session=True,
        )
        logf.close()
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.authority} exited {self.proc.returncode}: {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1, verify=self.verify).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{self.authority} not ready in {timeout}s: {self.log_tail()}")

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text()[-n:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def database(self) -> Database:
        """This node's database, opened from the test process (dispose it after use)."""
        return Database(self.database_url or f"sqlite:///{self.home / 'comity.db'}")

    def make_due(self, *, dead_leases: bool = False) -> None:
        """Skip the backoff: every pending message's next attempt is due now.  ``dead_leases`` also
        frees the leases, only for a node whose process was killed while it held them: a running
        worker may have claimed a message already, and freeing that lease would let it claim the
        message a second time, two attempts at once."""
        db = self.database()
        try:
            with db.write() as session:
                session.query(Peer).update({Peer.next_attempt_at: 0})
                due: dict[Any, Any] = {OutboxMessage.next_attempt_at: 0}
                if dead_leases:
                    due[OutboxMessage.lease_until] = None
                session.query(OutboxMessage).filter(OutboxMessage.state.in_(("queued", "sending"))).update(due)
        finally:
            db.dispose()

    def newest_keyset(self) -> Keyset:
        """The keyset a peer would hold for this node, read from its card (works while it is stopped)."""
        return read_keyset(parse_card(self.comity("card", "--home", str(self.home)).stdout.encode())[-1]).keyset

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        return httpx.request(method, f"{self.local_url}{path}", headers=headers, timeout=30, **kwargs)

    def send(self, to: str, subject: str = "s", body: str = "b", kind: str = "note", **extra: Any) -> str:
        r = self.api("POST", "/api/v1/messages", json={"to": to, "kind": kind, "subject": subject, "body": body,
                                                       **extra})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def status(self, message_id: str) -> dict[str, Any]:
        r = self.api("GET", f"/api/v1/messages/{message_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def status_cli(self, message_id: str) -> dict[str, Any]:
        return dict(json.loads(self.comity("status", "--home", str(self.home), message_id, "--json").stdout))

    def inbox(self) -> list[dict[str, Any]]:
        return list(json.loads(self.comity("inbox", "--home", str(self.home), "--json").stdout))

    def audit_verify(self) -> subprocess.CompletedProcess[str]:
        return self.comity("audit", "verify", "--home", str(self.home), "--json", check=False)

    def wait_for(self, message_ids: Sequence[str], state: str = "delivered", timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        pending = set(message_ids)
        while pending and time.monotonic() < deadline:
            for mid in list(pending):
                if self.status(mid)["state"] == state:
                    pending.discard(mid)
            if pending:
                time.sleep(0.2)
        if pending:
            sample = self.status(next(iter(pending)))
            raise AssertionError(f"{len(pending)} message(s) not {state} after {timeout}s, e.g. {sample}; "
                                 f"log: {self.log_tail()}")


@contextmanager
def federation(tmp_path: Path, backend: str, authorities: Sequence[str], *, pin: bool = True,
               start: bool = True, tls: Tls | None = None) -> Iterator[dict[str, NodeHandle]]:
    """Nodes for ``authorities`` pinned to each other (and started), stopped and dropped afterwards."""
    nodes: dict[str, NodeHandle] = {}
    databases: list[str] = []
    try:
        for authority in authorities:
            url = None
            if backend == "postgres":
                url = create_pg_database()
                databases.append(url)
            node = NodeHandle(authority, tmp_path / authority, free_port(), url, tls)
            node.init()
            nodes[authority] = node
        if pin:
            for a in nodes.values():
                for b in nodes.values():
                    if a is not b:
                        a.pin(b)
        if start:
            for node in nodes.values():
                node.start(wait=False)
            for node in nodes.values():
                node.wait_ready()
        yield nodes
    finally:
        for node in nodes.values():
            node.stop()
        for url in databases:
            drop_pg_database(url)
