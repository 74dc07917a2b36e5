#!/usr/bin/env python3
"""Verify a Comity audit bundle or evidence file, independently of Comity.

    python3 verify_bundle.py FILE [--fingerprint FP] [--json]

Exit 0 when the file verifies, 1 when it does not (or FP is not in its keyset chain), 2 on a
usage error.  Depends only on the Python standard library and ``cryptography`` (Ed25519); it
re-implements, from protocol/SPEC.md alone: strict JSON (§1.3), RFC 8785, base64url (§1.2),
compact JWS artefacts (§1.7), keysets, cards and chains (§3), the archival key rules (§3.9),
tree heads (§9.2), receipts (§6), RFC 9162 hashing and proofs (§9.1-§9.4), bundles (§9.7) and
evidence files (§9.8).  Its result names the first failing check's category, in SPEC's order.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import re
import sys
from itertools import pairwise
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

AUTHORITY = re.compile(r"[A-Z]{2}-[A-Z0-9]{2,16}")
MSG_ID = re.compile(r"[0-9a-f]{32}")
KID = re.compile(r"[A-Za-z0-9_-]{43}")
HEX = re.compile(r"[0-9a-f]{64}")
B64 = re.compile(rb"[A-Za-z0-9_-]*")
MAX_INT = 2**53 - 1
EMPTY_ROOT = hashlib.sha256(b"").digest()
KINDS = {"consultation": str, "note": str, "mla_request": dict, "extradition_request": dict,
         "status_event": dict, "supplementary": dict, "result": dict}
UNTRUSTED = {"zip", "jwk", "jku", "x5u", "x5c", "x5t", "x5t#S256"}


class Failure(Exception):
    def __init__(self, category: str, detail: str) -> None:
        super().__init__(detail)
        self.category, self.detail = category, detail


def fail(category: str, detail: str) -> Failure:
    return Failure(category, detail)


def full(rx: re.Pattern[str], v: object) -> bool:
    return isinstance(v, str) and rx.fullmatch(v) is not None


def nat(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_INT


# --- encodings: base64url, strict JSON, RFC 8785 -----------------------------------------------------

def b64d(s: str | bytes, what: str = "segment") -> bytes:
    raw = s.encode("ascii", "replace") if isinstance(s, str) else s
    if len(raw) % 4 == 1 or B64.fullmatch(raw) is None:
        raise fail("malformed", f"{what} is not base64url without padding")
    data = base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
    if base64.urlsafe_b64encode(data).rstrip(b"=") != raw:
        raise fail("malformed", f"{what} is not canonical base64url")
    return data


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for k, v in pairs:
        if k in obj:
            raise ValueError(f"duplicate member {k!r}")
        obj[k] = v
    return obj


def _walk(v: Any, depth: int, cap: int) -> None:
    if depth > cap:
        raise ValueError(f"nested deeper than {cap}")
    if isinstance(v, str):
        if any(0xD800 <= ord(c) <= 0xDFFF for c in v):
            raise ValueError("lone surrogate")
    elif isinstance(v, bool) or v is None:
        return
    elif isinstance(v, int):
        if abs(v) > MAX_INT:
            raise ValueError("integer beyond I-JSON's range")
    elif isinstance(v, dict):
        for k, x in v.items():
            _walk(k, depth, cap)
            _walk(x, depth + 1, cap)
    elif isinstance(v, list):
        for x in v:
            _walk(x, depth + 1, cap)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse(data: bytes, cap: int, depth: int = 32, what: str = "document") -> dict[str, Any]:
    """Strict JSON object (SPEC §1.3): too_large over ``cap`` bytes, malformed otherwise."""
    if len(data) > cap:
        raise fail("too_large", f"{what} of {len(data)} bytes exceeds {cap}")
    try:
        value = json.loads(data.decode("utf-8"), object_pairs_hook=_pairs, parse_constant=_no_constant)
        _walk(value, 1, depth)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise fail("malformed", f"{what} is not strict JSON: {e}") from e
    if not isinstance(value, dict):
        raise fail("malformed", f"{what} is not a JSON object")
    return value


def jcs(v: Any) -> bytes:
    """RFC 8785 for the values comity/1 uses (no floats: a float is never canonical here)."""
    if v is None or isinstance(v, bool):
        return b"null" if v is None else (b"true" if v else b"false")
    if isinstance(v, int):
        return str(v).encode()
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False).encode("utf-8")
    if isinstance(v, list):
        return b"[" + b",".join(jcs(x) for x in v) + b"]"
    if isinstance(v, dict):
        keys = sorted(v, key=lambda k: k.encode("utf-16-be"))
        return b"{" + b",".join(jcs(k) + b":" + jcs(v[k]) for k in keys) + b"}"
    raise fail("malformed", "a number that is not an integer")


# --- keys, compact JWS -----------------------------------------------------------------------------

def thumbprint(x: str, crv: str = "Ed25519") -> str:
    return b64e(hashlib.sha256(f'{{"crv":"{crv}","kty":"OKP","x":"{x}"}}'.encode()).digest())


def okp(jwk: Any, crv: str) -> bytes:
    if not isinstance(jwk, dict) or jwk.get("kty") != "OKP" or jwk.get("crv") != crv \
            or not isinstance(jwk.get("x"), str) or "d" in jwk:
        raise fail("keyset_invalid", f"not an OKP {crv} public key")
    try:
        raw = b64d(jwk["x"], "JWK x")
    except Failure as e:
        raise fail("keyset_invalid", e.detail) from e
    if len(raw) != 32:
        raise fail("keyset_invalid", "public key is not 32 bytes")
    return raw


def ed25519_ok(key: bytes, signature: bytes, data: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


def header_of(segment: bytes, typ: str) -> dict[str, Any]:
    """SPEC §1.7 steps 3-6."""
    if len(segment) > 4096 * 4 // 3 + 4:
        raise fail("bad_header", "protected header too large")
    decoded = b64d(segment, "protected header")
    if len(decoded) > 4096:
        raise fail("bad_header", "protected header too large")
    h = parse(decoded, 4096, 4, "protected header")
    if UNTRUSTED & set(h) or h.get("alg") != "Ed25519":
        raise fail("forbidden_algorithm", "zip, an embedded key or an alg other than Ed25519")
    if h.get("typ") != typ:
        raise fail("wrong_type", f"typ {h.get('typ')!r:.60} where {typ} is required")
    if set(h) != {"alg", "typ", "kid"} or not isinstance(h["kid"], str):
        raise fail("bad_header", "header is not exactly {alg, typ, kid}")
    return h


class Archival:
    """SPEC §3.9 archival rules over a whole chain (no learning time recorded: the chain's stands in)."""

    def __init__(self, chain: list[dict[str, Any]]) -> None:
        self.chain = chain

    def entries(self, kid: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        return [(ks, e) for ks in self.chain for e in ks["signing_keys"] if e["kid"] == kid]

    def find(self, kid: str) -> bytes | None:
        found = self.entries(kid)
        return b64d(found[0][1]["x"]) if found else None

    def check(self, kid: str, t: int) -> None:
        found = self.entries(kid)
        if not found:
            raise fail("unknown_signing_key", f"kid {kid} is in no keyset version")
        learned = [ks["issued_at"] for ks, e in found if "revoked_at" in e]
        retired = [e["retired_at"] for _, e in found if "retired_at" in e]
        for _, e in found:
            if e["nbf"] <= t <= e["exp"] and (not retired or t <= min(retired)):
                if learned and t >= min(learned):
                    raise fail("revoked_key", f"key {kid} revoked before {t}")
                return
        raise fail("retired_key", f"key {kid} not valid at {t} in any version")


def verify_jws(token: Any, typ: str, keys: Archival, time_name: str, cap: int = 65536) -> dict[str, Any]:
    """SPEC §1.7 steps 1-12 under the archival rules; returns the payload."""
    if not isinstance(token, str) or not token.isascii():
        raise fail("malformed", f"a {typ} is not a compact JWS string")
    raw = token.encode("ascii")
    if len(raw) > cap:
        raise fail("too_large", f"{typ} exceeds {cap} bytes")
    parts = raw.split(b".")
    if len(parts) != 3:
        raise fail("malformed", "not three segments")
    h = header_of(parts[0], typ)
    payload_bytes, signature = b64d(parts[1], "payload"), b64d(parts[2], "signature")
    key = keys.find(h["kid"])
    if key is None:
        raise fail("unknown_signing_key", f"no signing key {h['kid']:.50}")
    if not ed25519_ok(key, signature, parts[0] + b"." + parts[1]):
        raise fail("bad_signature", f"{typ} signature does not verify")
    p = parse(payload_bytes, cap, 32, "payload")
    if not nat(p.get(time_name)):
        raise fail("malformed", f"{time_name} is not a NumericDate")
    keys.check(h["kid"], p[time_name])
    return p


# --- keysets, cards, chains (§3) ---------------------------------------------------------------------

def key_entry(e: Any, crv: str) -> dict[str, Any]:
    base = {"kty", "crv", "x", "kid", "nbf", "exp"}
    if not isinstance(e, dict) or not base <= set(e) <= base | {"retired_at", "revoked_at"}:
        raise fail("keyset_invalid", "key entry members")
    okp(e, crv)
    if not full(KID, e["kid"]) or e["kid"] != thumbprint(e["x"], crv):
        raise fail("keyset_invalid", "kid is not the key's thumbprint")
    if not all(nat(e[n]) for n in e if n not in ("kty", "crv", "x", "kid")) or e["exp"] <= e["nbf"]:
        raise fail("keyset_invalid", "key times")
    return e


def keyset_payload(p: dict[str, Any]) -> dict[str, Any]:
    """SPEC §3.1-§3.2 (``keyset_invalid``)."""
    names = {"v", "authority", "name", "endpoint", "version", "issued_at", "expires_at", "identity_jwk",
             "signing_keys", "encryption_keys", "tls_cert_sha256", "profile_sha256"}
    if set(p) != names or type(p["v"]) is not int or p["v"] != 1 or not full(AUTHORITY, p["authority"]):
        raise fail("keyset_invalid", "keyset members, v or authority")
    for n in ("name", "endpoint"):
        if not isinstance(p[n], str) or not 0 < len(p[n]) <= 512:
            raise fail("keyset_invalid", f"keyset {n}")
    if not p["endpoint"].startswith(("https://", "http://")) or \
            any(p[n] is not None and not full(HEX, p[n]) for n in ("tls_cert_sha256", "profile_sha256")):
        raise fail("keyset_invalid", "keyset endpoint or reserved digests")
    if not isinstance(p["identity_jwk"], dict) or set(p["identity_jwk"]) != {"kty", "crv", "x"}:
        raise fail("keyset_invalid", "identity_jwk is not exactly {kty, crv, x}")
    okp(p["identity_jwk"], "Ed25519")
    for n in ("signing_keys", "encryption_keys"):
        if not isinstance(p[n], list) or not 0 < len(p[n]) <= 64:
            raise fail("keyset_invalid", f"{n} is not a non-empty list")
    if not all(nat(p[n]) for n in ("version", "issued_at", "expires_at")):
        raise fail("keyset_invalid", "keyset version or times")
    for n, crv in (("signing_keys", "Ed25519"), ("encryption_keys", "X25519")):
        kids = [key_entry(e, crv)["kid"] for e in p[n]]
        if len(set(kids)) != len(kids):
            raise fail("keyset_invalid", "a kid appears twice")
    if p["version"] < 1 or p["expires_at"] <= p["issued_at"]:
        raise fail("keyset_invalid", "version < 1 or expires_at <= issued_at")
    return p


def read_keyset(doc: bytes) -> tuple[dict[str, Any], list[tuple[str, bytes, bytes]]]:
    """SPEC §3.4: the payload, and each signature's (kid, signing input, signature)."""
    obj = parse(doc, 65536, 32, "keyset")
    if set(obj) != {"payload", "signatures"} or not isinstance(obj["payload"], str) \
            or not isinstance(obj["signatures"], list):
        raise fail("malformed", "keyset document members")
    if not 1 <= len(obj["signatures"]) <= 2:
        raise fail("bad_signer_set", "a keyset carries one or two signatures")
    if not obj["payload"].isascii():
        raise fail("malformed", "keyset payload is not ASCII")
    segment = obj["payload"].encode("ascii")
    sigs = []
    for item in obj["signatures"]:
        if not isinstance(item, dict):
            raise fail("malformed", "a keyset signature is not an object")
        if "header" in item:
            raise fail("bad_header", "unprotected header")
        if set(item) != {"protected", "signature"} or not all(isinstance(v, str) for v in item.values()):
            raise fail("malformed", "keyset signature members")
        if not item["protected"].isascii():
            raise fail("malformed", "keyset protected header is not ASCII")
        protected = item["protected"].encode("ascii")
        h = header_of(protected, "comity-keyset+jws")
        if not full(KID, h["kid"]):
            raise fail("bad_header", "keyset kid is not a thumbprint")
        if jcs(h) != b64d(protected):
            raise fail("malformed", "keyset protected header is not RFC 8785")
        sigs.append((h["kid"], protected + b"." + segment, b64d(item["signature"], "keyset signature")))
    payload_bytes = b64d(segment, "keyset payload")
    payload = parse(payload_bytes, 65536, 32, "keyset payload")
    if jcs(payload) != payload_bytes:
        raise fail("malformed", "keyset payload is not RFC 8785")
    keyset_payload(payload)
    if jcs(obj) != doc:
        raise fail("malformed", "keyset document is not RFC 8785")
    return payload, sigs


def signer_set(prev: dict[str, Any] | None, new: dict[str, Any], sigs: list[tuple[str, bytes, bytes]]) -> None:
    ident = thumbprint(new["identity_jwk"]["x"])
    if prev is None:
        required = [(ident, new)]
    elif thumbprint(prev["identity_jwk"]["x"]) == ident:
        required = [(ident, prev)]
    else:
        required = [(thumbprint(prev["identity_jwk"]["x"]), prev), (ident, new)]
    if [k for k, _, _ in sigs] != [k for k, _ in required]:
        raise fail("bad_signer_set", f"keyset v{new['version']} signed by the wrong identities")
    for (_, signing_input, sig), (_, owner) in zip(sigs, required, strict=True):
        if not ed25519_ok(b64d(owner["identity_jwk"]["x"]), sig, signing_input):
            raise fail("bad_signature", f"keyset v{new['version']} signature")


def chain_of(card: Any, authority: str) -> list[dict[str, Any]]:
    """A card (SPEC §3.10) walked from version 1 (§3.5); no expiry check (archival)."""
    if not isinstance(card, dict):
        raise fail("malformed", "a card is not an object")
    data = jcs(card)
    if len(data) > 2 * 1024 * 1024:
        raise fail("too_large", "card over 2 MiB")
    if set(card) != {"comity_card", "keysets"} or type(card["comity_card"]) is not int or card["comity_card"] != 1 \
            or not isinstance(card["keysets"], list) or not card["keysets"] \
            or not all(isinstance(k, dict) for k in card["keysets"]):
        raise fail("malformed", "card members")
    docs = [read_keyset(jcs(k)) for k in card["keysets"]]
    if docs[0][0]["version"] != 1:
        raise fail("broken_chain", "the chain does not start at version 1")
    signer_set(None, *docs[0])
    for (prev, _), (new, sigs) in pairwise(docs):
        if new["authority"] != prev["authority"] or new["version"] != prev["version"] + 1 \
                or new["issued_at"] < prev["issued_at"]:
            raise fail("broken_chain", f"keyset v{new['version']} does not follow v{prev['version']}")
        signer_set(prev, new, sigs)
    if docs[0][0]["authority"] != authority:
        raise fail("broken_chain", f"the card is not {authority}'s")
    return [p for p, _ in docs]


def pin(chain: list[dict[str, Any]], fingerprint: str | None) -> None:
    if fingerprint is not None and all(thumbprint(k["identity_jwk"]["x"]) != fingerprint for k in chain):
        raise fail("fingerprint_mismatch", "the fingerprint is the identity of no version of the chain")


# --- Merkle trees (§9) --------------------------------------------------------------------------------

def lh(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def nh(a: bytes, b: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + a + b).digest()


def hexes(v: Any, what: str) -> list[bytes]:
    if not isinstance(v, list) or len(v) > 128 or not all(full(HEX, x) for x in v):
        raise fail("malformed", f"{what} is not an array of at most 128 hex hashes")
    return [bytes.fromhex(x) for x in v]


def inclusion(leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes) -> None:
    """SPEC §9.4 inclusion."""
    if index >= size:
        raise fail("bad_proof", "leaf index outside the tree")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise fail("bad_proof", "inclusion proof too long")
        if fn & 1 or fn == sn:
            r = nh(p, r)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = nh(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0 or not hmac.compare_digest(r, root):
        raise fail("bad_proof", f"inclusion proof of leaf {index} does not lead to the root")


def consistency(first: int, second: int, r1: bytes, r2: bytes, proof: list[bytes]) -> None:
    """SPEC §9.4 consistency."""
    if first > second:
        raise fail("bad_proof", "first > second")
    if first == 0 or first == second:
        if proof or (first == 0 and r1 != EMPTY_ROOT) or (first == second and r1 != r2):
            raise fail("bad_proof", f"consistency {first} -> {second}")
        return
    if not proof:
        raise fail("bad_proof", "empty consistency proof")
    if first & (first - 1) == 0:
        proof = [r1, *proof]
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            raise fail("bad_proof", "consistency proof too long")
        if fn & 1 or fn == sn:
            fr, sr = nh(c, fr), nh(c, sr)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = nh(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0 or fr != r1 or sr != r2:
        raise fail("bad_proof", f"consistency proof {first} -> {second} does not verify")


class Frontier:
    """A compact range: perfect-subtree roots, largest first."""

    def __init__(self, size: int, nodes: list[bytes]) -> None:
        self.size, self.nodes = size, list(nodes)

    def append(self, h: bytes) -> None:
        self.nodes.append(h)
        self.size += 1
        s = self.size
        while not s & 1:
            right = self.nodes.pop()
            self.nodes[-1] = nh(self.nodes[-1], right)
            s >>= 1

    def root(self) -> bytes:
        if not self.nodes:
            return EMPTY_ROOT
        r = self.nodes[-1]
        for left in reversed(self.nodes[:-1]):
            r = nh(left, r)
        return r


def head(token: Any, keys: Archival, authority: str, log: str) -> dict[str, Any]:
    """SPEC §9.2, archival rules."""
    p = verify_jws(token, "comity-head+jws", keys, "at")
    if set(p) != {"v", "iss", "log", "tree_size", "root", "at"} or type(p["v"]) is not int or p["v"] != 1:
        raise fail("malformed", "head members")
    if not full(AUTHORITY, p["iss"]) or p["log"] not in ("exchange", "access") or not nat(p["tree_size"]) \
            or not full(HEX, p["root"]) or (p["tree_size"] == 0 and p["root"] != EMPTY_ROOT.hex()):
        raise fail("malformed", "head fields")
    if p["iss"] != authority or p["log"] != log:
        raise fail("bad_proof", f"a head of {p['iss']}'s {p['log']} log")
    return p


def receipt(token: Any, keys: Archival) -> dict[str, Any]:
    """SPEC §6 payload, archival rules."""
    p = verify_jws(token, "comity-receipt+jws", keys, "received_at")
    names = {"v", "iss", "aud", "id", "envelope_sha256", "received_at", "leaf_index", "tree_size", "root"}
    if set(p) != names or type(p["v"]) is not int or p["v"] != 1:
        raise fail("malformed", "receipt members")
    if not all(isinstance(p[n], str) for n in ("iss", "aud", "id", "envelope_sha256", "root")) or \
            not all(nat(p[n]) for n in ("received_at", "leaf_index", "tree_size")):
        raise fail("malformed", "receipt field types")
    if not (full(AUTHORITY, p["iss"]) and full(AUTHORITY, p["aud"]) and full(MSG_ID, p["id"])
            and full(HEX, p["envelope_sha256"]) and full(HEX, p["root"]) and p["leaf_index"] < p["tree_size"]):
        raise fail("malformed", "receipt fields")
    return p


def check_leaf(leaf: bytes, log: str, where: str) -> dict[str, Any]:
    """SPEC §9.6: an RFC 8785 object ``{v: 1, log, event, at, ...}``."""
    e = parse(leaf, 65536, 32, where)
    if jcs(e) != leaf:
        raise fail("malformed", f"{where} is not RFC 8785")
    if e.get("v") != 1 or type(e.get("v")) is not int or e.get("log") != log or not isinstance(e.get("event"), str):
        raise fail("malformed", f"{where} is not an entry of the {log} log")
    if not nat(e.get("at")):
        raise fail("malformed", f"{where} at")
    return e


# --- bundles (§9.7) -----------------------------------------------------------------------------------

BUNDLE = {"comity_bundle", "authority", "log", "card", "from", "frontier", "leaves", "heads", "consistency",
          "peer_log_failures", "exported_at"}


def strings(obj: dict[str, Any], name: str) -> list[str]:
    v = obj.get(name)
    if not isinstance(v, list) or not all(isinstance(x, str) and x.isascii() for x in v):
        raise fail("malformed", f"{name} is not an array of ASCII strings")
    return v


def fingerprint_of(chain: list[dict[str, Any]]) -> str:
    return thumbprint(chain[-1]["identity_jwk"]["x"])


def peek_typ(token: str) -> Any:
    segment = token.encode("ascii").split(b".", 1)[0]
    if len(segment) > 4096 * 4 // 3 + 4:
        raise fail("bad_header", "protected header too large")
    decoded = b64d(segment, "protected header")
    if len(decoded) > 4096:
        raise fail("bad_header", "protected header too large")
    return parse(decoded, 4096, 4, "protected header").get("typ")


def commitment(token: Any, keys: Archival, peer: str) -> list[Any]:
    if not isinstance(token, str) or not token.isascii():
        raise fail("malformed", "a commitment is not a compact JWS")
    if peek_typ(token) == "comity-receipt+jws":
        r = receipt(token, keys)
        if r["iss"] != peer:
            raise fail("bad_proof", f"a receipt of {r['iss']}, not of {peer}")
        return [r["tree_size"], r["root"]]
    h = head(token, keys, peer, "exchange")
    return [h["tree_size"], h["root"]]


def verify_bundle(b: dict[str, Any], fingerprint: str | None) -> dict[str, Any]:
    if set(b) != BUNDLE or type(b.get("comity_bundle")) is not int or b["comity_bundle"] != 1:
        raise fail("malformed", "bundle members")
    authority, log = b["authority"], b["log"]
    if not full(AUTHORITY, authority) or log not in ("exchange", "access") or not isinstance(b["card"], dict):
        raise fail("malformed", "bundle authority, log or card")
    if not nat(b["from"]) or not nat(b["exported_at"]):
        raise fail("malformed", "bundle from or exported_at")
    start = b["from"]
    frontier, leaves, tokens = strings(b, "frontier"), strings(b, "leaves"), strings(b, "heads")
    links, failures = b["consistency"], b["peer_log_failures"]
    if not isinstance(links, list) or not isinstance(failures, list):
        raise fail("malformed", "bundle consistency or peer_log_failures")
    chain = chain_of(b["card"], authority)
    pin(chain, fingerprint)
    keys = Archival(chain)
    heads = [head(t, keys, authority, log) for t in tokens]
    if not heads:
        raise fail("bad_proof", "no signed head")
    for x, y in pairwise(heads):
        if y["tree_size"] <= x["tree_size"]:
            raise fail("bad_proof", "heads not strictly ascending")
    if len(links) != len(heads) - 1:
        raise fail("bad_proof", "one consistency proof between each two heads")
    for link, x, y in zip(links, heads, heads[1:], strict=False):
        if not isinstance(link, dict) or set(link) != {"first", "second", "proof"}:
            raise fail("malformed", "consistency entry members")
        if not nat(link["first"]) or not nat(link["second"]):
            raise fail("malformed", "consistency sizes")
        if (link["first"], link["second"]) != (x["tree_size"], y["tree_size"]):
            raise fail("bad_proof", "consistency proof between other sizes")
        consistency(x["tree_size"], y["tree_size"], bytes.fromhex(x["root"]), bytes.fromhex(y["root"]),
                    hexes(link["proof"], "consistency proof"))
    end = start + len(leaves)
    if len(frontier) != start.bit_count() or not all(full(HEX, f) for f in frontier):
        raise fail("malformed", "frontier")
    tree = Frontier(start, [bytes.fromhex(f) for f in frontier])
    by_size = {h["tree_size"]: h for h in heads}
    if end not in by_size or heads[0]["tree_size"] < start:
        raise fail("bad_proof", "no signed head at the range's end, or one before its start")

    def check_root() -> None:
        h = by_size.get(tree.size)
        if h is not None and h["root"] != tree.root().hex():
            raise fail("bad_proof", f"leaves {start}..{tree.size - 1} do not give the signed root of size {tree.size}")

    check_root()
    for i, item in enumerate(leaves):
        leaf = b64d(item, f"leaf {start + i}")
        check_leaf(leaf, log, f"leaf {start + i}")
        tree.append(lh(leaf))
        check_root()
    checked = []
    for f in failures:
        names = {"peer", "at", "peer_card", "held", "received", "proof", "detail"}
        if not isinstance(f, dict) or set(f) != names or not isinstance(f["peer"], str):
            raise fail("malformed", "peer_log_failures entry members")
        if f["peer_card"] is None:
            checked.append({"peer": f["peer"], "at": f["at"], "checked": False})
            continue
        if not isinstance(f["peer_card"], dict):
            raise fail("malformed", "peer_card is not a card")
        pkeys = Archival(chain_of(f["peer_card"], f["peer"]))
        checked.append({"peer": f["peer"], "at": f["at"], "checked": True,
                        "held": commitment(f["held"], pkeys, f["peer"]),
                        "received": commitment(f["received"], pkeys, f["peer"])})
    return {"ok": True, "kind": "bundle", "authority": authority, "log": log, "fingerprint": fingerprint_of(chain),
            "fingerprints": [thumbprint(k["identity_jwk"]["x"]) for k in chain], "from": start, "to": end,
            "heads": len(heads), "newest_tree_size": heads[-1]["tree_size"], "peer_log_failures": checked}


# --- evidence (§9.8) ----------------------------------------------------------------------------------

EVIDENCE = {"comity_evidence", "direction", "authority", "peer", "message_id", "envelope", "receipt", "inner_jws",
            "leaf", "leaf_index", "tree_size", "proof", "head", "cards", "exported_at"}


def inner_payload(p: dict[str, Any]) -> dict[str, Any]:
    """SPEC §4.2, each failure ``malformed``."""
    names = {"v", "iss", "aud", "id", "iat", "exp", "kind", "thread", "request", "subject", "body", "attachments"}
    ok = set(p) == names and type(p["v"]) is int and p["v"] == 1 and full(AUTHORITY, p["iss"]) \
        and full(AUTHORITY, p["aud"]) and full(MSG_ID, p["id"]) \
        and all(p[n] is None or full(MSG_ID, p[n]) for n in ("thread", "request")) \
        and p["kind"] in KINDS and isinstance(p["subject"], str) and len(p["subject"]) <= 1000 \
        and isinstance(p["body"], KINDS.get(p["kind"], str)) and nat(p["iat"]) and nat(p["exp"]) \
        and isinstance(p["attachments"], list) and len(p["attachments"]) <= 1000
    if not ok:
        raise fail("malformed", "inner payload")
    return p


def verify_evidence(e: dict[str, Any], fingerprint: str | None) -> dict[str, Any]:
    if set(e) != EVIDENCE or type(e.get("comity_evidence")) is not int or e["comity_evidence"] != 1:
        raise fail("malformed", "evidence members")
    authority, peer, mid, direction = e["authority"], e["peer"], e["message_id"], e["direction"]
    texts = ("envelope", "receipt", "leaf", "head")
    if not (full(AUTHORITY, authority) and full(AUTHORITY, peer) and full(MSG_ID, mid)) \
            or direction not in ("sent", "received") \
            or not all(isinstance(e[n], str) and e[n].isascii() for n in texts) \
            or not (e["inner_jws"] is None or (isinstance(e["inner_jws"], str) and e["inner_jws"].isascii())) \
            or not isinstance(e["cards"], dict) or set(e["cards"]) != {authority, peer} \
            or not isinstance(e["proof"], list):
        raise fail("malformed", "evidence authority, peer, message_id, direction, strings or cards")
    if not all(nat(e[n]) for n in ("leaf_index", "tree_size", "exported_at")):
        raise fail("malformed", "evidence sizes")
    own = chain_of(e["cards"][authority], authority)
    pin(own, fingerprint)
    theirs = chain_of(e["cards"][peer], peer)
    own_keys, peer_keys = Archival(own), Archival(theirs)
    h = head(e["head"], own_keys, authority, "exchange")
    if h["tree_size"] != e["tree_size"]:
        raise fail("bad_proof", "the head is of another size")
    leaf = b64d(e["leaf"], "leaf")
    entry = check_leaf(leaf, "exchange", "leaf")
    sha = hashlib.sha256(e["envelope"].encode("ascii")).hexdigest()
    want = {"event": "delivered" if direction == "sent" else "received", "message_id": mid, "peer": peer,
            "envelope_sha256": sha}
    if direction == "sent":
        want["receipt_sha256"] = hashlib.sha256(e["receipt"].encode("ascii")).hexdigest()
    for name, value in want.items():
        if entry.get(name) != value:
            raise fail("bad_proof", f"the log entry's {name} is not {value}")
    inclusion(lh(leaf), e["leaf_index"], h["tree_size"], hexes(e["proof"], "inclusion proof"),
              bytes.fromhex(h["root"]))
    sender, receiver, rkeys = (authority, peer, peer_keys) if direction == "sent" else (peer, authority, own_keys)
    r = receipt(e["receipt"], rkeys)
    for name, value in (("iss", receiver), ("aud", sender), ("id", mid), ("envelope_sha256", sha)):
        if r[name] != value:
            raise fail("receipt_mismatch", f"receipt {name} is not {value}")
    if direction == "received" and r["leaf_index"] != e["leaf_index"]:
        raise fail("bad_proof", "the receipt names another leaf")
    if direction == "sent" and e["inner_jws"] is not None:
        raise fail("malformed", "evidence of a sent message carries no inner JWS")
    if direction == "received":
        if not isinstance(e["inner_jws"], str):
            raise fail("malformed", "evidence of a received message carries the inner JWS")
        p = inner_payload(verify_jws(e["inner_jws"], "comity-envelope+jws", peer_keys, "iat", 1024 * 1024))
        if (p["iss"], p["aud"], p["id"]) != (peer, authority, mid):
            raise fail("bad_proof", "the inner JWS names another sender, recipient or message id")
    return {"ok": True, "kind": "evidence", "authority": authority, "fingerprint": fingerprint_of(own),
            "fingerprints": [thumbprint(k["identity_jwk"]["x"]) for k in own], "peer": peer,
            "peer_fingerprint": fingerprint_of(theirs), "message_id": mid, "direction": direction,
            "leaf_index": e["leaf_index"], "tree_size": h["tree_size"], "received_at": r["received_at"]}


def verify_file(data: bytes, fingerprint: str | None) -> dict[str, Any]:
    try:
        obj = parse(data, 4 * 1024**3, 32, "file")
        return verify_evidence(obj, fingerprint) if "comity_evidence" in obj else verify_bundle(obj, fingerprint)
    except Failure as e:
        return {"ok": False, "category": e.category, "detail": e.detail}


def _option_values_joined(argv: list[str]) -> list[str]:
    """``--fingerprint -Ab…`` as ``--fingerprint=-Ab…``: a base64url fingerprint begins with ``-`` for
    one node in 64, and argparse would take it for an option and refuse the command."""
    out: list[str] = []
    words = iter(argv)
    for word in words:
        value = next(words, None) if word == "--fingerprint" else None
        out.append(word if value is None else f"{word}={value}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Verify a Comity audit bundle or evidence file (SPEC §9.7, §9.8).")
    ap.add_argument("file")
    ap.add_argument("--fingerprint", help="the identity fingerprint the keyset chain must lead from")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(_option_values_joined(sys.argv[1:] if argv is None else argv))
    try:
        with open(args.file, "rb") as f:
            data = f.read()
    except OSError as e:
        print(f"cannot read {args.file}: {e.strerror}", file=sys.stderr)
        return 2
    result = verify_file(data, args.fingerprint)
    if args.json:
        print(json.dumps(result, indent=2))
    elif result["ok"]:
        print(f"{result['kind']} ok: {result['authority']}; fingerprint: {result['fingerprint']}")
    else:
        print(f"FAILED ({result['category']}): {result['detail']}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
