"""The keys package's error tree.

    KeysError                      every refusal or failure in keys/
    ├── SettingError               a node setting (authority id, name, endpoint) is unusable
    ├── PassphraseError            no usable passphrase could be obtained
    │   ├── PassphraseUnavailableError   no source gave one (or it is empty)
    │   └── PassphraseMismatchError      the two prompts at init differ
    ├── KeystoreError              the keystore in a node home
    │   ├── KeystoreExistsError    ``init`` on a home that already holds a keystore
    │   ├── KeystoreMissingError   the home holds no keystore
    │   ├── KeystoreCorruptError   keystore files are unreadable or contradict each other
    │   └── WrongPassphraseError   the passphrase does not open the keystore
    ├── TrustError                 a peer card refused under a trust rule (``rule``, ``category``)
    ├── TrustStoreCorruptError     a stored peer record is unreadable
    └── UnknownPeerError           no pinned peer by that id

``protocol`` errors met while reading a peer's card are wrapped in ``TrustError``; ``OSError``
from the disk is left as is (the CLI reports both).
"""

from __future__ import annotations

from pathlib import Path

from protocol.errors import Category


class KeysError(Exception):
    """Base of every error raised by ``keys``."""


class SettingError(KeysError):
    """A setting given for the node's own keyset is unusable."""

    def __init__(self, setting: str, detail: str) -> None:
        super().__init__(f"{setting}: {detail}")
        self.setting = setting
        self.detail = detail


class PassphraseError(KeysError):
    """No usable passphrase."""


class PassphraseUnavailableError(PassphraseError):
    """Neither the environment, a passphrase file nor a terminal gave a passphrase."""


class PassphraseMismatchError(PassphraseError):
    """The passphrase and its confirmation differ."""

    def __init__(self) -> None:
        super().__init__("the two passphrases differ")


class KeystoreError(KeysError):
    """The keystore under ``home`` cannot be created, opened or changed."""

    def __init__(self, home: Path, detail: str) -> None:
        super().__init__(f"{home}: {detail}")
        self.home = home
        self.detail = detail


class KeystoreExistsError(KeystoreError):
    """``create`` on a home that already holds a keystore."""


class KeystoreMissingError(KeystoreError):
    """The home holds no keystore (not initialised, or the wrong folder)."""


class KeystoreCorruptError(KeystoreError):
    """A keystore file is unreadable, or the files contradict one another."""


class WrongPassphraseError(KeystoreError):
    """The passphrase does not decrypt the keystore."""


class TrustError(KeysError):
    """A peer card refused: ``rule`` names the trust rule, ``category`` the protocol's when there is one."""

    def __init__(self, rule: str, detail: str, *, category: Category | None = None,
                 authority: str | None = None) -> None:
        super().__init__(f"{rule}: {detail}")
        self.rule = rule
        self.detail = detail
        self.category = category
        self.authority = authority


class TrustStoreCorruptError(KeysError):
    """A stored peer record cannot be read."""

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.path = path
        self.detail = detail


class UnknownPeerError(KeysError):
    """No peer is pinned under ``authority``."""

    def __init__(self, authority: str) -> None:
        super().__init__(f"no pinned peer {authority!r:.40}")
        self.authority = authority
