"""``application/problem+json`` bodies: a categorised refusal, signed for peers, never a stack trace."""

from __future__ import annotations

from fastapi.responses import JSONResponse, Response

from protocol.errors import ERROR_TABLE, Category

from ..errors import NodeError

MEDIA_PROBLEM = "application/problem+json"


def peer_problem(category: Category, *, error_jws: bytes | None, detail: str | None = None,
                 retry_after: int | None = None) -> Response:
    """A refusal to a peer: its SPEC status and class, and the signed error a sender acts on."""
    rule = ERROR_TABLE[category]
    body: dict[str, object] = {
        "type": f"urn:comity:error:{category.value}", "title": rule.meaning, "status": rule.status,
        "category": category.value, "class": rule.error_class.value,
        "error_jws": error_jws.decode("ascii") if error_jws is not None else None,
    }
    if detail:
        body["detail"] = detail[:500]
    headers = {}
    if retry_after is not None or rule.status in (429, 503):
        headers["Retry-After"] = str(retry_after if retry_after is not None else 1)
    return JSONResponse(body, status_code=rule.status, media_type=MEDIA_PROBLEM, headers=headers)


def local_problem(status: int, category: str, detail: str) -> Response:
    body = {"type": f"urn:comity:error:{category}", "title": category.replace("_", " "), "status": status,
            "category": category, "detail": detail[:1000]}
    return JSONResponse(body, status_code=status, media_type=MEDIA_PROBLEM)


def node_problem(e: NodeError) -> Response:
    return local_problem(e.status, e.category, e.detail)
