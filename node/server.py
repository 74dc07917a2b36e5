"""``comity serve`` and ``comity worker``: uvicorn listeners, the integrator and the delivery worker in one loop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import ssl
from collections.abc import Callable, Coroutine, Generator
from typing import Any

import structlog
import uvicorn

from .api.app import build_app
from .config import peer_bind
from .delivery.worker import DeliveryWorker
from .errors import BusyError, InputError
from .faults import arm_crash_points, crash_point
from .keyring import keep_keys_fresh
from .runtime import Node
from .services.integrator import IntegratorBusyError, IntegratorLock
from .storage.migrate import check_current

log = structlog.get_logger("comity.server")

INTEGRATOR_RETRY = 5.0


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop (installed with ``uvicorn[standard]``), the loop uvicorn itself picks
    when it runs the loop; on asyncio's own loop if it is missing.  (Measured with
    bench/exchange_bench.py: within the noise of the default loop for the exchange, where the time
    goes to Python code, not to the loop.)"""
    try:
        import uvloop
        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    _quiet_gc()
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)


def _quiet_gc() -> None:
    """Leave what start-up made (modules, SQLAlchemy's metadata, keys) out of every later full
    garbage collection (``perf`` put ~2.5% of the receiver's CPU in the collector).  The thresholds
    stay: collecting the young generation less often let a sender hold ~250 MiB of attachment
    chunks in garbage cycles awaiting collection (bench/attachments_bench.py)."""
    gc.collect()
    gc.freeze()


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to us (several servers share one loop)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _config(app: Any, host: str, port: int, **tls: Any) -> uvicorn.Config:
    return uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off",
                          server_header=False, timeout_graceful_shutdown=5, **tls)


def _make_worker(node: Node) -> DeliveryWorker:
    s = node.settings
    verify: bool | ssl.SSLContext = ssl.create_default_context(cafile=s.tls_ca) if s.tls_ca else True
    worker = DeliveryWorker(node.db, authority=node.authority, owner=node.owner, clock=node.clock, poll=s.worker_poll,
                            concurrency=s.worker_concurrency, timeout=s.http_timeout, skew=s.skew,
                            max_lifetime=s.max_lifetime, verify_tls=verify, lease=s.lease_seconds,
                            metrics=node.metrics, allow_http=s.insecure_http, witness_poll=s.witness_poll,
                            writer=node.writer)

    def queued() -> None:  # the local API calls this once a queued message has committed
        crash_point("after_queue_commit")  # tests only
        worker.wake()

    node.wake_worker = queued
    return worker


def _acquire_integrator(node: Node) -> IntegratorLock:
    lock = IntegratorLock(node.db, node.home)
    try:
        lock.acquire()
    except IntegratorBusyError as e:
        raise BusyError(f"{e}: is another `comity serve` or `comity worker` running on this node?") from e
    return lock


async def _take_over_integrator(node: Node, stop: asyncio.Event) -> None:
    """A worker without the integrator lock tries again every few seconds (its holder may have died)."""
    while node.integrator is None and not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=INTEGRATOR_RETRY)
        if stop.is_set():
            return
        try:
            lock = IntegratorLock(node.db, node.home)
            await asyncio.to_thread(lock.acquire)
        except Exception:  # busy (or the database is away): try again later  # noqa: S112
            continue
        node.integrator_lock = lock
        node.start_integrator()
        log.info("integrator_taken_over")


async def _run(servers: list[_Server], worker: DeliveryWorker | None, node: Node | None = None, *,
               reissue: bool = False) -> None:
    stop = asyncio.Event()
    hup = asyncio.Event()
    loop = asyncio.get_running_loop()

    def request_stop() -> None:
        stop.set()
        for s in servers:
            s.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, request_stop)
    loop.add_signal_handler(signal.SIGHUP, hup.set)
    if node is not None:
        node.bind_writer(loop)  # group commits on this loop, not on a thread (ADR 0008)
    tasks = [asyncio.create_task(s.serve()) for s in servers]
    if worker is not None:
        tasks.append(asyncio.create_task(worker.run(stop)))
    if node is not None:
        s = node.settings
        upkeep = keep_keys_fresh(node.keyring, node.peer_refresher if worker is not None else None, node.db,
                                 stop, hup, interval=s.key_reload_interval, clock=node.clock, reissue=reissue,
                                 validity=s.keyset_validity)
        tasks.append(asyncio.create_task(upkeep))
        if worker is not None and node.integrator is None:
            tasks.append(asyncio.create_task(_take_over_integrator(node, stop)))
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if not stop.is_set():
            request_stop()  # one part ended (e.g. a port could not be bound): stop the rest
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    if any(not s.started for s in servers):
        raise InputError("a listener could not start (is the port in use?)")


def serve(node: Node, *, with_worker: bool = True) -> None:
    """Run the node until SIGINT/SIGTERM."""
    s = node.settings
    check_current(node.db.engine)
    arm_crash_points(testing=s.testing, env=os.environ)
    lock = _try_integrator(node)
    try:
        node.start_writer(integrate=lock is not None)
        endpoint = node.keystore.keyset.endpoint
        if s.insecure_http:
            host, port = (s.host or "127.0.0.1"), (s.port or peer_bind(s, endpoint)[1])
            servers = [_Server(_config(build_app(node, peer=True, local=True), host, port))]
        else:
            if not (s.tls_cert and s.tls_key):
                raise InputError("the peer listener needs tls_cert and tls_key in comity.toml "
                                 "(or --insecure-http for a local test federation)")
            host, port = peer_bind(s, endpoint)
            servers = [
                _Server(_config(build_app(node, peer=True, local=False), host, port,
                                ssl_certfile=s.tls_cert, ssl_keyfile=s.tls_key)),
                _Server(_config(build_app(node, peer=False, local=True), s.local_host, s.local_port)),
            ]
        worker = _make_worker(node) if with_worker else None
        log.info("serving", authority=node.authority, host=host, port=port, insecure_http=s.insecure_http,
                 worker=with_worker)
        run_loop(_run(servers, worker, node, reissue=True))
    finally:
        node.close()
        if lock is not None:
            lock.release()


def _try_integrator(node: Node) -> IntegratorLock | None:
    """Integrate here unless another process of this node already does (several processes on one
    PostgreSQL database: exactly one integrates; the others' inboxes poll for their receipts)."""
    try:
        return _acquire_integrator(node)
    except BusyError:
        log.info("integrator_elsewhere", detail="another process integrates this database's logs")
        return None


def run_worker(node: Node) -> None:
    """Run the delivery worker alone (no listeners); it also integrates the logs if no one else does."""
    check_current(node.db.engine)
    arm_crash_points(testing=node.settings.testing, env=os.environ)
    lock = _try_integrator(node)
    try:
        node.start_writer(integrate=lock is not None)
        run_loop(_run([], _make_worker(node), node))
    finally:
        node.close()
        if lock is not None:
            lock.release()
        if node.integrator_lock is not None:
            node.integrator_lock.release()
