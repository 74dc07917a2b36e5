"""``comity peer add|list|remove``: pinned peers (no passphrase needed)."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from keys.errors import TrustError
from keys.layout import read_meta
from keys.truststore import PeerRecord

from ..services.access import cli_actor
from ..services.peers import delivery_health
from ..services.trust import pin_peer_card, remove_peer
from ..services.witness import log_status
from ..storage.trust import DbTrustStore
from .options import HomeOption, now, open_database, settings_for

peer_app = typer.Typer(no_args_is_help=True, help="Pin, list and remove peer nodes.")


def peer_listing(record: PeerRecord) -> dict[str, Any]:
    """One peer as ``peer list --json`` shows it."""
    return {
        "authority": record.authority,
        "name": record.name,
        "endpoint": record.endpoint,
        "pending_endpoint": record.pending_endpoint,
        "keyset_version": record.keyset.version,
        "expires_at": record.keyset.expires_at,
        "fingerprint": record.current_fingerprint,
        "pinned_fingerprint": record.fingerprint,
        "pinned_at": record.pinned_at,
        "updated_at": record.updated_at,
    }


def _read_card_file(path: Path) -> bytes:
    try:
        return sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    except OSError as e:
        raise TrustError("unreadable", f"cannot read the card {path}: {e.strerror}") from e


@peer_app.command("add")
def add(
    card: Annotated[Path, typer.Option("--card", help="The peer's card file ('-' for standard input).",
                                       show_default=False)],
    fingerprint: Annotated[str, typer.Option("--fingerprint", help="The peer's fingerprint, obtained out "
                                             "of band.", show_default=False)],
    home: HomeOption = None,
) -> None:
    """Pin a new peer, or apply a newer card of a pinned peer (and accept its endpoint)."""
    settings = settings_for(home)
    data = _read_card_file(card)
    own = read_meta(settings.home).authority
    db = open_database(settings)
    try:
        result = pin_peer_card(db, data, fingerprint.strip(), own_authority=own, now=now(), actor=cli_actor())
    finally:
        db.dispose()
    r = result.record
    if result.outcome == "pinned":
        typer.echo(f"pinned {r.authority} ({r.name}) at keyset v{r.keyset.version}, endpoint {r.endpoint}")
    elif result.outcome == "updated":
        if result.previous_version != r.keyset.version:
            typer.echo(f"updated {r.authority} from keyset v{result.previous_version} to v{r.keyset.version}")
        if result.replaced_endpoint is not None:
            typer.echo(f"endpoint of {r.authority} changed from {result.replaced_endpoint} to {r.endpoint}")
        if result.replaced_fingerprint is not None:
            typer.echo(f"pinned fingerprint of {r.authority} is now {r.fingerprint}")
    else:
        typer.echo(f"{r.authority} already at keyset v{r.keyset.version}; nothing to change")


def _when(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%MZ")


@peer_app.command("list")
def list_peers(
    home: HomeOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
) -> None:
    """List pinned peers (a pending endpoint waits for `peer add` with the new card)."""
    settings = settings_for(home)
    read_meta(settings.home)  # a home that is not initialised is an error, not an empty list
    db = open_database(settings)
    try:
        with db.read() as session:
            records = DbTrustStore(session).list()
            health = delivery_health(session)
            witnessed = log_status(session)
    finally:
        db.dispose()
    unknown = {"log_status": "unknown", "log_status_detail": None, "log_status_at": None, "log_tree_size": None}
    if as_json:
        listing = [{**peer_listing(r), **health.get(r.authority, {}), **witnessed.get(r.authority, unknown)}
                   for r in records]
        typer.echo(json.dumps(listing, indent=2, ensure_ascii=False))
        return
    if not records:
        typer.echo("no pinned peers", err=True)
    for r in records:
        pending = f" (pending: {r.pending_endpoint})" if r.pending_endpoint else ""
        status = witnessed.get(r.authority, unknown)["log_status"]
        typer.echo(f"{r.authority}\tv{r.keyset.version}\texpires {_when(r.keyset.expires_at)}\t"
                   f"{r.endpoint}{pending}\t{r.current_fingerprint}\tlog {status}")


@peer_app.command("remove")
def remove(
    authority: Annotated[str, typer.Argument(metavar="ID", help="The peer's authority id.", show_default=False)],
    home: HomeOption = None,
) -> None:
    """Forget a pinned peer."""
    settings = settings_for(home)
    read_meta(settings.home)
    db = open_database(settings)
    try:
        remove_peer(db, authority, now=now(), actor=cli_actor())
    finally:
        db.dispose()
    typer.echo(f"removed {authority}")
