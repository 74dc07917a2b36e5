"""One delivery attempt over HTTP, classified by what a sender may trust.

Only a verified receipt counts as delivery; only a verified signed error of a permanent
category ends a message.  Anything unsigned or unverifiable (a proxy's 4xx, a 5xx, a reset
connection, a timeout) is retryable.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from protocol.errors import ProtocolError
from protocol.strictjson import parse_object

from .client import PeerClient

MEDIA_JOSE = "application/jose"
MEDIA_PROBLEM = "application/problem+json"
#: A receipt or a problem document is small; a peer that sends more is cut off (never buffered whole).
MAX_RESPONSE_BYTES = 64 * 1024


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


async def read_capped(resp: httpx.Response, limit: int = MAX_RESPONSE_BYTES) -> bytes | None:
    """The body of a streamed response, or None as soon as it exceeds ``limit``."""
    return await _capped(resp.aiter_bytes(), limit)


async def _capped(pieces: AsyncIterator[bytes], limit: int) -> bytes | None:
    body = bytearray()
    async for piece in pieces:
        body += piece
        if len(body) > limit:
            return None
    return bytes(body)


def _response(status: int, body: bytes, headers: Mapping[str, str]) -> Response:
    """A peer's answer as the worker judges it (headers looked up case-insensitively by both clients)."""
    return Response(status, body, headers.get("content-type", "").split(";")[0].strip(),
                    _retry_after(headers.get("retry-after")))


async def post_envelope(client: httpx.AsyncClient, endpoint: str, envelope: bytes, *,
                        timeout: float) -> Response | TransportFailure:
    """One POST with a total deadline of ``timeout`` seconds (connect, send, wait and read together)."""
    session = client.aiohttp_session() if isinstance(client, PeerClient) else None
    if session is not None:
        return await _post_aiohttp(session, endpoint, envelope, timeout=timeout)
    try:
        async with asyncio.timeout(timeout):
            async with client.stream(
                "POST", inbox_url(endpoint), content=envelope, timeout=timeout,
                headers={"Content-Type": MEDIA_JOSE, "Accept": f"{MEDIA_JOSE}, {MEDIA_PROBLEM}"},
            ) as resp:
                body = await read_capped(resp)
                if body is None:
                    return TransportFailure("response_too_large")
                return _response(resp.status_code, body, resp.headers)
    except TimeoutError:
        return TransportFailure("timeout")
    except httpx.HTTPError as e:
        return TransportFailure(type(e).__name__)


async def _post_aiohttp(session: Any, endpoint: str, envelope: bytes, *, timeout: float) -> Response | TransportFailure:
    """``post_envelope`` on aiohttp itself: the same request, limits and failure names (aiohttp's
    errors mapped to httpx's as the transport maps them)."""
    import aiohttp
    from httpx_aiohttp.transport import map_aiohttp_exceptions

    try:
        async with asyncio.timeout(timeout):
            with map_aiohttp_exceptions():
                # identity: a receipt is small; and a body a proxy compresses anyway is decoded
                # before the size cap and the parse see it (as httpx does)
                async with session.post(inbox_url(endpoint), data=envelope, allow_redirects=False,
                                        compress=False,
                                        headers={"Content-Type": MEDIA_JOSE, "Accept-Encoding": "identity",
                                                 "Accept": f"{MEDIA_JOSE}, {MEDIA_PROBLEM}"}) as resp:
                    body = await _capped(resp.content.iter_any(), MAX_RESPONSE_BYTES)
                    if body is None:
                        return TransportFailure("response_too_large")
                    return _response(resp.status, body, resp.headers)
    except TimeoutError:
        return TransportFailure("timeout")
    except (httpx.HTTPError, aiohttp.ClientError) as e:
        return TransportFailure(type(e).__name__)


def error_jws_of(resp: Response) -> bytes | None:
    """The signed error inside a problem+json body, or None if there is none to trust."""
    if resp.content_type != MEDIA_PROBLEM:
        return None
    try:
        doc = parse_object(resp.body, max_bytes=MAX_RESPONSE_BYTES, max_depth=8)
    except ProtocolError:
        return None
    token = doc.get("error_jws")
    return token.encode("ascii") if isinstance(token, str) and token.isascii() else None
