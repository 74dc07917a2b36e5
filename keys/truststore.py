"""Pinned peers: the records, where they are kept, and the rules for changing them.

A peer is pinned by its *fingerprint* (RFC 7638 thumbprint of its identity key) given by an
administrator out of band, together with its card.  After that only chains that lead from
the held chain are taken (``protocol.keychain.update_chain``: rollback, equivocation, a
broken chain, a wrong signer set and an expired newest version are refused).

Endpoints move only with an administrator: ``pin_peer`` (the ``peer add`` command) applies
the newest endpoint of the card it is given, while ``refresh_peer`` (keysets the node fetches
by itself) keeps the endpoint in use and records a different one as ``pending_endpoint``
until an administrator runs ``peer add`` with a card that carries it.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Protocol

from protocol.card import parse_card
from protocol.errors import Category, ProtocolError
from protocol.ids import is_authority_id, is_kid
from protocol.keychain import KeysetDocument, read_keyset, update_chain, verify_chain
from protocol.keysets import Keyset

from .errors import TrustError, TrustStoreCorruptError, UnknownPeerError
from .files import ensure_private_dir, remove_file, write_private_file

PEERS_DIR = "peers"
RULE_OWN_AUTHORITY = "own_authority"


@dataclass(frozen=True)
class PeerRecord:
    """A pinned peer: its verified keyset chain and what the administrator accepted."""

    authority: str
    name: str
    endpoint: str  # the endpoint in use
    pending_endpoint: str | None  # a newer keyset's endpoint, waiting for an administrator
    fingerprint: str  # the fingerprint given at the last `peer add`
    chain: tuple[bytes, ...]  # every keyset version held, oldest first, verified
    keyset: Keyset  # the newest version of ``chain``
    pinned_at: int
    updated_at: int

    @property
    def current_fingerprint(self) -> str:
        """The thumbprint of the peer's identity key in its newest keyset."""
        return self.keyset.identity_kid

    def documents(self) -> list[KeysetDocument]:
        return [read_keyset(d) for d in self.chain]


class TrustStore(Protocol):
    """Where pinned peers are kept (a folder of files now; the node's database later)."""

    def get(self, authority: str) -> PeerRecord | None: ...

    def list(self) -> builtins.list[PeerRecord]: ...

    def put(self, record: PeerRecord) -> None: ...

    def remove(self, authority: str) -> None:
        """Forget ``authority``; ``UnknownPeerError`` if it is not pinned."""


class FileTrustStore:
    """One JSON file per peer, ``HOME/peers/<authority>.json``, each replaced atomically."""

    def __init__(self, home: Path) -> None:
        self.folder = home / PEERS_DIR

    def _path(self, authority: str) -> Path | None:
        return self.folder / f"{authority}.json" if is_authority_id(authority) else None

    def get(self, authority: str) -> PeerRecord | None:
        path = self._path(authority)
        if path is None:
            return None
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        return _load_record(path, raw)

    def list(self) -> builtins.list[PeerRecord]:
        if not self.folder.is_dir():
            return []
        paths = sorted(p for p in self.folder.glob("*.json") if is_authority_id(p.stem))
        return [_load_record(p, p.read_bytes()) for p in paths]

    def put(self, record: PeerRecord) -> None:
        path = self._path(record.authority)
        if path is None:
            raise ValueError(f"not an authority id: {record.authority!r:.40}")
        ensure_private_dir(self.folder)
        write_private_file(path, _dump_record(record))

    def remove(self, authority: str) -> None:
        path = self._path(authority)
        if path is None or not path.exists():
            raise UnknownPeerError(authority)
        remove_file(path)


def _dump_record(r: PeerRecord) -> bytes:
    obj = {
        "format": 1, "authority": r.authority, "name": r.name, "endpoint": r.endpoint,
        "pending_endpoint": r.pending_endpoint, "fingerprint": r.fingerprint,
        "pinned_at": r.pinned_at, "updated_at": r.updated_at,
        "chain": [d.decode("utf-8") for d in r.chain],
    }
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _load_record(path: Path, raw: bytes) -> PeerRecord:
    try:
        obj = json.loads(raw)
        chain = tuple(d.encode("utf-8") for d in obj["chain"])
        record = PeerRecord(
            authority=obj["authority"], name=obj["name"], endpoint=obj["endpoint"],
            pending_endpoint=obj["pending_endpoint"], fingerprint=obj["fingerprint"],
            chain=chain, keyset=read_keyset(chain[-1]).keyset,
            pinned_at=obj["pinned_at"], updated_at=obj["updated_at"],
        )
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, ProtocolError) as e:
        raise TrustStoreCorruptError(path, f"not a peer record: {e}") from e
    if record.keyset.authority != record.authority or path.stem != record.authority:
        raise TrustStoreCorruptError(path, "the record's authority does not match its file or keyset")
    return record


# --- the rules -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PinResult:
    """What ``pin_peer`` did: ``pinned`` a new peer, ``updated`` a pinned one, or nothing new."""

    record: PeerRecord
    outcome: Literal["pinned", "updated", "unchanged"]
    previous_version: int | None
    #: the endpoint this `peer add` replaced, when it changed
    replaced_endpoint: str | None
    #: the pinned fingerprint this `peer add` replaced, when it changed
    replaced_fingerprint: str | None = None


def _refused(e: ProtocolError, authority: str | None) -> TrustError:
    return TrustError(e.category.value, e.detail, category=e.category, authority=authority)


def _read_card(card: bytes) -> list[bytes]:
    try:
        return parse_card(card)
    except ProtocolError as e:
        raise _refused(e, None) from e


def pin_peer(store: TrustStore, card: bytes, fingerprint: str, *, now: int, own_authority: str) -> PinResult:
    """Pin the peer of ``card`` under ``fingerprint``, or apply a newer card of a pinned peer.

    New peer: the whole chain must verify from v1 and ``fingerprint`` must be the identity of
    one of its versions.  Pinned peer: the card must lead from the held chain, and
    ``fingerprint`` must be the pinned one, or the identity of the held or the new newest
    version.  Either way the newest endpoint is applied (this is the administrator's
    acceptance) and the record is stored.  Refusals raise ``TrustError`` naming the rule.
    """
    docs = _read_card(card)
    authority = read_keyset(docs[-1]).keyset.authority
    if authority == own_authority:
        raise TrustError(RULE_OWN_AUTHORITY, f"the card is this node's own ({authority})", authority=authority)
    if not is_kid(fingerprint):
        raise TrustError(Category.FINGERPRINT_MISMATCH.value, "a fingerprint is 43 base64url characters",
                         category=Category.FINGERPRINT_MISMATCH, authority=authority)
    held = store.get(authority)
    try:
        if held is None:
            chain = verify_chain(docs, fingerprint=fingerprint, now=now)
        else:
            chain = update_chain(held.documents(), docs, now=now)
    except ProtocolError as e:
        raise _refused(e, authority) from e
    newest = chain[-1].keyset
    if held is not None:
        allowed = {held.fingerprint, held.current_fingerprint, newest.identity_kid}
        if fingerprint not in allowed:
            raise TrustError(
                Category.FINGERPRINT_MISMATCH.value,
                f"{fingerprint} is neither the pinned fingerprint of {authority} nor its current one",
                category=Category.FINGERPRINT_MISMATCH, authority=authority,
            )
    record = PeerRecord(
        authority=authority, name=newest.name, endpoint=newest.endpoint, pending_endpoint=None,
        fingerprint=fingerprint, chain=tuple(d.doc for d in chain), keyset=newest,
        pinned_at=now if held is None else held.pinned_at, updated_at=now,
    )
    if held is None:
        store.put(record)
        return PinResult(record, "pinned", None, None)
    unchanged = (record.chain == held.chain and record.endpoint == held.endpoint
                 and held.pending_endpoint is None and fingerprint == held.fingerprint)
    if unchanged:
        return PinResult(held, "unchanged", held.keyset.version, None)
    store.put(record)
    return PinResult(
        record, "updated", held.keyset.version,
        replaced_endpoint=held.endpoint if held.endpoint != record.endpoint else None,
        replaced_fingerprint=held.fingerprint if held.fingerprint != fingerprint else None,
    )


def refresh_peer(store: TrustStore, authority: str, offered: Sequence[bytes], *, now: int) -> PeerRecord:
    """Apply keyset versions the node fetched by itself; a new endpoint only becomes pending.

    ``UnknownPeerError`` if ``authority`` is not pinned; ``TrustError`` under the chain rules.
    """
    held = store.get(authority)
    if held is None:
        raise UnknownPeerError(authority)
    try:
        chain = update_chain(held.documents(), offered, now=now)
    except ProtocolError as e:
        raise _refused(e, authority) from e
    newest = chain[-1].keyset
    if newest.version == held.keyset.version:
        return held
    pending = None if newest.endpoint == held.endpoint else newest.endpoint
    record = replace(held, name=newest.name, pending_endpoint=pending, chain=tuple(d.doc for d in chain),
                     keyset=newest, updated_at=now)
    store.put(record)
    return record
