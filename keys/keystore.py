"""The node's own keys: create, open, rotate, re-issue (files described in ``keys.layout``).

Four secrets: the identity key (Ed25519, signs keysets only), the operational signing key
(Ed25519), the encryption key (X25519) and the local storage key (32 random bytes, never
published).  Every change issues a new signed keyset version:

* an operational rotation keeps the old key listed with ``retired_at = now`` (a signing key:
  ``now + SIGNING_RETIREMENT_GRACE``, because a running node signs with it until it notices the
  rotation, and what it signs then must still verify) and signs the new version with the
  (unchanged) identity key; a retired signing key's private half is
  deleted at once, a retired encryption key's is kept for decryption until
  ``retired_at + max_lifetime + skew`` and deleted by the first change after that, when it
  also leaves the published keyset;
* an identity rotation is signed by the old and then the new identity key;
* ``reissue_if_due`` issues the same keys again once less than half the validity is left.

Time (``now``) and randomness (``randbytes``) are arguments, never read here.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from joserfc.jwk import OKPKey

from protocol.errors import ProtocolError
from protocol.ids import is_authority_id
from protocol.jose import Signer, thumbprint
from protocol.keychain import KeysetDocument, next_keyset, read_keyset, sign_keyset
from protocol.keysets import DEFAULT_KEYSET_VALIDITY, DEFAULT_MAX_LIFETIME, DEFAULT_SKEW, KeyEntry, Keyset

from .errors import (
    KeystoreCorruptError,
    KeystoreError,
    KeystoreExistsError,
    PassphraseUnavailableError,
    SettingError,
    WrongPassphraseError,
)
from .files import ensure_private_dir, exclusive_lock, remove_file, write_private_file
from .layout import (
    KEYS_DIR,
    KEYSETS_DIR,
    LOCK_NAME,
    Meta,
    key_path,
    keyset_path,
    meta_path,
    read_docs,
    read_meta,
    write_meta,
)
from .protection import (
    PassphraseProtection,
    PrivateKey,
    Protection,
    ScryptParams,
    UnwrapError,
    load_protection,
    needs_passphrase,
    new_protection,
)
from .signers import KeystoreSigner, decryption_key, public_jwk_of

RandBytes = Callable[[int], bytes]
_STORAGE_LABEL = b"comity storage key"
#: Seconds a rotated-out signing key stays valid: running processes reload keys within seconds
#: (``node.keyring``), and whatever they sign meanwhile must pass the archival rules.
SIGNING_RETIREMENT_GRACE = 60


def key_entry(key: PrivateKey, *, nbf: int, exp: int) -> KeyEntry:
    """The published entry of a new operational key, valid from ``nbf`` to ``exp``."""
    jwk = public_jwk_of(key)
    return KeyEntry(kid=thumbprint(jwk), crv=jwk["crv"], x=jwk["x"], nbf=nbf, exp=exp)


def _kid(key: PrivateKey) -> str:
    return thumbprint(public_jwk_of(key))


def _key_exp(now: int, validity: int) -> int:
    """Operational keys outlive two keyset validities, so re-issues need not rotate them."""
    return now + max(365 * 86400, 2 * validity)


def check_settings(authority: str, name: str, endpoint: str) -> None:
    """Raise ``SettingError`` unless these can head a keyset."""
    if not is_authority_id(authority):
        raise SettingError("authority", f"{authority!r:.40} is not an authority id (like FR-MJ or DE-BFJ)")
    if not name or len(name) > 512:
        raise SettingError("name", "must be 1 to 512 characters")
    if not endpoint.startswith(("https://", "http://")) or len(endpoint) > 512:
        raise SettingError("endpoint", f"{endpoint!r:.60} is not an http(s) URL")


class Keystore:
    """An opened keystore: the private keys in memory, and the published keyset chain."""

    def __init__(self, home: Path, meta: Meta, protection: Protection, docs: list[KeysetDocument],
                 keys: dict[str, PrivateKey], storage_key: bytes, *, randbytes: RandBytes,
                 skew: int, max_lifetime: int) -> None:
        self.home = home
        self._meta = meta
        self._protection = protection
        self._docs = docs
        self._keys = keys
        self._decryption_keys: dict[str, OKPKey] = {}
        self._signer: Signer | None = None
        self._storage_key = storage_key
        self._randbytes = randbytes
        self.skew = skew
        self.max_lifetime = max_lifetime

    # --- creating and opening --------------------------------------------------------------------

    @classmethod
    def create(
        cls, home: Path, *, authority: str, name: str, endpoint: str, passphrase: bytes | None, now: int,
        validity: int = DEFAULT_KEYSET_VALIDITY, insecure_no_passphrase: bool = False,
        randbytes: RandBytes = os.urandom, kdf: ScryptParams | None = None,
        skew: int = DEFAULT_SKEW, max_lifetime: int = DEFAULT_MAX_LIFETIME,
    ) -> Keystore:
        """Create the keys and keyset v1 of a new node in ``home``; refuse a home that has a keystore."""
        check_settings(authority, name, endpoint)
        if passphrase is None and not insecure_no_passphrase:
            raise PassphraseUnavailableError("a passphrase is required (or an explicit insecure_no_passphrase)")
        if validity <= 0:
            raise SettingError("validity", "must be a positive number of seconds")
        protection = new_protection(None if insecure_no_passphrase else passphrase,
                                    params=kdf or ScryptParams(), randbytes=randbytes)
        identity = Ed25519PrivateKey.from_private_bytes(randbytes(32))
        signing = Ed25519PrivateKey.from_private_bytes(randbytes(32))
        encryption = X25519PrivateKey.from_private_bytes(randbytes(32))
        storage_key = randbytes(32)
        keyset = Keyset(
            authority=authority, name=name, endpoint=endpoint, version=1, issued_at=now,
            expires_at=now + validity, identity_jwk=public_jwk_of(identity),
            signing_keys=(key_entry(signing, nbf=now, exp=_key_exp(now, validity)),),
            encryption_keys=(key_entry(encryption, nbf=now, exp=_key_exp(now, validity)),),
        )
        try:
            keyset = Keyset.from_payload(keyset.to_payload())
            doc = sign_keyset(keyset, [KeystoreSigner(identity)])
        except ProtocolError as e:
            raise SettingError("keyset", e.detail) from e
        keys: dict[str, PrivateKey] = {_kid(k): k for k in (identity, signing, encryption)}
        meta = Meta(
            authority=authority, version=1, validity=validity, protection=protection.to_json(),
            storage_key=protection.wrap(storage_key, label=_STORAGE_LABEL, randbytes=randbytes),
            identity=_kid(identity), signing=_kid(signing), encryption=_kid(encryption), kept_encryption={},
        )
        ensure_private_dir(home)
        with exclusive_lock(home / LOCK_NAME):
            if meta_path(home).exists():
                raise KeystoreExistsError(home, "this home already holds a keystore")
            for sub in (KEYS_DIR, KEYSETS_DIR):
                ensure_private_dir(home / sub)
            for kid, key in keys.items():
                write_private_file(key_path(home, kid), protection.seal_private_key(key))
            write_private_file(keyset_path(home, 1), doc)
            write_meta(home, meta)
        return cls(home, meta, protection, [read_keyset(doc)], keys, storage_key,
                   randbytes=randbytes, skew=skew, max_lifetime=max_lifetime)

    @classmethod
    def open(cls, home: Path, passphrase: bytes | None, *, randbytes: RandBytes = os.urandom,
             skew: int = DEFAULT_SKEW, max_lifetime: int = DEFAULT_MAX_LIFETIME) -> Keystore:
        """Open the keystore in ``home``; ``WrongPassphraseError`` if ``passphrase`` does not open it."""
        meta = read_meta(home)
        if needs_passphrase(meta.protection) and passphrase is None:
            raise PassphraseUnavailableError("this keystore is protected by a passphrase")
        try:
            protection = load_protection(meta.protection, passphrase)
        except (ValueError, KeyError, TypeError) as e:
            raise KeystoreCorruptError(home, f"protection record: {e}") from e
        try:
            storage_key = protection.unwrap(meta.storage_key, label=_STORAGE_LABEL)
        except UnwrapError as e:
            if isinstance(protection, PassphraseProtection):
                raise WrongPassphraseError(home, "wrong passphrase") from e
            raise KeystoreCorruptError(home, "the storage key record is unreadable") from e
        keys: dict[str, PrivateKey] = {}
        for kid in sorted(meta.referenced_kids()):
            path = key_path(home, kid)
            try:
                keys[kid] = protection.open_private_key(path.read_bytes())
            except FileNotFoundError as e:
                raise KeystoreCorruptError(home, f"private key file {path} is missing") from e
            except ValueError as e:
                raise KeystoreCorruptError(home, f"private key file {path} does not load") from e
        store = cls(home, meta, protection, read_docs(home, meta.version), keys, storage_key,
                    randbytes=randbytes, skew=skew, max_lifetime=max_lifetime)
        store._check_consistent()
        return store

    def _check_consistent(self) -> None:
        ks, meta = self.keyset, self._meta
        wrong: list[str] = []
        if ks.authority != meta.authority:
            wrong.append("authority")
        if _kid(self._keys[meta.identity]) != meta.identity or ks.identity_kid != meta.identity:
            wrong.append("identity key")
        for kid, entry in ((meta.signing, ks.signing_key(meta.signing)),
                           (meta.encryption, ks.encryption_key(meta.encryption))):
            if entry is None or entry.retired_at is not None or _kid(self._keys[kid]) != kid:
                wrong.append(f"key {kid}")
        if not isinstance(self._keys[meta.identity], Ed25519PrivateKey) or not isinstance(
            self._keys[meta.signing], Ed25519PrivateKey
        ) or not all(isinstance(self._keys[k], X25519PrivateKey) for k in (meta.encryption, *meta.kept_encryption)):
            wrong.append("key types")
        if len(self._storage_key) != 32:
            wrong.append("storage key length")
        if wrong:
            raise KeystoreCorruptError(self.home, "keystore files contradict: " + ", ".join(wrong))

    # --- what the node uses ----------------------------------------------------------------------

    @property
    def authority(self) -> str:
        return self._meta.authority

    @property
    def keyset(self) -> Keyset:
        """The newest keyset version."""
        return self._docs[-1].keyset

    @property
    def validity(self) -> int:
        """The keyset validity (seconds) recorded at creation."""
        return self._meta.validity

    @property
    def fingerprint(self) -> str:
        return self.keyset.identity_kid

    def keyset_docs(self) -> list[bytes]:
        """Every signed keyset version, oldest first, as published."""
        return [d.doc for d in self._docs]

    @property
    def identity_signer(self) -> Signer:
        return KeystoreSigner(self._ed25519(self._meta.identity))

    @property
    def signer(self) -> Signer:
        """The operational signing key (envelopes, receipts, tree heads, signed errors); one object
        for this keystore's life (every batch and receipt asks for it; its kid is a thumbprint)."""
        kid = self._meta.signing
        if self._signer is None or self._signer.kid != kid:  # (``rotate`` changes it in place)
            self._signer = KeystoreSigner(self._ed25519(kid))
        return self._signer

    @property
    def storage_key(self) -> bytes:
        return self._storage_key

    def decryption_keys(self, now: int) -> dict[str, OKPKey]:
        """The current encryption key and every retired one still kept at ``now``, by kid."""
        out = {self._meta.encryption: self._decryption_key(self._meta.encryption)}
        for kid, retired_at in self._meta.kept_encryption.items():
            if now <= retired_at + self.max_lifetime + self.skew:
                out[kid] = self._decryption_key(kid)
        return out

    def _decryption_key(self, kid: str) -> OKPKey:
        """One joserfc key object per kid for this keystore's life (it is asked for on every envelope
        opened, and joserfc derives a key's JWK form again for each new object)."""
        key = self._decryption_keys.get(kid)
        if key is None:
            key = self._decryption_keys[kid] = decryption_key(self._x25519(kid))
        return key

    def _ed25519(self, kid: str) -> Ed25519PrivateKey:
        key = self._keys[kid]
        assert isinstance(key, Ed25519PrivateKey)  # checked by _check_consistent
        return key

    def _x25519(self, kid: str) -> X25519PrivateKey:
        key = self._keys[kid]
        assert isinstance(key, X25519PrivateKey)  # checked by _check_consistent
        return key

    # --- changing keys ---------------------------------------------------------------------------

    def rotate(self, now: int, *, signing: bool = True, encryption: bool = True, identity: bool = False,
               validity: int | None = None) -> int:
        """Issue a version with new keys of the kinds asked for; return its version number."""
        return self._issue(now, signing=signing, encryption=encryption, identity=identity,
                           validity=validity or self.validity)

    def reissue_if_due(self, now: int, *, validity: int | None = None) -> int | None:
        """Issue the same keys again once less than half the newest version's validity is left."""
        ks = self.keyset
        if ks.expires_at - now >= (ks.expires_at - ks.issued_at) / 2:
            return None
        return self._issue(now, signing=False, encryption=False, identity=False,
                           validity=validity or self.validity)

    def _kept(self, entry: KeyEntry, now: int) -> bool:
        return entry.retired_at is None or now <= entry.retired_at + self.max_lifetime + self.skew

    def _next_entries(self, entries: tuple[KeyEntry, ...], current: str, new_key: PrivateKey | None,
                      now: int, validity: int, *, grace: int = 0) -> list[KeyEntry]:
        out = []
        for e in entries:
            if e.kid == current and new_key is not None:
                e = dataclasses.replace(e, retired_at=now + grace)
            if self._kept(e, now):
                out.append(e)
        if new_key is not None:
            out.append(key_entry(new_key, nbf=now, exp=_key_exp(now, validity)))
        return out

    def _issue(self, now: int, *, signing: bool, encryption: bool, identity: bool, validity: int) -> int:
        prev, meta = self.keyset, self._meta
        expires_at = now + validity
        # a current key that would expire while the new version is valid is rotated too
        cur_sig, cur_enc = prev.signing_key(meta.signing), prev.encryption_key(meta.encryption)
        signing = signing or cur_sig is None or cur_sig.exp < expires_at
        encryption = encryption or cur_enc is None or cur_enc.exp < expires_at
        new_sig = Ed25519PrivateKey.from_private_bytes(self._randbytes(32)) if signing else None
        new_enc = X25519PrivateKey.from_private_bytes(self._randbytes(32)) if encryption else None
        new_id = Ed25519PrivateKey.from_private_bytes(self._randbytes(32)) if identity else None
        signers: list[Signer] = [self.identity_signer]
        if new_id is not None:
            signers.append(KeystoreSigner(new_id))
        try:
            keyset = next_keyset(
                prev, now=now, validity=validity,
                signing_keys=self._next_entries(prev.signing_keys, meta.signing, new_sig, now, validity,
                                                grace=SIGNING_RETIREMENT_GRACE),
                encryption_keys=self._next_entries(prev.encryption_keys, meta.encryption, new_enc, now, validity),
                identity_jwk=None if new_id is None else public_jwk_of(new_id),
            )
            doc = sign_keyset(keyset, signers)
        except ProtocolError as e:
            raise KeystoreError(self.home, f"cannot issue keyset v{prev.version + 1}: {e}") from e
        new_keys = {_kid(k): k for k in (new_sig, new_enc, new_id) if k is not None}
        kept = {kid: t for kid, t in meta.kept_encryption.items() if now <= t + self.max_lifetime + self.skew}
        if new_enc is not None:
            kept[meta.encryption] = now
        new_meta = dataclasses.replace(
            meta, version=keyset.version, kept_encryption=kept,
            identity=meta.identity if new_id is None else _kid(new_id),
            signing=meta.signing if new_sig is None else _kid(new_sig),
            encryption=meta.encryption if new_enc is None else _kid(new_enc),
        )
        with exclusive_lock(self.home / LOCK_NAME):
            if read_meta(self.home).version != prev.version:
                raise KeystoreError(self.home, "the keystore was changed by another process; open it again")
            for kid, key in new_keys.items():
                write_private_file(key_path(self.home, kid), self._protection.seal_private_key(key))
            write_private_file(keyset_path(self.home, keyset.version), doc)
            write_meta(self.home, new_meta)  # the commit point
            self._keys.update(new_keys)
            self._meta = new_meta
            self._docs = [*self._docs, read_keyset(doc)]
            self._remove_unreferenced_keys()
        return keyset.version

    def _remove_unreferenced_keys(self) -> None:
        keep = self._meta.referenced_kids()
        for kid in [k for k in self._keys if k not in keep]:
            del self._keys[kid]
            self._decryption_keys.pop(kid, None)  # its joserfc form goes with it
        for path in (self.home / KEYS_DIR).glob("*.pem"):
            if path.stem not in keep:
                remove_file(path)
