"""The access log: who read or exported content, token use, admin actions, settings changes.

Its entries go to the internal ``access`` log (its heads never leave the node).  An entry names
the actor — a token id (the first 8 hex of SHA-256 of the bearer token, never the token) or
``cli:<user>`` — and message ids; never a subject, a body, a name or a digest of plaintext.
"""

from __future__ import annotations

import dataclasses
import getpass
import hashlib
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from ..config import Settings
from ..storage.models import SettingSeen
from .audit import append_entry

#: Message ids per entry: a listing of many messages is split so that no leaf grows past its cap.
IDS_PER_ENTRY = 500


def token_actor(token: str) -> str:
    """The identity of a bearer token in the log: ``token:`` + the first 8 hex of its SHA-256."""
    return "token:" + hashlib.sha256(token.encode("utf-8")).hexdigest()[:8]


def cli_actor() -> str:
    """The identity of whoever runs a command on the node's host."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "unknown"
    return f"cli:{user[:40]}"


def record_content_read(session: Session, *, actor: str, ids: Sequence[str], at: int, route: str,
                        event: str = "content_read") -> None:
    """``actor`` was shown the content (subject, body) of messages ``ids``; one entry per 500 ids."""
    for start in range(0, max(len(ids), 1), IDS_PER_ENTRY):
        chunk = list(ids[start:start + IDS_PER_ENTRY])
        append_entry(session, log="access", event=event, at=at,
                     message_id=chunk[0] if len(chunk) == 1 else None,
                     details={"actor": actor, "ids": chunk, "count": len(chunk), "route": route})


def record_token_use(session: Session, *, actor: str, method: str, route: str, at: int) -> None:
    append_entry(session, log="access", event="token_used", at=at,
                 details={"actor": actor, "method": method, "route": route})


def record_admin_action(session: Session, *, actor: str, action: str, at: int, message_id: str | None = None,
                        peer: str | None = None, **details: object) -> None:
    """An administrator's action (an export, a declared restore, ...), with metadata ``details``."""
    append_entry(session, log="access", event="admin_action", at=at, message_id=message_id, peer=peer,
                 details={"actor": actor, "action": action, **details})


def _shown(name: str, value: object) -> str:
    if name == "database_url" and isinstance(value, str) and value:
        return make_url(value).render_as_string(hide_password=True)
    return repr(value)


def record_settings(session: Session, settings: Settings, *, actor: str, at: int) -> list[str]:
    """Log ``settings_changed`` with the names (never the values) of settings changed since last seen."""
    seen = {r.name: r for r in session.scalars(select(SettingSeen))}
    changed = []
    for f in dataclasses.fields(Settings):
        value = _shown(f.name, getattr(settings, f.name))
        row = seen.get(f.name)
        if row is None:
            session.add(SettingSeen(name=f.name, value=value))
            if seen:
                changed.append(f.name)
        elif row.value != value:
            row.value = value
            changed.append(f.name)
    if changed:
        append_entry(session, log="access", event="settings_changed", at=at,
                     details={"actor": actor, "names": sorted(changed)})
    elif not seen:
        append_entry(session, log="access", event="settings_recorded", at=at, details={"actor": actor})
    return changed
