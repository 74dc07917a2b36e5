"""Per-peer backoff: exponential with full jitter, capped, Retry-After honoured up to an hour."""

from __future__ import annotations

import random

from node.delivery.claims import BACKOFF_CAP, RETRY_AFTER_CAP, backoff_delay


def test_full_jitter_is_bounded_by_the_exponential_and_the_cap() -> None:
    rng = random.Random(7)
    for failures in range(0, 30):
        bound = min(BACKOFF_CAP, 2.0**failures)
        samples = [backoff_delay(failures, rng=rng) for _ in range(200)]
        assert all(0.0 <= d <= bound for d in samples)
        assert max(samples) > bound * 0.8  # jitter spreads over the whole range


def test_retry_after_is_a_floor_capped_at_one_hour() -> None:
    rng = random.Random(1)
    assert backoff_delay(1, rng=rng, retry_after=120) >= 120
    assert backoff_delay(1, rng=rng, retry_after=10**9) == RETRY_AFTER_CAP
