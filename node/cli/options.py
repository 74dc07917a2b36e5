"""What every command shares: the ``--home`` option, settings, the clock, the passphrase."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from keys.keystore import Keystore
from keys.layout import keystore_needs_passphrase
from keys.passphrase import resolve_passphrase
from node.config import Settings, load_settings

if TYPE_CHECKING:
    from node.storage.db import Database

HomeOption = Annotated[
    Path | None,
    typer.Option("--home", help="The node's home folder (else $COMITY_HOME).", show_default=False),
]


def now() -> int:
    """The wall clock in whole seconds: the only place the CLI reads it."""
    return int(time.time())


def settings_for(home: Path | None, **flags: object) -> Settings:
    """Settings of this invocation: ``flags`` are the command-line values (None when not given)."""
    return load_settings(home, os.environ, flags)


def passphrase_for(*, confirm: bool = False) -> bytes:
    return resolve_passphrase(os.environ, confirm=confirm)


def open_keystore(settings: Settings) -> Keystore:
    """Open the keystore, asking for the passphrase only when it has one."""
    home = settings.home
    passphrase = passphrase_for() if keystore_needs_passphrase(home) else None
    return Keystore.open(home, passphrase, skew=settings.skew, max_lifetime=settings.max_lifetime)


def open_database(settings: Settings) -> Database:
    """The node's database, refused (exit 4) unless its schema is current."""
    from node.storage.db import Database
    from node.storage.migrate import check_current

    db = Database(settings.db_url)
    try:
        check_current(db.engine)
    except BaseException:
        db.dispose()
        raise
    return db


@contextmanager
def stopped_node(settings: Settings, *, busy: str) -> Iterator[tuple[Keystore, Database]]:
    """The keystore and database of a node that is not running, its integrator lock held meanwhile;
    ``BusyError`` (exit 4) naming ``busy`` when a running process holds the lock."""
    from node.errors import BusyError
    from node.services.integrator import IntegratorBusyError, IntegratorLock

    keystore = open_keystore(settings)
    db = open_database(settings)
    lock = IntegratorLock(db, settings.home)
    try:
        try:
            lock.acquire()
        except IntegratorBusyError as e:
            raise BusyError(f"{e}: {busy}") from e
        try:
            yield keystore, db
        finally:
            lock.release()
    finally:
        db.dispose()
