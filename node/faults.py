"""Crash points for fault-injection tests: ``COMITY_CRASH_AT=name[:n][,name[:n]...]``.

At a named point the process kills itself with SIGKILL — no ``finally``, no flush, no
clean shutdown, as a power cut would — at the ``n``-th time the point is reached (default:
the first).  Crash points are honoured only when the settings say ``testing = true``, which
``comity init`` never writes; otherwise a crash request is logged and ignored.  Nothing is
armed until ``arm_crash_points`` is called (``serve`` and ``worker`` call it), so other
commands never crash.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Mapping

import structlog

ENV_CRASH_AT = "COMITY_CRASH_AT"

#: Every point the node defines, in the order a message meets them.
CRASH_POINTS = frozenset({
    "after_queue_commit",  # the local API committed a queued message, before answering its id
    "after_claim_commit",  # the worker committed a claim (lease), before the POST
    "after_post_before_receipt_stored",  # a verified receipt is in hand, not yet stored
    "inbox_after_commit_before_response",  # the inbox committed a message, before its receipt is signed
    "inbox_after_receipt_before_response",  # the receipt is signed and stored, not yet answered
    "integrator_mid_batch",  # inside the batch transaction, leaves assigned and heads signed, before commit
})

log = structlog.get_logger("comity.faults")


class CrashSpecError(ValueError):
    """``COMITY_CRASH_AT`` names an unknown point or a count that is not a positive integer."""


def parse_crash_spec(spec: str) -> dict[str, int]:
    """``"a:3,b"`` -> ``{"a": 3, "b": 1}``; raises ``CrashSpecError`` on anything else."""
    points: dict[str, int] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, _, count = part.partition(":")
        if name not in CRASH_POINTS:
            raise CrashSpecError(f"unknown crash point {name!r}; known: {', '.join(sorted(CRASH_POINTS))}")
        if count and (not count.isdigit() or int(count) < 1):
            raise CrashSpecError(f"crash point {name}: {count!r} is not a positive count")
        points[name] = int(count) if count else 1
    return points


class CrashPoints:
    """Counts hits of the armed points and kills the process at the chosen one."""

    def __init__(self, points: Mapping[str, int]) -> None:
        self._remaining = dict(points)
        self._lock = threading.Lock()

    def hit(self, name: str) -> None:
        with self._lock:
            left = self._remaining.get(name)
            if left is None:
                return
            self._remaining[name] = left - 1
            if left > 1:
                return
        sys.stderr.write(f'{{"event": "crash_point", "point": "{name}", "pid": {os.getpid()}}}\n')
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


_armed: CrashPoints | None = None


def arm_crash_points(*, testing: bool, env: Mapping[str, str]) -> CrashPoints | None:
    """Arm the points named in ``COMITY_CRASH_AT`` if ``testing``; log and ignore them otherwise."""
    global _armed
    spec = env.get(ENV_CRASH_AT, "")
    if not spec.strip():
        _armed = None
        return None
    if not testing:
        log.warning("crash_points_ignored", detail=f"{ENV_CRASH_AT} is honoured only with testing = true")
        _armed = None
        return None
    _armed = CrashPoints(parse_crash_spec(spec))
    log.warning("crash_points_armed", points=sorted(parse_crash_spec(spec)))
    return _armed


def disarm_crash_points() -> None:
    global _armed
    _armed = None


def crash_point(name: str) -> None:
    """Die here if this point is armed and its count is reached; a no-op otherwise."""
    assert name in CRASH_POINTS, name
    if _armed is not None:
        _armed.hit(name)
