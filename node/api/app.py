"""Building the ASGI apps of a node: peer listener, local listener, or both on one port (dev mode)."""

from __future__ import annotations

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import NodeError
from ..runtime import Node
from .local import build_local_router
from .peer import build_peer_router
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

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception) -> Response:
        log.error("unexpected_error", path=request.url.path, error=type(e).__name__)
        return local_problem(503, "unavailable", "the node could not handle this request now; try again")


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
        return JSONResponse({"status": "ready", "authority": node.authority})


def build_app(node: Node, *, peer: bool, local: bool) -> FastAPI:
    app = FastAPI(title=f"Comity node {node.authority}", docs_url=None, redoc_url=None, openapi_url=None)
    _install_handlers(app)
    _health(app, node)
    if peer:
        app.include_router(build_peer_router(node))
    if local:
        app.include_router(build_local_router(node))
    return app
