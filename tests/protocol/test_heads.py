"""protocol.heads: signed tree heads, round trip and every refusal with its category."""

from __future__ import annotations

import json
from typing import Any

import pytest

from protocol.artifacts import ArchivalKeys, LiveKeys
from protocol.errors import ArtifactError, Category
from protocol.heads import HEAD_TYP, TreeHead, parse_head, sign_head, verify_head
from protocol.jose import b64d, b64e, sign_compact
from protocol.merkle import EMPTY_ROOT
from protocol.receipts import Receipt, sign_receipt
from protocol.strictjson import canonical
from tests import seeds
from tests.protocol import vectorgen_merkle

AUTH = "GB-UKCA"
ROOT8 = "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
SIGNER = seeds.signer("GB-UKCA/signing")
KEYSET = seeds.keyset(AUTH)
LIVE = LiveKeys(KEYSET, now=seeds.T0)
HEAD = TreeHead(iss=AUTH, log="exchange", tree_size=8, root=ROOT8, at=seeds.T0)


def payload(**changes: Any) -> dict[str, Any]:
    p = HEAD.to_payload()
    for k, v in changes.items():
        if v is ...:
            del p[k]
        else:
            p[k] = v
    return p


def refused(token: bytes, **kwargs: Any) -> Category:
    with pytest.raises(ArtifactError) as e:
        verify_head(token, **{"keys": LIVE, "authority": AUTH, **kwargs})
    return e.value.category


def test_round_trip_live_and_archival() -> None:
    token = sign_head(HEAD, signer=SIGNER)
    assert verify_head(token, keys=LIVE, authority=AUTH) == HEAD
    assert verify_head(token, keys=LIVE, authority=AUTH, log="exchange") == HEAD
    assert verify_head(token, keys=ArchivalKeys(chain=[KEYSET]), authority=AUTH) == HEAD
    assert HEAD.root_bytes == bytes.fromhex(ROOT8)


def test_header_and_payload_are_canonical() -> None:
    h, p, _ = sign_head(HEAD, signer=SIGNER).split(b".")
    assert b64d(h) == canonical({"alg": "Ed25519", "kid": SIGNER.kid, "typ": HEAD_TYP})
    assert b64d(p) == canonical({"at": seeds.T0, "iss": AUTH, "log": "exchange", "root": ROOT8,
                                 "tree_size": 8, "v": 1})


def test_empty_access_log_head() -> None:
    head = TreeHead(iss=AUTH, log="access", tree_size=0, root=EMPTY_ROOT.hex(), at=seeds.T0)
    assert verify_head(sign_head(head, signer=SIGNER), keys=LIVE, authority=AUTH, log="access") == head


def test_receipt_token_is_wrong_type() -> None:
    receipt = Receipt(iss=AUTH, aud="FR-MJ", id="0" * 32, envelope_sha256="1" * 64, received_at=seeds.T0,
                      leaf_index=0, tree_size=1, root="2" * 64)
    assert refused(sign_receipt(receipt, signer=SIGNER)) is Category.WRONG_TYPE


def test_tampered_payload_is_bad_signature() -> None:
    h, _, s = sign_head(HEAD, signer=SIGNER).split(b".")
    forged = b64e(canonical(payload(tree_size=9)))
    assert refused(h + b"." + forged + b"." + s) is Category.BAD_SIGNATURE


def test_flipped_signature_is_bad_signature() -> None:
    h, p, s = sign_head(HEAD, signer=SIGNER).split(b".")
    sig = bytearray(b64d(s))
    sig[0] ^= 1
    assert refused(h + b"." + p + b"." + b64e(bytes(sig))) is Category.BAD_SIGNATURE


def test_unknown_signer() -> None:
    token = sign_head(HEAD, signer=seeds.signer("FR-MJ/signing"))
    assert refused(token) is Category.UNKNOWN_SIGNING_KEY


def test_archival_rules_apply_at_the_head_time() -> None:
    old = TreeHead(iss=AUTH, log="exchange", tree_size=8, root=ROOT8, at=seeds.T0 - 10 * 86400)
    token = sign_head(old, signer=SIGNER)
    with pytest.raises(ArtifactError) as e:
        verify_head(token, keys=ArchivalKeys(chain=[KEYSET]), authority=AUTH)
    assert e.value.category is Category.RETIRED_KEY


def test_head_of_another_authority() -> None:
    token = sign_head(TreeHead(iss="FR-MJ", log="exchange", tree_size=8, root=ROOT8, at=seeds.T0), signer=SIGNER)
    assert refused(token) is Category.BAD_PROOF


def test_head_of_another_log() -> None:
    token = sign_head(HEAD, signer=SIGNER)
    assert refused(token, log="access") is Category.BAD_PROOF


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(payload(extra=1), id="extra member"),
        pytest.param(payload(at=...), id="missing at"),
        pytest.param(payload(v=2), id="v 2"),
        pytest.param(payload(v=True), id="v true"),
        pytest.param(payload(iss="gb-ukca"), id="iss not an authority id"),
        pytest.param(payload(iss=7), id="iss not a string"),
        pytest.param(payload(log="peers"), id="unknown log"),
        pytest.param(payload(log=None), id="log null"),
        pytest.param(payload(tree_size=-1), id="negative size"),
        pytest.param(payload(tree_size="8"), id="size as string"),
        pytest.param(payload(tree_size=True), id="size as bool"),
        pytest.param(payload(root=ROOT8.upper()), id="root uppercase"),
        pytest.param(payload(root=ROOT8[:-2]), id="root short"),
        pytest.param(payload(root=list(bytes.fromhex(ROOT8))), id="root not a string"),
        pytest.param(payload(tree_size=0), id="size 0 with a non-empty root"),
        pytest.param(payload(at="2027-01-15"), id="at not a NumericDate"),
    ],
)
def test_malformed_payload(bad: dict[str, Any]) -> None:
    token = sign_compact(typ=HEAD_TYP, payload=bad, signer=SIGNER)
    assert refused(token) is Category.MALFORMED


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(TreeHead(iss="UK", log="exchange", tree_size=8, root=ROOT8, at=seeds.T0), id="iss"),
        pytest.param(TreeHead(iss=AUTH, log="audit", tree_size=8, root=ROOT8, at=seeds.T0),  # type: ignore[arg-type]
                     id="log"),
        pytest.param(TreeHead(iss=AUTH, log="exchange", tree_size=-1, root=ROOT8, at=seeds.T0), id="size"),
        pytest.param(TreeHead(iss=AUTH, log="exchange", tree_size=2**53, root=ROOT8, at=seeds.T0), id="huge"),
        pytest.param(TreeHead(iss=AUTH, log="exchange", tree_size=8, root="ab", at=seeds.T0), id="root"),
        pytest.param(TreeHead(iss=AUTH, log="exchange", tree_size=8, root=ROOT8, at=-5), id="at"),
        pytest.param(TreeHead(iss=AUTH, log="exchange", tree_size=0, root=ROOT8, at=seeds.T0), id="empty"),
    ],
)
def test_sign_head_refuses_malformed(head: TreeHead) -> None:
    with pytest.raises(ArtifactError) as e:
        sign_head(head, signer=SIGNER)
    assert e.value.category is Category.MALFORMED


def test_parse_head_checks_types_before_values() -> None:
    with pytest.raises(ArtifactError) as e:
        parse_head(payload(root=None))
    assert e.value.category is Category.MALFORMED


def test_vector_head_verifies() -> None:
    v = json.loads(vectorgen_merkle.VECTOR_PATH.read_bytes())["head"]
    head = verify_head(v["token"].encode(), keys=LIVE, authority=AUTH, log="exchange")
    assert head.to_payload() == v["payload"]
    assert v["signer"]["kid"] == SIGNER.kid and v["signer"]["public_jwk"] == SIGNER.public_jwk
