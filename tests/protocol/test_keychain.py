"""Signing, reading and verifying keyset versions and chains (protocol.keychain)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from protocol.errors import Category, KeysetError
from protocol.jose import b64d, b64e
from protocol.keychain import (
    KEYSET_MAX_BYTES,
    next_keyset,
    read_keyset,
    sign_keyset,
    update_chain,
    verify_chain,
    verify_signer_set,
    verify_successor,
)
from protocol.keysets import KEYSET_TYP, Keyset
from protocol.strictjson import canonical
from tests import seeds
from tests.protocol.vectorgen_keysets import DAY, ID1, ID2, INTRUDER, _jws, build_chain

CHAIN = build_chain()
V1, V2, V3, V4 = CHAIN.keysets
D1, D2, D3, D4 = CHAIN.docs
NOW = seeds.T0


def _category(exc: pytest.ExceptionInfo[KeysetError]) -> Category:
    return exc.value.category


def _obj(doc: bytes) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(doc)
    return value


class _LyingSigner:
    """Claims identity-1's kid but signs with another key."""

    kid = ID1.kid

    def sign(self, data: bytes) -> bytes:
        return INTRUDER.sign(data)


# --- sign_keyset ---------------------------------------------------------------------------------


def test_signed_keyset_reads_back_with_signers_in_order() -> None:
    doc = read_keyset(D3)
    assert doc.keyset == V3
    assert doc.doc == D3 == canonical(_obj(D3))
    assert doc.kids == (ID1.kid, ID2.kid)
    assert _obj(D3)["signatures"][0].keys() == {"protected", "signature"}
    assert json.loads(b64d(_obj(D3)["signatures"][0]["protected"])) == {
        "alg": "Ed25519", "kid": ID1.kid, "typ": KEYSET_TYP,
    }


def test_sign_keyset_is_reproducible_and_matches_an_independent_build() -> None:
    assert sign_keyset(V3, [ID1, ID2]) == D3 == _jws(V3, [ID1, ID2])
    assert sign_keyset(V1, [ID1]) == D1 == _jws(V1, [ID1])


@pytest.mark.parametrize(
    ("keyset", "signers"),
    [
        (V1, []),
        (V1, [ID1, ID1]),
        (V3, [ID2, ID1]),  # the new identity must sign last
        (V3, [ID1]),  # the last signer is the keyset's own identity
        (V3, [ID1, INTRUDER, ID2]),
        (dataclasses.replace(V3, version=1), [ID1, ID2]),  # v1 is self-signed only
    ],
)
def test_sign_keyset_refuses_a_wrong_signer_list(keyset: Keyset, signers: list[Any]) -> None:
    with pytest.raises(KeysetError) as e:
        sign_keyset(keyset, signers)
    assert _category(e) == Category.BAD_SIGNER_SET


def test_sign_keyset_catches_a_signer_whose_kid_is_not_its_key() -> None:
    with pytest.raises(KeysetError) as e:
        sign_keyset(V1, [_LyingSigner()])
    assert _category(e) == Category.BAD_SIGNATURE


# --- read_keyset: every refusal --------------------------------------------------------------------


def _header(**members: Any) -> str:
    h = {"alg": "Ed25519", "kid": ID1.kid, "typ": KEYSET_TYP} | members
    return b64e(canonical({k: v for k, v in h.items() if v is not None})).decode()


def _doc(payload: bytes | None = None, sigs: list[Any] | None = None, **extra: Any) -> bytes:
    p = payload if payload is not None else canonical(V1.to_payload())
    obj: dict[str, Any] = {"payload": b64e(p).decode(), "signatures": sigs if sigs is not None else [
        {"protected": _header(), "signature": b64e(b"\0" * 64).decode()},
    ]} | extra
    return canonical(obj)


def _sig(**members: Any) -> dict[str, Any]:
    return {"protected": _header(), "signature": b64e(b"\0" * 64).decode()} | members


@pytest.mark.parametrize(
    ("doc", "category"),
    [
        (b"{" + b" " * KEYSET_MAX_BYTES + b"}", Category.TOO_LARGE),
        (b"not json", Category.MALFORMED),
        (b'{"payload":"e30","payload":"e30","signatures":[]}', Category.MALFORMED),
        (b"[]", Category.MALFORMED),
        (_doc(header={"kid": "x"}), Category.MALFORMED),  # unknown top-level member
        (canonical({"payload": b64e(canonical(V1.to_payload())).decode()}), Category.MALFORMED),
        (canonical({"payload": 1, "signatures": []}), Category.MALFORMED),
        (canonical({"payload": "e30", "signatures": {}}), Category.MALFORMED),
        (_doc(sigs=[]), Category.BAD_SIGNER_SET),
        (_doc(sigs=[_sig(), _sig(), _sig()]), Category.BAD_SIGNER_SET),
        (_doc(sigs=["x"]), Category.MALFORMED),
        (_doc(sigs=[_sig(header={"kid": ID1.kid})]), Category.BAD_HEADER),
        (_doc(sigs=[_sig(extra="x")]), Category.MALFORMED),
        (_doc(sigs=[{"protected": _header()}]), Category.MALFORMED),
        (_doc(sigs=[_sig(signature=5)]), Category.MALFORMED),
        (_doc(sigs=[_sig(protected=_header(typ="comity-receipt+jws"))]), Category.WRONG_TYPE),
        (_doc(sigs=[_sig(protected=_header(typ=None))]), Category.WRONG_TYPE),
        (_doc(sigs=[_sig(protected=_header(alg="EdDSA"))]), Category.FORBIDDEN_ALGORITHM),
        (_doc(sigs=[_sig(protected=_header(alg="none"))]), Category.FORBIDDEN_ALGORITHM),
        (_doc(sigs=[_sig(protected=_header(jwk=ID1.public_jwk))]), Category.FORBIDDEN_ALGORITHM),
        (_doc(sigs=[_sig(protected=_header(zip="DEF"))]), Category.FORBIDDEN_ALGORITHM),
        (_doc(sigs=[_sig(protected=_header(cty="json"))]), Category.BAD_HEADER),
        (_doc(sigs=[_sig(protected=_header(crit=["x"]))]), Category.BAD_HEADER),
        (_doc(sigs=[_sig(protected=_header(kid="short"))]), Category.BAD_HEADER),
        (_doc(sigs=[_sig(protected=_header(kid=None))]), Category.BAD_HEADER),
        (_doc(sigs=[_sig(protected="!!!")]), Category.MALFORMED),
        (_doc(sigs=[_sig(protected=b64e(b'{"typ":"comity-keyset+jws","alg":"Ed25519","kid":"'
                                      + ID1.kid.encode() + b'"}').decode())]), Category.MALFORMED),
        (_doc(sigs=[_sig(protected=b64e(b'{"alg":"Ed25519","alg":"Ed25519","kid":"'
                                      + ID1.kid.encode() + b'","typ":"comity-keyset+jws"}').decode())]),
         Category.MALFORMED),
        (_doc(sigs=[_sig(signature="a+b/")]), Category.MALFORMED),
        (_doc(sigs=[_sig(signature="\u00e9")]), Category.MALFORMED),
        (canonical({"payload": "\u00e9", "signatures": [_sig()]}), Category.MALFORMED),
        (canonical({"payload": "e30=", "signatures": [_sig()]}), Category.MALFORMED),
        (_doc(payload=b"[]"), Category.MALFORMED),
        (_doc(payload=b'{"v":1}'), Category.KEYSET_INVALID),
        (_doc(payload=canonical(V1.to_payload() | {"extra": 1})), Category.KEYSET_INVALID),
        (_doc(payload=canonical(V1.to_payload() | {"version": 0})), Category.KEYSET_INVALID),
        (_doc(payload=canonical(V1.to_payload() | {"v": True})), Category.KEYSET_INVALID),
        (_doc(payload=json.dumps(V1.to_payload()).encode()), Category.MALFORMED),  # not RFC 8785
        (_doc() + b"\n", Category.MALFORMED),
        (json.dumps(_obj(D1), indent=1).encode(), Category.MALFORMED),
    ],
)
def test_read_keyset_refuses(doc: bytes, category: Category) -> None:
    with pytest.raises(KeysetError) as e:
        read_keyset(doc)
    assert _category(e) == category


def test_read_keyset_does_not_verify() -> None:
    doc = read_keyset(_doc())
    assert doc.keyset == V1 and doc.kids == (ID1.kid,)


# --- signer sets and successors ---------------------------------------------------------------------


def test_verify_signer_set_accepts_each_valid_shape() -> None:
    verify_signer_set(None, read_keyset(D1))
    verify_signer_set(V1, read_keyset(D2))
    verify_signer_set(V2, read_keyset(D3))
    verify_signer_set(V3, read_keyset(D4))


def test_a_normal_version_signed_by_the_old_identity_after_rotation_is_refused() -> None:
    # v4 keeps identity-2, so identity-1 (v2's identity) may no longer sign it.
    with pytest.raises(KeysetError) as e:
        verify_successor(V3, read_keyset(_jws(V4, [ID1])))
    assert _category(e) == Category.BAD_SIGNER_SET


def test_rotation_with_a_forged_old_signature_is_a_bad_signature() -> None:
    doc = read_keyset(_jws(V3, [_LyingSigner(), ID2]))  # type: ignore[list-item]
    with pytest.raises(KeysetError) as e:
        verify_successor(V2, doc)
    assert _category(e) == Category.BAD_SIGNATURE


@pytest.mark.parametrize(
    "successor",
    [
        dataclasses.replace(V2, version=3),
        dataclasses.replace(V2, version=1),
        dataclasses.replace(V2, authority="XB-BETA"),
        dataclasses.replace(V2, issued_at=V1.issued_at - 1),
    ],
)
def test_verify_successor_refuses_what_does_not_follow(successor: Keyset) -> None:
    with pytest.raises(KeysetError) as e:
        verify_successor(V1, read_keyset(sign_keyset(successor, [ID1])))
    assert _category(e) == Category.BROKEN_CHAIN


def test_verify_successor_allows_the_same_issue_time() -> None:
    same = dataclasses.replace(V2, issued_at=V1.issued_at)
    assert verify_successor(V1, read_keyset(sign_keyset(same, [ID1]))) == same


# --- verify_chain -------------------------------------------------------------------------------------


def test_verify_chain_returns_every_version() -> None:
    chain = verify_chain(CHAIN.docs, fingerprint=ID1.kid, now=NOW)
    assert [d.doc for d in chain] == list(CHAIN.docs)
    assert [d.keyset for d in chain] == list(CHAIN.keysets)


def test_verify_chain_accepts_a_lone_v1() -> None:
    assert [d.version for d in verify_chain([D1], fingerprint=ID1.kid, now=NOW)] == [1]


@pytest.mark.parametrize(
    ("docs", "category"),
    [
        ([], Category.BROKEN_CHAIN),
        ([D1, D1], Category.BROKEN_CHAIN),
        ([D1, D3], Category.BROKEN_CHAIN),
        ([D2, D1], Category.BROKEN_CHAIN),
        ([D1, D2, D4, D3], Category.BROKEN_CHAIN),
        ([D1, b"{}"], Category.MALFORMED),
    ],
)
def test_verify_chain_refuses(docs: list[bytes], category: Category) -> None:
    with pytest.raises(KeysetError) as e:
        verify_chain(docs, fingerprint=ID1.kid, now=NOW)
    assert _category(e) == category


def test_verify_chain_checks_the_fingerprint_before_signatures() -> None:
    bad = _jws(V2, [INTRUDER])
    with pytest.raises(KeysetError) as e:
        verify_chain([D1, bad], fingerprint=INTRUDER.kid, now=NOW)
    assert _category(e) == Category.FINGERPRINT_MISMATCH


def test_verify_chain_newest_expiry_boundary() -> None:
    verify_chain([D1, D2], fingerprint=ID1.kid, now=V2.expires_at)
    with pytest.raises(KeysetError) as e:
        verify_chain([D1, D2], fingerprint=ID1.kid, now=V2.expires_at + 1)
    assert _category(e) == Category.KEYSET_EXPIRED


# --- update_chain -------------------------------------------------------------------------------------


def _held(n: int) -> list[Any]:
    return verify_chain(CHAIN.docs[:n], fingerprint=ID1.kid, now=NOW)


def test_update_chain_walks_forward_and_keeps_held_documents() -> None:
    held = _held(2)
    result = update_chain(held, CHAIN.docs, now=NOW)
    assert result[:2] == held
    assert [d.doc for d in result] == list(CHAIN.docs)


def test_update_chain_with_nothing_newer_returns_held_unchanged() -> None:
    held = _held(4)
    assert update_chain(held, CHAIN.docs, now=NOW) == held
    assert update_chain(held, [D4], now=NOW) == held
    assert update_chain(held, [D2, D3, D4], now=NOW) == held


def test_update_chain_with_nothing_newer_still_refuses_an_expired_newest() -> None:
    held = _held(2)
    with pytest.raises(KeysetError) as e:
        update_chain(held, [D2], now=V2.expires_at + 1)
    assert _category(e) == Category.KEYSET_EXPIRED


@pytest.mark.parametrize("offered", [[D1], [D1, D2, D3], [D3]])
def test_update_chain_refuses_an_older_newest_as_rollback(offered: list[bytes]) -> None:
    with pytest.raises(KeysetError) as e:
        update_chain(_held(4), offered, now=NOW)
    assert _category(e) == Category.ROLLBACK


def test_equivocation_is_reported_before_rollback() -> None:
    other_v2 = sign_keyset(dataclasses.replace(V2, name="Another name"), [ID1])
    with pytest.raises(KeysetError) as e:
        update_chain(_held(4), [D1, other_v2], now=NOW)
    assert _category(e) == Category.EQUIVOCATION


def test_equivocation_of_v1() -> None:
    other_v1 = sign_keyset(dataclasses.replace(V1, name="Another name"), [ID1])
    with pytest.raises(KeysetError) as e:
        update_chain(_held(2), [other_v1], now=NOW)
    assert _category(e) == Category.EQUIVOCATION


def test_a_differing_document_that_does_not_verify_is_not_equivocation() -> None:
    forged = _jws(V2, [INTRUDER])
    with pytest.raises(KeysetError) as e:
        update_chain(_held(2), [forged], now=NOW)
    assert _category(e) == Category.BAD_SIGNER_SET
    flipped = bytearray(b64d(_obj(D2)["signatures"][0]["signature"]))
    flipped[5] ^= 0x80
    obj = _obj(D2)
    obj["signatures"][0]["signature"] = b64e(bytes(flipped)).decode()
    with pytest.raises(KeysetError) as e:
        update_chain(_held(2), [canonical(obj)], now=NOW)
    assert _category(e) == Category.BAD_SIGNATURE


def test_update_chain_refuses_another_authority() -> None:
    beta = seeds.keyset("XB-BETA")
    doc = sign_keyset(beta, [seeds.signer("XB-BETA/identity")])
    with pytest.raises(KeysetError) as e:
        update_chain(_held(2), [doc], now=NOW)
    assert _category(e) == Category.BROKEN_CHAIN


@pytest.mark.parametrize(
    "offered",
    [[], [D4, D3], [D3, D3], [D4], [D1, D2, D4]],
)
def test_update_chain_refuses_a_broken_offer(offered: list[bytes]) -> None:
    with pytest.raises(KeysetError) as e:
        update_chain(_held(2), offered, now=NOW)
    assert _category(e) == Category.BROKEN_CHAIN


def test_update_chain_needs_a_held_chain() -> None:
    with pytest.raises(KeysetError) as e:
        update_chain([], [D1], now=NOW)
    assert _category(e) == Category.BROKEN_CHAIN


def test_update_chain_refuses_what_a_partial_held_chain_cannot_judge() -> None:
    held = [read_keyset(D3), read_keyset(D4)]  # a held chain that does not start at v1
    with pytest.raises(KeysetError) as e:
        update_chain(held, [D1, D2, D3, D4], now=NOW)
    assert _category(e) == Category.BROKEN_CHAIN
    other_v3 = sign_keyset(dataclasses.replace(V3, name="Another name"), [ID1, ID2])
    with pytest.raises(KeysetError) as e:
        update_chain(held, [other_v3, D4], now=NOW)
    assert _category(e) == Category.BROKEN_CHAIN


def test_update_chain_refuses_a_bad_signer_set_in_new_versions() -> None:
    with pytest.raises(KeysetError) as e:
        update_chain(_held(2), [_jws(V3, [ID2])], now=NOW)
    assert _category(e) == Category.BAD_SIGNER_SET


def test_update_chain_walks_past_expired_intermediate_versions() -> None:
    held = verify_chain([D1], fingerprint=ID1.kid, now=V1.issued_at)
    now = V3.expires_at + DAY  # v1, v2, v3 expired
    assert [d.version for d in update_chain(held, [D2, D3, D4], now=now)] == [1, 2, 3, 4]


# --- next_keyset --------------------------------------------------------------------------------------


def test_next_keyset_builds_the_following_version() -> None:
    ks = next_keyset(V3, now=V3.issued_at + DAY, signing_keys=V3.signing_keys,
                     encryption_keys=V3.encryption_keys, endpoint="https://alpha.example/v2", validity=10 * DAY)
    assert (ks.version, ks.issued_at, ks.expires_at) == (4, V3.issued_at + DAY, V3.issued_at + 11 * DAY)
    assert ks.identity_kid == ID2.kid and ks.endpoint == "https://alpha.example/v2" and ks.name == V3.name
    verify_successor(V3, read_keyset(sign_keyset(ks, [ID2])))


def test_next_keyset_with_a_new_identity_is_a_rotation() -> None:
    ks = next_keyset(V2, now=V3.issued_at, identity_jwk=ID2.public_jwk, signing_keys=V3.signing_keys,
                     encryption_keys=V3.encryption_keys)
    assert ks == V3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"now": V2.issued_at - 1},
        {"signing_keys": ()},
        {"encryption_keys": ()},
        {"validity": 0},
        {"endpoint": "ftp://alpha.example/"},
        {"signing_keys": V2.encryption_keys},
    ],
)
def test_next_keyset_refuses_an_invalid_version(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"now": V2.issued_at + DAY, "signing_keys": V2.signing_keys,
                            "encryption_keys": V2.encryption_keys} | kwargs
    with pytest.raises(KeysetError) as e:
        next_keyset(V2, **args)
    assert _category(e) == Category.KEYSET_INVALID
