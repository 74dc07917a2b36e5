"""Runs ``driver.mjs`` (npm ``jose``) under Node.js; fails, never skips, when it cannot."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

DRIVER = Path(__file__).with_name("driver.mjs")
#: Generous: a batch with a few 1 MiB chunks takes well under a second on one core.
TIMEOUT_S = 60

JoseRunner = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


def _interop_dir() -> Path:
    value = os.environ.get("COMITY_INTEROP_DIR")
    if not value:
        pytest.fail("COMITY_INTEROP_DIR is not set: run the interop tests through `make test` "
                    "(it installs npm jose into .interop/ with `make interop-deps`)", pytrace=False)
    path = Path(value).resolve()
    if not (path / "node_modules" / "jose" / "package.json").is_file():
        pytest.fail(f"npm jose is not installed under {path}: run `make interop-deps`", pytrace=False)
    return path


@pytest.fixture(scope="session")
def jose_node() -> JoseRunner:
    """A function running a batch of driver ops in one ``node`` process; returns one result per op."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node (Node.js >= 20) is not on PATH; the interop tests need it", pytrace=False)
    interop = _interop_dir()

    def run(ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
        proc = subprocess.run(
            [node, str(DRIVER)], input=json.dumps({"ops": ops}).encode(), capture_output=True,
            cwd=interop, env={**os.environ, "COMITY_INTEROP_DIR": str(interop)}, timeout=TIMEOUT_S, check=False,
        )
        if proc.returncode != 0:
            pytest.fail(f"node driver exited {proc.returncode}: {proc.stderr.decode(errors='replace')}")
        results: list[dict[str, Any]] = json.loads(proc.stdout)
        assert len(results) == len(ops)
        return results

    return run
