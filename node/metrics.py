"""Prometheus metrics of one node process, in its own registry (never the global default).

Two kinds: what this process did (counters and histograms, reset at restart: attempts,
their latency, receipts, rejections, integrator batches), and the state of the database,
read at each scrape so that it is right whichever process did the work (deliveries by
state, backlog and oldest queued age per peer).  Labels are peer ids, states and error
categories: never message ids, subjects, bodies or keys.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from .storage.db import Database
from .storage.models import InboxMessage, OutboxMessage, Peer

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATES = ("queued", "sending", "delivered", "failed")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)

log = structlog.get_logger("comity.metrics")


class DatabaseCollector(Collector):
    """Gauges read from the database at scrape time."""

    def __init__(self, db: Database, clock: Callable[[], int]) -> None:
        self._db = db
        self._clock = clock

    def describe(self) -> Iterator[Metric]:
        return iter(())  # nothing to check for name clashes at registration; no query then

    def collect(self) -> Iterator[Metric]:
        by_state = GaugeMetricFamily("comity_deliveries", "Outgoing messages by delivery state.", labels=["state"])
        backlog = GaugeMetricFamily("comity_peer_backlog", "Messages queued or sending, per peer.", labels=["peer"])
        oldest = GaugeMetricFamily("comity_peer_oldest_queued_age_seconds",
                                   "Age of the oldest message queued or sending, per peer.", labels=["peer"])
        failures = GaugeMetricFamily("comity_peer_consecutive_failures",
                                     "Consecutive failed delivery rounds, per peer.", labels=["peer"])
        inbox = GaugeMetricFamily("comity_inbox_messages", "Messages received and stored.")
        try:
            now = self._clock()
            with self._db.read() as session:
                counts: dict[str, int] = {state: n for state, n in session.execute(
                    select(OutboxMessage.state, func.count()).group_by(OutboxMessage.state))}
                pending: dict[str, tuple[int, int]] = {peer: (n, first) for peer, n, first in session.execute(
                    select(OutboxMessage.peer, func.count(), func.min(OutboxMessage.created_at))
                    .where(OutboxMessage.state.in_(("queued", "sending"))).group_by(OutboxMessage.peer))}
                peers = [(p, f) for p, f in session.execute(select(Peer.authority, Peer.failures))]
                received = session.execute(select(func.count()).select_from(InboxMessage)).scalar_one()
        except Exception as e:  # a scrape never fails the node; the gap shows in the graphs
            log.warning("metrics_database_unavailable", error=type(e).__name__)
            return
        for state in STATES:
            by_state.add_metric([state], float(counts.get(state, 0)))
        for peer, fails in peers:
            n, first = pending.get(peer, (0, None))
            backlog.add_metric([peer], float(n))
            oldest.add_metric([peer], float(max(0, now - first)) if first is not None else 0.0)
            failures.add_metric([peer], float(fails))
        inbox.add_metric([], float(received))
        yield from (by_state, backlog, oldest, failures, inbox)


class NodeMetrics:
    """The metrics of one node process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.attempts = Counter("comity_delivery_attempts", "Delivery attempts, by peer and outcome "
                                "(delivered, duplicate, retry, refresh, failed, unreachable).",
                                ["peer", "outcome"], registry=r)
        self.attempt_seconds = Histogram("comity_delivery_attempt_seconds",
                                         "Time from POST to a settled attempt, per peer.", ["peer"],
                                         buckets=_LATENCY_BUCKETS, registry=r)
        self.receipts = Counter("comity_receipts", "Receipts: verified and stored (received) or signed here "
                                "for incoming messages (signed).", ["direction"], registry=r)
        self._receipts_received = self.receipts.labels("received")
        self._attempt_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self.rejections = Counter("comity_inbox_rejections", "Incoming envelopes refused, by category.",
                                  ["category"], registry=r)
        self.batch_entries = Histogram("comity_integrator_batch_entries", "Log entries sequenced per batch.",
                                       buckets=_BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("comity_integrator_batch_seconds", "Time to sequence, sign and commit "
                                       "one batch.", buckets=_LATENCY_BUCKETS, registry=r)
        self.keys_reloaded = Counter("comity_keys_reloaded", "Reloads of this node's own keystore.", registry=r)
        self.peer_refreshes = Counter("comity_peer_keyset_refreshes", "Peer keyset refreshes, by reason and "
                                      "result.", ["reason", "result"], registry=r)

    def watch_database(self, db: Database, clock: Callable[[], int]) -> None:
        """Add the database gauges (once per registry)."""
        self.registry.register(DatabaseCollector(db, clock))

    def observe_attempt(self, peer: str, outcome: str, started: float) -> None:
        # the labelled children kept: ``labels(...)`` checks and hashes its arguments under a lock on
        # each call, and this runs for every delivery attempt
        children = self._attempt_children.get((peer, outcome))
        if children is None:
            children = self._attempt_children[(peer, outcome)] = (
                self.attempts.labels(peer, outcome), self.attempt_seconds.labels(peer))
        children[0].inc()
        children[1].observe(time.perf_counter() - started)

    def receipt_received(self) -> None:
        self._receipts_received.inc()

    def observe_batch(self, entries: int, receipts: int, seconds: float) -> None:
        self.batch_entries.observe(entries)
        self.batch_seconds.observe(seconds)
        if receipts:
            self.receipts.labels(direction="signed").inc(receipts)

    def render(self) -> bytes:
        """The text exposition format (blocking: it reads the database)."""
        return generate_latest(self.registry)
