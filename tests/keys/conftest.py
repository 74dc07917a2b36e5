"""Shared fixtures for keys/ tests: a keystore factory with a cheap scrypt cost.

Production keystores use ``ScryptParams()`` (n = 2**17); unit tests use n = 2**12 so that
dozens of keystores stay fast.  The CLI tests use the production cost.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from keys.keystore import Keystore
from keys.protection import ScryptParams
from tests.seeds import T0

FAST_KDF = ScryptParams(n=2**12)
PASSPHRASE = b"correct horse battery staple"

MakeStore = Callable[..., Keystore]


@pytest.fixture
def make_store(tmp_path: Path) -> MakeStore:
    def make(name: str = "fr", *, authority: str = "FR-MJ", now: int = T0, **kw: object) -> Keystore:
        kw.setdefault("passphrase", PASSPHRASE)
        kw.setdefault("kdf", FAST_KDF)
        return Keystore.create(
            tmp_path / name, authority=authority, name=f"{authority} central authority",
            endpoint=f"https://{authority.lower()}.example/", now=now, **kw,  # type: ignore[arg-type]
        )

    return make
