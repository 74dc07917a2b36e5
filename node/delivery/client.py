"""The outbound HTTP client: httpx's API over aiohttp's connection handling (docs/adr/0004-http-client.md).

Stock ``httpx.AsyncClient`` spends several times more CPU per request than aiohttp and degrades
as connections grow (encode/httpx#3215); measured here (``bench/exchange_bench.py --clients``),
httpx with the ``httpx-aiohttp`` transport did 5-8x the requests per second of stock httpx at
16-256 concurrent requests.  Callers keep httpx's API and exceptions (``httpx.HTTPError``);
without ``httpx-aiohttp`` installed the stock transport is used, and said so in the log.
"""

from __future__ import annotations

import ssl
from typing import Any

import httpx
import structlog

log = structlog.get_logger("comity.http")


class PeerClient(httpx.AsyncClient):
    """httpx's API, plus the aiohttp session underneath for the one request on the hot path.

    The envelope POST (``transport.post_envelope``) goes to aiohttp directly: httpx's request and
    response models around aiohttp cost about a fifth of the sender's event-loop time under load.
    Everything else (chunks, key refreshes, witnessing) keeps httpx's API.
    """

    def __init__(self, *, aiohttp_transport: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._aiohttp_transport = aiohttp_transport

    def aiohttp_session(self) -> Any:
        """The ``aiohttp.ClientSession`` this client sends through, or None (stock transport)."""
        t = self._aiohttp_transport
        if t is None:
            return None
        if t.client is None:  # made on first use, as the transport itself does
            t.client = t.get_client()
        return t.client


def outbound_client(*, verify: bool | str | ssl.SSLContext, connections: int) -> PeerClient:
    """A client for peers: at most ``connections`` open connections, proxies from the environment ignored."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    try:
        from httpx_aiohttp import AiohttpTransport
    except ImportError:
        log.warning("http_transport_fallback", detail="httpx-aiohttp is not installed: stock httpx transport")
        return PeerClient(limits=limits, verify=verify, trust_env=False)
    transport = AiohttpTransport(verify=verify, trust_env=False, limits=limits)
    return PeerClient(transport=transport, aiohttp_transport=transport, trust_env=False)
