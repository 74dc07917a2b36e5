"""One delivery attempt over HTTP, classified by what a sender may trust.

Only a verified receipt counts as delivery; only a verified signed error of a permanent
category ends a message.  Anything unsigned or unverifiable (a proxy's 4xx, a 5xx, a reset
connection, a timeout) is retryable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import httpx

MEDIA_JOSE = "application/jose"
MEDIA_PROBLEM = "application/problem+json"


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str
    retry_after: int | None


@dataclass(frozen=True)
class TransportFailure:
    reason: str


def inbox_url(endpoint: str) -> str:
    return endpoint.rstrip("/") + "/comity/v1/inbox"


def _retry_after(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return max(0, int(value.strip()))
    except ValueError:
        return None


async def post_envelope(client: httpx.AsyncClient, endpoint: str, envelope: bytes, *,
                        timeout: float) -> Response | TransportFailure:
    try:
        resp = await client.post(
            inbox_url(endpoint), content=envelope,
            headers={"Content-Type": MEDIA_JOSE, "Accept": f"{MEDIA_JOSE}, {MEDIA_PROBLEM}"},
            timeout=timeout,
        )
    except httpx.HTTPError as e:
        return TransportFailure(type(e).__name__)
    return Response(resp.status_code, resp.content, resp.headers.get("content-type", "").split(";")[0].strip(),
                    _retry_after(resp.headers.get("retry-after")))


def error_jws_of(resp: Response) -> bytes | None:
    """The signed error inside a problem+json body, or None if there is none to trust."""
    if resp.content_type != MEDIA_PROBLEM or len(resp.body) > 64 * 1024:
        return None
    try:
        doc = json.loads(resp.body)
    except ValueError:
        return None
    token = doc.get("error_jws") if isinstance(doc, dict) else None
    return token.encode("ascii") if isinstance(token, str) and token.isascii() else None
