"""``comity init``, ``card``, ``fingerprint`` and ``keys rotate``: the node's own keys."""

from __future__ import annotations

import base64
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import typer

from keys.errors import KeystoreExistsError
from keys.files import write_private_file
from keys.keystore import Keystore, check_settings
from keys.layout import meta_path, read_card, read_fingerprint
from node.config import Settings
from protocol.keysets import DEFAULT_KEYSET_VALIDITY

from .options import HomeOption, now, open_keystore, passphrase_for, settings_for

ADMIN_TOKEN_NAME = "admin.token"  # noqa: S105 (a file name)

keys_app = typer.Typer(no_args_is_help=True, help="Manage this node's keys.")


# --- init ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InitContext:
    """What each step of ``init`` after the keystore gets."""

    settings: Settings
    keystore: Keystore
    now: int


def write_admin_token(ctx: InitContext) -> None:
    """``HOME/admin.token``: one line, 32 random bytes in base64url, 0600 (the local admin API's bearer)."""
    token = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=")
    write_private_file(ctx.settings.home / ADMIN_TOKEN_NAME, token + b"\n")


def create_database(ctx: InitContext) -> None:
    """Create the database (SQLite in the home unless ``database_url`` says otherwise), run the
    migrations, and log the first keyset."""
    from ..services.access import cli_actor
    from ..services.trust import record_keyset_issued
    from ..storage.db import Database
    from ..storage.migrate import upgrade_url

    upgrade_url(ctx.settings.db_url)
    db = Database(ctx.settings.db_url)
    try:
        record_keyset_issued(db, version=ctx.keystore.keyset.version, fingerprint=ctx.keystore.fingerprint,
                             now=ctx.now, actor=cli_actor())
    finally:
        db.dispose()


#: Steps run in order once the keystore is committed.
INIT_STEPS: list[Callable[[InitContext], None]] = [write_admin_token, create_database]


def init(
    authority: Annotated[str, typer.Option(help="This node's authority id, e.g. FR-MJ.", show_default=False)],
    name: Annotated[str, typer.Option(help="The authority's name, as peers will see it.", show_default=False)],
    endpoint: Annotated[str, typer.Option(help="The URL peers send to (http:// is accepted).",
                                          show_default=False)],
    home: HomeOption = None,
    insecure_no_passphrase: Annotated[bool, typer.Option(
        "--insecure-no-passphrase", help="Store private keys unencrypted (tests and demos only).")] = False,
    validity_days: Annotated[int | None, typer.Option(
        help="Keyset validity in days [default: 90].", show_default=False, min=1)] = None,
) -> None:
    """Create a node home: identity, signing, encryption and storage keys, and keyset v1."""
    settings = settings_for(home, keyset_validity_days=validity_days)
    check_settings(authority, name, endpoint)
    if meta_path(settings.home).exists():
        raise KeystoreExistsError(settings.home, "this home already holds a keystore")
    passphrase = None if insecure_no_passphrase else passphrase_for(confirm=True)
    t = now()
    keystore = Keystore.create(
        settings.home, authority=authority, name=name, endpoint=endpoint, passphrase=passphrase, now=t,
        validity=settings.keyset_validity or DEFAULT_KEYSET_VALIDITY,
        insecure_no_passphrase=insecure_no_passphrase,
    )
    ctx = InitContext(settings, keystore, t)
    for step in INIT_STEPS:
        step(ctx)
    typer.echo(f"initialised {settings.home} for {authority}; give peers your card and this fingerprint:",
               err=True)
    typer.echo(keystore.fingerprint)


# --- public reads ----------------------------------------------------------------------------------


def card(home: HomeOption = None) -> None:
    """Print this node's card: every keyset version, oldest first (no passphrase needed)."""
    data = read_card(settings_for(home).home)
    sys.stdout.buffer.write(data + b"\n")
    sys.stdout.buffer.flush()


def fingerprint(home: HomeOption = None) -> None:
    """Print this node's fingerprint (the thumbprint of its identity key)."""
    typer.echo(read_fingerprint(settings_for(home).home))


# --- keys rotate -----------------------------------------------------------------------------------


@keys_app.command("rotate")
def rotate(
    home: HomeOption = None,
    signing_only: Annotated[bool, typer.Option("--signing-only", help="Rotate only the signing key.")] = False,
    encryption_only: Annotated[bool, typer.Option("--encryption-only",
                                                  help="Rotate only the encryption key.")] = False,
    identity: Annotated[bool, typer.Option("--identity", help="Rotate the identity key (changes the "
                                           "fingerprint; the new keyset is signed by old and new).")] = False,
) -> None:
    """Issue a new keyset with new keys (both operational keys by default); print its version."""
    if signing_only + encryption_only + identity > 1:
        raise typer.BadParameter("give at most one of --signing-only, --encryption-only, --identity")
    settings = settings_for(home)
    keystore = open_keystore(settings)
    from ..services.access import cli_actor
    from ..services.trust import record_keyset_issued
    from ..storage.db import Database
    from ..storage.migrate import check_current

    db = Database(settings.db_url)
    try:
        check_current(db.engine)
        previous = keystore.keyset.version
        t = now()
        version = keystore.rotate(
            t, signing=not (encryption_only or identity), encryption=not (signing_only or identity),
            identity=identity, validity=settings.keyset_validity,
        )
        # the key files are written first, then the log entry commits
        record_keyset_issued(db, version=version, fingerprint=keystore.fingerprint, now=t, event="keys_rotated",
                             previous_version=previous, actor=cli_actor())
    finally:
        db.dispose()
    typer.echo(str(version))
