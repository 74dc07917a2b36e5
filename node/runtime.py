"""A running node: settings, database, keys, the integrator, the delivery worker and receipt waiters."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

from keys.keystore import Keystore

from .config import Settings
from .keyring import Keyring, PeerRefresher
from .metrics import NodeMetrics
from .services.integrator import BatchResult, IntegratorLock, IntegratorLoop
from .storage.db import Checkpointer, Database


def now_seconds() -> int:
    return int(time.time())


class ReceiptWaiters:
    """Hands inbox requests their receipts as soon as the integrator has committed them (same process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[int, Future[bytes]] = {}

    def register(self, seq: int) -> Future[bytes]:
        """A future resolved with the receipt of inbox message ``seq`` (from any thread)."""
        fut: Future[bytes] = Future()
        with self._lock:
            self._waiting[seq] = fut
        return fut

    def forget(self, seq: int) -> None:
        with self._lock:
            self._waiting.pop(seq, None)

    def on_batch(self, result: BatchResult) -> None:
        with self._lock:
            hits = [(self._waiting.pop(seq), seq) for seq in result.receipts if seq in self._waiting]
        for fut, seq in hits:
            receipt = result.receipt_jws.get(seq)
            if receipt is not None and not fut.done():
                fut.set_result(receipt)


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
        self.db = Database(settings.db_url, autocheckpoint=False)
        self.checkpointer = Checkpointer(self.db)
        self.checkpointer.start()
        self.metrics.watch_database(self.db, clock)
        self.peer_refresher = PeerRefresher(self.db, clock=clock, verify_tls=settings.tls_ca or True,
                                            metrics=self.metrics)
        self.waiters = ReceiptWaiters()
        #: the group-commit writer (``start_writer``); ``integrator`` is the same object once it integrates
        self.writer: IntegratorLoop | None = None
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

    def start_writer(self, *, integrate: bool) -> IntegratorLoop:
        """Make the process's group-commit writer; it integrates the logs only if ``integrate`` (this
        process holds the integrator lock).  Its batches run on the event loop: bound here if one
        runs in this thread, else by ``bind_writer`` once the server's loop starts."""
        loop = IntegratorLoop(self.db, authority=self.authority, signer=lambda: self.keystore.signer,
                              clock=self.clock, on_batch=self._on_batch, metrics=self.metrics, integrate=integrate)
        self.writer = loop
        with contextlib.suppress(RuntimeError):  # no running loop
            self.bind_writer(asyncio.get_running_loop())
        if integrate:
            self.integrator = loop
        return loop

    def bind_writer(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run the writer's batches on ``loop`` (the serving loop, from its thread)."""
        if self.writer is not None and not self.writer.bound:
            self.writer.bind(loop)

    def start_integrator(self) -> IntegratorLoop:
        """Integrate from now on (the writer is started if it is not running yet)."""
        if self.writer is None:
            return self.start_writer(integrate=True)
        self.writer.integrate = True
        self.integrator = self.writer
        self.writer.wake()
        return self.writer

    def wake_integrator(self) -> None:
        if self.integrator is not None:
            self.integrator.wake()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.stop()
        self.checkpointer.stop()
        self.db.dispose()
