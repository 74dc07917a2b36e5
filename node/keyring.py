"""Live keys: the node's own keystore reloaded when its files change, and peers' keysets kept fresh.

* Own keys: ``keys rotate`` (another process) rewrites ``HOME/keystore.json`` last, as its
  commit point; a running node notices the change within ``key_reload_interval`` seconds (or at
  once on SIGHUP) and opens the keystore again, so that it signs with the new key, decrypts with
  the new and the kept ones, and serves the new keyset.  A reload that fails (a rotation half
  written, a passphrase no longer available) keeps the keys in use and is tried again.
* ``serve`` re-issues its keyset when less than half its validity is left, and logs it.
* Peers: each pinned peer's keyset is refreshed hourly, and on demand (an envelope signed by a
  ``kid`` we do not know) at most once a minute per peer, in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx
import structlog
from sqlalchemy import or_, select

from keys.errors import KeysError
from keys.keystore import Keystore
from keys.layout import keystore_needs_passphrase, meta_path
from keys.passphrase import resolve_passphrase

from .delivery.refresh import RefreshError, refresh_peer_keyset
from .metrics import NodeMetrics
from .services.trust import record_keyset_issued
from .storage.db import Database
from .storage.models import Peer

log = structlog.get_logger("comity.keys")

PEER_REFRESH_EVERY = 3600
PEER_REFRESH_MIN_INTERVAL = 60.0
REISSUE_CHECK_EVERY = 60.0

Stamp = tuple[int, int, int]


@functools.lru_cache(maxsize=16)
def _meta_file(home: Path) -> str:
    return os.fspath(meta_path(home))


def _stamp(keystore: Keystore) -> Stamp | None:
    """The keystore's commit point (checked at every use of the keys: one ``stat`` of a path built once)."""
    try:
        st = os.stat(_meta_file(keystore.home))
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class Keyring:
    """Holds the node's current ``Keystore``; ``reload_if_changed`` swaps in a freshly opened one."""

    def __init__(self, keystore: Keystore, *, passphrase: bytes | None = None,
                 env: Mapping[str, str] | None = None, metrics: NodeMetrics | None = None) -> None:
        self._keystore = keystore
        self._passphrase = passphrase
        self._env = os.environ if env is None else env
        self._metrics = metrics
        self._stamp = _stamp(keystore)
        self._failed: Stamp | None = None
        self._lock = threading.Lock()

    @property
    def current(self) -> Keystore:
        """The keys to use now.  Each use checks the keystore's commit point (one ``stat``) and reloads
        at once if ``keys rotate`` changed it, so that a retired key signs nothing after the rotation."""
        stamp = _stamp(self._keystore)
        if stamp != self._stamp and stamp != self._failed:
            self.reload_if_changed()
        return self._keystore

    def _passphrase_for_reload(self) -> bytes | None:
        home = self._keystore.home
        if not keystore_needs_passphrase(home):
            return None
        if self._passphrase is None:  # from the environment or its file; never a prompt in a server
            self._passphrase = resolve_passphrase(self._env, isatty=lambda: False)
        return self._passphrase

    def reload_if_changed(self, *, force: bool = False) -> bool:
        """Open the keystore again if its files changed (or ``force``); True when the keys were swapped.

        A reload that failed is not tried again for the same files unless ``force`` (SIGHUP)."""
        with self._lock:
            stamp = _stamp(self._keystore)
            if not force and (stamp == self._stamp or stamp == self._failed):
                return False
            return self._reload(stamp)

    def _reload(self, stamp: Stamp | None) -> bool:
        old = self._keystore
        try:
            new = Keystore.open(old.home, self._passphrase_for_reload(), skew=old.skew, max_lifetime=old.max_lifetime)
        except KeysError as e:
            self._failed = stamp
            log.warning("keys_reload_failed", error=type(e).__name__, detail=str(e)[:200])
            return False
        if new.authority != old.authority:
            self._failed = stamp
            log.error("keys_reload_refused", detail="the keystore now belongs to another authority")
            return False
        self._keystore, self._stamp, self._failed = new, stamp, None
        if self._metrics is not None:
            self._metrics.keys_reloaded.inc()
        log.info("keys_reloaded", keyset_version=new.keyset.version, previous_version=old.keyset.version)
        return True

    def reissue_if_due(self, db: Database, *, now: int, validity: int | None) -> int | None:
        """Issue the same keys again once less than half the keyset's validity is left, and log it."""
        self.reload_if_changed()
        with self._lock:
            ks = self._keystore
            previous = ks.keyset.version
            try:
                version = ks.reissue_if_due(now, validity=validity)
            except KeysError as e:  # another process changed the keystore first: reload, try next time
                log.warning("keyset_reissue_failed", error=type(e).__name__, detail=str(e)[:200])
                version = None
                self._stamp = None
            if version is None:
                return None
            self._stamp = _stamp(ks)
        record_keyset_issued(db, version=version, fingerprint=ks.fingerprint, now=now, previous_version=previous)
        log.info("keyset_issued", keyset_version=version, previous_version=previous)
        return version


class PeerRefresher:
    """Refreshes peers' keysets: hourly, and on demand at most once a minute per peer."""

    def __init__(self, db: Database, *, clock: Callable[[], int], verify_tls: bool | str = True,
                 metrics: NodeMetrics | None = None, min_interval: float = PEER_REFRESH_MIN_INTERVAL) -> None:
        self._db = db
        self._clock = clock
        self._verify = verify_tls
        self._metrics = metrics
        self._min_interval = min_interval
        self._last: dict[str, float] = {}
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[bool]] = set()

    def _client_now(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(verify=self._verify, trust_env=False,
                                             limits=httpx.Limits(max_connections=4))
        return self._client

    async def refresh(self, authority: str, *, reason: str) -> bool:
        """Refresh one peer now; True if its keyset changed."""
        try:
            changed = await refresh_peer_keyset(self._db, self._client_now(), authority, now=self._clock())
        except RefreshError as e:
            log.warning("keyset_refresh_failed", peer=authority, reason=reason, detail=str(e)[:300])
            self._count(reason, "error")
            return False
        self._count(reason, "changed" if changed else "unchanged")
        if changed:
            log.info("peer_keyset_refreshed", peer=authority, reason=reason)
        return changed

    def request(self, authority: str, *, reason: str) -> None:
        """Refresh ``authority`` in the background, at most once a minute per peer; call from the event loop."""
        last = self._last.get(authority)
        if last is not None and time.monotonic() - last < self._min_interval:
            return
        self._last[authority] = time.monotonic()
        task = asyncio.get_running_loop().create_task(self.refresh(authority, reason=reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _count(self, reason: str, result: str) -> None:
        if self._metrics is not None:
            self._metrics.peer_refreshes.labels(reason=reason, result=result).inc()

    def stale_peers(self, *, every: int = PEER_REFRESH_EVERY) -> list[str]:
        cutoff = self._clock() - every
        with self._db.read() as session:
            return list(session.scalars(select(Peer.authority).where(
                or_(Peer.refreshed_at.is_(None), Peer.refreshed_at < cutoff)).order_by(Peer.authority)))

    async def refresh_stale(self) -> None:
        for authority in await asyncio.to_thread(self.stale_peers):
            await self.refresh(authority, reason="hourly")

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._client is not None:
            await self._client.aclose()
            self._client = None


async def keep_keys_fresh(keyring: Keyring, refresher: PeerRefresher | None, db: Database, stop: asyncio.Event,
                          hup: asyncio.Event, *, interval: float, clock: Callable[[], int], reissue: bool,
                          validity: int | None) -> None:
    """Until ``stop``: reload own keys on change or SIGHUP, re-issue when due, refresh stale peers."""
    next_reissue = 0.0
    next_sweep = 0.0
    try:
        while not stop.is_set():
            force = hup.is_set()
            hup.clear()
            try:
                await asyncio.to_thread(keyring.reload_if_changed, force=force)
                if reissue and time.monotonic() >= next_reissue:
                    next_reissue = time.monotonic() + REISSUE_CHECK_EVERY
                    await asyncio.to_thread(keyring.reissue_if_due, db, now=clock(), validity=validity)
                if refresher is not None and time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + REISSUE_CHECK_EVERY
                    await refresher.refresh_stale()
            except Exception as e:  # never let upkeep stop the node; try again next round
                log.error("key_upkeep_failed", error=type(e).__name__, detail=str(e)[:200])
            waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(hup.wait())]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait(waiters, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
    finally:
        if refresher is not None:
            await refresher.close()
