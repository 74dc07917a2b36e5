"""The keystore's files in a node home, and what can be read from them without a passphrase.

    HOME/keystore.json       metadata: authority, committed keyset version, protection, key ids,
                             the wrapped storage key (the commit point of every change)
    HOME/keys/<kid>.pem      one PKCS#8 private key per file
    HOME/keysets/<v>.json    every signed keyset version, exactly as published
    HOME/keystore.lock       serialises writers

Every file is 0600 and replaced atomically.  ``keystore.json`` is written last, so a crash
mid-change leaves at most unreferenced files: a keyset version above the committed one is
ignored (nobody was ever shown it) and replaced by the next change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.card import build_card
from protocol.errors import ProtocolError
from protocol.ids import is_kid
from protocol.keychain import KeysetDocument, read_keyset

from .errors import KeystoreCorruptError, KeystoreMissingError
from .files import write_private_file
from .protection import needs_passphrase

FORMAT = 1
META_NAME = "keystore.json"
LOCK_NAME = "keystore.lock"
KEYS_DIR = "keys"
KEYSETS_DIR = "keysets"


@dataclass(frozen=True)
class Meta:
    """The contents of ``keystore.json``."""

    authority: str
    version: int
    validity: int
    protection: dict[str, Any]
    storage_key: dict[str, str]
    identity: str
    signing: str
    encryption: str
    #: retired encryption keys still kept for decryption: kid -> retired_at
    kept_encryption: dict[str, int]

    def to_json(self) -> bytes:
        obj = {
            "format": FORMAT, "authority": self.authority, "version": self.version, "validity": self.validity,
            "protection": self.protection, "storage_key": self.storage_key, "identity": self.identity,
            "signing": self.signing, "encryption": self.encryption, "kept_encryption": self.kept_encryption,
        }
        return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")

    def referenced_kids(self) -> set[str]:
        return {self.identity, self.signing, self.encryption, *self.kept_encryption}


def meta_path(home: Path) -> Path:
    return home / META_NAME


def key_path(home: Path, kid: str) -> Path:
    return home / KEYS_DIR / f"{kid}.pem"


def keyset_path(home: Path, version: int) -> Path:
    return home / KEYSETS_DIR / f"{version}.json"


def read_meta(home: Path) -> Meta:
    path = meta_path(home)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as e:
        raise KeystoreMissingError(home, "no keystore here (run `comity init` first, or check --home)") from e
    try:
        obj = json.loads(raw)
        if obj.get("format") != FORMAT:
            raise ValueError(f"unknown keystore format {obj.get('format')!r:.20}")
        meta = Meta(
            authority=obj["authority"], version=obj["version"], validity=obj["validity"],
            protection=obj["protection"], storage_key=obj["storage_key"], identity=obj["identity"],
            signing=obj["signing"], encryption=obj["encryption"], kept_encryption=obj["kept_encryption"],
        )
        _check_meta(meta)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise KeystoreCorruptError(home, f"{META_NAME} is not a keystore: {e}") from e
    return meta


def _check_meta(meta: Meta) -> None:
    ints = (meta.version, meta.validity, *meta.kept_encryption.values())
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in ints):
        raise ValueError("version, validity and retirement times must be positive integers")
    kids = (meta.identity, meta.signing, meta.encryption, *meta.kept_encryption)
    if not all(is_kid(k) for k in kids):
        raise ValueError("key ids must be RFC 7638 thumbprints")
    if not isinstance(meta.protection, dict) or not isinstance(meta.storage_key, dict):
        raise ValueError("protection and storage_key must be objects")


def write_meta(home: Path, meta: Meta) -> None:
    write_private_file(meta_path(home), meta.to_json())


def read_docs(home: Path, version: int) -> list[KeysetDocument]:
    """Keyset versions 1..``version`` as stored, strictly read (signatures are checked by peers)."""
    docs = []
    for v in range(1, version + 1):
        path = keyset_path(home, v)
        try:
            doc = read_keyset(path.read_bytes())
        except FileNotFoundError as e:
            raise KeystoreCorruptError(home, f"keyset version {v} is missing ({path})") from e
        except ProtocolError as e:
            raise KeystoreCorruptError(home, f"keyset version {v} is unreadable: {e}") from e
        if doc.version != v:
            raise KeystoreCorruptError(home, f"{path} holds keyset version {doc.version}")
        docs.append(doc)
    return docs


def read_published(home: Path) -> list[KeysetDocument]:
    """Every committed keyset version of the node at ``home``, oldest first; no passphrase needed."""
    return read_docs(home, read_meta(home).version)


def read_card(home: Path) -> bytes:
    """The node's card (every keyset version, oldest first); no passphrase needed."""
    return build_card([d.doc for d in read_published(home)])


def read_fingerprint(home: Path) -> str:
    """The node's fingerprint: the thumbprint of its current identity key."""
    return read_published(home)[-1].keyset.identity_kid


def keystore_needs_passphrase(home: Path) -> bool:
    return needs_passphrase(read_meta(home).protection)
