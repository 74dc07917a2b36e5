"""Building the ASGI apps of a node: peer listener, local listener, or both on one port (dev mode)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import NodeError
from ..metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..runtime import Node
from ..services.attachments import storage_unready
from ..storage.blobs import BlobStore
from .local import build_local_router
from .peer import INBOX_PATH, build_peer_router
from .problems import local_problem, node_problem

log = structlog.get_logger("comity.api")


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(NodeError)
    async def _node_error(_: Request, e: NodeError) -> Response:
        return node_problem(e)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> Response:
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return local_problem(400, "invalid_input", f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> Response:
        category = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return local_problem(e.status_code, category, str(e.detail))

    # Not an exception handler: Starlette re-raises after those, and the server would then log a
    # traceback that can quote request data. This middleware answers and logs the type alone.
    app.add_middleware(_NeverCrash)


class _NeverCrash:
    """Any unexpected exception becomes a 503 problem document; nothing is re-raised."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except Exception as e:
            log.error("unexpected_error", path=scope.get("path"), error=type(e).__name__)
            if not started:
                response = local_problem(503, "unavailable", "the node could not handle this request now; try again")
                await response(scope, receive, send)


Handler = Callable[[Request], Awaitable[Response]]


class _DirectRoutes:
    """The hot peer route (``POST /comity/v1/inbox``) straight to its handler.

    FastAPI's routing, dependency solving and exception layers cost about a third of the receiver's
    event-loop time per envelope; that handler takes the bare request and answers every refusal
    itself, so none of them applies to it.  Anything it raises still reaches ``_NeverCrash``.
    """

    def __init__(self, app: ASGIApp, routes: dict[tuple[str, str], Handler]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            handler = self.routes.get((scope["method"], scope["path"]))
            if handler is not None:
                response = await handler(Request(scope, receive))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _direct_routes(router: APIRouter, paths: tuple[str, ...]) -> dict[tuple[str, str], Handler]:
    """The endpoints of ``router`` for ``paths``, by (method, path)."""
    found: dict[tuple[str, str], Handler] = {}
    for route in router.routes:
        if isinstance(route, APIRoute) and route.path in paths:
            for method in route.methods or ():
                found[(method, route.path)] = route.endpoint
    return found


def _health(app: FastAPI, node: Node) -> None:
    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok", "authority": node.authority})

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        try:
            with node.db.read() as session:
                session.execute(text("SELECT 1"))
        except Exception as e:
            return JSONResponse({"status": "unavailable", "reason": f"database: {type(e).__name__}"},
                                status_code=503)
        integrator = node.integrator
        if integrator is not None and integrator.last_error:
            return JSONResponse({"status": "unavailable", "reason": "integrator: " + integrator.last_error[:200]},
                                status_code=503)
        # not ready before the disk fills: below the reserve, attachments would be refused anyway
        reason = storage_unready(BlobStore(node.settings.blobs_dir), disk_reserve=node.settings.disk_reserve_bytes)
        if reason:
            return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)
        return JSONResponse({"status": "ready", "authority": node.authority})


def _metrics(app: FastAPI, node: Node) -> None:
    """Prometheus metrics, on the local listener only (127.0.0.1 unless configured otherwise)."""

    @app.get("/metrics")
    async def metrics() -> Response:
        body = await asyncio.to_thread(node.metrics.render)
        return Response(body, media_type=METRICS_CONTENT_TYPE)


#: FastAPI's own OpenTelemetry layer off: a node reports through /metrics and its logs, never to a
#: collector it was not told about; and the layer's per-request check for a configured provider
#: cost about 2% of the receiver's time (older FastAPI has no such layer, nor the argument).
_NO_TELEMETRY: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters else {})


def build_app(node: Node, *, peer: bool, local: bool) -> FastAPI:
    app = FastAPI(title=f"Comity node {node.authority}", docs_url=None, redoc_url=None, openapi_url=None,
                  **_NO_TELEMETRY)
    if peer:
        peer_router = build_peer_router(node)
        # added first: the middleware added last (_NeverCrash) is the outer one
        app.add_middleware(_DirectRoutes, routes=_direct_routes(peer_router, (INBOX_PATH,)))
    _install_handlers(app)
    _health(app, node)
    if peer:
        app.include_router(peer_router)
    if local:
        app.include_router(build_local_router(node))
        _metrics(app, node)
    return app
