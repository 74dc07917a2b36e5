"""Refreshing a peer's keyset from its ``/.well-known/comity/keyset`` endpoints.

The newest version is fetched; missing intermediate versions are fetched one by one and the
chain is walked from the newest version held (``protocol.keychain.update_chain``).  A changed
endpoint is recorded as pending: only an administrator's ``peer add`` applies it.
"""

from __future__ import annotations

import asyncio

import httpx

from keys.errors import TrustError
from keys.errors import UnknownPeerError as KeysUnknownPeer
from keys.truststore import refresh_peer
from protocol.errors import ProtocolError
from protocol.keychain import KeysetDocument, read_keyset

from ..services.audit import append_entry
from ..services.peers import chain_documents
from ..storage.db import Database
from ..storage.models import Peer
from ..storage.trust import DbTrustStore
from .transport import read_capped

MAX_KEYSET_BYTES = 64 * 1024


class RefreshError(Exception):
    """The peer's keyset could not be fetched or was refused."""


def keyset_url(endpoint: str, version: int | None = None) -> str:
    base = endpoint.rstrip("/") + "/.well-known/comity/keyset"
    return base if version is None else f"{base}/{version}"


async def _fetch(client: httpx.AsyncClient, url: str) -> bytes:
    try:
        async with asyncio.timeout(10.0), client.stream("GET", url, timeout=10.0) as resp:
            body = await read_capped(resp, MAX_KEYSET_BYTES)
            status = resp.status_code
    except (httpx.HTTPError, TimeoutError) as e:
        raise RefreshError(f"cannot fetch {url}: {type(e).__name__}") from e
    if status != 200 or body is None:
        raise RefreshError(f"{url} answered {status}" + ("" if body is not None else " with an oversized body"))
    return body


def _held(db: Database, authority: str) -> tuple[str, list[KeysetDocument]]:
    with db.read() as session:
        row = session.get(Peer, authority)
        if row is None:
            raise RefreshError(f"{authority} is not pinned")
        return row.endpoint, chain_documents(row)


def _apply(db: Database, authority: str, offered: list[bytes], *, have: int, offered_version: int, now: int) -> None:
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
                         details={"reason": getattr(e, "rule", "unknown_peer"), "keyset_version": offered_version})
        raise RefreshError(f"{authority}'s keyset v{offered_version} refused: {e}") from e


async def refresh_peer_keyset(db: Database, client: httpx.AsyncClient, authority: str, *, now: int) -> bool:
    """Fetch and apply the peer's newer keyset versions; True when something changed.

    Database work runs in a thread: a write may wait for SQLite's lock, never on the event loop.
    """
    endpoint, held = await asyncio.to_thread(_held, db, authority)
    newest_doc = await _fetch(client, keyset_url(endpoint))
    try:
        newest = read_keyset(newest_doc)
    except ProtocolError as e:
        raise RefreshError(f"{authority} served an unreadable keyset: {e.category.value}") from e
    have = held[-1].version
    if newest.version == have and newest.doc == held[-1].doc:
        await asyncio.to_thread(_touch, db, authority, now)
        return False
    offered = [await _fetch(client, keyset_url(endpoint, v)) for v in range(have + 1, newest.version)]
    offered.append(newest_doc)
    await asyncio.to_thread(_apply, db, authority, offered, have=have, offered_version=newest.version, now=now)
    return True


def _touch(db: Database, authority: str, now: int) -> None:
    with db.write() as session:
        row = session.get(Peer, authority)
        if row is not None:
            row.refreshed_at = now
