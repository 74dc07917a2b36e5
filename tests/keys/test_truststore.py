from __future__ import annotations

import dataclasses
import stat
from pathlib import Path

import pytest

from keys.errors import TrustError, TrustStoreCorruptError, UnknownPeerError
from keys.truststore import FileTrustStore, PeerRecord, pin_peer, refresh_peer
from protocol.card import build_card
from protocol.errors import Category
from protocol.jose import public_jwk
from protocol.keychain import next_keyset, sign_keyset
from protocol.keysets import Keyset
from tests.seeds import T0, ed25519, entry, keyset, signer, x25519

DAY = 86400
OWN = "DE-BFJ"


class Chain:
    """A peer's keyset chain built from seeded keys, one version at a time."""

    def __init__(self, authority: str = "FR-MJ", *, label: str = "fr", issued_at: int = T0 - DAY) -> None:
        self.label = label
        self.identity = f"{label}/identity"
        v1 = keyset(authority, label=label, issued_at=issued_at)
        self.keysets: list[Keyset] = [v1]
        self.docs: list[bytes] = [sign_keyset(v1, [signer(self.identity)])]

    @property
    def fingerprint(self) -> str:
        return self.keysets[-1].identity_kid

    def card(self, upto: int | None = None) -> bytes:
        return build_card(self.docs[:upto])

    def add(self, *, now: int, endpoint: str | None = None, new_identity: str | None = None,
            signers: list[str] | None = None, key: str | None = None) -> bytes:
        prev = self.keysets[-1]
        n = prev.version + 1
        ks = next_keyset(
            prev, now=now, endpoint=endpoint,
            signing_keys=[entry(ed25519(key or f"{self.label}/signing/{n}"), nbf=now - 1)],
            encryption_keys=[entry(x25519(key or f"{self.label}/encryption/{n}"), nbf=now - 1)],
            identity_jwk=None if new_identity is None else public_jwk(ed25519(new_identity)),
        )
        if signers is None:
            signers = [self.identity] if new_identity is None else [self.identity, new_identity]
        doc = sign_keyset(ks, [signer(s) for s in signers])
        if new_identity is not None:
            self.identity = new_identity
        self.keysets.append(ks)
        self.docs.append(doc)
        return doc


@pytest.fixture
def store(tmp_path: Path) -> FileTrustStore:
    return FileTrustStore(tmp_path)


def pin(store: FileTrustStore, card: bytes, fp: str, now: int = T0) -> PeerRecord:
    return pin_peer(store, card, fp, now=now, own_authority=OWN).record


def refused(store: FileTrustStore, card: bytes, fp: str, now: int = T0) -> TrustError:
    with pytest.raises(TrustError) as e:
        pin_peer(store, card, fp, now=now, own_authority=OWN)
    return e.value


# --- a new peer ------------------------------------------------------------------------------------


def test_pin_a_new_peer(store: FileTrustStore) -> None:
    c = Chain()
    result = pin_peer(store, c.card(), c.fingerprint, now=T0, own_authority=OWN)
    assert result.outcome == "pinned" and result.previous_version is None
    r = result.record
    assert (r.authority, r.endpoint, r.pending_endpoint, r.fingerprint) == (
        "FR-MJ", "https://fr-mj.example/", None, c.fingerprint)
    assert r.chain == tuple(c.docs) and r.keyset == c.keysets[-1]
    assert r.pinned_at == r.updated_at == T0
    assert store.get("FR-MJ") == r
    assert store.list() == [r]


def test_pin_refuses_a_wrong_fingerprint(store: FileTrustStore) -> None:
    c = Chain()
    e = refused(store, c.card(), Chain("FR-MJ", label="other").fingerprint)
    assert e.category is Category.FINGERPRINT_MISMATCH
    assert store.get("FR-MJ") is None


def test_pin_refuses_a_malformed_fingerprint(store: FileTrustStore) -> None:
    assert refused(store, Chain().card(), "abc").category is Category.FINGERPRINT_MISMATCH


def test_pin_refuses_our_own_card(store: FileTrustStore) -> None:
    c = Chain(OWN, label="de")
    e = refused(store, c.card(), c.fingerprint)
    assert e.rule == "own_authority" and e.category is None


@pytest.mark.parametrize(("card", "category"), [
    (b"not json", Category.MALFORMED),
    (b'{"comity_card": 2, "keysets": []}', Category.MALFORMED),
    (b'{"comity_card": 1, "keysets": [{"payload": "e30", "signatures": []}]}', Category.BAD_SIGNER_SET),
])
def test_pin_refuses_a_malformed_card(store: FileTrustStore, card: bytes, category: Category) -> None:
    e = refused(store, card, Chain().fingerprint)
    assert e.category is category and e.rule == category.value


def test_pin_refuses_an_expired_card(store: FileTrustStore) -> None:
    c = Chain()
    e = refused(store, c.card(), c.fingerprint, now=c.keysets[-1].expires_at + 1)
    assert e.category is Category.KEYSET_EXPIRED


def test_pin_walks_an_expired_intermediate_version(store: FileTrustStore) -> None:
    c = Chain(issued_at=T0 - 200 * DAY)  # v1 expired long before T0
    c.add(now=T0 - DAY)
    assert pin(store, c.card(), c.fingerprint).keyset.version == 2


def test_pin_refuses_a_chain_not_starting_at_v1(store: FileTrustStore) -> None:
    c = Chain()
    c.add(now=T0)
    e = refused(store, build_card(c.docs[1:]), c.fingerprint)
    assert e.category is Category.BROKEN_CHAIN


# --- a pinned peer ---------------------------------------------------------------------------------


def test_newer_card_with_the_pinned_fingerprint(store: FileTrustStore) -> None:
    c = Chain()
    fp1 = c.fingerprint
    pin(store, c.card(), fp1)
    c.add(now=T0 + 10)
    c.add(now=T0 + 20)
    result = pin_peer(store, c.card(), fp1, now=T0 + 30, own_authority=OWN)
    assert result.outcome == "updated" and result.previous_version == 1
    assert result.record.keyset.version == 3
    assert result.record.pinned_at == T0 and result.record.updated_at == T0 + 30


def test_after_identity_rotation_both_fingerprints_work(store: FileTrustStore, tmp_path: Path) -> None:
    c = Chain()
    fp1 = c.fingerprint
    pin(store, c.card(), fp1)
    c.add(now=T0 + 10)
    c.add(now=T0 + 20, new_identity="fr/identity-2")
    fp2 = c.fingerprint
    assert fp2 != fp1
    other = FileTrustStore(tmp_path / "other")
    pin(other, c.card(upto=1), fp1)
    assert pin(store, c.card(), fp1).keyset.version == 3
    r = pin_peer(other, c.card(), fp2, now=T0, own_authority=OWN)
    assert r.record.keyset.version == 3 and r.replaced_fingerprint == fp1
    assert r.record.fingerprint == fp2 == r.record.current_fingerprint


def test_pinned_peer_refuses_an_unrelated_fingerprint(store: FileTrustStore) -> None:
    c = Chain()
    pin(store, c.card(), c.fingerprint)
    c.add(now=T0 + 10)
    e = refused(store, c.card(), Chain("FR-MJ", label="other").fingerprint)
    assert e.category is Category.FINGERPRINT_MISMATCH
    assert store.get("FR-MJ").keyset.version == 1  # type: ignore[union-attr]


def test_old_card_is_a_rollback(store: FileTrustStore) -> None:
    c = Chain()
    old = c.card()
    c.add(now=T0 + 10)
    pin(store, c.card(), c.fingerprint)
    assert refused(store, old, c.fingerprint).category is Category.ROLLBACK


def test_same_version_other_bytes_is_equivocation(store: FileTrustStore) -> None:
    c = Chain()
    fork = Chain()
    c.add(now=T0 + 10)
    fork.add(now=T0 + 10, key="fork")
    pin(store, c.card(), c.fingerprint)
    assert refused(store, fork.card(), c.fingerprint).category is Category.EQUIVOCATION


def test_impostor_chain_for_a_pinned_authority(store: FileTrustStore) -> None:
    c = Chain()
    pin(store, c.card(), c.fingerprint)
    impostor = Chain("FR-MJ", label="impostor")
    impostor.add(now=T0 + 10)
    e = refused(store, impostor.card(), impostor.fingerprint)
    assert e.category is Category.EQUIVOCATION


def test_gap_in_the_offered_chain_is_broken(store: FileTrustStore) -> None:
    c = Chain()
    pin(store, c.card(), c.fingerprint)
    c.add(now=T0 + 10)
    c.add(now=T0 + 20)
    e = refused(store, build_card([c.docs[0], c.docs[2]]), c.fingerprint)
    assert e.category is Category.BROKEN_CHAIN


def test_identity_rotation_signed_by_the_new_key_alone(store: FileTrustStore) -> None:
    c = Chain()
    pin(store, c.card(), c.fingerprint)
    c.add(now=T0 + 10, new_identity="fr/identity-2", signers=["fr/identity-2"])
    assert refused(store, c.card(), c.fingerprint).category is Category.BAD_SIGNER_SET


def test_same_card_again_changes_nothing(store: FileTrustStore) -> None:
    c = Chain()
    pin(store, c.card(), c.fingerprint)
    result = pin_peer(store, c.card(), c.fingerprint, now=T0 + 5, own_authority=OWN)
    assert result.outcome == "unchanged" and result.record.updated_at == T0


# --- endpoints -------------------------------------------------------------------------------------


def test_fetched_endpoint_change_waits_for_the_administrator(store: FileTrustStore) -> None:
    c = Chain()
    pin(store, c.card(), c.fingerprint)
    c.add(now=T0 + 10, endpoint="https://new.fr.example/")
    r = refresh_peer(store, "FR-MJ", c.docs, now=T0 + 20)
    assert r.keyset.version == 2
    assert r.endpoint == "https://fr-mj.example/" and r.pending_endpoint == "https://new.fr.example/"
    assert store.get("FR-MJ") == r
    # the administrator re-runs `peer add` with the new card: accepted
    result = pin_peer(store, c.card(), c.fingerprint, now=T0 + 30, own_authority=OWN)
    assert result.outcome == "updated" and result.replaced_endpoint == "https://fr-mj.example/"
    assert result.record.endpoint == "https://new.fr.example/" and result.record.pending_endpoint is None


def test_refresh_back_to_the_endpoint_in_use_clears_pending(store: FileTrustStore) -> None:
    c = Chain()
    pin(store, c.card(), c.fingerprint)
    c.add(now=T0 + 10, endpoint="https://new.fr.example/")
    refresh_peer(store, "FR-MJ", c.docs, now=T0 + 20)
    c.add(now=T0 + 30, endpoint="https://fr-mj.example/")
    assert refresh_peer(store, "FR-MJ", c.docs[2:], now=T0 + 40).pending_endpoint is None


def test_administrator_add_applies_an_endpoint_change_directly(store: FileTrustStore) -> None:
    c = Chain()
    pin(store, c.card(), c.fingerprint)
    c.add(now=T0 + 10, endpoint="https://new.fr.example/")
    assert pin(store, c.card(), c.fingerprint).endpoint == "https://new.fr.example/"


def test_refresh_applies_the_chain_rules(store: FileTrustStore) -> None:
    c = Chain()
    old = list(c.docs)
    c.add(now=T0 + 10)
    pin(store, c.card(), c.fingerprint)
    with pytest.raises(TrustError) as e:
        refresh_peer(store, "FR-MJ", old, now=T0)
    assert e.value.category is Category.ROLLBACK
    assert refresh_peer(store, "FR-MJ", c.docs, now=T0 + 50).updated_at == T0  # nothing new


def test_refresh_of_an_unknown_peer(store: FileTrustStore) -> None:
    with pytest.raises(UnknownPeerError):
        refresh_peer(store, "FR-MJ", Chain().docs, now=T0)


# --- the file store --------------------------------------------------------------------------------


def test_file_store_round_trip_and_modes(store: FileTrustStore, tmp_path: Path) -> None:
    c = Chain()
    r = pin(store, c.card(), c.fingerprint)
    r = dataclasses.replace(r, name="Ministère de la Justice")
    store.put(r)
    assert FileTrustStore(tmp_path).get("FR-MJ") == r
    path = tmp_path / "peers" / "FR-MJ.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_file_store_remove(store: FileTrustStore) -> None:
    c = Chain()
    pin(store, c.card(), c.fingerprint)
    store.remove("FR-MJ")
    assert store.get("FR-MJ") is None and store.list() == []
    with pytest.raises(UnknownPeerError):
        store.remove("FR-MJ")


@pytest.mark.parametrize("bad", ["../keystore", "fr-mj", ""])
def test_file_store_never_builds_paths_from_bad_ids(store: FileTrustStore, bad: str) -> None:
    assert store.get(bad) is None
    with pytest.raises(UnknownPeerError):
        store.remove(bad)


def test_file_store_damaged_record(store: FileTrustStore, tmp_path: Path) -> None:
    c = Chain()
    pin(store, c.card(), c.fingerprint)
    (tmp_path / "peers" / "FR-MJ.json").write_text('{"format": 1}')
    with pytest.raises(TrustStoreCorruptError):
        store.get("FR-MJ")


def test_file_store_record_under_the_wrong_name(store: FileTrustStore, tmp_path: Path) -> None:
    c = Chain()
    pin(store, c.card(), c.fingerprint)
    (tmp_path / "peers" / "FR-MJ.json").rename(tmp_path / "peers" / "IT-MG.json")
    with pytest.raises(TrustStoreCorruptError):
        store.get("IT-MG")
