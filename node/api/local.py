"""The local listener: the authority's own JSON API (bearer token), later the web UI and metrics."""

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


def inbox_listing(db: Database) -> list[dict[str, Any]]:
    with db.read() as session:
        rows = session.execute(
            select(InboxMessage.message_id, InboxMessage.sender, InboxMessage.kind, InboxMessage.subject,
                   InboxMessage.received_at).order_by(InboxMessage.seq)
        ).all()
    return [{"id": r.message_id, "from": r.sender, "kind": r.kind, "subject": r.subject,
             "received_at": r.received_at} for r in rows]


def send_message(node: Node, draft: Draft) -> str:
    message_id = os.urandom(16).hex()
    now = node.clock()
    with node.db.write() as session:
        queue_message(session, draft, me=node.authority, signer=node.keystore.signer, message_id=message_id,
                      now=now, lifetime=node.settings.message_lifetime, max_bytes=node.settings.envelope_max_bytes)
    return message_id


def build_local_router(node: Node) -> APIRouter:
    def require_token(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not node.admin_token or \
                not hmac.compare_digest(token.strip().encode(), node.admin_token.encode()):
            raise AuthError("a valid `Authorization: Bearer <token>` is required (see HOME/admin.token)")

    router = APIRouter(prefix="/api/v1", dependencies=[Depends(require_token)])

    @router.post("/messages", status_code=201)
    async def post_message(msg: MessageIn) -> JSONResponse:
        draft = Draft(to=msg.to, kind=msg.kind, subject=msg.subject, body=msg.body, thread=msg.thread,
                      request=msg.request)
        message_id = await asyncio.to_thread(send_message, node, draft)
        node.wake_worker()
        return JSONResponse({"id": message_id}, status_code=201)

    @router.get("/messages/{message_id}")
    async def get_message(message_id: str) -> JSONResponse:
        def load() -> dict[str, Any]:
            with node.db.read() as session:
                return status_document(get_outbound(session, message_id))
        return JSONResponse(await asyncio.to_thread(load))

    @router.get("/inbox")
    async def get_inbox() -> JSONResponse:
        return JSONResponse(await asyncio.to_thread(inbox_listing, node.db))

    @router.get("/inbox/{message_id}")
    async def get_inbox_message(message_id: str) -> JSONResponse:
        def load() -> dict[str, Any] | None:
            with node.db.read() as session:
                row = session.scalars(select(InboxMessage).where(InboxMessage.message_id == message_id)).first()
                if row is None:
                    return None
                return {"id": row.message_id, "from": row.sender, "kind": row.kind, "subject": row.subject,
                        "body": json.loads(row.body), "thread": row.thread, "request": row.request,
                        "received_at": row.received_at}
        doc = await asyncio.to_thread(load)
        if doc is None:
            return JSONResponse({"category": "not_found", "detail": f"no received message {message_id}"},
                                status_code=404, media_type="application/problem+json")
        return JSONResponse(doc)

    return router
