"""``comity audit verify`` on several cores: a large SQLite log checked in chunks by worker processes.

Used when the log has at least ``MIN_ENTRIES`` sequenced entries whose leaf indices are exactly
``0 .. n-1`` (their count, least and greatest agree) and at least two cores are usable.  The log is
cut into chunks whose size is a power of two; each worker (``python -m node.services.verify_parallel``,
which imports no database layer) checks its chunks entry by entry with the very checks of the
one-process path (``verify_entries``: leaf index, leaf hash, derived columns) and returns each chunk's
frontier and, for every size asked (signed heads, heads held outside), the chunk's frontier up to that
size.  ``chunk_roots`` folds them into the root at each size.

Anything out of place — an index, a leaf hash or a derived column that does not match, a worker that
fails — makes ``chunk_roots`` answer None, and the caller then runs the one-process path, which finds
and names the first problem exactly as it always does.  Each worker reads in one transaction of its
own: the entries of an append-only log below the size counted by the caller do not change.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .verify_entries import (
    BATCH,
    Frontier,
    Tree,
    first_bad_entry,
    first_gap,
    fold,
    leaf_hashes,
    leaves_of,
    merged,
    select_entries,
)

MIN_ENTRIES = 1 << 17  # below this the start of the workers costs more than it saves
MAX_WORKERS = 8
CHUNKS_PER_WORKER = 4  # chunks of equal size, dealt in turn: the workers finish close together


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def chunk_size(n: int, workers: int) -> int:
    """A power of two, at least ``BATCH``, near ``n / (workers * CHUNKS_PER_WORKER)``."""
    target = max(n // (workers * CHUNKS_PER_WORKER), BATCH)
    return 1 << (target.bit_length() - 1)


def _frontier_json(nodes: Frontier) -> list[list[Any]]:
    return [[h.hex(), height] for h, height in nodes]


def _frontier_from_json(value: list[list[Any]]) -> Frontier:
    return [(bytes.fromhex(h), int(height)) for h, height in value]


def check_chunks(path: str, log: str, chunks: Sequence[tuple[int, int, Sequence[int]]]) -> Iterator[dict[str, Any]]:
    """Check the entries of each chunk ``(start, end, sizes)`` of ``log``, in one read transaction; yield
    per chunk its frontier and its frontier at each of ``sizes`` — and stop at the first chunk with
    anything out of place (``ok`` false)."""
    con = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        con.execute("BEGIN")
        for start, end, sizes in chunks:
            cur = con.execute(select_entries("?", bounded=True), (log, start, end))
            tree, pos, at = Tree(), start, {}
            ok = True
            while ok and (batch := cur.fetchmany(BATCH)):
                leaves = leaves_of(batch)
                hashes = leaf_hashes(leaves)
                if first_gap(batch, pos) >= 0 or first_bad_entry(batch, leaves, hashes, log) is not None:
                    ok = False
                    break
                tree.load(hashes)
                for size in sizes:
                    if pos < size <= pos + len(batch):
                        at[str(size)] = _frontier_json(tree.frontier_at(size - pos))
                tree.advance(len(batch))
                pos += len(batch)
            cur.close()
            ok = ok and pos == end
            yield {"start": start, "ok": ok, "frontier": _frontier_json(tree.nodes), "at": at}
            if not ok:
                return
    finally:
        con.close()


def _run_worker(args: list[str], env: dict[str, str], task: str) -> str:
    proc = subprocess.run(args, input=task, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"verify worker exited with {proc.returncode}")
    return proc.stdout


def chunk_roots(path: str, log: str, n: int, sizes: Iterable[int], *, workers: int,
                while_waiting: Callable[[], None] = lambda: None, chunk: int | None = None) -> dict[int, bytes] | None:
    """The root of ``log``'s tree at each of ``sizes`` in ``1..n`` and at ``n``, its ``n`` entries checked
    in chunks by ``workers`` processes; None when any entry is out of place or a worker fails.
    ``while_waiting`` runs in this process meanwhile.  ``chunk`` (a power of two) overrides the chunk size."""
    size = chunk or chunk_size(n, workers)
    if size < 1 or size & (size - 1):
        raise ValueError(f"a chunk of {size} entries is not a power of two")
    want = sorted({s for s in sizes if 0 < s <= n} | {n})
    chunks = [(a, min(a + size, n), [s for s in want if a < s <= min(a + size, n)]) for a in range(0, n, size)]
    workers = max(1, min(workers, MAX_WORKERS, len(chunks)))
    dealt = [chunks[i::workers] for i in range(workers)]
    package_root = str(Path(__file__).resolve().parents[2])
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMITY_")}  # no passphrase, no settings
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    args = [sys.executable, "-m", "node.services.verify_parallel"]
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            outputs = [pool.submit(_run_worker, args, env, json.dumps({"path": path, "log": log, "chunks": mine}))
                       for mine in dealt]
            while_waiting()
            results = {}
            for out in outputs:
                for line in out.result().splitlines():
                    r = json.loads(line)
                    results[r["start"]] = r
    except Exception:  # a worker that fails: the one-process path will tell why
        return None
    if len(results) != len(chunks) or not all(r["ok"] for r in results.values()):
        return None
    roots: dict[int, bytes] = {}
    nodes: Frontier = []
    for start, _, _ in chunks:
        r = results[start]
        for s, local in r["at"].items():
            roots[int(s)] = fold(merged(nodes + _frontier_from_json(local)))
        nodes = merged(nodes + _frontier_from_json(r["frontier"]))
    return roots if set(roots) == set(want) else None


def _main() -> None:
    task = json.loads(sys.stdin.read())
    for result in check_chunks(task["path"], task["log"], [(a, b, tuple(s)) for a, b, s in task["chunks"]]):
        sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    _main()
