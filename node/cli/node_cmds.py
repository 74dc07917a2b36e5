"""``comity serve``, ``worker``, ``send``, ``status``, ``inbox``, ``db upgrade``, ``audit verify|integrate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..config import Settings
from ..errors import BusyError, InputError
from .exits import EXIT_VERIFY_FAILED
from .options import HomeOption, now, open_database, open_keystore, settings_for

if TYPE_CHECKING:  # the heavy modules load only in the commands that need them
    from keys.keystore import Keystore

    from ..runtime import Node
    from ..storage.db import Database

DbOption = Annotated[str | None, typer.Option(
    "--database-url", help="SQLAlchemy URL (else $COMITY_DATABASE_URL, else SQLite in the home).",
    show_default=False)]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]

db_app = typer.Typer(no_args_is_help=True, help="The node's database schema.")
audit_app = typer.Typer(no_args_is_help=True, help="The node's audit logs.")


def _node(settings: Settings, keystore: Keystore | None = None) -> Node:
    from ..runtime import Node

    return Node(settings, keystore or open_keystore(settings))


def _database(settings: Settings) -> Database:
    return open_database(settings)


def serve(
    home: HomeOption = None, database_url: DbOption = None,
    insecure_http: Annotated[bool, typer.Option("--insecure-http", help=(
        "Plain HTTP, both listeners on one port: for a local test federation only."))] = False,
    host: Annotated[str | None, typer.Option(help="Peer listener host [default: the endpoint's].")] = None,
    port: Annotated[int | None, typer.Option(help="Peer listener port [default: the endpoint's].")] = None,
    local_host: Annotated[str | None, typer.Option(help="Local listener host [default: 127.0.0.1].")] = None,
    local_port: Annotated[int | None, typer.Option(help="Local listener port [default: 8700].")] = None,
    no_worker: Annotated[bool, typer.Option("--no-worker", help=(
        "Do not run the delivery worker and log integrator here (run `comity worker`)."))] = False,
) -> None:
    """Run the node: peer and local listeners, delivery worker and log integrator."""
    from ..logs import configure_logging
    from ..server import serve as run_serve

    settings = settings_for(home, database_url=database_url, insecure_http=insecure_http or None, host=host,
                            port=port, local_host=local_host, local_port=local_port)
    configure_logging(settings.log_format)
    node = _node(settings)
    if settings.insecure_http:
        typer.echo(f"{node.authority}: INSECURE plain-HTTP mode (--insecure-http): for local tests only", err=True)
    run_serve(node, with_worker=not no_worker)


def worker(
    home: HomeOption = None, database_url: DbOption = None,
    insecure_http: Annotated[bool, typer.Option("--insecure-http", help="Allow plain-HTTP peers.")] = False,
) -> None:
    """Run the delivery worker (and the log integrator, unless another process runs it)."""
    from ..logs import configure_logging
    from ..server import run_worker

    settings = settings_for(home, database_url=database_url, insecure_http=insecure_http or None)
    configure_logging(settings.log_format)
    run_worker(_node(settings))


def send(
    to: Annotated[str, typer.Option(help="The peer authority id.", show_default=False)],
    kind: Annotated[str, typer.Option(help="consultation or note.", show_default=False)],
    subject: Annotated[str, typer.Option(help="The subject line.", show_default=False)],
    body: Annotated[str | None, typer.Option(help="The body text.", show_default=False)] = None,
    body_file: Annotated[Path | None, typer.Option(help="Read the body from this file.", show_default=False)] = None,
    thread: Annotated[str | None, typer.Option(help="Thread id this message belongs to.")] = None,
    request: Annotated[str | None, typer.Option(help="Formal request id it relates to.")] = None,
    home: HomeOption = None, database_url: DbOption = None,
) -> None:
    """Seal a message once and queue it; prints its id (works whether or not the node is running)."""
    from ..api.local import send_message
    from ..services.sending import Draft

    if (body is None) == (body_file is None):
        raise InputError("give exactly one of --body and --body-file")
    text = body if body is not None else body_file.read_text(encoding="utf-8")  # type: ignore[union-attr]
    settings = settings_for(home, database_url=database_url)
    node = _node(settings)
    try:
        open_database(settings).dispose()
        message_id = send_message(node, Draft(to=to, kind=kind, subject=subject, body=text, thread=thread,
                                              request=request))
    finally:
        node.close()
    typer.echo(f"queued for {to}", err=True)
    typer.echo(message_id)


def _print(doc: Any, as_json: bool, lines: list[str]) -> None:
    if as_json:
        typer.echo(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        for line in lines:
            typer.echo(line)


def status(
    message_id: Annotated[str, typer.Argument(help="The message id printed by `send`.", show_default=False)],
    home: HomeOption = None, database_url: DbOption = None, as_json: JsonOption = False,
) -> None:
    """Delivery state of a sent message: queued, sending, delivered or failed, with its receipt."""
    from ..services.sending import get_outbound, status_document

    settings = settings_for(home, database_url=database_url)
    db = _database(settings)
    try:
        with db.read() as session:
            doc = status_document(get_outbound(session, message_id))
    finally:
        db.dispose()
    err = doc["last_error"]
    lines = [f"{doc['id']} to {doc['to']} ({doc['kind']}): {doc['state']}, {doc['attempts']} attempt(s)"]
    if err:
        lines.append(f"last error: {err['category']} at {err['at']}")
    if doc["receipt"]:
        r = doc["receipt"]
        lines.append(f"receipt: received_at {r['received_at']}, peer log leaf {r['leaf_index']} of {r['tree_size']}")
    _print(doc, as_json, lines)


def inbox(home: HomeOption = None, database_url: DbOption = None, as_json: JsonOption = False) -> None:
    """Messages received, oldest first."""
    from ..api.local import inbox_listing

    settings = settings_for(home, database_url=database_url)
    db = _database(settings)
    try:
        items = inbox_listing(db)
    finally:
        db.dispose()
    _print(items, as_json, [f"{m['id']}  {m['from']:<12} {m['kind']:<13} {m['subject']}" for m in items])


@db_app.command("upgrade")
def db_upgrade(home: HomeOption = None, database_url: DbOption = None) -> None:
    """Create or migrate the database schema to this version of Comity."""
    from ..storage.migrate import upgrade_url

    settings = settings_for(home, database_url=database_url)
    upgrade_url(settings.db_url)
    typer.echo("database schema is up to date", err=True)


@audit_app.command("verify")
def audit_verify(
    home: HomeOption = None, database_url: DbOption = None, as_json: JsonOption = False,
    log_name: Annotated[str | None, typer.Option("--log", help="exchange or access [default: both].")] = None,
) -> None:
    """Recompute leaves, derived columns, trees and signed heads; exit 1 naming the first bad entry."""
    from keys.layout import read_card
    from protocol.card import parse_card
    from protocol.keychain import read_keyset

    from ..services.verify import verify_log

    settings = settings_for(home, database_url=database_url)
    chain = [read_keyset(d).keyset for d in parse_card(read_card(settings.home))]
    authority = chain[-1].authority
    logs = [log_name] if log_name else ["exchange", "access"]
    for name in logs:
        if name not in ("exchange", "access"):
            raise InputError(f"unknown log {name!r}: exchange or access")
    db = _database(settings)
    try:
        with db.read() as session:
            reports = [verify_log(session, name, authority=authority, chain=chain) for name in logs]
    finally:
        db.dispose()
    lines = []
    for r in reports:
        state = "ok" if r.ok else "FAILED"
        lines.append(f"{r.log}: {state}, {r.tree_size} entries, {r.heads_checked} signed heads, "
                     f"{r.pending} pending, root {r.root}")
        if r.first_bad:
            lines.append(f"  first bad entry: {r.first_bad.index} ({r.first_bad.column}): {r.first_bad.reason}")
        if r.bad_range:
            lines.append(f"  bad between heads at sizes {r.bad_range[0]} and {r.bad_range[1]}")
    _print([r.to_json() for r in reports], as_json, lines)
    if not all(r.ok for r in reports):
        raise typer.Exit(EXIT_VERIFY_FAILED)


@audit_app.command("integrate")
def audit_integrate(home: HomeOption = None, database_url: DbOption = None) -> None:
    """Sequence pending log entries and sign heads, for a node that is not running."""
    from ..services.integrator import IntegratorBusyError, IntegratorLock, integrate_batch

    settings = settings_for(home, database_url=database_url)
    keystore = open_keystore(settings)
    db = _database(settings)
    lock = IntegratorLock(db, settings.home)
    try:
        lock.acquire()
    except IntegratorBusyError as e:
        db.dispose()
        raise BusyError(f"{e}: the running node integrates its own logs") from e
    total = 0
    try:
        while True:
            with db.write() as session:
                result = integrate_batch(session, authority=keystore.authority, signer=keystore.signer, now=now())
            total += result.entries
            if result.entries == 0:
                break
    finally:
        lock.release()
        db.dispose()
    typer.echo(f"integrated {total} entries", err=True)


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(worker)
    app.command()(send)
    app.command()(status)
    app.command()(inbox)
    app.add_typer(db_app, name="db")
    app.add_typer(audit_app, name="audit")
