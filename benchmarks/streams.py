"""Many long streams at once: `python -m benchmarks.streams` (SPEC §10).

C concurrent streaming clients, each on its own connection with a prompt no other uses,
against the paced mock (`edge mock-upstream --tokens N --token-ms T`), opened in a burst
and then ramped over `--ramp-s`, through each target in turn:

- direct: the mock itself (what the client and the machine can do at all);
- edge: `edge serve`, one worker, in front of the mock;
- bare: `benchmarks.stream_app`, a bare Hypercorn-Trio app streaming the same events
  itself, the ceiling of any proxy built on Hypercorn-Trio;
- litellm / portkey: when installed (see `benchmarks.rivals`), else skipped with a note.

The clients run in separate processes (`benchmarks.stream_clients`, `--clients` of them),
never in a proxy's process. Per target and opening mode it prints streams completed,
errors, time to first event p50/p99, lateness of events beyond the upstream's own pace
p50/p99/max, and the target's peak RSS (VmRSS of its process tree, polled during the
run). Check: when direct's lateness p99 is 20 ms or more, the client or the machine is
the bottleneck and the other rows measure it, not the proxy; a warning says so.

Writes streams.txt (the table), streams.csv and streams.svg into `--out-dir`
(default benchmarks/results).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import math
import multiprocessing
import secrets
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks import rivals
from benchmarks.services import (
    REPO_ROOT,
    BenchError,
    Service,
    child_env,
    command_line,
    free_port,
    run_script,
    services_stopped,
    tree_rss_bytes,
    wait_ready,
)
from benchmarks.stream_chart import bar_chart
from benchmarks.stream_clients import ClientResult, ClientSpec, run_clients

TARGETS = ("direct", "edge", "bare", "litellm", "portkey")
MODES = ("burst", "ramp")
LATE_LIMIT_S = 0.020
MODEL = "gpt-4o-mini"
_MOCK_AUTH = (("Authorization", "Bearer sk-bench"),)
_COLUMNS = ("target", "mode", "streams", "completed", "errors", "first_p50_ms", "first_p99_ms",
            "late_p50_ms", "late_p99_ms", "late_max_ms", "peak_rss_mb", "note")


@dataclass(slots=True)
class Target:
    """A running thing to stream through: its port, how to address it, whose RSS counts."""

    name: str
    port: int
    headers: tuple[tuple[str, str], ...]
    pid: int


@dataclass(slots=True)
class Row:
    target: str
    mode: str
    streams: int
    completed: int = 0
    errors: int = 0
    first_p50_ms: float | None = None
    first_p99_ms: float | None = None
    late_p50_ms: float | None = None
    late_p99_ms: float | None = None
    late_max_ms: float | None = None
    peak_rss_mb: float | None = None
    note: str = ""

    def cells(self) -> list[str]:
        return [_cell(getattr(self, name)) for name in _COLUMNS]


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _targets(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(TARGETS)}; got {text!r}")
    return names


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.streams",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--streams", type=_positive, default=200, metavar="C",
                        help="concurrent streams per run (default 200)")
    parser.add_argument("--tokens", type=_positive, default=50, metavar="N",
                        help="content events per stream (default 50)")
    parser.add_argument("--token-ms", type=float, default=20.0, metavar="T",
                        help="ms between two events at the upstream (default 20)")
    parser.add_argument("--ramp-s", type=float, default=2.0,
                        help="the ramped run opens its streams evenly over this (default 2)")
    parser.add_argument("--targets", type=_targets, default=list(TARGETS),
                        help=f"comma-separated, from {','.join(TARGETS)} (default all)")
    parser.add_argument("--clients", type=_positive, default=None,
                        help="client processes (default: one per 1,000 streams)")
    parser.add_argument("--timeout-s", type=float, default=120.0,
                        help="a stream that has not ended by then is an error (default 120)")
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    parser.add_argument("--litellm", help="path of the litellm command")
    parser.add_argument("--portkey", help="Portkey's directory or start-server.js")
    args = parser.parse_args(argv)
    if not (math.isfinite(args.token_ms) and args.token_ms >= 0):
        parser.error("--token-ms must be a number >= 0")
    if not (math.isfinite(args.ramp_s) and args.ramp_s >= 0):
        parser.error("--ramp-s must be a number >= 0")
    if args.clients is None:
        # On 2 cores one client process measured better than 2 or 4 at C=200: more
        # processes take CPU from the very servers they measure.
        args.clients = max(1, math.ceil(args.streams / 1000))
    args.clients = min(args.clients, args.streams)
    return args


# -- targets ------------------------------------------------------------------------------


def edge_config(streams: int) -> str:
    """Edge's config for C streams: the built-in openai provider (its base URL and key from
    the environment) with a connection for every stream.

    A provider's `max_connections` (default 256) caps the upstream calls in flight; a
    stream holds its connection to the end, so past 256 streams the rest would wait for a
    free one and the figure would measure the cap (2,000 streams of 2 s: first event at
    p99 13.9 s). Raising it to the concurrency you serve is the setting a user with that
    traffic makes; the benchmark does the same.
    """
    return ('[[providers]]\nname = "openai"\nkind = "openai"\n'
            'api_key = "env:OPENAI_API_KEY"\nmodels = ["gpt-*"]\n'
            f"max_connections = {max(256, streams)}\n")


class Lab:
    """Starts the mock and each target as child processes, and stops them all after."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.services: list[Service] = []

    def start_mock(self) -> None:
        """The paced upstream every target streams from (`self.mock` from then on)."""
        args = self.args
        self.mock = self._service("mock", [
            sys.executable, "-m", "edge", "mock-upstream", "--port", "{port}",
            "--tokens", str(args.tokens), "--token-ms", f"{args.token_ms:g}"], {})
        wait_ready(self.mock, "/mock/stats")

    def _service(self, name: str, argv: list[str], env: dict[str, str]) -> Service:
        port = free_port()
        service = Service(name, [a.replace("{port}", str(port)) for a in argv], port,
                          self.workdir / f"{name}.log", child_env(env), REPO_ROOT)
        self.services.append(service)
        service.start()
        return service

    def start(self, name: str) -> Target | str:
        """The running target, or why it is skipped."""
        mock = self.mock
        if name == "direct":
            assert mock.pid is not None
            return Target(name, mock.port, _MOCK_AUTH, mock.pid)
        if name == "edge":
            config = self.workdir / "edge.toml"
            config.write_text(edge_config(self.args.streams))
            service = self._service("edge", [
                sys.executable, "-m", "edge", "serve", "--port", "{port}", "--metrics-port", "0",
                "--workers", "1", "--log-level", "warning", "--config", str(config)],
                {"OPENAI_API_KEY": "sk-bench",
                 "OPENAI_BASE_URL": f"http://127.0.0.1:{mock.port}/v1"})
            wait_ready(service, "/health/ready")
            return self._target(service, ())
        if name == "bare":
            service = self._service("bare", [
                sys.executable, "-m", "benchmarks.stream_app", "--port", "{port}",
                "--tokens", str(self.args.tokens), "--token-ms", f"{self.args.token_ms:g}"], {})
            wait_ready(service, "/")
            return self._target(service, ())
        if name == "litellm":
            found = rivals.find_litellm(self.args.litellm)
            if found.path is None:
                return found.missing or "not installed"
            port = free_port()
            launch = rivals.litellm_launch(found.path, port, {MODEL: mock.port}, self.workdir)
            service = Service("litellm", launch.argv, port, self.workdir / "litellm.log",
                              child_env(launch.env), self.workdir)
            self.services.append(service)
            service.start()
            wait_ready(service, launch.ready_path, timeout=180)
            return self._target(service, (("Authorization", f"Bearer {launch.api_key}"),))
        found = rivals.find_portkey(self.args.portkey)
        if found.path is None:
            return found.missing or "not installed"
        port = free_port()
        launch = rivals.portkey_launch(found.path, port)
        service = Service("portkey", launch.argv, port, self.workdir / "portkey.log",
                          child_env(launch.env), self.workdir)
        self.services.append(service)
        service.start()
        wait_ready(service, launch.ready_path)
        return self._target(service, rivals.portkey_headers(mock.port))

    @staticmethod
    def _target(service: Service, headers: tuple[tuple[str, str], ...]) -> Target:
        assert service.pid is not None
        return Target(service.name, service.port, headers, service.pid)

    def stop(self, target: Target) -> None:
        for service in self.services:
            if service.name == target.name and service is not self.mock:
                service.stop()


# -- one run ------------------------------------------------------------------------------


class PeakRSS:
    """Polls the RSS of a process tree on a thread; `peak` is the largest sum seen."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(tree_rss_bytes(self.pid).values()))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def run_mode(pool: concurrent.futures.Executor, target: Target, mode: str,
             args: argparse.Namespace) -> tuple[Row, list[str]]:
    """C streams through `target`, opened as `mode` says; the row and a few error texts."""
    tag = secrets.token_hex(4)
    ramp = args.ramp_s if mode == "ramp" else 0.0
    start_at = time.time() + 0.5  # every client process is already running (warmed pool)
    shares = [args.streams // args.clients + (1 if i < args.streams % args.clients else 0)
              for i in range(args.clients)]
    specs, first = [], 0
    for count in shares:
        specs.append(ClientSpec(target.port, target.headers, MODEL, first, count, args.streams,
                                start_at, ramp, args.tokens, args.token_ms, args.timeout_s,
                                tag))
        first += count
    with PeakRSS(target.pid) as rss:
        parts: list[ClientResult] = list(pool.map(run_clients, specs))
    firsts = [v for p in parts for v in p.first_event_s]
    late = [v for p in parts for v in p.lateness_s]
    samples = [s for p in parts for s in p.error_samples]

    def ms(value: float | None) -> float | None:
        return None if value is None else value * 1000.0

    row = Row(target.name, mode, args.streams, sum(p.completed for p in parts),
              sum(p.errors for p in parts), ms(_percentile(firsts, 0.5)),
              ms(_percentile(firsts, 0.99)), ms(_percentile(late, 0.5)),
              ms(_percentile(late, 0.99)), ms(max(late) if late else None),
              rss.peak / 2**20)
    return row, samples[:3]


def _warm(_: int) -> int:
    return 0


def measure(args: argparse.Namespace, workdir: Path) -> list[Row]:
    rows: list[Row] = []
    lab = Lab(args, workdir)
    context = multiprocessing.get_context("spawn")
    with services_stopped(lab.services), concurrent.futures.ProcessPoolExecutor(
            args.clients, mp_context=context) as pool:
        list(pool.map(_warm, range(args.clients * 2)))  # start (and import) them all now
        lab.start_mock()
        for name in args.targets:
            target = lab.start(name)
            if isinstance(target, str):
                rows += [Row(name, mode, args.streams, note=f"skipped: {target}")
                         for mode in MODES]
                print(f"{name}: skipped ({target})", file=sys.stderr)
                continue
            for mode in MODES:
                row, samples = run_mode(pool, target, mode, args)
                if samples:
                    row.note = "; ".join(samples)
                rows.append(row)
                print(f"{name} {mode}: {row.completed}/{row.streams} completed, "
                      f"{row.errors} errors", file=sys.stderr, flush=True)
            lab.stop(target)
    return rows


# -- output -------------------------------------------------------------------------------


def render(rows: list[Row]) -> str:
    cells = [list(_COLUMNS), *(r.cells() for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(_COLUMNS))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip()
                     for c in cells)


def warnings_for(rows: list[Row]) -> list[str]:
    """The check of the method: direct's lateness must be small, or the client is measured."""
    found = []
    for row in rows:
        if row.target != "direct":
            continue
        if row.late_p99_ms is None or row.late_p99_ms >= LATE_LIMIT_S * 1000:
            found.append(
                f"WARNING: direct {row.mode}: lateness p99 "
                f"{_cell(row.late_p99_ms)} ms is not under {LATE_LIMIT_S * 1000:.0f} ms: at "
                f"{row.streams} streams the figures measure the client or the machine, not "
                "the proxies; use fewer streams or more --clients")
    return found


def write_outputs(rows: list[Row], out_dir: Path, meta: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    table = out_dir / "streams.txt"
    table.write_text(f"{meta}\n\n{render(rows)}\n")
    csv_path = out_dir / "streams.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(_COLUMNS)
        writer.writerows(r.cells() for r in rows)
    svg = out_dir / "streams.svg"
    measured = [r for r in rows if r.first_p99_ms is not None]
    svg.write_text(bar_chart(
        f"time to first event p99 and lateness p99, ms ({meta})",
        [f"{r.target} {r.mode}" for r in measured],
        {"first event p99": [r.first_p99_ms or 0.0 for r in measured],
         "lateness p99": [r.late_p99_ms or 0.0 for r in measured]}))
    return [table, csv_path, svg]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import tempfile

    meta = (f"C={args.streams} N={args.tokens} T={args.token_ms:g}ms ramp={args.ramp_s:g}s "
            f"clients={args.clients} cpus={multiprocessing.cpu_count()}")
    with tempfile.TemporaryDirectory(prefix="edge-streams-") as tmp:
        rows = measure(args, Path(tmp))
    print(command_line("benchmarks.streams", argv))
    print(meta)
    print(render(rows))
    for warning in warnings_for(rows):
        print(warning)
    for path in write_outputs(rows, args.out_dir, meta):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    if not __package__:
        raise BenchError("run it as python -m benchmarks.streams")
    run_script(main)
