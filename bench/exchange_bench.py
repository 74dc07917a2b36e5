"""End-to-end exchange throughput and latency, as ratios to a bare FastAPI/uvicorn baseline.

Run: ``.venv/bin/python bench/exchange_bench.py`` (needs ``wrk``: ``apt-get install -y wrk``, and for
PostgreSQL a server at ``$COMITY_TEST_PG_URL``).  It first watches the machine for 2 s and warns,
naming the busiest processes, if more than 5 % of it is already in use.  In one run:

1. baseline: one uvicorn worker (uvloop + httptools) serving a pydantic-validated 2 KiB JSON POST,
   pinned to CPU 0, loaded by ``wrk -t1 -c32 -d10s`` pinned to CPU 1, ``--baseline-runs`` times (3):
   the best run is the ratios' denominator (a disturbed run only reads lower);
2. ``--clients``: the outbound HTTP clients against that same server (docs/adr/0004-http-client.md);
3. per database: two real nodes (receiver B pinned to CPU 0, sender A to CPU 1); N messages queued
   at A first (not timed); then A -> B delivered-and-receipted messages per second from the
   worker's first claim to the last stored receipt; then the latency of single messages sent one at
   a time through A's local API (POST, until A has stored the receipt);
4. per database: the receiver alone, B driven with A's sealed envelopes (A not running) by an
   aiohttp client in this process, 32 at a time: B's own capacity, to tell which side holds the
   exchange back.

Prints Markdown tables (with each node's CPU milliseconds per message: below 1,000 / rate, a node
waited rather than worked; on PostgreSQL also the server processes' CPU per message, both
databases together, read from ``/proc`` when the server runs on this machine).
``--profile [wall|gil|idle]`` runs py-spy on both nodes during the bulk phase; ``--concurrency``
sets the sender's ``worker_concurrency``; ``--singles 0`` skips the latency run.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PG_URL = os.environ.get("COMITY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BODY_BYTES = 2048

BASELINE_APP = '''
from fastapi import FastAPI
from pydantic import BaseModel, Field


class Message(BaseModel):
    to: str = Field(pattern=r"^[A-Z]{2}-[A-Z0-9]{2,16}$")
    kind: str
    subject: str = Field(max_length=1000)
    body: str


app = FastAPI()


@app.post("/messages", status_code=201)
async def post_message(msg: Message) -> dict[str, object]:
    return {"to": msg.to, "bytes": len(msg.body)}
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def baseline_body() -> bytes:
    doc = {"to": "FR-DACG", "kind": "note", "subject": "benchmark", "body": ""}
    pad = BODY_BYTES - len(json.dumps(doc))
    doc["body"] = "x" * pad
    return json.dumps(doc).encode()


@dataclass
class Baseline:
    rps: float
    p50_ms: float
    p99_ms: float


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def _process_ticks() -> dict[str, tuple[str, int]]:
    """CPU clock ticks so far of every process, by pid, with its name."""
    return {pid: (name, int(fields[11]) + int(fields[12])) for pid, name, fields in _processes()}


def _machine_ticks() -> tuple[int, int]:
    """(busy, all) CPU clock ticks of the whole machine so far (``/proc/stat``'s first line)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(values) - values[3] - values[4], sum(values)  # less idle and iowait


def busy_before_start(seconds: float = 2.0, threshold: float = 0.05) -> str | None:
    """What else is using the CPU before the bench starts, if more than ``threshold`` of the
    machine: a warning naming the three busiest processes, else None.  Every figure the bench prints
    assumes it has the machine to itself; other work lowers the rates and raises CPU per message."""
    procs, (busy, total), started = _process_ticks(), _machine_ticks(), time.monotonic()
    time.sleep(seconds)
    procs_after, (busy_after, total_after), elapsed = _process_ticks(), _machine_ticks(), time.monotonic() - started
    share = (busy_after - busy) / max(total_after - total, 1)
    if share <= threshold:
        return None
    tck = os.sysconf("SC_CLK_TCK")
    used = sorted(((f"{name} (pid {pid})", (t - procs.get(pid, (name, 0))[1]) / tck / elapsed)
                   for pid, (name, t) in procs_after.items()), key=lambda nu: nu[1], reverse=True)[:3]
    return (f"warning: the machine is {share:.0%} busy before the bench starts (busiest: "
            f"{', '.join(f'{name} {u:.0%} of a core' for name, u in used)}); its figures will read low")


PR_SET_PDEATHSIG = 1  # prctl(2)


def dies_with_this_process() -> Callable[[], None]:
    """A ``preexec_fn`` for every process the bench starts: the kernel sends it SIGTERM when the bench
    dies, even by SIGKILL (a timeout), which used to leave both nodes running idle for hours and
    disturbing every later measurement.  Linux only, as is the rest of the bench (taskset, /proc).
    The setting outlives the exec of ``taskset`` and of the node itself."""
    bench = os.getpid()

    def arm() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
        if os.getppid() != bench:  # the bench died between fork and prctl: nobody would signal us
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


def run_baseline(work: Path, duration: int, runs: int) -> tuple[Baseline, list[float], subprocess.Popen[bytes], int]:
    """Start the bare server (left running for --clients) and load it with wrk ``runs`` times; the
    best run is the baseline (noise on a shared machine only ever lowers a run: the best is the
    conservative denominator), every run's rate is returned too."""
    (work / "bench_app.py").write_text(BASELINE_APP)
    port = free_port()
    server = subprocess.Popen(
        ["taskset", "-c", "0", sys.executable, "-m", "uvicorn", "bench_app:app", "--port", str(port),
         "--loop", "uvloop", "--http", "httptools", "--workers", "1", "--log-level", "warning", "--no-access-log"],
        cwd=work, env={**os.environ, "PYTHONPATH": str(work)}, preexec_fn=dies_with_this_process())
    wait_port(port)
    script = work / "post.lua"
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f"wrk.body = {json.dumps(baseline_body().decode())}\n")
    measured = [_wrk(script, port, duration) for _ in range(runs)]
    return max(measured, key=lambda b: b.rps), [b.rps for b in measured], server, port


def _wrk(script: Path, port: int, duration: int) -> Baseline:
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c32", f"-d{duration}s", "--latency", "-s",
                          str(script), f"http://127.0.0.1:{port}/messages"], capture_output=True, text=True,
                         check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s*50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    if " Non-2xx" in out:
        raise RuntimeError(f"the baseline answered errors:\n{out}")
    return Baseline(rps, p50, p99)


# --- outbound clients (docs/adr/0004-http-client.md) ---------------------------------------------------------


async def _client_rate(kind: str, url: str, total: int, concurrency: int) -> float:
    import httpx

    body = baseline_body()
    headers = {"Content-Type": "application/json"}
    if kind == "aiohttp":
        import aiohttp

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
            async def one_aiohttp() -> None:
                async with session.post(url, data=body, headers=headers) as r:
                    await r.read()
                    assert r.status == 201
            return await _drive(one_aiohttp, total, concurrency)
    if kind == "httpx-aiohttp":
        from httpx_aiohttp import AiohttpTransport

        client = httpx.AsyncClient(transport=AiohttpTransport())
    elif kind == "httpx-pool-16":
        client = httpx.AsyncClient(limits=httpx.Limits(max_connections=16, max_keepalive_connections=16))
    else:  # httpx: a pool as large as the concurrency (what the worker had: 2 x concurrency)
        client = httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency,
                                                       max_keepalive_connections=concurrency))
    async with client:
        async def one_httpx() -> None:
            r = await client.post(url, content=body, headers=headers)
            assert r.status_code == 201
        return await _drive(one_httpx, total, concurrency)


async def _drive(one: object, total: int, concurrency: int) -> float:
    left = total
    started = time.perf_counter()

    async def lane() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await one()  # type: ignore[operator]

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return total / (time.perf_counter() - started)


def run_clients(port: int) -> list[tuple[str, int, float]]:
    rows = []
    for concurrency in (16, 64, 256):
        for kind in ("httpx", "httpx-pool-16", "httpx-aiohttp", "aiohttp"):
            out = subprocess.run(["taskset", "-c", "1", sys.executable, __file__, "--client-run", kind,
                                  str(concurrency), f"http://127.0.0.1:{port}/messages"],
                                 capture_output=True, text=True, check=True).stdout
            rows.append((kind, concurrency, float(out.strip())))
    return rows


# --- two real nodes ----------------------------------------------------------------------------------------


def comity(home: Path, env: dict[str, str], *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "node.cli.main", *args, "--home", str(home)], capture_output=True,
                          text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"comity {args}: {proc.stderr}")
    return proc.stdout


@dataclass
class NodeProc:
    authority: str
    home: Path
    port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    def start(self, cpu: int) -> None:
        log = (self.home.parent / f"{self.authority}.log").open("ab")
        self.proc = subprocess.Popen(["taskset", "-c", str(cpu), sys.executable, "-m", "node.cli.main", "serve",
                                      "--home", str(self.home), "--insecure-http", "--port", str(self.port)],
                                     stdout=log, stderr=log, env=self.env, cwd=REPO,
                                     preexec_fn=dies_with_this_process())
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)


def make_pair(work: Path, backend: str, concurrency: int | None = None) -> tuple[NodeProc, NodeProc, list[str]]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = {k: v for k, v in os.environ.items() if not k.startswith("COMITY_")}
    base.update(PYTHONPATH=str(REPO), COMITY_LOG_FORMAT="json")
    if concurrency is not None:
        base["COMITY_WORKER_CONCURRENCY"] = str(concurrency)
    nodes, dbs = [], []
    for authority in ("GB-UKCA", "FR-DACG"):
        env = dict(base)
        if backend == "postgres":
            name = f"comity_bench_{os.urandom(4).hex()}"
            admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            admin.dispose()
            env["COMITY_DATABASE_URL"] = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
            dbs.append(env["COMITY_DATABASE_URL"])
        port = free_port()
        home = work / backend / authority
        home.parent.mkdir(parents=True, exist_ok=True)
        comity(home, env, "init", "--authority", authority, "--name", authority, "--endpoint",
               f"http://127.0.0.1:{port}/", "--insecure-no-passphrase")
        nodes.append(NodeProc(authority, home, port, env))
    a, b = nodes
    for x, y in ((a, b), (b, a)):
        card = x.home.parent / f"{y.authority}.card.json"
        card.write_text(comity(y.home, y.env, "card"))
        comity(x.home, x.env, "peer", "add", "--card", str(card), "--fingerprint",
               comity(y.home, y.env, "fingerprint").strip())
    return a, b, dbs


def drop_databases(urls: list[str]) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for url in urls:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
    admin.dispose()


def db_url(node: NodeProc) -> str:
    return node.env.get("COMITY_DATABASE_URL") or f"sqlite:///{node.home / 'comity.db'}"


def queue_bulk(node: NodeProc, to: str, count: int) -> None:
    from keys.keystore import Keystore
    from node.services.sending import Draft, queue_message
    from node.storage.db import Database

    ks = Keystore.open(node.home, None)
    db = Database(db_url(node))
    now = int(time.time())
    body = "x" * (BODY_BYTES - 200)
    try:
        for start in range(0, count, 500):
            with db.write() as session:
                for i in range(start, min(count, start + 500)):
                    queue_message(session, Draft(to=to, kind="note", subject=f"bulk {i}", body=body),
                                  me=node.authority, signer=ks.signer, message_id=os.urandom(16).hex(), now=now,
                                  lifetime=86400, max_bytes=1 << 20)
    finally:
        db.dispose()


def started(db: object) -> bool:
    """Has the sender attempted any message yet (an index range scan that stops at the first row)?"""
    from sqlalchemy import text

    with db.read() as session:  # type: ignore[attr-defined]
        return session.execute(text("SELECT 1 FROM outbox WHERE state IN ('sending', 'delivered', 'failed') "
                                    "LIMIT 1")).first() is not None


def remaining(db: object) -> int:
    """Messages not delivered yet: an index count over the active ones only."""
    from sqlalchemy import text

    with db.read() as session:  # type: ignore[attr-defined]
        return int(session.execute(text("SELECT count(*) FROM outbox WHERE state IN ('queued', 'sending')"))
                   .scalar_one())


def wait_delivered(db: object, n: int, timeout: float = 600) -> tuple[float, float]:
    """(time of the first attempt, time the last receipt was stored), polled so as not to load the
    machine it measures: a cheap look every 2 ms for the start, then counts of what is left at
    intervals that shrink as the end nears (resolution 5 ms there; the count costs little then)."""
    deadline = time.monotonic() + timeout
    while not started(db):
        if time.monotonic() > deadline:
            raise AssertionError("the sender never attempted a message")
        time.sleep(0.002)
    first = time.perf_counter()
    while time.monotonic() < deadline:
        left = remaining(db)
        t = time.perf_counter()
        if left == 0:
            return first, t
        rate = max((n - left) / max(t - first, 1e-3), 50.0)
        time.sleep(min(0.5, max(0.005, left / rate / 8)))
    raise AssertionError("the bulk delivery did not finish")


@dataclass
class Exchange:
    backend: str
    n: int
    rate: float
    p50_ms: float | None  # of the single messages (None: ``--singles 0``, no latency run)
    p99_ms: float | None
    sender_cpu_ms: float  # CPU milliseconds per message delivered (the sender, A)
    receiver_cpu_ms: float  # (the receiver, B)
    server_cpu_ms: float | None  # (PostgreSQL's server processes, both databases; None on SQLite)


def _stat(text: str) -> tuple[str, list[str]]:
    """A ``/proc/PID/stat`` line: the command's name, and the fields after it (``[11]`` utime,
    ``[12]`` stime, ``[13]``/``[14]`` those of its exited children, in clock ticks)."""
    return text[text.index("(") + 1:text.rindex(")")], text.rsplit(")", 1)[1].split()


def cpu_seconds(proc: subprocess.Popen[bytes] | None) -> float:
    """User + system CPU seconds of a running process so far (Linux /proc)."""
    assert proc is not None
    _name, fields = _stat(Path(f"/proc/{proc.pid}/stat").read_text())
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _processes() -> Iterator[tuple[str, str, list[str]]]:
    """(pid, name, ``/proc/PID/stat`` fields after the name) of every process running now."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                name, fields = _stat((entry / "stat").read_text())
            except OSError:
                continue  # exited meanwhile
            yield entry.name, name, fields


def postgres_cpu_seconds() -> float:
    """User + system CPU seconds of this machine's PostgreSQL server processes so far (the
    postmaster's count includes its children that have exited).  The server is shared: only
    meaningful while the bench is the only thing using it."""
    total = sum(int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
                for _pid, name, fields in _processes() if name == "postgres")
    return total / os.sysconf("SC_CLK_TCK")


def run_exchange(work: Path, backend: str, n: int, singles: int, profile: str | None,
                 concurrency: int | None = None) -> Exchange:
    import httpx
    from sqlalchemy import text

    from node.storage.db import Database

    a, b, dbs = make_pair(work, backend, concurrency)
    try:
        queue_bulk(a, b.authority, n)
        server_before = postgres_cpu_seconds() if backend == "postgres" else None
        b.start(cpu=0)
        a.start(cpu=1)
        spies = []
        if profile:
            for node in (a, b):
                assert node.proc is not None
                spies.append(subprocess.Popen(
                    [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(node.proc.pid), "--format",
                     "raw", "--output", str(work / f"{backend}-{node.authority}.txt"), "--duration", "20",
                     "--rate", "200", "--nonblocking", "--threads",
                     *{"gil": ["--gil"], "idle": ["--idle"]}.get(profile, [])],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=dies_with_this_process()))
        db = Database(db_url(a))
        first, last = wait_delivered(db, n)
        with db.read() as session:
            delivered = session.execute(text("SELECT count(*) FROM outbox WHERE state = 'delivered'")).scalar_one()
        assert delivered == n, f"{n - delivered} of {n} messages ended other than delivered"
        rate = n / (last - first)
        # CPU per message, each side (start-up included: an upper bound)
        cpu_a, cpu_b = cpu_seconds(a.proc) * 1000 / n, cpu_seconds(b.proc) * 1000 / n
        cpu_server = None if server_before is None else (postgres_cpu_seconds() - server_before) * 1000 / n
        for spy in spies:
            spy.wait()
        # single messages through the local API, one at a time: POST until the receipt is stored
        token = (a.home / "admin.token").read_text().strip()
        latencies = []
        with httpx.Client(base_url=f"http://127.0.0.1:{a.port}",
                          headers={"Authorization": f"Bearer {token}"}) as client:
            from sqlalchemy import select

            from node.storage.models import OutboxMessage

            for i in range(singles):
                started = time.perf_counter()
                r = client.post("/api/v1/messages", json={"to": b.authority, "kind": "note",
                                                          "subject": f"single {i}", "body": "x" * 1800})
                mid = r.json()["id"]
                while True:
                    with db.read() as session:
                        state = session.execute(select(OutboxMessage.state)
                                                .where(OutboxMessage.message_id == mid)).scalar_one()
                    if state == "delivered":
                        break
                    time.sleep(0.001)
                latencies.append((time.perf_counter() - started) * 1000)
        db.dispose()
        q = statistics.quantiles(latencies, n=100) if latencies else None
        return Exchange(backend, n, rate, q[49] if q else None, q[98] if q else None, cpu_a, cpu_b, cpu_server)
    finally:
        a.stop()
        b.stop()
        if dbs:
            drop_databases(dbs)


@dataclass
class ReceiverAlone:
    backend: str
    n: int
    rate: float
    p50_ms: float
    p99_ms: float
    cpu_ms: float


def run_receiver_alone(work: Path, backend: str, n: int, lanes: int = 32) -> ReceiverAlone:
    """B alone: A's sealed envelopes (A never started) posted straight to B from this process with
    aiohttp, ``lanes`` at a time.  Where the end-to-end figure falls short of this one, the sender is
    what holds the exchange back."""
    import aiohttp
    from sqlalchemy import create_engine, text

    a, b, dbs = make_pair(work / "alone", backend)
    try:
        queue_bulk(a, b.authority, n)
        engine = create_engine(db_url(a))
        with engine.connect() as conn:
            envelopes = [bytes(r[0]) for r in conn.execute(text("SELECT envelope FROM outbox ORDER BY seq"))]
        engine.dispose()
        b.start(cpu=0)
        cpu_before = cpu_seconds(b.proc)
        latencies: list[float] = []

        async def drive() -> float:
            pending = iter(envelopes)
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=2 * lanes)) as session:
                async def lane() -> None:
                    for envelope in pending:
                        started = time.perf_counter()
                        async with session.post(f"http://127.0.0.1:{b.port}/comity/v1/inbox", data=envelope,
                                                headers={"Content-Type": "application/jose"}) as resp:
                            await resp.read()
                            if resp.status not in (200, 201):
                                raise RuntimeError(f"the receiver answered {resp.status}")
                        latencies.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                await asyncio.gather(*(lane() for _ in range(lanes)))
                return time.perf_counter() - started

        elapsed = asyncio.run(drive())
        cpu_ms = (cpu_seconds(b.proc) - cpu_before) * 1000 / n
        q = statistics.quantiles(latencies, n=100)
        return ReceiverAlone(backend, n, n / elapsed, q[49], q[98], cpu_ms)
    finally:
        b.stop()
        if dbs:
            drop_databases(dbs)


def exchange_row(r: Exchange, base: Baseline) -> str:
    """One row of the end-to-end table ("-" where a figure was not measured)."""
    server = "-" if r.server_cpu_ms is None else f"{r.server_cpu_ms:.2f}"
    latency = ("| - | - | - " if r.p50_ms is None or r.p99_ms is None
               else f"| {r.p50_ms:.1f} | {r.p99_ms:.1f} | {base.p50_ms / r.p50_ms:.3f}x ")
    return (f"| {r.backend} | {r.n} | {r.rate:.0f} | {r.rate / base.rps:.3f}x {latency}"
            f"| {r.sender_cpu_ms:.2f} | {r.receiver_cpu_ms:.2f} | {server} |")


def _backends(value: str) -> list[str]:
    """``--backends``: a name not known is refused (it would have run on SQLite under that name)."""
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = sorted(set(names) - {"sqlite", "postgres"})
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown backend {', '.join(unknown) or '(none)'}: use sqlite, postgres")
    return names


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive count")
    return n


def _bulk(value: str) -> int:
    """``-n``: the receiver-alone run's percentiles need at least two messages."""
    n = int(value)
    if n < 2:
        raise argparse.ArgumentTypeError(f"{value}: at least 2 messages (percentiles need two)")
    return n


def _singles(value: str) -> int:
    """``--singles``: 0 skips the latency run; otherwise percentiles need at least two messages."""
    n = int(value)
    if n == 0 or n >= 2:
        return n
    raise argparse.ArgumentTypeError(f"{value}: use 0 (no latency run) or at least 2 (percentiles need two)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=_bulk, default=2000, help="messages queued for the bulk run (at least 2)")
    parser.add_argument("--singles", type=_singles, default=200,
                        help="single messages for the latency run (0: none)")
    parser.add_argument("--duration", type=int, default=10, help="wrk seconds")
    parser.add_argument("--backends", default="sqlite,postgres", type=_backends,
                        help="comma-separated, of: sqlite, postgres")
    parser.add_argument("--clients", action="store_true", help="also compare outbound HTTP clients")
    parser.add_argument("--profile", nargs="?", const="wall", choices=("wall", "gil", "idle"),
                        help="py-spy both nodes during the bulk run (gil: only samples holding the GIL; "
                             "idle: waiting threads too)")
    parser.add_argument("--baseline-runs", type=_positive, default=3,
                        help="wrk runs of the baseline; the best is the denominator (default: 3)")
    parser.add_argument("--concurrency", type=_positive, help="the sender's worker_concurrency (default: the node's)")
    parser.add_argument("--client-run", nargs=3, metavar=("KIND", "CONCURRENCY", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    backends: list[str] = args.backends
    if args.client_run:
        kind, concurrency, url = args.client_run
        print(asyncio.run(_client_rate(kind, url, max(3000, 20 * int(concurrency)), int(concurrency))))
        return
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install -y wrk")
    if args.profile and not (Path(sys.executable).parent / "py-spy").exists():
        sys.exit(f"--profile needs py-spy: {Path(sys.executable).parent / 'pip'} install py-spy")
    busy = busy_before_start()
    if busy:
        print(busy, file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="comity-bench-"))
    base, baseline_runs, server, port = run_baseline(work, args.duration, args.baseline_runs)
    try:
        clients = run_clients(port) if args.clients else []
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    results = [run_exchange(work, backend, args.n, args.singles, args.profile, args.concurrency)
               for backend in backends]
    alone = [run_receiver_alone(work, backend, args.n) for backend in backends]
    print(f"\nbaseline (bare FastAPI, 2 KiB pydantic POST, wrk -t1 -c32): {base.rps:.0f} req/s, "
          f"p50 {base.p50_ms:.2f} ms, p99 {base.p99_ms:.2f} ms (the best of {len(baseline_runs)} runs: "
          f"{', '.join(f'{r:.0f}' for r in baseline_runs)} req/s)\n")
    print("| database | N | delivered+receipted msg/s | x baseline | p50 ms | p99 ms | baseline p50/p50 "
          "| CPU ms/msg A | CPU ms/msg B | CPU ms/msg PostgreSQL |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(exchange_row(r, base))
    print("\nthe receiver alone (B driven with A's sealed envelopes, 32 at a time, from this process):\n")
    print("| database | N | receipts/s | x baseline | p50 ms | p99 ms | CPU ms/msg B (start-up excluded) |")
    print("|---|---|---|---|---|---|---|")
    for ra in alone:
        print(f"| {ra.backend} | {ra.n} | {ra.rate:.0f} | {ra.rate / base.rps:.3f}x | {ra.p50_ms:.1f} "
              f"| {ra.p99_ms:.1f} | {ra.cpu_ms:.2f} |")
    if clients:
        print("\n| client | concurrency | req/s |\n|---|---|---|")
        for kind, concurrency, rate in clients:
            print(f"| {kind} | {concurrency} | {rate:.0f} |")
    if args.profile:
        print(f"\npy-spy profiles (raw, collapsed stacks): {work}/*-*.txt")


if __name__ == "__main__":
    main()
