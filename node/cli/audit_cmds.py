"""``comity audit verify|export``, ``comity evidence export``, ``comity db restored``, and the audit
checks ``serve`` and ``worker`` make before they start."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import EnvironmentError_, InputError
from .exits import EXIT_VERIFY_FAILED
from .options import HomeOption, now, open_database, settings_for, stopped_node

if TYPE_CHECKING:
    from ..runtime import Node
    from ..services.headsfile import HeadsFileRecorder

DbOption = Annotated[str | None, typer.Option(
    "--database-url", help="SQLAlchemy URL (else $COMITY_DATABASE_URL, else SQLite in the home).",
    show_default=False)]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
LOG_NAMES = ("exchange", "access")

evidence_app = typer.Typer(no_args_is_help=True, help="Evidence about one message, for a court.")


def _emit(doc: Any, as_json: bool, lines: list[str]) -> None:
    if as_json:
        typer.echo(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        for line in lines:
            typer.echo(line)


def _write_atomically(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def open_audit(node: Node) -> HeadsFileRecorder:
    """Before ``serve``/``worker``: refuse a database older than the heads held in the home, log settings
    changes, and keep ``HOME/heads/<log>.jws`` up to date after every integrator batch."""
    from sqlalchemy.exc import IntegrityError

    from ..services.access import cli_actor, record_settings
    from ..services.headsfile import HeadsFileRecorder, check_heads_file

    for attempt in (1, 2):
        try:
            with node.db.write() as session:
                problems = check_heads_file(session, node.home)
                if problems:
                    raise EnvironmentError_(
                        "the database is older than the signed heads held in the home (" + "; ".join(problems)
                        + "). If it was restored from a backup, run `comity db restored`; otherwise run "
                        "`comity audit verify`")
                record_settings(session, node.settings, actor=cli_actor(), at=node.clock())
            break
        except IntegrityError:
            # two processes of this node starting together (``serve`` and ``worker``, or two workers on
            # one PostgreSQL database) recorded the first settings at once: read what the other wrote
            if attempt == 2:
                raise
    recorder = HeadsFileRecorder(node.db, node.home)
    node.batch_listeners.append(lambda _result: recorder.notify())  # integrator batches also write the file
    return recorder


def _held_heads(home: Path, log: str, against: list[Path]) -> list[Any]:
    from ..services.bundles import bundle_heads, read_archive
    from ..services.headsfile import peek_head, read_held_head

    held = []
    try:
        own = read_held_head(home, log)
    except ValueError as e:
        raise InputError(str(e)) from e
    if own is not None:
        held.append(own)
    for path in against:
        data = path.read_bytes()
        if data.lstrip().startswith(b"{"):
            obj = read_archive(data)
            if obj.get("log") != log:
                continue
            held.extend(peek_head(t, f"{path} (head {i})") for i, t in enumerate(bundle_heads(obj)))
        else:
            held.append(peek_head(data, str(path)))
    return held


def verify_archive(path: Path, fingerprint: str | None) -> dict[str, Any]:
    """Verify a bundle or an evidence file with no database; the result says ok or names the failure."""
    from protocol.errors import ProtocolError

    from ..services.bundles import read_archive, verify_bundle
    from ..services.evidence import verify_evidence

    try:
        obj = read_archive(path.read_bytes())
        if "comity_evidence" in obj:
            return verify_evidence(obj, fingerprint=fingerprint)
        return verify_bundle(obj, fingerprint=fingerprint)
    except ProtocolError as e:
        return {"ok": False, "category": e.category.value, "detail": e.detail}


def audit_verify(
    home: HomeOption = None, database_url: DbOption = None, as_json: JsonOption = False,
    log_name: Annotated[str | None, typer.Option("--log", help="exchange or access [default: both].")] = None,
    bundle: Annotated[Path | None, typer.Option("--bundle", help=(
        "Verify this bundle or evidence file instead, with no database."), show_default=False)] = None,
    fingerprint: Annotated[str | None, typer.Option("--fingerprint", help=(
        "With --bundle: the fingerprint the keyset chain must lead from."), show_default=False)] = None,
    against: Annotated[list[Path] | None, typer.Option("--against", help=(
        "Also check the database against the signed heads in this bundle or head file (repeatable)."),
        show_default=False)] = None,
) -> None:
    """Recompute leaves, derived columns, trees and signed heads, and check them against the heads held
    outside the database (HOME/heads, --against); exit 1 naming the first bad entry."""
    if bundle is not None:
        result = verify_archive(bundle, fingerprint)
        if result["ok"]:
            what = f"{result['log']} log, leaves {result['from']}..{result['to']}, {result['heads']} signed heads" \
                if result["kind"] == "bundle" else f"{result['direction']} message {result['message_id']}"
            lines = [f"{result['kind']} ok: {result['authority']}, {what}",
                     f"fingerprint: {result['fingerprint']}"]
        else:
            lines = [f"FAILED ({result['category']}): {result['detail']}"]
        _emit(result, as_json, lines)
        if not result["ok"]:
            raise typer.Exit(EXIT_VERIFY_FAILED)
        return
    if fingerprint is not None:
        raise InputError("--fingerprint goes with --bundle")
    from keys.layout import read_card
    from protocol.card import parse_card
    from protocol.keychain import read_keyset

    from ..services.verify import verify_log

    settings = settings_for(home, database_url=database_url)
    chain = [read_keyset(d).keyset for d in parse_card(read_card(settings.home))]
    authority = chain[-1].authority
    logs = [log_name] if log_name else list(LOG_NAMES)
    for name in logs:
        if name not in LOG_NAMES:
            raise InputError(f"unknown log {name!r}: exchange or access")
    held = {name: _held_heads(settings.home, name, list(against or [])) for name in logs}
    db = open_database(settings)
    try:
        with db.read() as session:
            reports = [verify_log(session, name, authority=authority, chain=chain, held=held[name]) for name in logs]
    finally:
        db.dispose()
    lines = []
    for r in reports:
        state = "ok" if r.ok else "FAILED"
        lines.append(f"{r.log}: {state}, {r.tree_size} entries, {r.heads_checked} signed heads, "
                     f"{r.held_checked} held outside the database, {r.pending} pending, root {r.root}")
        if r.first_bad:
            lines.append(f"  first bad entry: {r.first_bad.index} ({r.first_bad.column}): {r.first_bad.reason}")
        if r.bad_range:
            lines.append(f"  bad between heads at sizes {r.bad_range[0]} and {r.bad_range[1]}")
    _emit([r.to_json() for r in reports], as_json, lines)
    if not all(r.ok for r in reports):
        raise typer.Exit(EXIT_VERIFY_FAILED)


def audit_export(
    out: Annotated[Path, typer.Option("--out", help="Write the bundle here.", show_default=False)],
    home: HomeOption = None, database_url: DbOption = None,
    log_name: Annotated[str, typer.Option("--log", help="exchange or access.")] = "exchange",
    first: Annotated[int | None, typer.Option("--from", help="First leaf index [default: 0].")] = None,
    last: Annotated[int | None, typer.Option("--to", help=(
        "End of the range (exclusive), rounded up to a signed head [default: the newest head]."))] = None,
) -> None:
    """Export a self-contained, offline-verifiable bundle of one log (SPEC §9.7)."""
    from keys.layout import read_card, read_meta

    from ..services.access import cli_actor, record_admin_action
    from ..services.bundles import export_bundle

    settings = settings_for(home, database_url=database_url)
    card = read_card(settings.home)
    authority = read_meta(settings.home).authority
    db = open_database(settings)
    summary: dict[str, Any] = {}
    try:
        with db.write() as session:
            record_admin_action(session, actor=cli_actor(), action="log_exported", at=now(),
                                exported_log=log_name, first=first, second=last)
        with db.read() as session:
            def write(f: Any) -> None:
                summary.update(export_bundle(session, f, log=log_name, authority=authority, card=card, first=first,
                                             last=last, now=now()))
            _write_atomically(out, write)
    finally:
        db.dispose()
    typer.echo(f"{out}: {summary['log']} log leaves {summary['from']}..{summary['to']}, {summary['heads']} signed "
               f"heads, {summary['peer_log_failures']} peer-log failure(s)", err=True)


@evidence_app.command("export")
def evidence_export(
    message_id: Annotated[str, typer.Argument(metavar="ID", help="The message id.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Write the evidence file here.", show_default=False)],
    home: HomeOption = None, database_url: DbOption = None,
) -> None:
    """Export the evidence of one sent or received message (SPEC §9.8); a received message's content
    (its signed inner JWS) is exported too, and that export is recorded in the access log."""
    from keys.layout import read_card, read_meta
    from protocol.strictjson import canonical

    from ..services.access import cli_actor, record_admin_action, record_content_read
    from ..services.evidence import export_evidence

    settings = settings_for(home, database_url=database_url)
    card = read_card(settings.home)
    authority = read_meta(settings.home).authority
    db = open_database(settings)
    try:
        with db.write() as session:
            doc = export_evidence(session, message_id, authority=authority, card=card, now=now())
            if doc["inner_jws"] is not None:
                record_content_read(session, actor=cli_actor(), ids=[message_id], at=now(),
                                    route="cli:evidence export", event="content_exported")
            else:
                record_admin_action(session, actor=cli_actor(), action="evidence_exported", at=now(),
                                    message_id=message_id, peer=doc["peer"])
    finally:
        db.dispose()
    _write_atomically(out, lambda f: f.write(canonical(doc)))
    typer.echo(f"{out}: evidence of {doc['direction']} message {message_id} (leaf {doc['leaf_index']} of "
               f"{doc['tree_size']})", err=True)


def db_restored(home: HomeOption = None, database_url: DbOption = None, as_json: JsonOption = False) -> None:
    """Declare that this node's database was restored from a backup (run with the node stopped).

    Records a signed `restored_from_backup` entry in both logs, keeps the heads written before
    (HOME/heads/*.pre-restore-*), and asks every pinned peer to redeliver what it holds receipts
    for after the last surviving head (sent by the worker when the node starts)."""
    from ..services.access import cli_actor
    from ..services.headsfile import sync_heads_file
    from ..services.integrator import integrate_until_idle
    from ..services.restore import declare_own_restore, set_aside_heads_files

    settings = settings_for(home, database_url=database_url)
    at = now()
    with stopped_node(settings, busy="stop the node before declaring a restore") as (keystore, db):
        with db.write() as session:
            summary = declare_own_restore(session, settings.home, authority=keystore.authority,
                                          signer=keystore.signer, actor=cli_actor(), now=at)
        integrate_until_idle(db, authority=keystore.authority, signer=keystore.signer, now=at)
        summary["heads_set_aside"] = [str(p) for p in set_aside_heads_files(settings.home, now=at)]
        sync_heads_file(db, settings.home)
    peers = ", ".join(summary["redelivery_requested_from"]) or "no pinned peer"
    _emit(summary, as_json, [
        f"restore recorded: exchange log continues from {summary['exchange']['surviving_tree_size']} entries "
        f"(heads file held {summary['exchange']['heads_file_tree_size']})",
        f"redelivery will be requested from: {peers} (when the node starts)"])
