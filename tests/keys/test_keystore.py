from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from keys import keystore as keystore_module
from keys.errors import (
    KeystoreCorruptError,
    KeystoreError,
    KeystoreExistsError,
    KeystoreMissingError,
    PassphraseUnavailableError,
    SettingError,
    WrongPassphraseError,
)
from keys.keystore import SIGNING_RETIREMENT_GRACE, Keystore
from keys.layout import keystore_needs_passphrase, read_card, read_fingerprint, read_published
from protocol.card import parse_card
from protocol.jose import verify_signature
from protocol.keychain import read_keyset, update_chain, verify_chain
from protocol.keysets import DEFAULT_KEYSET_VALIDITY, DEFAULT_MAX_LIFETIME, DEFAULT_SKEW
from tests.keys.conftest import PASSPHRASE, MakeStore
from tests.seeds import T0

DAY = 86400
KEEP = DEFAULT_MAX_LIFETIME + DEFAULT_SKEW


def test_create_then_open(make_store: MakeStore) -> None:
    ks = make_store()
    again = Keystore.open(ks.home, PASSPHRASE)
    assert again.authority == "FR-MJ"
    assert again.keyset == ks.keyset
    assert again.keyset.version == 1
    assert again.keyset.expires_at == T0 + DEFAULT_KEYSET_VALIDITY
    assert again.keyset_docs() == ks.keyset_docs()
    assert again.fingerprint == again.identity_signer.kid == again.keyset.identity_kid
    assert again.keyset.signing_key(again.signer.kid) is not None
    assert list(again.decryption_keys(T0)) == [again.keyset.current_encryption_key(T0).kid]
    assert len(again.storage_key) == 32 and again.storage_key == ks.storage_key
    assert again.signer.kid != again.identity_signer.kid


def test_first_keyset_is_self_signed_and_verifies(make_store: MakeStore) -> None:
    ks = make_store()
    [doc] = verify_chain(ks.keyset_docs(), fingerprint=ks.fingerprint, now=T0)
    assert doc.kids == (ks.fingerprint,)


def test_signer_signs_with_the_published_key(make_store: MakeStore) -> None:
    ks = make_store()
    entry = ks.keyset.signing_key(ks.signer.kid)
    assert entry is not None
    verify_signature(b"data", ks.signer.sign(b"data"), entry.key)


def test_wrong_passphrase(make_store: MakeStore) -> None:
    ks = make_store()
    with pytest.raises(WrongPassphraseError):
        Keystore.open(ks.home, b"not the passphrase")


def test_protected_keystore_needs_a_passphrase(make_store: MakeStore) -> None:
    ks = make_store()
    assert keystore_needs_passphrase(ks.home)
    with pytest.raises(PassphraseUnavailableError):
        Keystore.open(ks.home, None)


def test_create_refuses_an_existing_home(make_store: MakeStore) -> None:
    make_store()
    with pytest.raises(KeystoreExistsError):
        make_store()


def test_open_without_keystore(tmp_path: Path) -> None:
    with pytest.raises(KeystoreMissingError):
        Keystore.open(tmp_path, PASSPHRASE)


def test_create_without_passphrase_needs_the_explicit_flag(make_store: MakeStore) -> None:
    with pytest.raises(PassphraseUnavailableError):
        make_store(passphrase=None)


def test_insecure_keystore_opens_without_passphrase(make_store: MakeStore) -> None:
    ks = make_store(passphrase=None, insecure_no_passphrase=True)
    assert not keystore_needs_passphrase(ks.home)
    again = Keystore.open(ks.home, None)
    assert again.storage_key == ks.storage_key
    pems = list((ks.home / "keys").glob("*.pem"))
    assert pems and all(p.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----") for p in pems)


def test_private_keys_are_encrypted_at_rest(make_store: MakeStore) -> None:
    ks = make_store()
    pems = list((ks.home / "keys").glob("*.pem"))
    assert len(pems) == 3
    assert all(p.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----") for p in pems)
    meta = json.loads((ks.home / "keystore.json").read_text())
    assert meta["protection"]["kind"] == "scrypt" and meta["protection"]["n"] == 2**12
    assert "raw" not in meta["storage_key"]


def test_every_file_is_0600_and_every_folder_0700(make_store: MakeStore) -> None:
    ks = make_store()
    ks.rotate(T0 + 10)
    paths = list(ks.home.rglob("*"))
    assert {p.name for p in paths} >= {"keystore.json", "1.json", "2.json"}
    for p in paths:
        want = 0o700 if p.is_dir() else 0o600
        assert stat.S_IMODE(p.stat().st_mode) == want, p


@pytest.mark.parametrize(("field", "value"), [
    ("authority", "fr-mj"), ("name", ""), ("endpoint", "ftp://fr.example/"),
])
def test_create_refuses_bad_settings(make_store: MakeStore, tmp_path: Path, field: str, value: str) -> None:
    args = {"authority": "FR-MJ", "name": "France", "endpoint": "https://fr.example/", field: value}
    with pytest.raises(SettingError) as e:
        Keystore.create(tmp_path / "x", authority=args["authority"], name=args["name"],
                        endpoint=args["endpoint"], passphrase=b"p", now=T0)
    assert e.value.setting == field
    assert not (tmp_path / "x").exists()


def test_card_and_fingerprint_need_no_passphrase(make_store: MakeStore) -> None:
    ks = make_store()
    ks.rotate(T0 + 10)
    assert parse_card(read_card(ks.home)) == ks.keyset_docs()
    assert read_fingerprint(ks.home) == ks.fingerprint
    assert [d.version for d in read_published(ks.home)] == [1, 2]


def test_rotation_retires_operational_keys(make_store: MakeStore) -> None:
    ks = make_store()
    old_sig, old_enc = ks.signer.kid, ks.keyset.current_encryption_key(T0).kid
    t = T0 + 100
    assert ks.rotate(t) == 2
    new = ks.keyset
    assert new.version == 2 and new.issued_at == t
    assert ks.signer.kid != old_sig and ks.fingerprint == new.identity_kid
    sig, enc = new.signing_key(old_sig), new.encryption_key(old_enc)
    # a running node may sign with the old key until it notices: it stays valid for a short grace
    assert sig is not None and sig.retired_at == t + SIGNING_RETIREMENT_GRACE
    assert enc is not None and enc.retired_at == t
    assert new.current_encryption_key(t).kid != old_enc
    assert set(ks.decryption_keys(t)) == {old_enc, new.current_encryption_key(t).kid}
    # the retired signing key's private half is gone, the retired encryption key's is kept
    stems = {p.stem for p in (ks.home / "keys").glob("*.pem")}
    assert old_sig not in stems and old_enc in stems
    chain = verify_chain(ks.keyset_docs(), fingerprint=ks.fingerprint, now=t)
    assert chain[1].kids == (ks.fingerprint,)
    reopened = Keystore.open(ks.home, PASSPHRASE)
    assert reopened.signer.kid == ks.signer.kid
    assert set(reopened.decryption_keys(t)) == set(ks.decryption_keys(t))


@pytest.mark.parametrize(("signing", "encryption"), [(True, False), (False, True)])
def test_rotate_one_kind(make_store: MakeStore, signing: bool, encryption: bool) -> None:
    ks = make_store()
    sig, enc = ks.signer.kid, ks.keyset.current_encryption_key(T0).kid
    ks.rotate(T0 + 1, signing=signing, encryption=encryption)
    assert (ks.signer.kid != sig) is signing
    assert (ks.keyset.current_encryption_key(T0 + 1).kid != enc) is encryption


def test_retired_encryption_key_is_kept_until_max_lifetime_plus_skew(make_store: MakeStore) -> None:
    ks = make_store()
    old_enc = ks.keyset.current_encryption_key(T0).kid
    old_sig = ks.signer.kid
    t = T0 + 100
    ks.rotate(t)
    assert old_enc in ks.decryption_keys(t + KEEP)
    assert old_enc not in ks.decryption_keys(t + KEEP + 1)
    # a change at t + KEEP still lists and keeps it ...
    ks.rotate(t + KEEP, signing=False, encryption=False)
    assert ks.keyset.encryption_key(old_enc) is not None
    assert (ks.home / "keys" / f"{old_enc}.pem").exists()
    # ... the first change after that drops it from the keyset and deletes it
    ks.rotate(t + KEEP + 1, signing=False, encryption=False)
    assert ks.keyset.encryption_key(old_enc) is None
    assert ks.keyset.signing_key(old_sig) is not None  # its grace puts it one grace period later
    ks.rotate(t + KEEP + SIGNING_RETIREMENT_GRACE + 1, signing=False, encryption=False)
    assert ks.keyset.signing_key(old_sig) is None
    assert not (ks.home / "keys" / f"{old_enc}.pem").exists()
    assert old_enc not in Keystore.open(ks.home, PASSPHRASE).decryption_keys(t + KEEP + 1)


def test_identity_rotation_is_signed_by_old_and_new(make_store: MakeStore) -> None:
    ks = make_store()
    old_fp, sig = ks.fingerprint, ks.signer.kid
    ks.rotate(T0 + 50, signing=False, encryption=False, identity=True)
    assert ks.fingerprint != old_fp
    assert ks.signer.kid == sig  # operational keys untouched
    doc = read_keyset(ks.keyset_docs()[-1])
    assert doc.kids == (old_fp, ks.fingerprint)
    for fp in (old_fp, ks.fingerprint):
        assert len(verify_chain(ks.keyset_docs(), fingerprint=fp, now=T0 + 50)) == 2
    held = [read_keyset(ks.keyset_docs()[0])]
    assert update_chain(held, ks.keyset_docs(), now=T0 + 50)[-1].keyset.identity_kid == ks.fingerprint
    assert not (ks.home / "keys" / f"{old_fp}.pem").exists()
    assert Keystore.open(ks.home, PASSPHRASE).fingerprint == ks.fingerprint
    assert read_fingerprint(ks.home) == ks.fingerprint


def test_reissue_only_when_less_than_half_the_validity_remains(make_store: MakeStore) -> None:
    ks = make_store()
    half = DEFAULT_KEYSET_VALIDITY // 2
    assert ks.reissue_if_due(T0 + half) is None
    sig, enc = ks.signer.kid, ks.keyset.current_encryption_key(T0).kid
    assert ks.reissue_if_due(T0 + half + 1) == 2
    assert ks.keyset.expires_at == T0 + half + 1 + DEFAULT_KEYSET_VALIDITY
    assert ks.signer.kid == sig and ks.keyset.current_encryption_key(T0 + half + 1).kid == enc
    assert ks.reissue_if_due(T0 + half + 2) is None


def test_reissue_of_an_expired_keyset(make_store: MakeStore) -> None:
    ks = make_store()
    t = T0 + DEFAULT_KEYSET_VALIDITY + 10 * DAY
    assert ks.reissue_if_due(t) == 2
    verify_chain(ks.keyset_docs(), fingerprint=ks.fingerprint, now=t)


def test_keys_near_their_own_expiry_are_rotated_on_reissue(make_store: MakeStore) -> None:
    ks = make_store()
    sig = ks.signer.kid
    entry = ks.keyset.signing_key(sig)
    assert entry is not None and entry.exp == T0 + 365 * DAY
    t = T0 + 300 * DAY  # the new version would outlive the key
    assert ks.reissue_if_due(t) == 2
    assert ks.signer.kid != sig
    assert all(k.exp >= ks.keyset.expires_at for k in ks.keyset.signing_keys if k.retired_at is None)


def test_rotation_uses_the_recorded_validity_unless_told(make_store: MakeStore) -> None:
    ks = make_store(validity=30 * DAY)
    ks.rotate(T0 + 1)
    assert ks.keyset.expires_at == T0 + 1 + 30 * DAY
    ks.rotate(T0 + 2, validity=10 * DAY)
    assert ks.keyset.expires_at == T0 + 2 + 10 * DAY


def test_rotation_before_the_newest_issue_time_is_refused(make_store: MakeStore) -> None:
    ks = make_store()
    with pytest.raises(KeystoreError, match="cannot issue"):
        ks.rotate(T0 - 1)
    assert ks.keyset.version == 1


def test_rotation_by_a_stale_handle_is_refused(make_store: MakeStore) -> None:
    ks = make_store()
    other = Keystore.open(ks.home, PASSPHRASE)
    other.rotate(T0 + 1)
    with pytest.raises(KeystoreError, match="another process"):
        ks.rotate(T0 + 2)


def test_interrupted_rotation_leaves_the_committed_state(make_store: MakeStore,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    ks = make_store()
    card = read_card(ks.home)

    def crash(home: Path, meta: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keystore_module, "write_meta", crash)
    with pytest.raises(OSError):
        ks.rotate(T0 + 10)
    monkeypatch.undo()
    assert (ks.home / "keysets" / "2.json").exists()  # written, never committed
    assert read_card(ks.home) == card
    again = Keystore.open(ks.home, PASSPHRASE)
    assert again.keyset.version == 1
    assert again.rotate(T0 + 20) == 2
    verify_chain(again.keyset_docs(), fingerprint=again.fingerprint, now=T0 + 20)
    # the orphaned private keys of the interrupted rotation are gone
    assert {p.stem for p in (ks.home / "keys").glob("*.pem")} == {
        again.fingerprint, again.signer.kid, *again.decryption_keys(T0 + 20)}


def test_damaged_metadata(make_store: MakeStore) -> None:
    ks = make_store()
    (ks.home / "keystore.json").write_text("{not json")
    with pytest.raises(KeystoreCorruptError):
        Keystore.open(ks.home, PASSPHRASE)
    with pytest.raises(KeystoreCorruptError):
        read_card(ks.home)


def test_missing_private_key(make_store: MakeStore) -> None:
    ks = make_store()
    (ks.home / "keys" / f"{ks.signer.kid}.pem").unlink()
    with pytest.raises(KeystoreCorruptError, match="missing"):
        Keystore.open(ks.home, PASSPHRASE)


def test_swapped_private_key(make_store: MakeStore) -> None:
    ks = make_store()
    keys = ks.home / "keys"
    (keys / f"{ks.signer.kid}.pem").write_bytes((keys / f"{ks.fingerprint}.pem").read_bytes())
    with pytest.raises(KeystoreCorruptError, match="contradict"):
        Keystore.open(ks.home, PASSPHRASE)


def test_missing_keyset_version(make_store: MakeStore) -> None:
    ks = make_store()
    ks.rotate(T0 + 1)
    (ks.home / "keysets" / "1.json").unlink()
    with pytest.raises(KeystoreCorruptError, match="version 1"):
        read_card(ks.home)
