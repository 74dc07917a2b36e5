"""A peer that accepts connections and never answers holds at most its share of the worker's
slots: the other states' messages still go out at once (real node processes, both databases)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from node.delivery.worker import PEER_SHARE
from tests.node.harness import federation

pytestmark = pytest.mark.slow


class BlackHole:
    """Listens on a port, accepts every connection and never answers (until closed)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_server(("127.0.0.1", port), backlog=512)
        self.sock.settimeout(0.2)
        self.conns: list[socket.socket] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        for conn in self.conns:
            conn.close()
        self.sock.close()


def test_a_peer_that_never_answers_does_not_hold_up_the_others(tmp_path: Path, backend: str) -> None:
    with federation(tmp_path, backend, ["GB-UKCA", "FR-DACG", "DE-BMJ"], start=False) as n:
        a, slow, c = n["GB-UKCA"], n["FR-DACG"], n["DE-BMJ"]
        hole = BlackHole(slow.port)  # FR-DACG's endpoint: connections accepted, nothing ever answered
        try:
            c.start()
            a.start()
            # more than the worker's 128 slots, queued first: without a per-peer share the first
            # claim gives them every slot, and DE-BMJ's messages wait out the 30 s attempt timeout
            stuck = [a.send("FR-DACG", subject=f"to a silent peer {i}") for i in range(140)]
            started = time.monotonic()
            others = [a.send("DE-BMJ", subject=f"to a live peer {i}") for i in range(3)]
            a.wait_for(others, timeout=15)
            assert time.monotonic() - started < 15
            # the silent peer's deliveries hold their share of the slots, and no more
            sending = sum(a.status(mid)["state"] == "sending" for mid in stuck)
            assert 0 < sending <= int(128 * PEER_SHARE)
            assert {m["subject"] for m in c.inbox()} == {f"to a live peer {i}" for i in range(3)}
        finally:
            hole.close()  # the held attempts fail at once: A stops without waiting out its timeouts
