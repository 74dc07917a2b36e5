"""Two nodes in one process, for audit tests: real keystores and databases, no HTTP.

A queues messages to B, B opens and stores them, the integrators sign heads and receipts, A
settles each delivery with B's receipt — exactly the services the running nodes use.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from keys.keystore import Keystore
from keys.layout import read_card
from node.delivery.claims import claim_due_deliveries, settle_delivered
from node.services import peers as peers_module
from node.services.headsfile import sync_heads_file
from node.services.integrator import integrate_batch
from node.services.peers import peer_lookup
from node.services.receiving import Accepted, InboxLimits, open_inbound, store_inbound
from node.services.sending import Draft, queue_message
from node.services.trust import pin_peer_card
from node.storage.db import Database
from node.storage.migrate import upgrade_url
from node.storage.models import InboxMessage
from protocol.artifacts import LiveKeys
from protocol.keychain import read_keyset
from protocol.keysets import Keyset
from protocol.receipts import verify_receipt
from tests.conftest import create_pg_database, drop_pg_database


@dataclass
class Side:
    authority: str
    home: Path
    keystore: Keystore
    db: Database

    @property
    def card(self) -> bytes:
        return read_card(self.home)

    @property
    def chain(self) -> list[Keyset]:
        return [read_keyset(d).keyset for d in self.keystore.keyset_docs()]

    def integrate(self, now: int | None = None) -> None:
        while True:
            with self.db.write() as session:
                done = integrate_batch(session, authority=self.authority, signer=self.keystore.signer,
                                       now=now or int(time.time()))
            if not done.entries:
                break
        sync_heads_file(self.db, self.home)


def make_side(tmp: Path, authority: str, url: str) -> Side:
    home = tmp / authority
    ks = Keystore.create(home, authority=authority, name=f"{authority} authority",
                         endpoint=f"https://{authority.lower()}.example/", passphrase=None,
                         insecure_no_passphrase=True, now=int(time.time()) - 60)
    upgrade_url(url)
    side = Side(authority, home, ks, Database(url))
    from node.services.trust import record_keyset_issued

    record_keyset_issued(side.db, version=1, fingerprint=ks.fingerprint, now=int(time.time()))
    return side


def pin_both(a: Side, b: Side) -> None:
    # the keyset cache is per process and keyed by (authority, version, second): tests reuse authorities
    peers_module._keyset_cache.clear()
    now = int(time.time())
    pin_peer_card(a.db, b.card, b.keystore.fingerprint, own_authority=a.authority, now=now, actor="cli:test")
    pin_peer_card(b.db, a.card, a.keystore.fingerprint, own_authority=b.authority, now=now, actor="cli:test")


def queue_messages(a: Side, to: str, n: int, now: int, *, subject: str = "s", body: str = "b") -> list[str]:
    """``n`` notes queued at A for ``to``, in one transaction; their ids."""
    ids = [os.urandom(16).hex() for _ in range(n)]
    with a.db.write() as session:
        for mid in ids:
            queue_message(session, Draft(to=to, kind="note", subject=subject, body=body), me=a.authority,
                          signer=a.keystore.signer, message_id=mid, now=now, lifetime=86400, max_bytes=1 << 20)
    return ids


def exchange(a: Side, b: Side, n: int, *, subject: str = "s", body: str = "b") -> list[str]:
    """A sends ``n`` messages to B; each ends delivered at A with B's verified receipt."""
    now = int(time.time())
    ids = queue_messages(a, b.authority, n, now, subject=subject, body=body)
    claims = claim_due_deliveries(a.db, owner="test", now=now, limit=n + 10)
    lookup = peer_lookup(b.db)
    for c in claims:
        opened = open_inbound(c.envelope, me=b.authority, decryption_keys=b.keystore.decryption_keys(now),
                              lookup_peer=lookup, now=now, limits=InboxLimits())
        assert isinstance(store_inbound(b.db, opened, c.envelope, now=now), Accepted)
    b.integrate(now)
    b_keys = LiveKeys(b.keystore.keyset, now)
    for c in claims:
        with b.db.read() as session:
            token = session.query(InboxMessage.receipt_jws).filter_by(message_id=c.message_id).scalar()
        r = verify_receipt(token, keys=b_keys, sender=a.authority, receiver=b.authority, message_id=c.message_id,
                           envelope_sha256=c.envelope_sha256)
        settle_delivered(a.db, c, owner="test", receipt_jws=token, received_at=r.received_at,
                         leaf_index=r.leaf_index, tree_size=r.tree_size, root=r.root, now=now)
    a.integrate(now)
    return ids


@contextmanager
def two_sides(tmp: Path, backend: str) -> Iterator[tuple[Side, Side]]:
    """GB-UKCA and FR-DACG pinned to each other, each on its own fresh database (dropped afterwards)."""
    urls = [f"sqlite:///{tmp / n}.db" for n in ("a", "b")] if backend == "sqlite" else \
        [create_pg_database(), create_pg_database()]
    a, b = make_side(tmp, "GB-UKCA", urls[0]), make_side(tmp, "FR-DACG", urls[1])
    try:
        pin_both(a, b)
        yield a, b
    finally:
        for side in (a, b):
            side.db.dispose()
        if backend == "postgres":
            for url in urls:
                drop_pg_database(url)
