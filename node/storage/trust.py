"""The trust store in the database: pinning commits in the same transaction as its log entry."""

from __future__ import annotations

import builtins
import json

from sqlalchemy import select
from sqlalchemy.orm import Session

from keys.errors import UnknownPeerError
from keys.truststore import PeerRecord
from protocol.keychain import read_keyset

from .models import Peer


def record_of(row: Peer) -> PeerRecord:
    chain = tuple(d.encode("utf-8") for d in json.loads(row.chain))
    return PeerRecord(
        authority=row.authority, name=row.name, endpoint=row.endpoint, pending_endpoint=row.pending_endpoint,
        fingerprint=row.fingerprint, chain=chain, keyset=read_keyset(chain[-1]).keyset,
        pinned_at=row.pinned_at, updated_at=row.updated_at,
    )


class DbTrustStore:
    """``keys.truststore.TrustStore`` over the ``peers`` table, inside the caller's transaction."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, authority: str) -> PeerRecord | None:
        row = self.session.get(Peer, authority, with_for_update=True)
        return None if row is None else record_of(row)

    def list(self) -> builtins.list[PeerRecord]:
        return [record_of(r) for r in self.session.scalars(select(Peer).order_by(Peer.authority))]

    def put(self, record: PeerRecord) -> None:
        row = self.session.get(Peer, record.authority)
        if row is None:
            row = Peer(authority=record.authority, failures=0, next_attempt_at=0)
            self.session.add(row)
        row.name, row.endpoint, row.pending_endpoint = record.name, record.endpoint, record.pending_endpoint
        row.fingerprint = record.fingerprint
        row.chain = json.dumps([d.decode("utf-8") for d in record.chain])
        row.keyset_version, row.expires_at = record.keyset.version, record.keyset.expires_at
        row.pinned_at, row.updated_at = record.pinned_at, record.updated_at
        self.session.flush()

    def remove(self, authority: str) -> None:
        row = self.session.get(Peer, authority)
        if row is None:
            raise UnknownPeerError(authority)
        self.session.delete(row)
        self.session.flush()
