"""The local listener: the authority's own JSON API (bearer token), later the web UI and metrics.

Every authenticated request goes into the access log: a read of content (subjects, bodies) as
``content_read`` naming the message ids, committed before the content is returned; any other use of
the token as ``token_used``.  The actor is the token's id (``token:`` + 8 hex of its SHA-256).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import select

from ..errors import AuthError
from ..runtime import Node
from ..services.access import record_content_read, record_token_use, token_actor
from ..services.sending import Draft, get_outbound, queue_message, status_document
from ..storage.db import Database
from ..storage.models import InboxMessage


class MessageIn(BaseModel):
    to: str = Field(pattern=r"^[A-Z]{2}-[A-Z0-9]{2,16}$")
    kind: str
    subject: str = Field(max_length=1000)
    body: str
    thread: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")
    request: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")


def inbox_listing(db: Database, *, actor: str, now: int, route: str = "GET /api/v1/inbox") -> list[dict[str, Any]]:
    """Received messages with their subjects — a read of content, logged (``content_read``) before it is shown."""
    with db.write() as session:
        rows = session.execute(
            select(InboxMessage.message_id, InboxMessage.sender, InboxMessage.kind, InboxMessage.subject,
                   InboxMessage.received_at).order_by(InboxMessage.seq)
        ).all()
        record_content_read(session, actor=actor, ids=[r.message_id for r in rows], at=now, route=route)
    return [{"id": r.message_id, "from": r.sender, "kind": r.kind, "subject": r.subject,
             "received_at": r.received_at} for r in rows]


def send_message(node: Node, draft: Draft, *, actor: str | None = None, route: str = "POST /api/v1/messages") -> str:
    """Queue ``draft``; with ``actor``, its token use is logged in the same transaction."""
    message_id = os.urandom(16).hex()
    now = node.clock()
    with node.db.write() as session:
        queue_message(session, draft, me=node.authority, signer=node.keystore.signer, message_id=message_id,
                      now=now, lifetime=node.settings.message_lifetime, max_bytes=node.settings.envelope_max_bytes)
        if actor is not None:
            method, _, path = route.partition(" ")
            record_token_use(session, actor=actor, method=method, route=path, at=now)
    return message_id


#: Routes that write their own access-log entry (a content read, or a token use in their transaction).
SELF_LOGGED = frozenset({"POST /api/v1/messages", "GET /api/v1/inbox", "GET /api/v1/inbox/{message_id}"})


def route_of(request: Request) -> str:
    """``METHOD /path/template`` of the matched route (ids stay out of the template)."""
    return f"{request.method} {getattr(request.scope.get('route'), 'path', request.url.path)}"


def build_local_router(node: Node) -> APIRouter:
    async def require_token(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not node.admin_token or \
                not hmac.compare_digest(token.strip().encode(), node.admin_token.encode()):
            raise AuthError("a valid `Authorization: Bearer <token>` is required (see HOME/admin.token)")
        request.state.actor = token_actor(node.admin_token)
        route = route_of(request)
        if route not in SELF_LOGGED:
            def record() -> None:
                with node.db.write() as session:
                    method, _, path = route.partition(" ")
                    record_token_use(session, actor=request.state.actor, method=method, route=path, at=node.clock())
            await asyncio.to_thread(record)

    router = APIRouter(prefix="/api/v1", dependencies=[Depends(require_token)])

    @router.post("/messages", status_code=201)
    async def post_message(msg: MessageIn, request: Request) -> JSONResponse:
        draft = Draft(to=msg.to, kind=msg.kind, subject=msg.subject, body=msg.body, thread=msg.thread,
                      request=msg.request)
        message_id = await asyncio.to_thread(send_message, node, draft, actor=request.state.actor)
        node.wake_worker()
        return JSONResponse({"id": message_id}, status_code=201)

    @router.get("/messages/{message_id}")
    async def get_message(message_id: str) -> JSONResponse:
        def load() -> dict[str, Any]:
            with node.db.read() as session:
                return status_document(get_outbound(session, message_id))
        return JSONResponse(await asyncio.to_thread(load))

    @router.get("/inbox")
    async def get_inbox(request: Request) -> JSONResponse:
        return JSONResponse(await asyncio.to_thread(inbox_listing, node.db, actor=request.state.actor,
                                                    now=node.clock()))

    @router.get("/inbox/{message_id}")
    async def get_inbox_message(message_id: str, request: Request) -> JSONResponse:
        def load() -> dict[str, Any] | None:
            with node.db.write() as session:  # the read is logged, and committed, before content leaves
                row = session.scalars(select(InboxMessage).where(InboxMessage.message_id == message_id)).first()
                if row is None:
                    record_token_use(session, actor=request.state.actor, method="GET",
                                     route="/api/v1/inbox/{message_id}", at=node.clock())
                    return None
                record_content_read(session, actor=request.state.actor, ids=[row.message_id], at=node.clock(),
                                    route="GET /api/v1/inbox/{message_id}")
                return {"id": row.message_id, "from": row.sender, "kind": row.kind, "subject": row.subject,
                        "body": json.loads(row.body), "thread": row.thread, "request": row.request,
                        "received_at": row.received_at}
        doc = await asyncio.to_thread(load)
        if doc is None:
            return JSONResponse({"category": "not_found", "detail": f"no received message {message_id}"},
                                status_code=404, media_type="application/problem+json")
        return JSONResponse(doc)

    return router
