"""Exit codes of ``comity`` and the one-line message for each failure.

    0  ok
    1  a ``verify`` command found a failure (and only that)
    2  usage: bad flags, no home, bad settings, no passphrase available
    3  refused input: a peer card for any reason, ``init`` on an existing home, an unknown peer
    4  environment: wrong passphrase, missing or damaged home, disk or database trouble
"""

from __future__ import annotations

from sqlalchemy.exc import SQLAlchemyError

from keys.errors import (
    KeysError,
    KeystoreError,
    KeystoreExistsError,
    PassphraseError,
    SettingError,
    TrustError,
    TrustStoreCorruptError,
    UnknownPeerError,
    WrongPassphraseError,
)
from node.config import ConfigError
from node.errors import NodeError
from protocol.errors import ProtocolError

EXIT_OK = 0
EXIT_VERIFY_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_ENVIRONMENT = 4


def exit_code_for(exc: BaseException) -> int:
    """The exit code for a failure; anything unforeseen counts as environment trouble."""
    if isinstance(exc, NodeError):
        return exc.exit_code
    if isinstance(exc, ConfigError | SettingError | PassphraseError):
        return EXIT_USAGE
    if isinstance(exc, KeystoreExistsError | TrustError | UnknownPeerError | ProtocolError):
        return EXIT_REFUSED
    return EXIT_ENVIRONMENT


def describe(exc: BaseException) -> str:
    """One line saying what went wrong, for standard error."""
    if isinstance(exc, WrongPassphraseError):
        return f"wrong passphrase for the keystore in {exc.home}"
    if isinstance(exc, KeystoreExistsError):
        return f"{exc.home} already holds a keystore; refusing to initialise it again"
    if isinstance(exc, KeystoreError):
        return f"keystore in {exc.home}: {exc.detail}"
    if isinstance(exc, TrustError):
        who = f" of {exc.authority}" if exc.authority else ""
        return f"peer card{who} refused ({exc.rule}): {exc.detail}"
    if isinstance(exc, TrustStoreCorruptError):
        return f"peer record {exc.path} is damaged: {exc.detail}"
    if isinstance(exc, SettingError):
        return f"invalid {exc.setting}: {exc.detail}"
    if isinstance(exc, ProtocolError):
        return f"refused ({exc.category.value}): {exc.detail}"
    if isinstance(exc, NodeError | ConfigError | KeysError):
        return str(exc)
    if isinstance(exc, SQLAlchemyError):
        return f"database unavailable: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        return f"cannot use{where}: {exc.strerror or exc}"
    return f"unexpected {type(exc).__name__}: {exc} (set COMITY_DEBUG=1 for a traceback)"
