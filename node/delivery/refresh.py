"""Refreshing a peer's keyset from its ``/.well-known/comity/keyset`` endpoints.

The newest version is fetched; missing intermediate versions are fetched one by one and the
chain is walked from the newest version held (``protocol.keychain.update_chain``).  A changed
endpoint is recorded as pending: only an administrator's ``peer add`` applies it.
"""

from __future__ import annotations

import httpx

from keys.errors import TrustError
from keys.errors import UnknownPeerError as KeysUnknownPeer
from keys.truststore import refresh_peer
from protocol.errors import ProtocolError
from protocol.keychain import read_keyset

from ..services.audit import append_entry
from ..services.peers import chain_documents
from ..storage.db import Database
from ..storage.models import Peer
from ..storage.trust import DbTrustStore

MAX_KEYSET_BYTES = 64 * 1024


class RefreshError(Exception):
    """The peer's keyset could not be fetched or was refused."""


def keyset_url(endpoint: str, version: int | None = None) -> str:
    base = endpoint.rstrip("/") + "/.well-known/comity/keyset"
    return base if version is None else f"{base}/{version}"


async def _fetch(client: httpx.AsyncClient, url: str) -> bytes:
    try:
        resp = await client.get(url, timeout=10.0)
    except httpx.HTTPError as e:
        raise RefreshError(f"cannot fetch {url}: {type(e).__name__}") from e
    if resp.status_code != 200 or len(resp.content) > MAX_KEYSET_BYTES:
        raise RefreshError(f"{url} answered {resp.status_code}")
    return resp.content


async def refresh_peer_keyset(db: Database, client: httpx.AsyncClient, authority: str, *, now: int) -> bool:
    """Fetch and apply the peer's newer keyset versions; True when something changed."""
    with db.read() as session:
        row = session.get(Peer, authority)
        if row is None:
            raise RefreshError(f"{authority} is not pinned")
        endpoint, held = row.endpoint, chain_documents(row)
    newest_doc = await _fetch(client, keyset_url(endpoint))
    try:
        newest = read_keyset(newest_doc)
    except ProtocolError as e:
        raise RefreshError(f"{authority} served an unreadable keyset: {e.category.value}") from e
    have = held[-1].version
    if newest.version == have and newest.doc == held[-1].doc:
        _touch(db, authority, now)
        return False
    offered = [await _fetch(client, keyset_url(endpoint, v)) for v in range(have + 1, newest.version)]
    offered.append(newest_doc)
    try:
        with db.write() as session:
            record = refresh_peer(DbTrustStore(session), authority, offered, now=now)
            session.get_one(Peer, authority).refreshed_at = now
            append_entry(session, event="peer_updated", at=now, peer=authority,
                         details={"keyset_version": record.keyset.version, "previous_version": have,
                                  "fingerprint": record.keyset.identity_kid})
    except (TrustError, KeysUnknownPeer) as e:
        with db.write() as session:
            append_entry(session, event="peer_keyset_refused", at=now, peer=authority,
                         details={"reason": getattr(e, "rule", "unknown_peer"), "keyset_version": newest.version})
        raise RefreshError(f"{authority}'s keyset v{newest.version} refused: {e}") from e
    return True


def _touch(db: Database, authority: str, now: int) -> None:
    with db.write() as session:
        row = session.get(Peer, authority)
        if row is not None:
            row.refreshed_at = now
