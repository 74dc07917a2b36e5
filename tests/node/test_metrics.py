"""Observability: ``/metrics`` on the local listener only, its own registry per node, and logs that
never carry content or secrets."""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterator
from contextlib import redirect_stderr
from pathlib import Path

import pytest
import structlog
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from keys.keystore import Keystore
from node.api.app import build_app
from node.api.local import send_message
from node.config import Settings
from node.logs import REDACTED, configure_logging
from node.runtime import Node
from node.services.integrator import IntegratorLoop
from node.services.sending import Draft
from node.services.trust import pin_peer_card
from node.storage.migrate import upgrade_url
from protocol.card import build_card


def _keystore(home: Path, authority: str) -> Keystore:
    return Keystore.create(home, authority=authority, name=authority, endpoint="http://127.0.0.1:9/",
                           passphrase=None, now=int(time.time()), insecure_no_passphrase=True, randbytes=os.urandom)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    ks = _keystore(tmp_path / "a", "GB-UKCA")
    peer = _keystore(tmp_path / "b", "FR-DACG")
    settings = Settings(home=tmp_path / "a")
    upgrade_url(settings.db_url)
    n = Node(settings, ks)
    pin_peer_card(n.db, build_card(peer.keyset_docs()), peer.fingerprint, own_authority="GB-UKCA",
                  now=int(time.time()), actor="cli:test")
    try:
        yield n
    finally:
        n.close()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_on_the_local_listener(node: Node) -> None:
    send_message(node, Draft(to="FR-DACG", kind="note", subject="s", body="b"))
    node.metrics.observe_attempt("FR-DACG", "receipt", time.perf_counter() - 0.02)
    IntegratorLoop(node.db, authority=node.authority, signer=lambda: node.keystore.signer, clock=node.clock,
                   metrics=node.metrics).run_once()
    r = TestClient(build_app(node, peer=False, local=True)).get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    got = samples(r.text)
    assert got[("comity_deliveries", (("state", "queued"),))] == 1
    assert got[("comity_deliveries", (("state", "delivered"),))] == 0
    assert got[("comity_peer_backlog", (("peer", "FR-DACG"),))] == 1
    assert got[("comity_peer_oldest_queued_age_seconds", (("peer", "FR-DACG"),))] >= 0
    assert got[("comity_delivery_attempts_total", (("outcome", "receipt"), ("peer", "FR-DACG")))] == 1
    assert got[("comity_delivery_attempt_seconds_count", (("peer", "FR-DACG"),))] == 1
    assert got[("comity_integrator_batch_entries_count", ())] == 1
    assert got[("comity_integrator_batch_entries_sum", ())] >= 2  # peer_pinned and queued
    assert ("comity_integrator_batch_seconds_count", ()) in got
    assert "subject" not in r.text and "GB-UKCA" not in r.text  # labels are peers and states, nothing else


def test_rejections_are_counted_by_category(node: Node) -> None:
    client = TestClient(build_app(node, peer=True, local=True))
    r = client.post("/comity/v1/inbox", content=b"not.a.jwe", headers={"Content-Type": "application/jose"})
    assert r.status_code == 400
    category = r.json()["category"]
    got = samples(client.get("/metrics").text)
    assert got[("comity_inbox_rejections_total", (("category", category),))] == 1


def test_no_metrics_on_the_peer_listener(node: Node) -> None:
    assert TestClient(build_app(node, peer=True, local=False)).get("/metrics").status_code == 404


def test_each_node_has_its_own_registry(node: Node, tmp_path: Path) -> None:
    other = Node(Settings(home=tmp_path / "a"), node.keystore)
    try:
        assert other.metrics.registry is not node.metrics.registry
        node.metrics.rejections.labels(category="expired").inc()
        assert other.metrics.rejections.labels(category="expired")._value.get() == 0
        assert REGISTRY.get_sample_value("comity_inbox_rejections_total", {"category": "expired"}) is None
    finally:
        other.close()


def test_logs_drop_content_and_secrets() -> None:
    buf = io.StringIO()
    with redirect_stderr(buf):
        configure_logging("json")
        try:
            structlog.get_logger("t").info("oops", message_id="ab" * 16, peer="FR-DACG", attempt=2,
                                           subject="Extradition of X", body="the facts", passphrase="hunter2",
                                           token="tok-123", key="private-bytes")
        finally:
            structlog.reset_defaults()
    line = json.loads(buf.getvalue().strip().splitlines()[-1])
    assert (line["message_id"], line["peer"], line["attempt"]) == ("ab" * 16, "FR-DACG", 2)
    for name in ("subject", "body", "passphrase", "token", "key"):
        assert line[name] == REDACTED
    for secret in ("Extradition of X", "the facts", "hunter2", "tok-123", "private-bytes"):
        assert secret not in buf.getvalue()
