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
from .services.integrator import BatchResult, IntegratorLoop
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

    def __init__(self, settings: Settings, keystore: Keystore, *, clock: Callable[[], int] = now_seconds) -> None:
        self.settings = settings
        self.home: Path = settings.home
        self.keystore = keystore
        self.authority = keystore.authority
        self.clock = clock
        self.db = Database(settings.db_url)
        self.waiters = ReceiptWaiters()
        self.integrator: IntegratorLoop | None = None
        self.wake_worker: Callable[[], None] = lambda: None
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        token_file = self.home / "admin.token"
        self.admin_token = token_file.read_text().strip() if token_file.exists() else ""

    def start_integrator(self) -> IntegratorLoop:
        loop = IntegratorLoop(self.db, authority=self.authority, signer=lambda: self.keystore.signer,
                              clock=self.clock, on_batch=self.waiters.on_batch)
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
