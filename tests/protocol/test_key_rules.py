"""The two rule sets for keys (protocol.keysets): acceptance and archival verification.

The keys come from the vector chain (tests.protocol.vectorgen_keysets): signing-1 is retired
in v2, signing-2 is current in v2..v3 and revoked in v4 (revoked_at one day before v4's
issue time), signing-3 is current in v4.
"""

from __future__ import annotations

import pytest

from protocol.errors import Category, KeysetError
from protocol.keychain import next_keyset, sign_keyset, verify_chain
from protocol.keysets import (
    DEFAULT_MAX_LIFETIME,
    DEFAULT_SKEW,
    Keyset,
    accept_signing_key,
    archival_signing_key,
)
from tests import seeds
from tests.protocol.vectorgen_keysets import DAY, ID1, YEAR, build_chain

CHAIN = build_chain()
V1, V2, V3, V4 = CHAIN.keysets
SIG1, SIG2, SIG3 = (seeds.ed25519(f"XA-ALPHA/signing-{i}") for i in (1, 2, 3))
K1, K2, K3 = (k.thumbprint() for k in (SIG1, SIG2, SIG3))
RETIRED_AT = V2.issued_at
GRACE_END = RETIRED_AT + DEFAULT_MAX_LIFETIME + DEFAULT_SKEW


def _accept_category(keyset: Keyset, kid: str, *, t: int, now: int) -> Category:
    with pytest.raises(KeysetError) as e:
        accept_signing_key(keyset, kid, t=t, now=now)
    return e.value.category


# --- acceptance ----------------------------------------------------------------------------------------


def test_a_current_key_is_accepted() -> None:
    key = accept_signing_key(V2, K2, t=V2.issued_at + DAY, now=V2.issued_at + DAY)
    assert key.thumbprint() == K2


def test_a_retired_key_is_accepted_for_earlier_artefacts_until_the_grace_period_ends() -> None:
    assert accept_signing_key(V2, K1, t=RETIRED_AT, now=RETIRED_AT).thumbprint() == K1
    assert accept_signing_key(V2, K1, t=RETIRED_AT - DAY, now=GRACE_END).thumbprint() == K1
    assert _accept_category(V2, K1, t=RETIRED_AT, now=GRACE_END + 1) == Category.RETIRED_KEY


def test_a_retired_key_is_refused_for_artefacts_after_its_retirement() -> None:
    assert _accept_category(V2, K1, t=RETIRED_AT + 1, now=RETIRED_AT + 1) == Category.RETIRED_KEY


def test_a_revoked_key_is_accepted_for_nothing() -> None:
    revoked_at = V4.issued_at - DAY
    for t in (V2.issued_at, revoked_at - 1, revoked_at, V4.issued_at):
        assert _accept_category(V4, K2, t=t, now=V4.issued_at) == Category.REVOKED_KEY


def test_an_unknown_kid_is_refused() -> None:
    assert _accept_category(V4, K1, t=V4.issued_at, now=V4.issued_at) == Category.UNKNOWN_SIGNING_KEY
    assert _accept_category(V4, ID1.kid, t=V4.issued_at, now=V4.issued_at) == Category.UNKNOWN_SIGNING_KEY


def test_a_key_before_its_nbf_allows_only_the_skew() -> None:
    nbf = V4.signing_key(K3).nbf  # type: ignore[union-attr]
    assert accept_signing_key(V4, K3, t=nbf - DEFAULT_SKEW, now=nbf).thumbprint() == K3
    assert _accept_category(V4, K3, t=nbf - DEFAULT_SKEW - 1, now=nbf) == Category.UNKNOWN_SIGNING_KEY


def test_a_key_past_its_exp_is_refused() -> None:
    exp = V4.signing_key(K3).exp  # type: ignore[union-attr]
    assert accept_signing_key(V4, K3, t=exp, now=exp).thumbprint() == K3
    assert _accept_category(V4, K3, t=exp + 1, now=exp + 1) == Category.RETIRED_KEY


# --- archival ------------------------------------------------------------------------------------------


def _archival_category(chain: list[Keyset], kid: str, *, t: int, learned: dict[str, int] | None = None) -> Category:
    with pytest.raises(KeysetError) as e:
        archival_signing_key(chain, kid, t=t, revocations_learned=learned)
    return e.value.category


def test_archival_accepts_a_retired_key_within_nbf_to_retired_at() -> None:
    chain = list(CHAIN.keysets)
    for t in (V1.issued_at, RETIRED_AT):
        decision = archival_signing_key(chain, K1, t=t)
        assert decision.key.thumbprint() == K1 and decision.version == 1
        assert "archival" in decision.rule and str(RETIRED_AT) in decision.rule


def test_archival_refuses_a_retired_key_after_retired_at_even_where_an_older_version_lists_it_live() -> None:
    assert _archival_category(list(CHAIN.keysets), K1, t=RETIRED_AT + 1) == Category.RETIRED_KEY


def test_archival_refuses_a_key_before_its_nbf() -> None:
    assert _archival_category(list(CHAIN.keysets), K3, t=V4.issued_at - 1) == Category.RETIRED_KEY


def test_archival_refuses_an_unknown_kid() -> None:
    assert _archival_category(list(CHAIN.keysets), ID1.kid, t=V1.issued_at) == Category.UNKNOWN_SIGNING_KEY


def test_archival_judges_revocation_by_the_learned_time_not_revoked_at() -> None:
    chain = list(CHAIN.keysets)
    signer_revoked_at = V4.issued_at - DAY
    # after the signer-chosen revoked_at, before anyone could learn of it: still counts
    assert archival_signing_key(chain, K2, t=signer_revoked_at + 3600).version == 2
    assert _archival_category(chain, K2, t=V4.issued_at) == Category.REVOKED_KEY
    # a node that recorded an earlier learning time (e.g. told by telephone) uses it
    learned = {K2: V3.issued_at + DAY}
    assert archival_signing_key(chain, K2, t=V3.issued_at + DAY - 1, revocations_learned=learned).version == 2
    assert _archival_category(chain, K2, t=V3.issued_at + DAY, learned=learned) == Category.REVOKED_KEY


def test_archival_uses_the_recorded_learning_time_when_it_is_later_than_issued_at() -> None:
    chain = list(CHAIN.keysets)
    learned = {K2: V4.issued_at + 5 * DAY}  # this node fetched v4 five days after its issued_at
    t = V4.issued_at + DAY  # before this node learnt of the revocation
    assert archival_signing_key(chain, K2, t=t, revocations_learned=learned).version == 2


def test_a_two_year_old_artefact_verifies_under_the_keys_valid_then() -> None:
    """An old chain walked today (intermediate versions long expired), archival at t two years ago."""
    now = seeds.T0
    t_old = now - 2 * YEAR
    old_sig, new_sig = seeds.ed25519("XA-OLD/signing-old"), seeds.ed25519("XA-OLD/signing-new")
    enc = seeds.x25519("XA-OLD/encryption")
    ident = seeds.signer("XA-OLD/identity")
    v1 = Keyset(
        authority="XA-OLD", name="Old", endpoint="https://old.example/", version=1,
        issued_at=t_old - 30 * DAY, expires_at=t_old + 60 * DAY, identity_jwk=ident.public_jwk,
        signing_keys=(seeds.entry(old_sig, nbf=t_old - 30 * DAY, exp=t_old + YEAR),),
        encryption_keys=(seeds.entry(enc, nbf=t_old - 30 * DAY, exp=now + YEAR),),
    )
    retire = t_old + 30 * DAY
    v2 = next_keyset(
        v1, now=retire,
        signing_keys=(seeds.entry(old_sig, nbf=t_old - 30 * DAY, exp=t_old + YEAR, retired_at=retire),
                      seeds.entry(new_sig, nbf=retire, exp=now + YEAR)),
        encryption_keys=v1.encryption_keys,
    )
    v3 = next_keyset(v2, now=now - DAY, signing_keys=(seeds.entry(new_sig, nbf=retire, exp=now + YEAR),),
                     encryption_keys=v1.encryption_keys)
    docs = [sign_keyset(ks, [ident]) for ks in (v1, v2, v3)]
    chain = [d.keyset for d in verify_chain(docs, fingerprint=ident.kid, now=now)]
    decision = archival_signing_key(chain, old_sig.thumbprint(), t=t_old)
    assert decision.version == 1 and decision.key.thumbprint() == old_sig.thumbprint()
    # the acceptance rules refuse it today: the newest version no longer lists the key
    with pytest.raises(KeysetError) as e:
        accept_signing_key(chain[-1], old_sig.thumbprint(), t=t_old, now=now)
    assert e.value.category == Category.UNKNOWN_SIGNING_KEY
    # and the key held in v2 is refused by acceptance long after its grace period
    with pytest.raises(KeysetError) as e:
        accept_signing_key(chain[1], old_sig.thumbprint(), t=t_old, now=now)
    assert e.value.category == Category.RETIRED_KEY


@pytest.mark.parametrize("v", [True, 1.0])
def test_keyset_model_refuses_a_v_that_is_not_the_integer_1(v: object) -> None:
    with pytest.raises(KeysetError) as e:
        Keyset.from_payload(V1.to_payload() | {"v": v})
    assert e.value.category == Category.KEYSET_INVALID


def test_every_keyset_of_the_vector_chain_round_trips_through_the_strict_model() -> None:
    for ks in CHAIN.keysets:
        assert Keyset.from_payload(ks.to_payload()) == ks
