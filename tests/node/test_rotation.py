"""Issue 5 live keys: rotations while nodes run, on SQLite and on PostgreSQL; and the re-issue rule.

One federation walks through: A rotates its signing key (B refreshes A's keyset in the
background when an envelope's signing kid is unknown); B rotates its signing key (A refreshes,
then accepts the new receipt); B rotates its encryption key while A has messages queued, one of
them sealed to a key B no longer holds (A gets ``unknown_recipient_key``, refreshes, reseals);
B rotates its identity (A follows the chain).  Receipts stored before all that still verify under
the archival rules; no log holds a passphrase, a token, a subject or a body.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from sqlalchemy import select

from keys.keystore import Keystore
from keys.protection import ScryptParams
from keys.signers import public_jwk_of
from node.config import Settings
from node.keyring import Keyring
from node.services.peers import peer_keyset
from node.storage.db import Database
from node.storage.migrate import upgrade_url
from node.storage.models import AuditEntry, OutboxMessage, Peer
from protocol.artifacts import ArchivalKeys
from protocol.card import parse_card
from protocol.envelope import reseal_envelope
from protocol.jose import import_public_okp, thumbprint
from protocol.keychain import read_keyset
from protocol.receipts import verify_receipt
from tests.conftest import create_pg_database, drop_pg_database
from tests.node.harness import NodeHandle, free_port
from tests.node.test_crash import hurry, queue_directly
from tests.node.test_exchange import assert_logs_verify, outbox_row

PASSPHRASE = "correct horse battery staple 7731"
SUBJECT = "Subject-Zebra-7731"
BODY = "Body-Quokka-9921 the facts of the case"


def served_version(node: NodeHandle) -> int:
    doc = httpx.get(f"{node.url}/.well-known/comity/keyset", timeout=5).content
    return read_keyset(doc).version


def wait_served(node: NodeHandle, version: int, timeout: float) -> float:
    started = time.monotonic()
    while served_version(node) != version:
        assert time.monotonic() - started < timeout, f"{node.authority} still serves an older keyset"
        time.sleep(0.1)
    return time.monotonic() - started


def rotate(node: NodeHandle, *flags: str, env: dict[str, str] | None = None) -> int:
    (node.home.parent / f"{node.authority}.card.json").unlink(missing_ok=True)
    return int(node.comity("keys", "rotate", "--home", str(node.home), *flags, extra_env=env).stdout)


def audit_events(node: NodeHandle, event: str) -> list[AuditEntry]:
    db = node.database()
    try:
        with db.read() as session:
            rows = list(session.scalars(select(AuditEntry).where(AuditEntry.event == event)))
            session.expunge_all()
            return rows
    finally:
        db.dispose()


def held_peer(node: NodeHandle, authority: str) -> Peer:
    db = node.database()
    try:
        with db.read() as session:
            row = session.get_one(Peer, authority)
            session.expunge(row)
            return row
    finally:
        db.dispose()


def send_and_wait(a: NodeHandle, to: str) -> str:
    mid = a.send(to, subject=SUBJECT, body=BODY)
    deadline = time.monotonic() + 30
    while a.status(mid)["state"] != "delivered":
        assert time.monotonic() < deadline, a.status(mid)
        hurry(a)
        time.sleep(0.2)
    return mid


def seal_to_a_key_b_does_not_hold(a: NodeHandle, message_id: str) -> None:
    """Re-encrypt a queued message to a key unknown to B (as after B lost or dropped a key)."""
    stranger = X25519PrivateKey.generate()
    jwk = public_jwk_of(stranger)
    db = a.database()
    try:
        with db.write() as session:
            row = session.scalars(select(OutboxMessage).where(OutboxMessage.message_id == message_id)).one()
            sealed = reseal_envelope(row.inner_jws, iss=a.authority, aud=row.peer,
                                     recipient_kid=thumbprint(jwk), recipient_key=import_public_okp(jwk, crv="X25519"))
            row.envelope, row.envelope_sha256, row.recipient_kid = sealed.raw, sealed.sha256, thumbprint(jwk)
    finally:
        db.dispose()


@pytest.mark.slow
def test_rotations_while_running(tmp_path: Path, backend: str) -> None:
    urls = [create_pg_database(), create_pg_database()] if backend == "postgres" else [None, None]
    a = NodeHandle("GB-UKCA", tmp_path / "GB-UKCA", free_port(), urls[0])
    b = NodeHandle("FR-DACG", tmp_path / "FR-DACG", free_port(), urls[1])
    secret = {"COMITY_PASSPHRASE": PASSPHRASE}
    try:
        a.init()
        b.comity("init", "--home", str(b.home), "--authority", b.authority, "--name", "FR central authority",
                 "--endpoint", f"{b.url}/", extra_env=secret)
        a.pin(b)
        b.pin(a)
        b.start(extra_env=secret)
        a.start()
        first = send_and_wait(a, b.authority)
        before = outbox_row(a, first)
        b_fingerprint = b.fingerprint()

        # A rotates its signing key; B meets an unknown signing kid, refreshes A in the background
        rotate(a, "--signing-only")
        assert a.proc is not None
        a.proc.send_signal(signal.SIGHUP)
        wait_served(a, 2, timeout=3)
        send_and_wait(a, b.authority)
        assert held_peer(b, a.authority).keyset_version == 2

        # B rotates its signing key (SIGHUP: at once); A refreshes on the unknown kid, accepts the receipt
        rotate(b, "--signing-only", env=secret)
        assert b.proc is not None
        b.proc.send_signal(signal.SIGHUP)
        wait_served(b, 2, timeout=3)
        mid = send_and_wait(a, b.authority)
        assert a.status(mid)["attempts"] == 1  # the receipt counted at once, after the refresh
        assert held_peer(a, b.authority).keyset_version == 2

        # B rotates its encryption key while A has messages queued; no SIGHUP: B notices within 10 s
        a.stop()
        queued = queue_directly(a, b.authority, 3)
        seal_to_a_key_b_does_not_hold(a, queued[0])
        rotate(b, "--encryption-only", env=secret)
        assert wait_served(b, 3, timeout=10) < 10
        a.start()
        for mid in queued:
            deadline = time.monotonic() + 30
            while a.status(mid)["state"] != "delivered":
                assert time.monotonic() < deadline, a.status(mid)
                hurry(a)
                time.sleep(0.2)
        b_keyset = b.newest_keyset()
        resealed = [e for e in audit_events(a, "resealed") if e.message_id == queued[0]]
        assert len(resealed) == 1 and json.loads(resealed[0].leaf)["kid"] == \
            b_keyset.current_encryption_key(int(time.time())).kid
        assert outbox_row(a, queued[0]).recipient_kid == b_keyset.current_encryption_key(int(time.time())).kid

        # B rotates its identity, then its signing key: A walks the chain to the new identity
        rotate(b, "--identity", env=secret)
        rotate(b, "--signing-only", env=secret)
        b.proc.send_signal(signal.SIGHUP)
        wait_served(b, 5, timeout=3)
        a.stop()  # a fresh worker: the previous refresh of B is less than a minute old
        a.start()
        send_and_wait(a, b.authority)
        new_fingerprint = b.comity("fingerprint", "--home", str(b.home)).stdout.strip()
        assert new_fingerprint != b_fingerprint
        assert (peer_keyset(held_peer(a, b.authority)).identity_kid, held_peer(a, b.authority).keyset_version) == \
            (new_fingerprint, 5)

        # the receipt stored before every rotation still verifies under the archival rules
        chain = [read_keyset(d).keyset for d in parse_card(b.card().read_bytes())]
        assert before.receipt_jws is not None
        verify_receipt(before.receipt_jws, keys=ArchivalKeys(chain), sender=a.authority, receiver=b.authority,
                       message_id=first, envelope_sha256=before.envelope_sha256)
        a.stop()
        b.stop()
        assert_logs_verify(a, b)
        # no log holds content or a secret
        logs = a.log_path.read_text() + b.log_path.read_text()
        for secret_text in (PASSPHRASE, a.token, b.token, SUBJECT, BODY.split()[0]):
            assert secret_text not in logs
        assert '"event": "keys_reloaded"' in b.log_path.read_text()
    finally:
        a.stop()
        b.stop()
        for url in urls:
            if url:
                drop_pg_database(url)


def test_serve_reissues_its_keyset_when_half_its_validity_is_left(tmp_path: Path) -> None:
    home = tmp_path / "home"
    now = 1_800_000_000
    ks = Keystore.create(home, authority="GB-UKCA", name="GB", endpoint="http://127.0.0.1:1/", passphrase=None,
                         now=now, validity=10 * 86400, insecure_no_passphrase=True, randbytes=os.urandom)
    url = f"sqlite:///{tmp_path / 'comity.db'}"
    upgrade_url(url)
    db = Database(url)
    try:
        keyring = Keyring(ks, env={})
        assert keyring.reissue_if_due(db, now=now + 4 * 86400, validity=None) is None
        assert keyring.reissue_if_due(db, now=now + 6 * 86400, validity=None) == 2
        assert keyring.current.keyset.version == 2
        assert keyring.current.keyset.expires_at == now + 16 * 86400
        with db.read() as session:
            entry = session.scalars(select(AuditEntry).where(AuditEntry.event == "keyset_issued")).one()
            assert json.loads(entry.leaf)["keyset_version"] == 2
    finally:
        db.dispose()


def test_keys_reload_when_the_files_change(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ks = Keystore.create(home, authority="GB-UKCA", name="GB", endpoint="http://127.0.0.1:1/",
                         passphrase=PASSPHRASE.encode(), now=int(time.time()), kdf=ScryptParams(n=2**10))
    keyring = Keyring(ks, env={"COMITY_PASSPHRASE": PASSPHRASE})
    assert keyring.reload_if_changed() is False
    other = Keystore.open(home, PASSPHRASE.encode())
    other.rotate(int(time.time()), signing=True, encryption=False)
    assert keyring.reload_if_changed() is True
    assert keyring.current.keyset.version == 2
    assert keyring.current.signer.kid == other.signer.kid
    other.rotate(int(time.time()), signing=True, encryption=False)
    assert keyring.current.keyset.version == 3  # each use checks the files: no retired key signs on
    assert keyring.current.signer.kid == other.signer.kid
    failing = Keyring(Keystore.open(home, PASSPHRASE.encode()), env={})  # no passphrase to reload with
    other.rotate(int(time.time()), signing=True, encryption=False)
    assert failing.reload_if_changed() is False
    assert failing.current.keyset.version == 3  # the keys in use are kept
    assert failing.reload_if_changed() is False  # and the same files are not tried again


def test_settings_lease_and_reload_interval(tmp_path: Path) -> None:
    s = Settings(home=tmp_path, lease_seconds=3, key_reload_interval=0.5)
    assert s.lease_seconds == 3
    with pytest.raises(Exception, match="lease_seconds"):
        Settings(home=tmp_path, lease_seconds=0)
