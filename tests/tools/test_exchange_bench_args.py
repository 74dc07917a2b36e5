"""bench/exchange_bench.py refuses counts it cannot report on, before it spends minutes measuring.

Percentiles need at least two samples: ``-n 1`` or ``--singles 1`` used to run the whole bulk
exchange and then crash in ``statistics.quantiles``; ``--singles 0`` (no latency run, useful when
profiling) crashed the same way.  Also: what the bench starts does not outlive it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "exchange_bench.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("exchange_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("args", "message"), [
    (["-n", "1"], "argument -n: 1: at least 2 messages"),
    (["-n", "0"], "argument -n: 0: at least 2 messages"),
    (["--singles", "1"], "argument --singles: 1: use 0 (no latency run) or at least 2"),
    (["--singles", "-3"], "argument --singles: -3: use 0"),
    (["--concurrency", "0"], "argument --concurrency: 0 is not a positive count"),
    (["--baseline-runs", "0"], "argument --baseline-runs: 0 is not a positive count"),
    (["--backends", "mysql"], "unknown backend mysql"),
])
def test_counts_it_cannot_report_on_are_refused_at_once(args: list[str], message: str) -> None:
    done = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert message in done.stderr


def test_a_run_without_latencies_prints_dashes_in_their_columns() -> None:
    bench = _bench()
    assert (bench._singles("0"), bench._singles("2"), bench._bulk("2")) == (0, 2, 2)
    base = bench.Baseline(2800.0, 11.0, 15.0)
    assert (bench.exchange_row(bench.Exchange("sqlite", 300, 369.0, None, None, 10.73, 10.87, None), base)
            == "| sqlite | 300 | 369 | 0.132x | - | - | - | 10.73 | 10.87 | - |")
    assert (bench.exchange_row(bench.Exchange("postgres", 300, 280.0, 22.0, 40.0, 2.9, 3.0, 2.27), base)
            == "| postgres | 300 | 280 | 0.100x | 22.0 | 40.0 | 0.500x | 2.90 | 3.00 | 2.27 |")


def test_the_warning_about_a_busy_machine_names_its_busiest_processes() -> None:
    bench = _bench()
    assert bench.busy_before_start(seconds=0.2, threshold=1.01) is None  # no machine is over 100 % busy
    warning = bench.busy_before_start(seconds=0.2, threshold=-1.0)
    assert warning is not None
    assert warning.startswith("warning: the machine is ")
    assert warning.count("% of a core") == 3 and warning.count("(pid ") == 3


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for whoever adopted it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_what_the_bench_starts_dies_with_it_even_under_sigkill(tmp_path: Path) -> None:
    """A bench killed by a timeout used to leave its two nodes running idle, disturbing later runs.
    An intermediate process stands for the bench: one child armed as the bench arms its nodes, one
    not (the old way); after SIGKILL of the intermediate only the armed child is gone."""
    script = tmp_path / "bench_stand_in.py"
    script.write_text(
        "import importlib.util, subprocess, sys, time\n"
        f"spec = importlib.util.spec_from_file_location('exchange_bench', {str(BENCH)!r})\n"
        "bench = importlib.util.module_from_spec(spec); sys.modules['exchange_bench'] = bench\n"
        "spec.loader.exec_module(bench)\n"
        "sleep = [sys.executable, '-c', 'import time; time.sleep(120)']\n"
        "armed = subprocess.Popen(sleep, preexec_fn=bench.dies_with_this_process())\n"
        "plain = subprocess.Popen(sleep)\n"
        "print(armed.pid, plain.pid, flush=True)\n"
        "time.sleep(120)\n")
    stand_in = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert stand_in.stdout is not None
    armed, plain = (int(p) for p in stand_in.stdout.readline().split())
    try:
        assert _alive(armed) and _alive(plain)
        stand_in.kill()
        stand_in.wait(timeout=30)
        for _ in range(200):  # bounded: 10 s
            if not _alive(armed):
                break
            time.sleep(0.05)
        assert not _alive(armed)
        assert _alive(plain)  # without the bench's preexec_fn a child outlives a killed parent
    finally:
        for pid in (armed, plain):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
