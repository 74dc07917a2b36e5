"""A running node: settings, database, keys, the integrator, the delivery worker and receipt waiters."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from keys.keystore import Keystore

from .config import Settings
from .keyring import Keyring, PeerRefresher
from .metrics import NodeMetrics
from .services.integrator import BatchResult, IntegratorLock, IntegratorLoop
from .storage.db import Database


def now_seconds() -> int:
    return int(time.time())


class ReceiptWaiters:
    """Wakes inbox requests when the integrator has stored their receipts (same process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Event]] = {}

    def register(self, seq: int) -> asyncio.Event:
        event = asyncio.Event()
        with self._lock:
            self._waiting[seq] = (asyncio.get_running_loop(), event)
        return event

    def forget(self, seq: int) -> None:
        with self._lock:
            self._waiting.pop(seq, None)

    def on_batch(self, result: BatchResult) -> None:
        with self._lock:
            hits = [self._waiting.pop(seq) for seq in result.receipts if seq in self._waiting]
        for loop, event in hits:
            loop.call_soon_threadsafe(event.set)


class Node:
    """Everything one node process holds; built by ``serve``/``worker`` and by tests."""

    def __init__(self, settings: Settings, keystore: Keystore, *, clock: Callable[[], int] = now_seconds,
                 passphrase: bytes | None = None) -> None:
        self.settings = settings
        self.home: Path = settings.home
        self.metrics = NodeMetrics()
        self.keyring = Keyring(keystore, passphrase=passphrase, metrics=self.metrics)
        self.authority = keystore.authority
        self.clock = clock
        self.db = Database(settings.db_url)
        self.metrics.watch_database(self.db, clock)
        self.peer_refresher = PeerRefresher(self.db, clock=clock, verify_tls=settings.tls_ca or True,
                                            metrics=self.metrics)
        self.waiters = ReceiptWaiters()
        self.integrator: IntegratorLoop | None = None
        self.integrator_lock: IntegratorLock | None = None  # when taken over after start (``worker``)
        #: called (in the integrator's thread) after every committed batch, e.g. to write the heads file
        self.batch_listeners: list[Callable[[BatchResult], None]] = []
        self.wake_worker: Callable[[], None] = lambda: None
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        token_file = self.home / "admin.token"
        self.admin_token = token_file.read_text().strip() if token_file.exists() else ""

    @property
    def keystore(self) -> Keystore:
        """The node's keys as of now (reloaded when ``keys rotate`` changes them)."""
        return self.keyring.current

    def _on_batch(self, result: BatchResult) -> None:
        self.waiters.on_batch(result)
        for listener in self.batch_listeners:
            listener(result)

    def start_integrator(self) -> IntegratorLoop:
        loop = IntegratorLoop(self.db, authority=self.authority, signer=lambda: self.keystore.signer,
                              clock=self.clock, on_batch=self._on_batch, metrics=self.metrics)
        loop.start()
        self.integrator = loop
        return loop

    def wake_integrator(self) -> None:
        if self.integrator is not None:
            self.integrator.wake()

    def close(self) -> None:
        if self.integrator is not None:
            self.integrator.stop()
        self.db.dispose()
