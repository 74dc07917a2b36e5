"""Crash points: parsing ``COMITY_CRASH_AT``, arming only with ``testing``, dying at the n-th hit."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from node.faults import (
    CRASH_POINTS,
    CrashSpecError,
    arm_crash_points,
    crash_point,
    disarm_crash_points,
    parse_crash_spec,
)
from tests.node.harness import REPO


def test_parse_names_and_counts() -> None:
    assert parse_crash_spec("after_queue_commit") == {"after_queue_commit": 1}
    assert parse_crash_spec(" integrator_mid_batch:3 , after_claim_commit ") == \
        {"integrator_mid_batch": 3, "after_claim_commit": 1}
    assert parse_crash_spec("") == {}


@pytest.mark.parametrize("spec", ["nowhere", "after_queue_commit:0", "after_queue_commit:-1",
                                  "after_queue_commit:two"])
def test_parse_refuses_unknown_points_and_bad_counts(spec: str) -> None:
    with pytest.raises(CrashSpecError):
        parse_crash_spec(spec)


def test_armed_only_when_testing() -> None:
    try:
        assert arm_crash_points(testing=False, env={"COMITY_CRASH_AT": "after_queue_commit"}) is None
        crash_point("after_queue_commit")  # not armed: still alive
        assert arm_crash_points(testing=True, env={}) is None
        armed = arm_crash_points(testing=True, env={"COMITY_CRASH_AT": "after_queue_commit:5"})
        assert armed is not None
        crash_point("after_claim_commit")  # another point: nothing happens
    finally:
        disarm_crash_points()


def test_dies_with_sigkill_at_the_nth_hit() -> None:
    code = (
        "from node.faults import arm_crash_points, crash_point\n"
        "arm_crash_points(testing=True, env={'COMITY_CRASH_AT': 'after_claim_commit:3'})\n"
        "for i in range(5):\n"
        "    print(i, flush=True)\n"
        "    crash_point('after_claim_commit')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert [line for line in proc.stdout.splitlines() if line.isdigit()] == ["0", "1", "2"]
    assert '"point": "after_claim_commit"' in proc.stderr


def test_every_point_is_named_in_the_code() -> None:
    sources = "".join(p.read_text() for p in (REPO / "node").rglob("*.py") if p.name != "faults.py")
    for point in CRASH_POINTS:
        assert f'crash_point("{point}")' in sources, point
