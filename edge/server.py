"""Hypercorn on Trio: start-up, the metrics listener, signals, graceful drain, workers.

One worker runs in this process. With `workers > 1` the parent binds the sockets, starts
that many spawned processes which all accept on them, and turns SIGTERM/SIGINT into a
shared shutdown event; each worker then drains like a single one would.

Metrics across workers: the parent makes a private directory (one per edge instance, so
two instances on one host never mix or delete each other's files), hands it to the
workers as PROMETHEUS_MULTIPROC_DIR in the environment they are spawned with (it must be
there before prometheus_client is imported, which happens while the child unpickles its
target), tells prometheus-client when a worker is gone, and removes the directory on exit.

Drain: the shutdown trigger marks the service as draining (new requests on kept-alive
connections get 503, /health/ready says 503), Hypercorn stops accepting and gives the
requests in flight, streams included, `graceful_timeout_s` to finish; then the lifespan
closes the service.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, cast

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app
from prometheus_client.multiprocess import mark_process_dead

from . import collector
from .app import EdgeApp, build_app
from .config import Config, load_config
from .http1 import install as install_http1
from .logs import log
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import MULTIPROC_ENV, Metrics
from .request_head import MAX_HEAD_BYTES

if TYPE_CHECKING:
    from hypercorn.typing import ASGIFramework

Trigger = Callable[[], Awaitable[None]]


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def hypercorn_config(config: Config, port: int | None = None) -> HypercornConfig:
    server = config.server
    hc = HypercornConfig()
    hc.bind = [_bind(server.host, server.port if port is None else port)]
    hc.worker_class = "trio"
    hc.graceful_timeout = server.graceful_timeout_s
    hc.accesslog = None
    hc.errorlog = None  # our own JSON logs are the only thing on stderr
    hc.include_server_header = False
    # Hypercorn's read_timeout would bound every socket read of a connection, also while
    # edge is still answering (a long stream, a slow model), so it stays off. The client is
    # bounded instead while it owes edge something: the keep-alive timer runs from the
    # connection's start or the end of its last answer until a request head is complete,
    # and the app bounds the body read (request_body_timeout_s, 408).
    hc.read_timeout = None
    hc.keep_alive_timeout = server.keep_alive_timeout_s
    hc.h11_max_incomplete_size = MAX_HEAD_BYTES  # the app checks complete heads (431)
    hc.backlog = 1024
    return hc


class MetricsApp:
    """The separate METRICS_PORT listener: /metrics and nothing else."""

    def __init__(self, app: EdgeApp) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
                await receive()
                await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        if scope["path"] == "/metrics" and scope["method"] == "GET":
            status, ctype, body = 200, METRICS_CONTENT_TYPE.encode(), self.app.metrics.render()
        else:
            status, ctype, body = 404, b"text/plain", b"only /metrics is served here\n"
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype)]})
        await send({"type": "http.response.body", "body": body})


async def _wait_for_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("shutting down", signal=signal.Signals(signum).name)
            return


async def serve(
    config: Config,
    *,
    shutdown_trigger: Trigger | None = None,
    sockets: tuple[Sockets, Sockets | None] | None = None,
    metrics_dir: str | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve edge in the current Trio run until `shutdown_trigger` returns, then drain.

    Args:
        config: the parsed configuration.
        shutdown_trigger: returns when it is time to stop; default: SIGTERM or SIGINT.
        sockets: pre-bound (proxy, metrics) sockets, as a worker process receives them.
        metrics_dir: the multiprocess metrics directory shared by all workers of this
            instance (None: one process, metrics in memory).
        task_status: started with the proxy's bound addresses (port 0 works).
    """
    install_http1()  # edge's HTTP/1.1 rules, see edge.http1
    metrics = Metrics(multiprocess_dir=metrics_dir)
    metrics.prime(p.name for p in config.providers)
    app = build_app(config, metrics)
    trigger = shutdown_trigger or _wait_for_signal
    stop = trio.Event()

    async def proxy_trigger() -> None:
        await trigger()
        if app.edge is not None:
            app.edge.draining = True
        stop.set()

    hc = hypercorn_config(config)
    metrics_port = config.server.metrics_port if config.enable_metrics else 0
    # Our apps take plain dicts; Hypercorn's annotations want its TypedDict scopes.
    asgi = cast("ASGIFramework", app)
    async with trio.open_nursery() as nursery:
        if sockets is None:
            binds = await nursery.start(
                partial(hypercorn_serve, asgi, hc, shutdown_trigger=proxy_trigger)
            )
        else:
            binds = await nursery.start(
                partial(worker_serve, wrap_app(asgi, hc.wsgi_max_body_size, None), hc,
                        sockets=sockets[0], shutdown_trigger=proxy_trigger)
            )
        if metrics_port:
            mc = hypercorn_config(config, metrics_port)
            mc.graceful_timeout = 1
            mapp = cast("ASGIFramework", MetricsApp(app))
            if sockets is None or sockets[1] is None:
                mbinds = await nursery.start(
                    partial(hypercorn_serve, mapp, mc, shutdown_trigger=stop.wait))
            else:
                mbinds = await nursery.start(
                    partial(worker_serve, wrap_app(mapp, mc.wsgi_max_body_size, None), mc,
                            sockets=sockets[1], shutdown_trigger=stop.wait))
            log.info("metrics listening", binds=mbinds)
        log.info("edge listening", binds=binds, version=_version(),
                 providers=[p.name for p in config.providers])
        collector.freeze_startup()
        task_status.started(binds)
    log.info("edge stopped")


def _version() -> str:
    from ._version import __version__

    return __version__


def run(config: Config, load_args: Mapping[str, Any] | None = None) -> int:
    """Serve until SIGTERM/SIGINT, in this process or in `config.server.workers` processes."""
    if config.server.workers <= 1:
        collector.tune()
        try:
            trio.run(partial(serve, config))
        except OSError as exc:
            print(f"Error: cannot listen on {config.server.host}:{config.server.port}: {exc}",
                  file=sys.stderr)
            return 1
        return 0
    return _run_workers(config, dict(load_args or {}))


def _run_workers(config: Config, load_args: dict[str, Any]) -> int:
    hc = hypercorn_config(config)
    try:
        proxy_sockets = hc.create_sockets()
        metrics_sockets = None
        if config.enable_metrics and config.server.metrics_port:
            metrics_sockets = hypercorn_config(config, config.server.metrics_port).create_sockets()
    except OSError as exc:
        print(f"Error: cannot listen on {config.server.host}:{config.server.port}: {exc}",
              file=sys.stderr)
        return 1
    # With metrics off nothing is scraped, so the workers need no shared files either.
    metrics_dir = tempfile.mkdtemp(prefix="edge-metrics-") if config.enable_metrics else None
    try:
        return _supervise(config, load_args, (proxy_sockets, metrics_sockets), metrics_dir)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _supervise(config: Config, load_args: dict[str, Any],
               sockets: tuple[Sockets, Sockets | None], metrics_dir: str | None) -> int:
    """Start the workers, wait for a signal or a worker's death, then stop them all."""
    ctx = multiprocessing.get_context("spawn")
    shutdown = ctx.Event()
    processes = []
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # children inherit "ignore"
    with _environ(MULTIPROC_ENV, metrics_dir):
        for _ in range(config.server.workers):
            process = ctx.Process(
                target=_worker_main,
                kwargs={"load_args": load_args, "sockets": sockets, "shutdown": shutdown,
                        "metrics_dir": metrics_dir},
            )
            process.start()
            processes.append(process)
    signal.signal(signal.SIGINT, previous)
    # Every worker holds its own descriptors now. Were the parent to keep its copies, the
    # listening sockets would outlive the workers' drain: the kernel would go on taking
    # connections that no one will ever accept, instead of refusing them.
    for bound in sockets:
        if bound is not None:
            for sock in (*bound.secure_sockets, *bound.insecure_sockets):
                sock.close()
    if metrics_dir is not None:
        log.info("metrics aggregate across workers", workers=len(processes), dir=metrics_dir)

    def request_shutdown(signum: int, frame: Any) -> None:
        log.info("shutting down workers", signal=signal.Signals(signum).name)
        shutdown.set()

    signal.signal(signal.SIGTERM, request_shutdown)
    signal.signal(signal.SIGINT, request_shutdown)
    exit_code = 0
    from multiprocessing.connection import wait as wait_any

    while not shutdown.is_set():
        finished = wait_any([p.sentinel for p in processes], timeout=0.5)
        # A worker that exits because SIGTERM arrived during the wait is draining, not dying.
        if finished and not shutdown.is_set():
            for process in processes:
                if not process.is_alive():
                    _forget_worker(process, metrics_dir)
            shutdown.set()  # a worker died: take the rest down cleanly rather than limp on
            exit_code = 1
    deadline = config.server.graceful_timeout_s + 5
    for process in processes:
        process.join(timeout=deadline)
        if process.is_alive():
            process.terminate()
            process.join(timeout=5)
        _forget_worker(process, metrics_dir)  # the others may still answer scrapes
    if exit_code == 0 and any(p.exitcode not in (0, None) for p in processes):
        exit_code = 1
    return exit_code


@contextmanager
def _environ(name: str, value: str | None) -> Iterator[None]:
    """`name=value` in os.environ (which spawned children inherit), restored afterwards."""
    if value is None:
        yield
        return
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            del os.environ[name]
        else:
            os.environ[name] = previous


def _forget_worker(process: Any, metrics_dir: str | None) -> None:
    """Drop a dead worker's live gauges (in-flight, circuit state); its counters stay summed."""
    if metrics_dir is not None and process.pid is not None:
        mark_process_dead(process.pid, metrics_dir)  # type: ignore[no-untyped-call]


def _worker_main(load_args: dict[str, Any], sockets: tuple[Sockets, Sockets | None],
                 shutdown: Any, metrics_dir: str | None = None) -> None:
    config = load_config(**load_args)
    for bound in sockets:
        if bound is not None:
            for sock in (*bound.secure_sockets, *bound.insecure_sockets):
                sock.listen(1024)  # a spawned worker gets the bound socket, not its listen state
    log.set_level(config.server.log_level)

    async def trigger() -> None:
        async with trio.open_nursery() as nursery:
            async def by_event() -> None:
                while not shutdown.is_set():  # noqa: ASYNC110 - a process-shared Event
                    await trio.sleep(0.1)
                nursery.cancel_scope.cancel()

            async def by_signal() -> None:
                with trio.open_signal_receiver(signal.SIGTERM) as signals:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        return

            nursery.start_soon(by_event)
            nursery.start_soon(by_signal)

    collector.tune()
    trio.run(partial(serve, config, shutdown_trigger=trigger, sockets=sockets,
                     metrics_dir=metrics_dir))
