"""``comity serve``, ``worker``, ``send``, ``status``, ``inbox``, ``db upgrade``, ``audit verify|integrate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..config import Settings
from ..errors import InputError
from . import audit_cmds
from .options import HomeOption, now, open_database, open_keystore, settings_for, stopped_node

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
attachment_app = typer.Typer(no_args_is_help=True, help="Attachments of received messages.")


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
    recorder = audit_cmds.open_audit(node)  # refuses a database older than HOME/heads; keeps that file current
    try:
        run_serve(node, with_worker=not no_worker)
    finally:
        recorder.close()


def worker(
    home: HomeOption = None, database_url: DbOption = None,
    insecure_http: Annotated[bool, typer.Option("--insecure-http", help="Allow plain-HTTP peers.")] = False,
) -> None:
    """Run the delivery worker (and the log integrator, unless another process runs it)."""
    from ..logs import configure_logging
    from ..server import run_worker

    settings = settings_for(home, database_url=database_url, insecure_http=insecure_http or None)
    configure_logging(settings.log_format)
    node = _node(settings)
    recorder = audit_cmds.open_audit(node)
    try:
        run_worker(node)
    finally:
        recorder.close()


def send(
    to: Annotated[str, typer.Option(help="The peer authority id.", show_default=False)],
    kind: Annotated[str, typer.Option(help="consultation or note.", show_default=False)],
    subject: Annotated[str, typer.Option(help="The subject line.", show_default=False)],
    body: Annotated[str | None, typer.Option(help="The body text.", show_default=False)] = None,
    body_file: Annotated[Path | None, typer.Option(help="Read the body from this file.", show_default=False)] = None,
    thread: Annotated[str | None, typer.Option(help="Thread id this message belongs to.")] = None,
    request: Annotated[str | None, typer.Option(help="Formal request id it relates to.")] = None,
    attach: Annotated[list[Path] | None, typer.Option(
        "--attach", help="Attach this file (repeatable; names must differ).", show_default=False)] = None,
    home: HomeOption = None, database_url: DbOption = None,
) -> None:
    """Seal a message once and queue it; prints its id (works whether or not the node is running)."""
    from ..api.local import send_message
    from ..services.sending import Draft

    if (body is None) == (body_file is None):
        raise InputError("give exactly one of --body and --body-file")
    files = list(attach or [])
    if files:
        from ..services.attachment_files import check_attachment_names

        check_attachment_names(files)  # duplicates and unsendable names are refused before any work
    if body is not None:
        text = body
    else:
        assert body_file is not None
        try:
            text = body_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read --body-file {body_file}: {getattr(e, 'strerror', None) or e}") from e
    settings = settings_for(home, database_url=database_url)
    node = _node(settings)
    try:
        open_database(settings).dispose()
        draft = Draft(to=to, kind=kind, subject=subject, body=text, thread=thread, request=request)
        if files:
            from ..services.attachment_files import queue_with_attachments
            from .progress import byte_progress

            with byte_progress(sum(f.stat().st_size for f in files), "encrypting") as advance:
                message_id = queue_with_attachments(node, draft, files, progress=advance)
        else:
            message_id = send_message(node, draft)
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
    if doc.get("attachments"):
        att = doc["attachments"]
        lines.append(f"attachments: {att['count']}, {att['chunks_acknowledged']} of {att['chunks_total']} "
                     "chunks acknowledged by the peer")
    if doc["receipt"]:
        r = doc["receipt"]
        lines.append(f"receipt: received_at {r['received_at']}, peer log leaf {r['leaf_index']} of {r['tree_size']}")
    _print(doc, as_json, lines)


def inbox(home: HomeOption = None, database_url: DbOption = None, as_json: JsonOption = False) -> None:
    """Messages received, oldest first (a read of their subjects, recorded in the access log)."""
    from ..api.local import inbox_listing
    from ..services.access import cli_actor

    settings = settings_for(home, database_url=database_url)
    db = _database(settings)
    try:
        items = inbox_listing(db, actor=cli_actor(), now=now(), route="cli:inbox")
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


@audit_app.command("integrate")
def audit_integrate(home: HomeOption = None, database_url: DbOption = None) -> None:
    """Sequence pending log entries and sign heads, for a node that is not running."""
    from ..services.integrator import integrate_until_idle

    settings = settings_for(home, database_url=database_url)
    with stopped_node(settings, busy="the running node integrates its own logs") as (keystore, db):
        total = integrate_until_idle(db, authority=keystore.authority, signer=keystore.signer, now=now())
    typer.echo(f"integrated {total} entries", err=True)


@attachment_app.command("get")
def attachment_get(
    message_id: Annotated[str, typer.Argument(help="The received message's id.", show_default=False)],
    att: Annotated[str, typer.Argument(help="The attachment's name as sent, or its 0-based index.",
                                       show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Write the decrypted file here.", show_default=False)],
    force: Annotated[bool, typer.Option("--force", help="Overwrite --out if it exists.")] = False,
    home: HomeOption = None, database_url: DbOption = None,
) -> None:
    """Decrypt one attachment of a received message to --out, checking its size and SHA-256."""
    from ..services.access import cli_actor, record_content_read
    from ..services.attachment_files import export_attachment, pick_attachment, received_attachments
    from ..storage.blobs import BlobStore
    from .progress import byte_progress

    settings = settings_for(home, database_url=database_url)
    keystore = open_keystore(settings)
    db = _database(settings)
    try:
        with db.read() as session:
            _, rows = received_attachments(session, message_id)
            row = pick_attachment(rows, att)
        if out.exists() and not force:
            raise InputError(f"{out} exists; pass --force to overwrite it")
        with byte_progress(row.size, "decrypting") as advance:
            export_attachment(BlobStore(settings.blobs_dir), keystore.storage_key, row, out, force=force,
                              progress=advance)
        with db.write() as session:
            record_content_read(session, actor=cli_actor(), ids=[row.message_id], at=now(),
                                route="cli:attachment get", event="attachment_exported")
    finally:
        db.dispose()
    typer.echo(f"{out}: {row.size} bytes, SHA-256 checked", err=True)


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(worker)
    app.command()(send)
    app.command()(status)
    app.command()(inbox)
    app.add_typer(db_app, name="db")
    audit_app.command("verify")(audit_cmds.audit_verify)
    audit_app.command("export")(audit_cmds.audit_export)
    db_app.command("restored")(audit_cmds.db_restored)
    app.add_typer(audit_app, name="audit")
    app.add_typer(audit_cmds.evidence_app, name="evidence")
    app.add_typer(attachment_app, name="attachment")
