"""The outbound HTTP client: httpx's API over aiohttp's connection handling (docs/adr/0004-http-client.md).

Stock ``httpx.AsyncClient`` spends several times more CPU per request than aiohttp and degrades
as connections grow (encode/httpx#3215); measured here (``bench/exchange_bench.py --clients``),
httpx with the ``httpx-aiohttp`` transport did 5-8x the requests per second of stock httpx at
16-256 concurrent requests.  Callers keep httpx's API and exceptions (``httpx.HTTPError``);
without ``httpx-aiohttp`` installed the stock transport is used, and said so in the log.
"""

from __future__ import annotations

import ssl

import httpx
import structlog

log = structlog.get_logger("comity.http")


def outbound_client(*, verify: bool | str | ssl.SSLContext, connections: int) -> httpx.AsyncClient:
    """A client for peers: at most ``connections`` open connections, proxies from the environment ignored."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    try:
        from httpx_aiohttp import AiohttpTransport
    except ImportError:
        log.warning("http_transport_fallback", detail="httpx-aiohttp is not installed: stock httpx transport")
        return httpx.AsyncClient(limits=limits, verify=verify, trust_env=False)
    return httpx.AsyncClient(transport=AiohttpTransport(verify=verify, trust_env=False, limits=limits),
                             trust_env=False)
