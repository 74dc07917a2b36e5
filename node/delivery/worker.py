"""The delivery worker: polls at least every 500 ms, claims due messages, delivers them concurrently.

Classes per SPEC: ``retryable`` (connection errors, timeouts, 5xx, 429, any unsigned 4xx) ->
per-peer backoff; ``retry-after-refresh`` -> refresh the peer's keyset, reseal the same inner
JWS to its new key, retry; ``permanent``, only from a verified signed error -> ``failed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import structlog

from protocol.artifacts import LiveKeys
from protocol.envelope import reseal_envelope
from protocol.errors import ArtifactError, Category, ErrorClass, ProtocolError
from protocol.keysets import Keyset
from protocol.receipts import verify_receipt
from protocol.rejections import verify_error

from ..faults import crash_point
from ..metrics import NodeMetrics
from ..services.peers import KEYSET_TTL, peer_lookup
from ..storage.db import Database
from .attachments import ChunkSender
from .claims import (
    LEASE_SECONDS,
    Claim,
    claim_due,
    replace_envelope_in,
    settle_delivered_in,
    settle_failed_in,
    settle_retry_in,
)
from .client import outbound_client
from .refresh import RefreshError, refresh_peer_keyset
from .transport import MEDIA_JOSE, Response, TransportFailure, error_jws_of, post_envelope
from .witness import PeerWitness

if TYPE_CHECKING:
    from ..services.integrator import IntegratorLoop

log = structlog.get_logger("comity.delivery")
T = TypeVar("T")

REFRESH_MIN_INTERVAL = 60.0
#: The share of the worker's slots (``concurrency``) one peer's deliveries may hold: a peer that
#: accepts connections and answers slowly (or never, until the attempt's timeout) leaves the rest
#: to the other peers' messages instead of holding up every state's requests behind its own.
PEER_SHARE = 0.75
EXPIRY_EVERY = 10.0  # seconds between sweeps for messages past their lifetime
#: Retryable refusals that concern one message, not the peer as a whole.
MESSAGE_SCOPED = frozenset({Category.NOT_YET_VALID, Category.UNKNOWN_SIGNING_KEY, Category.SENDER_KEYSET_EXPIRED,
                            Category.ATTACHMENTS_INCOMPLETE, Category.UNKNOWN_MESSAGE})


def _outcome(resp: Response | TransportFailure) -> str:
    """The attempt-metric label of a raw response (before any verification)."""
    if isinstance(resp, TransportFailure):
        return "unreachable"
    if resp.status in (200, 201) and resp.content_type == MEDIA_JOSE:
        return "receipt"
    return f"http_{resp.status}"


class DeliveryWorker:
    def __init__(
        self, db: Database, *, authority: str, owner: str, clock: Callable[[], int] = lambda: int(time.time()),
        poll: float = 0.5, concurrency: int = 32, timeout: float = 30.0, skew: int = 300,
        max_lifetime: int = 7 * 86400, verify_tls: bool | ssl.SSLContext = True, lease: int = LEASE_SECONDS,
        metrics: NodeMetrics | None = None, witness_poll: float = 300.0, allow_http: bool = False,
        writer: IntegratorLoop | None = None,
    ) -> None:
        self.db = db
        #: the process's group-commit writer: claims and settles share its transactions
        self.writer = writer
        self.allow_http = allow_http  # plain-HTTP peer endpoints only in --insecure-http mode
        self.authority = authority
        self.owner = owner
        self.clock = clock
        self.poll = poll
        self.concurrency = concurrency
        self.timeout = timeout
        self.skew = skew
        self.max_lifetime = max_lifetime
        self.verify_tls = verify_tls
        self.lease = lease
        self.metrics = metrics
        self._wake = asyncio.Event()
        #: deliveries in flight, each with its peer; and the most one peer may have (PEER_SHARE)
        self._in_flight: dict[asyncio.Task[None], str] = {}
        self.peer_cap = max(1, int(concurrency * PEER_SHARE))
        #: the peers the last claim left out, when it found fewer messages than it could take: until
        #: something changes (a message queued, a delivery to another peer done, ``poll`` seconds),
        #: a claim leaving out those peers (or more) would find nothing either — and to find nothing it
        #: walks every queued message of the peers left out
        self._exhausted: frozenset[str] | None = None
        self._exhausted_at = 0.0
        #: what happened while a claim ran (it may have missed it): messages queued, peers whose
        #: deliveries ended
        self._queued = 0
        self._finished: set[str] = set()
        self._last_refresh: dict[str, float] = {}
        self._keyset = peer_lookup(db, ttl=KEYSET_TTL)  # the keyset held for a peer
        self._next_expiry = 0.0
        self.chunks = ChunkSender(db, owner=owner, clock=clock, timeout=timeout, lease=lease)
        self.witness = PeerWitness(db, clock=clock, skew=skew, max_lifetime=max_lifetime, poll=witness_poll)

    def wake(self) -> None:
        """A message was queued."""
        self._exhausted = None
        self._queued += 1
        self._wake.set()

    async def _write(self, job: Callable[..., T], *args: Any, **kw: Any) -> T:
        """``job(session, *args, **kw)`` in a write transaction: the writer's next batch, or one of its own."""
        if self.writer is not None:
            return await self.writer.run(lambda session: job(session, *args, **kw))

        def alone() -> T:
            with self.db.write() as session:
                return job(session, *args, **kw)
        return await asyncio.to_thread(alone)

    async def run(self, stop: asyncio.Event) -> None:
        async with outbound_client(verify=self.verify_tls, connections=self.concurrency * 2) as client:
            witness = asyncio.create_task(self.witness.run(client, stop))  # peers' logs, redelivery requests
            stopping = asyncio.create_task(self._wake_on(stop))  # a stop ends the wait below, not the poll
            while not stop.is_set():
                # cleared before claiming: a wake (a message queued, a delivery done) that arrives while
                # the claim runs must start another round, not be lost until the next poll
                self._wake.clear()
                free = self.concurrency - len(self._in_flight)
                # claim in batches: one claim per quarter of a window, not one per finished message
                limit, busy = self._claim_room(free, Counter(self._in_flight.values()))
                if (free >= max(1, self.concurrency // 4) or (free > 0 and not self._in_flight)) \
                        and limit > 0 and not self._nothing_more(busy):
                    expire = time.monotonic() >= self._next_expiry
                    if expire:
                        self._next_expiry = time.monotonic() + EXPIRY_EVERY
                    queued = self._queued
                    self._finished.clear()
                    try:
                        claims = await self._write(
                            claim_due, owner=self.owner, now=self.clock(), limit=limit, skew=self.skew,
                            lease=self.lease, expire=expire, exclude=busy,
                        )
                        if claims:
                            crash_point("after_claim_commit")  # tests only
                        if self._queued != queued:
                            self._exhausted = None  # queued meanwhile: it may have missed that
                        elif len(claims) < limit and self._finished <= busy:
                            # nothing more, but for the peers it left out (and no delivery to another
                            # peer ended while it ran, which could have made that peer's next one due)
                            self._exhausted, self._exhausted_at = frozenset(busy), time.monotonic()
                        # Otherwise an earlier finding stands: a full claim made nothing due, and a
                        # delivery that ended meanwhile to a peer outside it has cleared it (``_done``).
                    except Exception as e:  # the database may be briefly unavailable; keep polling
                        log.error("claim_failed", error=type(e).__name__, detail=str(e)[:200])
                        claims = []
                    for claim in claims:
                        task = asyncio.create_task(self._deliver(client, claim))
                        self._in_flight[task] = claim.peer
                        task.add_done_callback(self._done)
                    if claims and len(self._in_flight) < self.concurrency:
                        continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self._next_look())
            if self._in_flight:
                await asyncio.wait(set(self._in_flight), timeout=self.timeout)
            await witness
            stopping.cancel()

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()

    def _claim_room(self, free: int, loads: Counter[str]) -> tuple[int, set[str]]:
        """How many messages the next claim may take, and the peers it must leave out, so that no
        peer exceeds ``peer_cap`` deliveries in flight (``loads``: in flight per peer).  A peer
        within a quarter window of its cap sits this claim out; the claim then takes at most what
        the busiest remaining peer has room for: a quarter window at least (claims stay batches),
        as a busy peer's room is counted from a quarter window below its cap."""
        quarter = max(1, self.concurrency // 4)
        busy = {p for p, n in loads.items() if n > self.peer_cap - quarter}
        busiest = max((n for p, n in loads.items() if p not in busy), default=0)
        return max(0, min(free, self.peer_cap - busiest)), busy

    def _nothing_more(self, busy: set[str]) -> bool:
        """Would a claim leaving out ``busy`` find nothing, as the last one did (``_exhausted``)?"""
        if self._exhausted is None or time.monotonic() - self._exhausted_at >= self.poll:
            self._exhausted = None
            return False
        return self._exhausted <= busy

    def _next_look(self) -> float:
        """Seconds until the next round without a wake: ``poll``, or what is left of it since a
        claim found nothing more (a message due meanwhile waits one poll at most, not two)."""
        if self._exhausted is None:
            return self.poll
        return max(0.0, min(self.poll, self._exhausted_at + self.poll - time.monotonic()))

    def _done(self, task: asyncio.Task[None]) -> None:
        peer = self._in_flight.pop(task, None)
        if peer is not None:
            self._finished.add(peer)
        if self._exhausted is not None and peer not in self._exhausted:
            self._exhausted = None  # the next message of its conversation may be due now
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery_crashed", error=repr(task.exception())[:300])
        self._wake.set()


    async def _refresh(self, client: httpx.AsyncClient, authority: str, *, force: bool = False) -> bool:
        last = self._last_refresh.get(authority, 0.0)
        if not force and time.monotonic() - last < REFRESH_MIN_INTERVAL:
            return False
        self._last_refresh[authority] = time.monotonic()
        try:
            return await refresh_peer_keyset(self.db, client, authority, now=self.clock())
        except RefreshError as e:
            log.warning("keyset_refresh_failed", peer=authority, detail=str(e)[:300])
            return False
        finally:
            self._keyset.forget(authority)

    async def _verify(self, client: httpx.AsyncClient, claim: Claim, check: Callable[[Keyset], object]) -> object:
        """Verify with the held keyset; on an unknown signing kid, refresh once and verify again."""
        keyset = await self._held_keyset(claim.peer)
        if keyset is None:
            raise ArtifactError(Category.UNKNOWN_SENDER, f"{claim.peer} is no longer pinned")
        try:
            return check(keyset)
        except ArtifactError as e:
            if e.category != Category.UNKNOWN_SIGNING_KEY or not await self._refresh(client, claim.peer):
                raise
        keyset = await self._held_keyset(claim.peer)
        if keyset is None:
            raise ArtifactError(Category.UNKNOWN_SENDER, f"{claim.peer} is no longer pinned")
        return check(keyset)

    async def _held_keyset(self, authority: str) -> Keyset | None:
        fresh, keyset = self._keyset.cached(authority)
        return keyset if fresh else await asyncio.to_thread(self._keyset, authority)

    async def _deliver(self, client: httpx.AsyncClient, claim: Claim) -> None:
        blog = log.bind(message_id=claim.message_id, peer=claim.peer, attempt=claim.attempt)
        if not self.allow_http and not claim.endpoint.lower().startswith("https://"):
            blog.warning("insecure_endpoint_refused",
                         detail="the peer's endpoint is not https (--insecure-http is for local test federations)")
            await self._write(settle_retry_in, claim, owner=self.owner, category="insecure_endpoint",
                              now=self.clock())
            return
        started = time.perf_counter()
        resp = await post_envelope(client, claim.endpoint, claim.envelope, timeout=self.timeout)
        if isinstance(resp, Response) and resp.status == 202:
            # attachments: PUT the chunks the peer lacks, then commit; judge the commit's answer below
            resp = await self.chunks.transfer(client, claim, resp, blog)
        if self.metrics is not None:
            self.metrics.observe_attempt(claim.peer, _outcome(resp), started)
        now = self.clock()
        if isinstance(resp, TransportFailure):
            blog.info("delivery_unreachable", reason=resp.reason)
            await self._write(settle_retry_in, claim, owner=self.owner, category="unreachable", now=now)
            return
        if resp.status in (200, 201) and resp.content_type == MEDIA_JOSE:
            await self._on_receipt(client, claim, resp, blog)
            return
        token = error_jws_of(resp)
        if token is not None:
            await self._on_signed_error(client, claim, resp, token, blog)
            return
        category = "rate_limited" if resp.status == 429 else f"http_{resp.status}"
        blog.info("delivery_retry", status=resp.status)
        await self._write(settle_retry_in, claim, owner=self.owner, category=category, now=now,
                          retry_after=resp.retry_after)

    async def _on_receipt(self, client: httpx.AsyncClient, claim: Claim, resp: Response,
                          blog: structlog.typing.FilteringBoundLogger) -> None:
        def check(keyset: Keyset) -> object:
            return verify_receipt(resp.body, keys=LiveKeys(keyset, self.clock(), self.skew, self.max_lifetime),
                                  sender=self.authority, receiver=claim.peer, message_id=claim.message_id,
                                  envelope_sha256=claim.envelope_sha256, now=self.clock(), skew=self.skew)
        try:
            receipt = await self._verify(client, claim, check)
        except ProtocolError as e:
            blog.warning("receipt_refused", category=e.category.value, detail=e.detail[:200])
            await self._write(settle_retry_in, claim, owner=self.owner, category="receipt_invalid",
                              now=self.clock())
            return
        from protocol.receipts import Receipt

        assert isinstance(receipt, Receipt)
        crash_point("after_post_before_receipt_stored")  # tests only
        await self._write(
            settle_delivered_in, claim, owner=self.owner, receipt_jws=resp.body,
            received_at=receipt.received_at, leaf_index=receipt.leaf_index, tree_size=receipt.tree_size,
            root=receipt.root, now=self.clock(),
        )
        if self.metrics is not None:
            self.metrics.receipt_received()
        blog.info("delivered", duplicate=resp.status == 200, peer_leaf_index=receipt.leaf_index)
        await self.witness.observe(claim.peer, receipt.tree_size, receipt.root, resp.body)

    async def _on_signed_error(self, client: httpx.AsyncClient, claim: Claim, resp: Response, token: bytes,
                               blog: structlog.typing.FilteringBoundLogger) -> None:
        def check(keyset: Keyset) -> object:
            return verify_error(token, keys=LiveKeys(keyset, self.clock(), self.skew, self.max_lifetime),
                                peer=claim.peer, sender=self.authority, envelope_sha256=claim.envelope_sha256)
        try:
            err = await self._verify(client, claim, check)
        except ProtocolError as e:
            blog.info("unsigned_error_ignored", status=resp.status, category=e.category.value)
            await self._write(settle_retry_in, claim, owner=self.owner, category=f"http_{resp.status}",
                              now=self.clock(), retry_after=resp.retry_after)
            return
        from protocol.rejections import SignedError

        assert isinstance(err, SignedError)
        now = self.clock()
        if err.error_class == ErrorClass.PERMANENT:
            blog.warning("delivery_failed", category=err.category.value)
            await self._write(settle_failed_in, claim, owner=self.owner, category=err.category.value,
                              now=now)
        elif err.error_class == ErrorClass.RETRY_AFTER_REFRESH:
            await self._reseal(client, claim, err.category.value, blog)
        else:
            blog.info("delivery_retry", category=err.category.value)
            # a refusal about this message (its time, its signing key, its chunks) backs off the
            # message alone; a refusal about the peer's state (busy, unavailable) backs off the peer
            await self._write(settle_retry_in, claim, owner=self.owner, category=err.category.value,
                              now=now, retry_after=resp.retry_after,
                                    per_peer=err.category not in MESSAGE_SCOPED)

    async def _reseal(self, client: httpx.AsyncClient, claim: Claim, category: str,
                      blog: structlog.typing.FilteringBoundLogger) -> None:
        await self._refresh(client, claim.peer, force=True)
        keyset = await self._held_keyset(claim.peer)
        now = self.clock()
        try:
            if keyset is None:
                raise ProtocolError(Category.UNKNOWN_SENDER, "peer no longer pinned")
            key = keyset.current_encryption_key(now)
        except ProtocolError as e:
            await self._write(settle_retry_in, claim, owner=self.owner, category=e.category.value, now=now)
            return
        if key.kid == claim.recipient_kid:
            blog.info("reseal_no_new_key", category=category)
            await self._write(settle_retry_in, claim, owner=self.owner, category=category, now=now)
            return
        sealed = reseal_envelope(claim.inner_jws, iss=self.authority, aud=claim.peer, recipient_kid=key.kid,
                                 recipient_key=key.key)
        blog.info("resealed", kid=key.kid)
        await self._write(replace_envelope_in, claim, owner=self.owner, envelope=sealed.raw,
                          sha256=sealed.sha256, recipient_kid=key.kid, now=now)
