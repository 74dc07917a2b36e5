"""The witness loop: checks peers' exchange logs, and sends redelivery requests after a restore.

Runs beside the delivery worker, on its HTTP client.  A verified receipt hands its commitment to
``observe``; every ``poll`` seconds each peer's signed head is fetched as well.  A due check asks
the peer for ``GET /comity/v1/log/exchange/consistency`` from the held size to the newest received
(at most once a minute per peer) and verifies it between the two signed roots.  A transport
failure or a 5xx is no evidence: the check is tried again later.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable

import httpx
import structlog
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from protocol.artifacts import LiveKeys
from protocol.errors import ProtocolError
from protocol.heads import verify_head
from protocol.merkle import proof_from_hex, verify_consistency

from ..services.peers import peer_keyset
from ..services.witness import (
    CHECK_INTERVAL,
    Commitment,
    due_check,
    observe_commitment,
    peers_due,
    settle_consistent,
    settle_inconsistent,
)
from ..storage.db import Database
from ..storage.models import Peer, PeerLog, Redelivery

log = structlog.get_logger("comity.witness")

TICK = 1.0
#: Seconds between two passes of the loop at the least, however often it is woken.
MIN_GAP = 0.25
HELD_REREAD = 10.0


def _url(endpoint: str, path: str) -> str:
    return endpoint.rstrip("/") + path


class PeerWitness:
    def __init__(self, db: Database, *, clock: Callable[[], int], skew: int = 300, max_lifetime: int = 7 * 86400,
                 poll: float = 300.0, timeout: float = 30.0) -> None:
        self.db = db
        self.clock = clock
        self.skew = skew
        self.max_lifetime = max_lifetime
        self.poll = poll
        self.timeout = timeout
        self._wake = asyncio.Event()
        self._next_redelivery: dict[int, float] = {}
        self._redelivery_tries: dict[int, int] = {}
        #: per peer, the held commitment as last read (size, root), and the newest larger one received
        #: since: kept in memory so that a delivery costs no database write (a check writes it first)
        self._held: dict[str, tuple[int, str]] = {}
        self._pending: dict[str, Commitment] = {}
        #: per peer: one recording at a time (the receipts of a window arrive together, and each one
        #: not yet covered by what is held would otherwise write — queueing on the row's lock)
        self._recording: dict[str, asyncio.Lock] = {}

    # --- commitments --------------------------------------------------------------------------------

    async def observe(self, peer: str, tree_size: int, root: str, evidence: bytes) -> None:
        """A verified receipt or head of ``peer`` signed ``(tree_size, root)``."""
        if self._kept(peer, tree_size, root, evidence):
            return
        async with self._recording.setdefault(peer, asyncio.Lock()):
            # the recording this one waited for may have read what is held now
            if not self._kept(peer, tree_size, root, evidence):
                await self._record(peer, Commitment(tree_size, root, evidence))  # a first one, or a contradiction

    def _kept(self, peer: str, tree_size: int, root: str, evidence: bytes) -> bool:
        """Covered by the commitment held, or kept in memory for the next check: no write needed."""
        held = self._held.get(peer)
        if held is None:
            return False
        if tree_size < held[0] or (tree_size, root) == held:
            return True  # covered by the held commitment (receipts may arrive out of order)
        if tree_size > held[0]:
            pending = self._pending.get(peer)
            if pending is None or tree_size > pending.tree_size:
                self._pending[peer] = Commitment(tree_size, root, evidence)
            self._wake.set()
            return True
        return False

    async def _record(self, peer: str, c: Commitment) -> bool:
        def record_once() -> tuple[bool, tuple[int, str] | None]:
            with self.db.write() as session:
                due = observe_commitment(session, peer, c, now=self.clock())
                row = session.get(PeerLog, peer)
                held = None if row is None or row.tree_size is None else (row.tree_size, row.root or "")
                return due, held

        def record() -> tuple[bool, tuple[int, str] | None]:
            try:
                return record_once()
            except IntegrityError:
                # the first receipts of a peer arrive together: on PostgreSQL another delivery may
                # have created the peer's row meanwhile; it is there now
                return record_once()
        try:
            due, held = await asyncio.to_thread(record)
        except Exception as e:  # witnessing never fails a delivery
            log.error("witness_record_failed", peer=peer, error=type(e).__name__, detail=str(e)[:200])
            return False
        if held is not None:
            self._held[peer] = held
        if due:
            self._wake.set()
        return due

    async def check(self, client: httpx.AsyncClient, peer: str) -> None:
        pending = self._pending.pop(peer, None)
        if pending is not None:
            await self._record(peer, pending)
        try:
            await self._check(client, peer)
        finally:
            self._held.pop(peer, None)  # read again from the database on the next commitment

    async def _check(self, client: httpx.AsyncClient, peer: str) -> None:
        def claim() -> tuple[tuple[Commitment, Commitment] | None, str | None]:
            with self.db.write() as session:
                row = session.get(Peer, peer)
                return due_check(session, peer, now=self.clock()), None if row is None else row.endpoint
        pair, endpoint = await asyncio.to_thread(claim)
        if pair is None or endpoint is None:
            return
        held, new = pair
        url = _url(endpoint, f"/comity/v1/log/exchange/consistency?first={held.tree_size}&second={new.tree_size}")
        try:
            resp = await client.get(url, timeout=self.timeout)
        except httpx.HTTPError as e:
            log.info("consistency_unreachable", peer=peer, reason=type(e).__name__)
            return
        if resp.status_code >= 500 or resp.status_code == 429:
            log.info("consistency_retry", peer=peer, status=resp.status_code)
            return
        proof: list[str] | None = None
        try:
            if resp.status_code != 200:
                raise ValueError(f"the peer refused to prove it (HTTP {resp.status_code})")
            doc = resp.json()
            proof = doc.get("proof") if isinstance(doc, dict) else None
            verify_consistency(held.tree_size, new.tree_size, bytes.fromhex(held.root), bytes.fromhex(new.root),
                               proof_from_hex(proof))
        except (ProtocolError, ValueError) as e:
            detail = f"no proof that size {new.tree_size} extends size {held.tree_size}: {e}"

            def fail() -> bool:
                with self.db.write() as session:
                    return settle_inconsistent(session, peer, held, new, proof=proof if isinstance(proof, list)
                                               else None, detail=detail, now=self.clock())
            if await asyncio.to_thread(fail):
                log.error("peer_log_inconsistent", peer=peer, held_tree_size=held.tree_size,
                          tree_size=new.tree_size, detail=detail[:300])
            else:
                log.warning("peer_log_restored", peer=peer, tree_size=new.tree_size)
            return

        def ok() -> None:
            with self.db.write() as session:
                settle_consistent(session, peer, held, new, now=self.clock())
        await asyncio.to_thread(ok)

    async def poll_head(self, client: httpx.AsyncClient, peer: str, endpoint: str) -> None:
        try:
            resp = await client.get(_url(endpoint, "/comity/v1/log/exchange/head"), timeout=self.timeout)
        except httpx.HTTPError:
            return
        if resp.status_code != 200:
            return

        def keys() -> LiveKeys | None:
            with self.db.read() as session:
                row = session.get(Peer, peer)
                return None if row is None else LiveKeys(peer_keyset(row), self.clock(), self.skew, self.max_lifetime)
        live = await asyncio.to_thread(keys)
        if live is None:
            return
        try:
            head = verify_head(resp.content, keys=live, authority=peer, log="exchange")
        except ProtocolError as e:
            log.warning("peer_head_refused", peer=peer, category=e.category.value)
            return
        await self.observe(peer, head.tree_size, head.root, resp.content)

    # --- redelivery after our own restore ---------------------------------------------------------

    async def send_redeliveries(self, client: httpx.AsyncClient) -> None:
        def pending() -> list[tuple[int, str, bytes, str]]:
            with self.db.read() as session:
                rows = session.execute(select(Redelivery.id, Redelivery.peer, Redelivery.request_jws, Peer.endpoint)
                                       .join(Peer, Peer.authority == Redelivery.peer)
                                       .where(Redelivery.state == "pending")).all()
                return [(r.id, r.peer, bytes(r.request_jws), r.endpoint) for r in rows]
        loop = asyncio.get_running_loop()
        for rid, peer, token, endpoint in await asyncio.to_thread(pending):
            if self._next_redelivery.get(rid, 0.0) > loop.time():
                continue
            error: str | None = None
            requeued: int | None = None
            try:
                resp = await client.post(_url(endpoint, "/comity/v1/redeliver"), content=token,
                                         headers={"Content-Type": "application/jose"}, timeout=self.timeout)
                if resp.status_code == 200:
                    requeued = int(json.loads(resp.content).get("requeued", 0))
                else:
                    error = f"HTTP {resp.status_code}"
            except (httpx.HTTPError, ValueError, AttributeError) as e:
                error = type(e).__name__

            def settle(rid: int = rid, error: str | None = error, requeued: int | None = requeued) -> None:
                with self.db.write() as session:
                    row = session.get_one(Redelivery, rid)
                    row.attempts += 1
                    row.last_error = error
                    if error is None:
                        row.state, row.done_at, row.requeued = "done", self.clock(), requeued
            await asyncio.to_thread(settle)
            tries = self._redelivery_tries[rid] = self._redelivery_tries.get(rid, 0) + 1
            self._next_redelivery[rid] = loop.time() + (min(300.0, 2.0 ** tries) if error is not None else 1e9)
            log.info("redelivery_requested", peer=peer, ok=error is None, requeued=requeued, error=error)

    # --- the loop ----------------------------------------------------------------------------------

    async def run(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        last_poll = last_reread = 0.0
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            ran = loop.time()
            if loop.time() - last_reread >= HELD_REREAD:
                last_reread = loop.time()
                self._held.clear()  # a declared restore (peer API) may have reset one in the database
            try:
                await self.send_redeliveries(client)
                for peer in await asyncio.to_thread(self._due):
                    await self.check(client, peer)
                if loop.time() - last_poll >= self.poll:
                    last_poll = loop.time()
                    for peer, endpoint in await asyncio.to_thread(self._peers):
                        await self.poll_head(client, peer, endpoint)
            except Exception as e:  # the database may be briefly away; witnessing resumes on the next tick
                log.error("witness_failed", error=type(e).__name__, detail=str(e)[:200])
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=TICK)
            # woken by a receipt: at most one pass per MIN_GAP (under load every receipt wakes it)
            if (gap := ran + MIN_GAP - loop.time()) > 0 and not stop.is_set():
                await asyncio.sleep(gap)

    def _due(self) -> list[str]:
        """Peers whose check is due: a larger commitment held in memory or in the database."""
        now = self.clock()
        with self.db.read() as session:
            due = set(peers_due(session, now=now))
            for peer in self._pending:
                row = session.get(PeerLog, peer)
                if row is None or row.checked_at is None or now - row.checked_at >= CHECK_INTERVAL:
                    due.add(peer)
                elif row.restored_at is not None and row.tree_size is None:
                    due.add(peer)  # a declared restore: the next commitment starts again
        return sorted(due)

    def _peers(self) -> list[tuple[str, str]]:
        with self.db.read() as session:
            return [(p.authority, p.endpoint) for p in session.scalars(select(Peer))]
