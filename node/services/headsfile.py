"""Signed heads held outside the database: ``HOME/heads/<log>.jws``.

After every batch the integrator's process writes the newest signed head of each log to a file
in the node's home, replacing it only with a larger one.  Whoever edits the database afterwards
— truncating the log, or rewriting it with every hash recomputed — is caught against that file
by ``comity audit verify``; a database restored from a backup is older than the file, which
``serve`` notices (``comity db restored`` declares the restore).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from protocol.errors import ProtocolError
from protocol.jose import b64d

from ..storage.db import Database
from ..storage.models import AuditHead
from .audit import LOGS

log = structlog.get_logger("comity.audit")

HEADS_DIR = "heads"
MIN_INTERVAL = 0.2


@dataclass(frozen=True)
class HeldHead:
    """A signed head as held somewhere (not verified yet): its bytes and where it came from."""

    source: str
    jws: bytes
    tree_size: int
    root: str


def heads_path(home: Path, log_name: str) -> Path:
    return home / HEADS_DIR / f"{log_name}.jws"


def peek_head(jws: bytes, source: str) -> HeldHead:
    """Read a head's size and root without verifying it (``verify_head`` does that later)."""
    try:
        payload = json.loads(b64d(jws.strip().split(b".")[1], what="head payload"))
        size, root = payload["tree_size"], payload["root"]
        if not isinstance(size, int) or not isinstance(root, str):
            raise ValueError("tree_size or root of the wrong type")
    except (ProtocolError, IndexError, KeyError, ValueError, TypeError) as e:
        raise ValueError(f"{source} does not hold a signed head: {e}") from e
    return HeldHead(source, jws.strip(), size, root)


def read_held_head(home: Path, log_name: str) -> HeldHead | None:
    """The head held in ``HOME/heads/<log>.jws``, or None when there is no such file."""
    path = heads_path(home, log_name)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return peek_head(data, str(path))


def write_held_head(home: Path, log_name: str, jws: bytes, *, force: bool = False) -> bool:
    """Replace the held head with ``jws`` if it is larger (always with ``force``); durable and atomic."""
    path = heads_path(home, log_name)
    new = peek_head(jws, "new head")
    if not force:
        try:
            held = read_held_head(home, log_name)
        except ValueError:
            held = None
        if held is not None and held.tree_size >= new.tree_size:
            return False
    path.parent.mkdir(mode=0o700, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(new.jws + b"\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return True


def newest_heads(session: Session) -> dict[str, AuditHead]:
    """The newest signed head of each log in the database."""
    found: dict[str, AuditHead] = {}
    for name in LOGS:
        row = session.scalars(select(AuditHead).where(AuditHead.log == name)
                              .order_by(AuditHead.tree_size.desc()).limit(1)).first()
        if row is not None:
            found[name] = row
    return found


def sync_heads_file(db: Database, home: Path) -> None:
    """Write the database's newest heads to the heads files (never moving a file backwards)."""
    with db.read() as session:
        heads = {name: bytes(row.head_jws) for name, row in newest_heads(session).items()}
    for name, jws in heads.items():
        write_held_head(home, name, jws)


def check_heads_file(session: Session, home: Path) -> list[str]:
    """Cheap start-up check: every held head must be a head the database still has, same root."""
    problems = []
    newest = newest_heads(session)
    for name in LOGS:
        try:
            held = read_held_head(home, name)
        except ValueError as e:
            problems.append(str(e))
            continue
        if held is None:
            continue
        db_size = newest[name].tree_size if name in newest else 0
        if held.tree_size > db_size:
            problems.append(f"{held.source} holds a signed head of size {held.tree_size}, the database's "
                            f"{name} log ends at {db_size}")
            continue
        row = session.scalars(select(AuditHead).where(AuditHead.log == name,
                                                      AuditHead.tree_size == held.tree_size)).first()
        if row is not None and row.root != held.root:
            problems.append(f"{held.source}: the database's {name} head of size {held.tree_size} has another root")
    return problems


class HeadsFileRecorder:
    """Writes the newest heads after each integrator batch, in its own thread (coalescing batches)."""

    def __init__(self, db: Database, home: Path) -> None:
        self._db = db
        self._home = home
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="comity-heads-file", daemon=True)
        self._thread.start()

    def notify(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            if not self._wake.is_set():
                continue
            self._stop.wait(MIN_INTERVAL)  # coalesce the batches of a busy moment into one durable write
            self._wake.clear()
            try:
                sync_heads_file(self._db, self._home)
            except Exception as e:  # the next batch tries again; the database is the primary record
                log.error("heads_file_write_failed", error=type(e).__name__, detail=str(e)[:200])

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
        sync_heads_file(self._db, self._home)
