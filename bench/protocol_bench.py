"""Protocol throughput: our seal+open against bare joserfc and the raw primitives.

Run: ``.venv/bin/python bench/protocol_bench.py`` (or ``make bench``); ``--profile`` adds a
cProfile of our seal+open.  Each row: a warm-up, then 3 rounds of ~1 s each, best round kept.
Prints a Markdown table and the versions measured.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import platform
import pstats
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.backends.openssl.backend import backend as openssl_backend
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from joserfc import jwe, jws
from joserfc.jwe import JWERegistry
from joserfc.jwk import OKPKey
from joserfc.jws import JWSRegistry
from joserfc.registry import HeaderParameter

from protocol.envelope import EnvelopeContent, Kind, open_envelope, seal_envelope
from protocol.jose import LocalSigner, public_jwk
from protocol.keysets import KeyEntry, Keyset

ROUNDS = 3
ROUND_SECONDS = 1.0
WARMUP_SECONDS = 0.3
BODY_BYTES = 2048

SENDER, RECEIVER = "FR-DACG", "DE-BFJ"
NOW = 1_799_913_600


def _seed(label: str) -> bytes:
    return hashlib.sha256(b"comity-bench:" + label.encode()).digest()


_SIGNING_RAW = Ed25519PrivateKey.from_private_bytes(_seed("signing"))
_ENCRYPTION_RAW = X25519PrivateKey.from_private_bytes(_seed("encryption"))
SIGNING = OKPKey.import_key(_SIGNING_RAW)
ENCRYPTION = OKPKey.import_key(_ENCRYPTION_RAW)
ENC_PUBLIC = OKPKey.import_key(_ENCRYPTION_RAW.public_key())
SIGNER = LocalSigner(SIGNING)
RECIPIENT_KID = ENCRYPTION.thumbprint()


def _entry(key: OKPKey) -> KeyEntry:
    j = public_jwk(key)
    return KeyEntry(kid=key.thumbprint(), crv=j["crv"], x=j["x"], nbf=NOW - 86400, exp=NOW + 86400)


SENDER_KEYSET = Keyset(
    authority=SENDER, name="bench sender", endpoint="https://fr.example/", version=1,
    issued_at=NOW - 86400, expires_at=NOW + 89 * 86400,
    identity_jwk=public_jwk(OKPKey.import_key(Ed25519PrivateKey.from_private_bytes(_seed("identity")))),
    signing_keys=(_entry(SIGNING),), encryption_keys=(_entry(ENCRYPTION),),
)
CONTENT = EnvelopeContent(
    iss=SENDER, aud=RECEIVER, id="0123456789abcdef0123456789abcdef", iat=NOW, exp=NOW + 3600,
    kind=Kind.CONSULTATION, subject="benchmark", body="b" * BODY_BYTES,
)


def ours_seal_open() -> None:
    sealed = seal_envelope(CONTENT, signer=SIGNER, recipient_kid=RECIPIENT_KID, recipient_key=ENC_PUBLIC)
    open_envelope(sealed.raw, me=RECEIVER, decryption_keys={RECIPIENT_KID: ENCRYPTION},
                  lookup_peer={SENDER: SENDER_KEYSET}.get, now=NOW)


BARE_JWS = JWSRegistry(algorithms=["Ed25519"])
BARE_JWE = JWERegistry(
    algorithms=["ECDH-ES+A256KW", "A256GCM"],
    header_registry={"iss": HeaderParameter("iss", "str"), "aud": HeaderParameter("aud", "str")},
)
BARE_JWS_HEADER = {"alg": "Ed25519", "typ": "comity-envelope+jws", "kid": SIGNING.thumbprint()}
BARE_JWE_HEADER = {"alg": "ECDH-ES+A256KW", "enc": "A256GCM", "kid": RECIPIENT_KID, "typ": "comity-envelope+jwe",
                   "cty": "comity-envelope+jws", "iss": SENDER, "aud": RECEIVER}
SIGNING_PUBLIC = OKPKey.import_key(_SIGNING_RAW.public_key())


def bare_seal_open() -> None:
    inner = jws.serialize_compact(BARE_JWS_HEADER, json.dumps(CONTENT.to_payload()).encode(), SIGNING,
                                  registry=BARE_JWS)
    raw = jwe.encrypt_compact(BARE_JWE_HEADER, inner, ENC_PUBLIC, registry=BARE_JWE)
    plaintext = jwe.decrypt_compact(raw, ENCRYPTION, registry=BARE_JWE).plaintext
    assert plaintext is not None
    json.loads(jws.deserialize_compact(plaintext, SIGNING_PUBLIC, registry=BARE_JWS).payload)


ED_PRIVATE = Ed25519PrivateKey.from_private_bytes(_seed("raw-ed"))
ED_PUBLIC = ED_PRIVATE.public_key()
X_PRIVATE = X25519PrivateKey.from_private_bytes(_seed("raw-x"))
X_PEER = X25519PrivateKey.from_private_bytes(_seed("raw-x-peer")).public_key()
MESSAGE = b"m" * 2400


def ed25519_sign_verify() -> None:
    ED_PUBLIC.verify(ED_PRIVATE.sign(MESSAGE), MESSAGE)


def x25519_exchange() -> None:
    X_PRIVATE.exchange(X_PEER)


def measure(fn: Callable[[], None]) -> float:
    """Operations per second: warm-up, calibrate to ~ROUND_SECONDS, best of ROUNDS rounds."""
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < WARMUP_SECONDS:
        fn()
        n += 1
    iterations = max(1, int(n / (time.perf_counter() - start) * ROUND_SECONDS))
    best = 0.0
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        for _ in range(iterations):
            fn()
        best = max(best, iterations / (time.perf_counter() - t0))
    return best


def profile(fn: Callable[[], None], iterations: int = 2000) -> None:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(iterations):
        fn()
    prof.disable()
    stats = pstats.Stats(prof, stream=sys.stdout).strip_dirs().sort_stats("tottime")
    stats.print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", action="store_true", help="also cProfile our seal+open")
    args = parser.parse_args()

    ours_seal_open()
    bare_seal_open()  # both paths work before anything is timed
    rows = [
        (f"seal+open, {BODY_BYTES} B body, protocol (ours)", measure(ours_seal_open)),
        (f"seal+open, {BODY_BYTES} B body, bare joserfc", measure(bare_seal_open)),
        ("Ed25519 sign+verify (cryptography)", measure(ed25519_sign_verify)),
        ("X25519 exchange (cryptography)", measure(x25519_exchange)),
    ]
    ours, bare, ed, xx = (rate for _, rate in rows)
    print("| operation | per second | µs each |")
    print("|---|---:|---:|")
    for name, rate in rows:
        print(f"| {name} | {rate:,.0f} | {1e6 / rate:,.1f} |")
    print(f"| ratio ours / bare joserfc | {ours / bare:.2f}x | |")
    # One seal+open: 1 Ed25519 sign + verify and 3 X25519 scalar multiplications (the sender's
    # ephemeral key and its exchange, the receiver's exchange).
    floor = 1 / (1 / ed + 3 / xx)
    print(f"| ratio ours / primitives alone (sign+verify + 3 X25519 = {floor:,.0f}/s) | {ours / floor:.2f}x | |")
    print()
    print(f"Python {platform.python_version()} ({platform.python_implementation()}), "
          f"joserfc {version('joserfc')}, cryptography {version('cryptography')}, "
          f"{openssl_backend.openssl_version_text()}, rfc8785 {version('rfc8785')}, "
          f"{platform.machine()} {platform.system()}")
    if args.profile:
        profile(ours_seal_open)


if __name__ == "__main__":
    main()
