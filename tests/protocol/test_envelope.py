"""Envelopes: round trip, the size cap at exactly the cap, and one tamper test per rule of the
opening order (SPEC §5), each asserting the exact category; then the committed vectors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from joserfc import jwe
from joserfc.jwk import OKPKey

from protocol.envelope import (
    ENVELOPE_JWE_TYP,
    ENVELOPE_MAX_BYTES,
    OUTER_HEADER_NAMES,
    EnvelopeContent,
    OpenedEnvelope,
    envelope_sha256,
    open_envelope,
    reseal_envelope,
    seal_envelope,
)
from protocol.errors import Category, EnvelopeError
from protocol.jose import ENVELOPE_JWE_REGISTRY, b64d, b64e, read_signed_compact
from protocol.keysets import Keyset
from protocol.strictjson import canonical, parse_object
from tests import seeds
from tests.protocol import vectorgen_envelopes as g
from tests.protocol.jwe_craft import flip_segment

T0 = seeds.T0


def open_(raw: bytes, *, keyset: str | Keyset = "current", now: int = T0, **kw: Any) -> OpenedEnvelope:
    ks = g.sender_keyset(keyset) if isinstance(keyset, str) else keyset
    peers = {ks.authority: ks}
    return open_envelope(raw, me=g.RECEIVER, decryption_keys=kw.pop("decryption_keys", g.decryption_keys()),
                         lookup_peer=peers.get, now=now, **kw)


def refused(raw: bytes, category: Category, **kw: Any) -> EnvelopeError:
    with pytest.raises(EnvelopeError) as info:
        open_(raw, **kw)
    assert info.value.category == category, info.value
    return info.value


def seal(content: EnvelopeContent | None = None, **kw: Any) -> bytes:
    c = content or g.content()
    signer = kw.pop("signer", None) or seeds.signer(f"{c.iss}/signing")
    return seal_envelope(c, signer=signer, recipient_kid=g.recipient_kid(), recipient_key=g.recipient_key(),
                         **kw).raw


# --- round trip ------------------------------------------------------------------------------------------


def test_round_trip() -> None:
    sealed = seal_envelope(g.content(), signer=g.sender_signer(), recipient_kid=g.recipient_kid(),
                           recipient_key=g.recipient_key())
    opened = open_(sealed.raw)
    assert opened.content == g.content()
    assert opened.inner_jws == sealed.inner_jws == g.inner()  # the inner JWS is deterministic
    assert opened.sha256 == sealed.sha256 == envelope_sha256(sealed.raw)
    assert opened.signing_kid == g.sender_signer().kid
    assert opened.recipient_kid == g.recipient_kid()
    header = parse_object(b64d(sealed.raw.split(b".")[0]), max_bytes=4096)
    assert set(header) == OUTER_HEADER_NAMES
    assert header["typ"] == ENVELOPE_JWE_TYP and header["iss"] == g.SENDER and header["aud"] == g.RECEIVER
    assert set(header["epk"]) == {"kty", "crv", "x"}
    inner = read_signed_compact(sealed.inner_jws, typ="comity-envelope+jws", max_bytes=ENVELOPE_MAX_BYTES)
    assert set(inner.header) == {"alg", "typ", "kid"}


@pytest.mark.parametrize("kind,body", [("note", "text"), ("mla_request", {"legal_basis": "UNTOC art. 18"}),
                                       ("status_event", {"status": "registered"})])
def test_round_trip_kinds(kind: str, body: Any) -> None:
    c = g.content(kind=kind, body=body, attachments=(), thread=None)
    assert open_(seal(c)).content == c


def test_handbuilt_envelope_with_the_profile_header_opens() -> None:
    """The crafting used by the tamper tests is sound: unchanged, it opens."""
    assert open_(g.envelope(g.inner(), label="sound")).content == g.content()


def test_reseal_keeps_inner_jws_and_id() -> None:
    new_key = seeds.x25519(f"{g.RECEIVER}/encryption-2")
    first = seal_envelope(g.content(), signer=g.sender_signer(), recipient_kid=g.recipient_kid(),
                          recipient_key=g.recipient_key())
    again = reseal_envelope(first.inner_jws, iss=g.SENDER, aud=g.RECEIVER, recipient_kid=new_key.thumbprint(),
                            recipient_key=new_key)
    assert again.inner_jws == first.inner_jws and again.raw != first.raw
    keys = {g.recipient_kid(): g.recipient_key(), new_key.thumbprint(): new_key}
    opened = open_(again.raw, decryption_keys=keys)
    assert opened.inner_jws == first.inner_jws
    assert opened.content.id == g.MESSAGE_ID
    assert opened.recipient_kid == new_key.thumbprint()
    # the old key alone no longer names it: retry-after-refresh on the other side
    refused(again.raw, Category.UNKNOWN_RECIPIENT_KEY)


def test_kept_retired_recipient_key_still_opens() -> None:
    old = seeds.x25519(f"{g.RECEIVER}/old-encryption")
    raw = reseal_envelope(g.inner(), iss=g.SENDER, aud=g.RECEIVER, recipient_kid=old.thumbprint(),
                          recipient_key=old).raw
    keys = {g.recipient_kid(): g.recipient_key(), old.thumbprint(): old}
    assert open_(raw, decryption_keys=keys).recipient_kid == old.thumbprint()


# --- sealing refusals -----------------------------------------------------------------------------------


def test_seal_refuses_lifetime_beyond_max() -> None:
    with pytest.raises(EnvelopeError) as info:
        seal(g.content(exp=T0 + 7 * 86400 + 1))
    assert info.value.category == Category.MALFORMED
    with pytest.raises(EnvelopeError) as info:
        seal(g.content(exp=T0 - 1))
    assert info.value.category == Category.MALFORMED


@pytest.mark.parametrize("change", [{"id": "XYZ"}, {"kind": "gossip"}, {"iss": "gb-ukca"}, {"body": {"x": 1}}])
def test_seal_refuses_what_a_receiver_refuses(change: dict[str, Any]) -> None:
    with pytest.raises(EnvelopeError) as info:
        seal(g.content(**change), signer=g.sender_signer())
    assert info.value.category == Category.MALFORMED


def test_seal_refuses_a_non_x25519_recipient_key() -> None:
    ed = seeds.ed25519("FR-DACG/signing")
    with pytest.raises(EnvelopeError) as info:
        seal_envelope(g.content(), signer=g.sender_signer(), recipient_kid=ed.thumbprint(), recipient_key=ed)
    assert info.value.category == Category.UNKNOWN_RECIPIENT_KEY


# --- the size cap, at exactly the cap -------------------------------------------------------------------


def content_sealing_to(length: int) -> EnvelopeContent:
    """Content whose sealed envelope is exactly ``length`` bytes (sender id length is the second knob:
    the base64url of the body moves the total by 1 to 3 bytes at a time)."""

    def size(c: EnvelopeContent) -> int:
        return len(seal(c, max_bytes=4 * length))

    for iss in ("GB-UKCA", "GB-UKCAX", "GB-UKCAXY", "GB-UKCAXYZ", "GB-UKCAXYZW"):
        lo, hi = 0, length
        while lo < hi:
            mid = (lo + hi) // 2
            if size(g.content(iss=iss, body="a" * mid, attachments=())) < length:
                lo = mid + 1
            else:
                hi = mid
        c = g.content(iss=iss, body="a" * lo, attachments=())
        if size(c) == length:
            return c
    raise AssertionError(f"no content seals to exactly {length} bytes")


@pytest.mark.parametrize("cap", [3000, ENVELOPE_MAX_BYTES], ids=["small-cap", "default-1MiB"])
def test_size_cap_exact_and_one_over(cap: int) -> None:
    at_cap = content_sealing_to(cap)
    over = content_sealing_to(cap + 1)
    kw: dict[str, Any] = {} if cap == ENVELOPE_MAX_BYTES else {"max_bytes": cap}
    raw = seal(at_cap, **kw)
    assert len(raw) == cap
    assert open_(raw, keyset=seeds.keyset(at_cap.iss), **kw).content == at_cap
    with pytest.raises(EnvelopeError) as info:
        seal(over, **kw)
    assert info.value.category == Category.TOO_LARGE
    raw_over = seal(over, max_bytes=cap + 1)
    assert len(raw_over) == cap + 1
    refused(raw_over, Category.TOO_LARGE, keyset=seeds.keyset(over.iss), **kw)


def test_size_cap_comes_before_everything() -> None:
    refused(b"x" * (ENVELOPE_MAX_BYTES + 1), Category.TOO_LARGE)


# --- one tamper test per rule of the opening order ---------------------------------------------------------


@pytest.mark.parametrize("case", g.ENVELOPE_CASES, ids=[c.name for c in g.ENVELOPE_CASES])
def test_opening_order_case(case: g.Case) -> None:
    raw = case.build()
    kw: dict[str, Any] = {} if case.max_bytes is None else {"max_bytes": case.max_bytes}
    if case.expect == "ok":
        assert case.inner is not None
        assert open_(raw, keyset=case.keyset, now=case.now, **kw).inner_jws == case.inner()
    else:
        refused(raw, Category(case.expect), keyset=case.keyset, now=case.now, **kw)


OPENING_CATEGORIES = {
    Category.TOO_LARGE, Category.MALFORMED, Category.BAD_HEADER, Category.FORBIDDEN_ALGORITHM,
    Category.WRONG_TYPE, Category.WRONG_RECIPIENT, Category.UNKNOWN_SENDER, Category.SENDER_KEYSET_EXPIRED,
    Category.UNKNOWN_RECIPIENT_KEY, Category.DECRYPTION_FAILED, Category.UNKNOWN_SIGNING_KEY,
    Category.REVOKED_KEY, Category.RETIRED_KEY, Category.BAD_SIGNATURE, Category.ISSUER_MISMATCH,
    Category.NOT_YET_VALID, Category.EXPIRED,
}


def test_every_opening_category_has_a_case() -> None:
    assert {c.expect for c in g.ENVELOPE_CASES} == OPENING_CATEGORIES | {"ok"}


def test_malformed_not_compact() -> None:
    for raw in (b"", b"....", b"a.b.c.d.e.f", g.sealed_ok()[0] + b"."):
        refused(raw, Category.MALFORMED)


def test_freshness_edges_are_inclusive() -> None:
    """iat == now + skew and now == exp + skew are still accepted."""
    open_(g.envelope(g.inner(g.payload(iat=T0 + 300, exp=T0 + 3600)), label="edge-iat"))
    open_(g.envelope(g.inner(g.payload(iat=T0 - 3600, exp=T0 - 300)), label="edge-exp"))


def test_retired_key_counts_for_earlier_messages() -> None:
    """A key retired after iat still counts (acceptance rules) until retired_at + max_lifetime + skew."""
    key = seeds.ed25519(f"{g.SENDER}/signing")
    ks = seeds.keyset(g.SENDER)
    retired = dataclasses.replace(ks, signing_keys=(seeds.entry(key, retired_at=T0 + 60),))
    raw = g.envelope(g.inner(), label="retired-later")
    assert open_(raw, keyset=retired).content.id == g.MESSAGE_ID
    # a key retired before the message's iat does not count
    before = dataclasses.replace(ks, signing_keys=(seeds.entry(key, nbf=T0 - 30 * 86400, retired_at=T0 - 200),))
    raw_after = g.envelope(g.inner(g.payload(iat=T0 - 100, exp=T0 + 3600)), label="after-retirement")
    refused(raw_after, Category.RETIRED_KEY, keyset=before)
    # a message old enough for its key to be retired too long ago is, first of all, expired:
    # exp - iat <= max_lifetime, so the key rules come after freshness and name it so
    late = dataclasses.replace(ks, signing_keys=(seeds.entry(key, nbf=T0 - 30 * 86400,
                                                                  retired_at=T0 - 7 * 86400 - 301),))
    raw_old = g.envelope(g.inner(g.payload(iat=T0 - 7 * 86400 - 400, exp=T0 - 7 * 86400 - 399)), label="old")
    refused(raw_old, Category.EXPIRED, keyset=late)


@pytest.mark.parametrize(
    "build,keyset,expect",
    [
        # the outer checks run before decryption: a bad ciphertext from an unknown sender is unknown_sender
        (lambda: flip_segment(g.envelope(g.inner(g.payload(iss=g.STRANGER)), label="o1", iss=g.STRANGER), 3),
         "current", Category.UNKNOWN_SENDER),
        # the signature is checked before the payload and freshness
        (lambda: g.envelope(g.inner(g.payload(exp=T0 - 1000, iat=T0 - 2000),
                                    signer=g.ClaimedKid(seeds.signer("x"), g.sender_signer().kid)), label="o2"),
         "current", Category.BAD_SIGNATURE),
        # revocation is judged before the signature is even checked
        (lambda: g.envelope(g._bad_sig_inner(), label="o3"), "revoked", Category.REVOKED_KEY),
        # issuer agreement before freshness
        (lambda: g.envelope(g.inner(g.payload(iss=g.THIRD, exp=T0 - 1000, iat=T0 - 2000)), label="o4"),
         "current", Category.ISSUER_MISMATCH),
    ],
    ids=["outer-before-decrypt", "signature-before-freshness", "revoked-before-signature", "issuer-before-freshness"],
)
def test_opening_order_precedence(build: Any, keyset: str, expect: Category) -> None:
    refused(build(), expect, keyset=keyset)


def inner_with_header(header: dict[str, Any]) -> bytes:
    """An inner JWS over the normal payload, signed by the sender's key, with ``header`` verbatim."""
    signing_input = b64e(canonical(header)) + b"." + b64e(canonical(g.payload()))
    return signing_input + b"." + b64e(g.sender_signer().sign(signing_input))


_KID = g.sender_signer().kid


@pytest.mark.parametrize(
    "header,expect",
    [
        ({"alg": "Ed25519", "typ": "comity-envelope+jws", "kid": _KID}, None),
        ({"alg": "Ed25519", "typ": "comity-envelope+jws", "kid": _KID, "cty": "json"}, Category.BAD_HEADER),
        ({"alg": "Ed25519", "typ": "comity-envelope+jws"}, Category.BAD_HEADER),
        ({"alg": "Ed25519", "typ": "comity-envelope+jws", "kid": 7}, Category.BAD_HEADER),
        ({"alg": "Ed25519", "typ": "comity-envelope+jws", "kid": _KID, "crit": ["b64"], "b64": False},
         Category.BAD_HEADER),
        ({"alg": "EdDSA", "typ": "comity-envelope+jws", "kid": _KID}, Category.FORBIDDEN_ALGORITHM),
        ({"alg": "none", "typ": "comity-envelope+jws", "kid": _KID}, Category.FORBIDDEN_ALGORITHM),
        ({"alg": "HS256", "typ": "comity-envelope+jws", "kid": _KID}, Category.FORBIDDEN_ALGORITHM),
        ({"alg": "Ed25519", "typ": "comity-envelope+jws", "kid": _KID, "jwk": {"kty": "OKP"}},
         Category.FORBIDDEN_ALGORITHM),
        ({"alg": "Ed25519", "typ": "JWT", "kid": _KID}, Category.WRONG_TYPE),
    ],
    ids=["profile", "extra-member", "missing-kid", "kid-not-string", "crit", "alg-EdDSA", "alg-none", "alg-HS256",
         "jwk", "typ-JWT"],
)
def test_inner_header(header: dict[str, Any], expect: Category | None) -> None:
    raw = g.envelope(inner_with_header(header), label="inner-header")
    if expect is None:
        assert open_(raw).content == g.content()
    else:
        refused(raw, expect)


def test_inner_jws_not_compact_or_not_strict() -> None:
    refused(g.envelope(g.inner() + b".x", label="inner-parts"), Category.MALFORMED)
    refused(g.envelope(b"not a jws", label="inner-junk"), Category.MALFORMED)
    dup = canonical({"alg": "Ed25519", "kid": _KID, "typ": "comity-envelope+jws"})[:-1] + b',"alg":"Ed25519"}'
    signing_input = b64e(dup) + b"." + b64e(canonical(g.payload()))
    jws = signing_input + b"." + b64e(g.sender_signer().sign(signing_input))
    refused(g.envelope(jws, label="inner-dup"), Category.MALFORMED)


@pytest.mark.parametrize(
    "segment,change", [(1, b"!"), (2, b"="), (3, b"\n"), (4, b"==")], ids=["ek", "iv", "ciphertext", "tag"]
)
def test_segments_that_are_not_base64url_do_not_open(segment: int, change: bytes) -> None:
    parts = _OK.split(b".")
    parts[segment] += change
    refused(b".".join(parts), Category.DECRYPTION_FAILED)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_mutation_is_an_envelope_error(data: st.DataObject) -> None:
    raw = bytearray(_OK)
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    if bytes(raw) == _OK:
        return
    with pytest.raises(EnvelopeError):
        open_(bytes(raw))


_OK = g.envelope(g.inner(), label="fuzz")


# --- committed vectors ---------------------------------------------------------------------------------------

VECTOR_DIR = g.VECTORS / "envelopes"


def _index() -> dict[str, Any]:
    index: dict[str, Any] = json.loads((VECTOR_DIR / "index.json").read_text())
    return index


def test_vector_index_and_inner_jws_regenerate_byte_for_byte() -> None:
    fixed, jwe_files = g.envelope_files()
    for rel, data in fixed.items():
        assert (g.VECTORS / rel).read_bytes() == data, rel
    listed = {v["file"] for v in _index()["vectors"]} | {v["inner"] for v in _index()["vectors"] if "inner" in v}
    on_disk = {p.name for p in VECTOR_DIR.iterdir()} - {"index.json"}
    assert on_disk == listed and {Path(r).name for r in jwe_files} <= listed


def _vector_ids() -> list[str]:
    return [v["file"] for v in _index()["vectors"]]


@pytest.mark.parametrize("file", _vector_ids())
def test_committed_envelope_vector(file: str) -> None:
    """Open each committed file with the keys the index publishes (not with tests.seeds)."""
    index = _index()
    ctx = index["context"]
    vector = next(v for v in index["vectors"] if v["file"] == file)
    raw = (VECTOR_DIR / file).read_bytes()
    keys = {kid: OKPKey.import_key(jwk) for kid, jwk in ctx["decryption_keys"].items()}
    ks = Keyset.from_payload(ctx["sender_keysets"][vector["sender_keyset"]])
    kw = {"max_bytes": vector.get("max_bytes", ctx["max_bytes"]), "skew": ctx["skew"],
          "max_lifetime": ctx["max_lifetime"]}
    if "inner" in vector:
        # the committed JWE decrypts to the committed inner JWS, which the seeds regenerate
        inner = jwe.decrypt_compact(raw, keys[g.recipient_kid()], registry=ENVELOPE_JWE_REGISTRY).plaintext
        assert inner == (VECTOR_DIR / vector["inner"]).read_bytes()
        case = next(c for c in g.ENVELOPE_CASES if f"{c.name}.jwe" == file)
        assert case.inner is not None and inner == case.inner()
    if vector["expect"] == "ok":
        opened = open_envelope(raw, me=ctx["receiver"], decryption_keys=keys, lookup_peer={ks.authority: ks}.get,
                               now=vector["now"], **kw)
        assert opened.content == g.content()
    else:
        with pytest.raises(EnvelopeError) as info:
            open_envelope(raw, me=ctx["receiver"], decryption_keys=keys, lookup_peer={ks.authority: ks}.get,
                          now=vector["now"], **kw)
        assert info.value.category == Category(vector["expect"])


def test_committed_keysets_match_the_seeds() -> None:
    for variant, p in _index()["context"]["sender_keysets"].items():
        assert Keyset.from_payload(p).to_payload() == g.sender_keyset(variant).to_payload()


@pytest.mark.parametrize("name", ["..", ".", "a/b", "a\\b", "evil\x00", "tab\tname", "del\x7f", ""])
def test_manifest_names_must_be_plain_file_names(name: str) -> None:
    from protocol.envelope import parse_payload

    payload = {
        "v": 1, "iss": "GB-UKCA", "aud": "FR-DACG", "id": "0" * 32, "iat": 1, "exp": 2, "kind": "note",
        "thread": None, "request": None, "subject": "s", "body": "b",
        "attachments": [{"name": name, "media_type": "application/pdf", "size": 0, "sha256": "0" * 64, "chunks": 1,
                         "key": "A" * 43}],
    }
    with pytest.raises(EnvelopeError) as e:
        parse_payload(payload)
    assert e.value.category == Category.MALFORMED
