"""The full benchmark harness: edge beside its baselines and rivals, swept over concurrency.

One command, ``python -m benchmarks.harness``, starts on free loopback ports:

    mock upstreams   ``edge mock-upstream`` at 0 ms and at 50 ms (``--delay-ms 50``)
    bare app         the bare Hypercorn-Trio app answering the mock's exact bytes
    edge             ``edge serve --workers N`` for each N of ``--workers`` (1 and 2),
                     with a config of two providers: gpt-4o-mini -> the 0 ms mock,
                     gpt-4o -> the 50 ms mock
    LiteLLM proxy    when installed (``--litellm``), the same two models, 1 worker
    Portkey gateway  when installed (``--portkey``), routed to the same mocks

and loads each with the same requests, closed loop (wrk when installed, else
benchmarks.loadgen), at every concurrency of ``--concurrency``, per scenario:

    hit      the same body again: edge answers from its L1 cache (edge only)
    miss     every request distinct (or ``Cache-Control: no-store``), 0 ms mock
    miss50   the same, 50 ms mock
    stream   ``"stream": true``, every request distinct, 0 ms mock

plus ``rate``: open loop at ``--rate`` requests/s (100) to the 50 ms mock, direct and
through each proxy, reporting what each adds to p50 and p99 over direct.

The bare app is the ceiling for any app on edge's server stack; it is measured at every
concurrency and every figure's ``vs bare`` divides by it (same concurrency, same round).
Every target must answer the exact request 200 (JSON, or an SSE stream ending in
``[DONE]``) before it is loaded; one that does not is skipped with the reason, as is a
rival that is not installed. It prints a table and the issue's targets (met or not, with
the gap), and writes ``harness.csv``, ``harness.json`` and ``latency.png`` (p50/p99 and
req/s against concurrency, one panel per scenario) to ``--out-dir``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import charts, rivals
from benchmarks.drivers import CLIENT_KEY, Request, chat_body, pick_tool, run_closed
from benchmarks.loadgen import Flow, LoadResult, RateSpec, run_rate
from benchmarks.services import (
    REPO_ROOT,
    BenchError,
    Service,
    child_env,
    command_line,
    free_port,
    http_call,
    mock_command,
    probe_interpreter,
    run_script,
    services_stopped,
    wait_ready,
)

AUTH = (("Authorization", f"Bearer {CLIENT_KEY}"),)
FAST_MODEL = "gpt-4o-mini"  # routed to the 0 ms mock
SLOW_MODEL = "gpt-4o"  # routed to the 50 ms mock
SLOW_DELAY_MS = 50
EDGE_KEY_ENV = "EDGE_BENCH_UPSTREAM_KEY"


@dataclass(frozen=True, slots=True)
class Scenario:
    """A kind of traffic: which mock answers, streamed or not, cacheable or not."""

    key: str
    label: str
    model: str
    stream: bool = False
    cached: bool = False  # True: the same body every time (edge's hit path)


SCENARIOS = {
    s.key: s for s in (
        Scenario("hit", "hit path (same body, edge's L1)", FAST_MODEL, cached=True),
        Scenario("miss", "miss path, mock 0 ms", FAST_MODEL),
        Scenario("miss50", "miss path, mock 50 ms", SLOW_MODEL),
        Scenario("stream", "streaming miss, mock 0 ms", FAST_MODEL, stream=True),
    )
}
RATE = "rate"
TARGET_KINDS = ("direct", "bare", "edge", "litellm", "portkey")
RIVALS = ("litellm", "portkey")


@dataclass(slots=True)
class Cell:
    """One (scenario, target, concurrency) measurement, or why it was skipped."""

    scenario: str
    target: str
    label: str
    concurrency: int
    results: list[LoadResult] = field(default_factory=list)
    result: LoadResult | None = None
    skipped: str | None = None
    ratio_to_bare: float | None = None
    cache_header: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the JSON file."""
        return {
            "scenario": self.scenario, "target": self.target, "label": self.label,
            "concurrency": self.concurrency, "skipped": self.skipped,
            "ratio_to_bare": self.ratio_to_bare, "x_edge_cache": self.cache_header,
            "rounds_requests_per_s": [r.requests_per_s for r in self.results],
            **(self.result.to_dict() if self.result else {}),
        }


@dataclass(slots=True)
class RateRow:
    """One target of the fixed-rate comparison."""

    target: str
    label: str
    results: list[LoadResult] = field(default_factory=list)
    result: LoadResult | None = None
    skipped: str | None = None
    added_p50_ms: float | None = None
    added_p99_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the JSON file."""
        return {
            "target": self.target, "label": self.label, "skipped": self.skipped,
            "added_p50_ms": self.added_p50_ms, "added_p99_ms": self.added_p99_ms,
            "rounds_p50_ms": [r.p50_ms for r in self.results],
            "rounds_p99_ms": [r.p99_ms for r in self.results],
            **(self.result.to_dict() if self.result else {}),
        }


@dataclass(slots=True)
class Verdict:
    """One of the issue's targets: what it asks, what was measured, met or not."""

    name: str
    wanted: str
    measured: str
    met: bool | None  # None: not measured in this run

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the JSON file."""
        return {"target": self.name, "wanted": self.wanted, "measured": self.measured,
                "met": self.met}


def _csv_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive numbers: {text!r}")
    return values


def _csv_names(allowed: Sequence[str]) -> Any:
    def parse(text: str) -> list[str]:
        names = [v.strip() for v in text.split(",") if v.strip()]
        unknown = sorted(set(names) - set(allowed))
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(unknown) or 'empty list'}; choose from {', '.join(allowed)}")
        return names
    return parse


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command-line flags; ``--quick`` changes only the defaults not given."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.harness", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true",
                        help="short run: c = 1,64, 2 s per cell after 0.5 s warm-up, "
                             "8 s fixed-rate runs")
    parser.add_argument("--scenarios", type=_csv_names([*SCENARIOS, RATE]),
                        default=[*SCENARIOS, RATE],
                        help="comma list of hit, miss, miss50, stream, rate (default: all)")
    parser.add_argument("--targets", type=_csv_names(TARGET_KINDS), default=list(TARGET_KINDS),
                        help="comma list of direct, bare, edge, litellm, portkey "
                             "(default: all; a rival not installed is skipped)")
    parser.add_argument("--concurrency", type=_csv_ints, default=None,
                        help="comma list of connection counts (default 1,8,32,64,128)")
    parser.add_argument("--workers", type=_csv_ints, default=[1, 2],
                        help="edge serve --workers values, one edge each (default 1,2)")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds per cell (default 5)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds before each cell, discarded (default 1)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure everything this many times, interleaved; report the "
                             "median round per cell")
    parser.add_argument("--rate", type=float, default=100.0,
                        help="requests/s of the fixed-rate scenario (default 100)")
    parser.add_argument("--rate-duration", type=float, default=None,
                        help="seconds per fixed-rate run (default 20)")
    parser.add_argument("--miss-kind", choices=("unique", "no-store"), default="unique",
                        help="how miss scenarios defeat edge's cache: a distinct body per "
                             "request (a real miss: lookup, upstream, store) or the same "
                             "body with Cache-Control: no-store (default unique)")
    parser.add_argument("--tool", choices=("auto", "wrk", "loadgen"), default="auto")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--processes", type=int, default=1, help="loadgen processes")
    parser.add_argument("--litellm", help=f"litellm command (default {rivals.DEFAULT_LITELLM}, "
                                          "else litellm on PATH)")
    parser.add_argument("--portkey", help="Portkey install directory or its start-server.js "
                                          f"(default {rivals.DEFAULT_PORTKEY_DIR})")
    parser.add_argument("--edge-log-level", default="warning")
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "benchmarks" / "results",
                        help="where harness.csv, harness.json and latency.png go")
    parser.add_argument("--log-dir", type=Path,
                        help="keep the services' output here (default: a scratch directory)")
    args = parser.parse_args(argv)
    quick = args.quick
    if args.concurrency is None:
        args.concurrency = [1, 64] if quick else [1, 8, 32, 64, 128]
    if args.duration is None:
        args.duration = 2.0 if quick else 5.0
    if args.warmup is None:
        args.warmup = 0.5 if quick else 1.0
    if args.rate_duration is None:
        args.rate_duration = 8.0 if quick else 20.0
    if args.duration <= 0 or args.rounds < 1 or args.rate <= 0 or args.rate_duration <= 0:
        parser.error("--duration, --rounds, --rate and --rate-duration must be positive")
    return args


def _edge_config(path: Path, fast_port: int, slow_port: int) -> None:
    """Two providers, one per mock, each serving one model name."""
    path.write_text(
        "[[providers]]\n"
        'name = "mock"\nkind = "openai"\n'
        f'base_url = "http://127.0.0.1:{fast_port}/v1"\n'
        f'api_key = "env:{EDGE_KEY_ENV}"\n'
        f'models = ["{FAST_MODEL}"]\n\n'
        "[[providers]]\n"
        'name = "mock50"\nkind = "openai"\n'
        f'base_url = "http://127.0.0.1:{slow_port}/v1"\n'
        f'api_key = "env:{EDGE_KEY_ENV}"\n'
        f'models = ["{SLOW_MODEL}"]\n'
    )


def check_answer(request: Request, stream: bool) -> dict[str, str]:
    """Send one concrete request; a 200 with JSON (or SSE to [DONE]) or BenchError."""
    status, headers, body = http_call(request.port, "POST", request.path, request.sample(),
                                      request.headers, timeout=30.0)
    if status != 200:
        raise BenchError(f"expected 200, got {status}: {body[:200]!r}")
    if stream:
        if b"data: [DONE]" not in body:
            raise BenchError(f"stream did not end with data: [DONE]: {body[-200:]!r}")
    else:
        try:
            json.loads(body)
        except ValueError as exc:
            raise BenchError(f"answer is not JSON ({exc}): {body[:200]!r}") from exc
    return headers


class Harness:
    """Owns the services, the requests per (scenario, target) and the measurements."""

    def __init__(self, args: argparse.Namespace, workdir: Path, logdir: Path,
                 use_wrk: bool) -> None:
        self.args = args
        self.workdir = workdir
        self.logdir = logdir
        self.use_wrk = use_wrk
        self.services: list[Service] = []
        self.by_target: dict[str, Service] = {}
        self.notices: list[str] = []
        self.versions: dict[str, str] = {}
        self.mock_ports: dict[str, int] = {}
        self.ports: dict[str, int] = {}
        self.rival_keys: dict[str, str] = {}
        self.cells: dict[tuple[str, str, int], Cell] = {}
        self.requests: dict[tuple[str, str], Request] = {}
        self.rate_rows: dict[str, RateRow] = {}

    # -- targets

    def target_names(self) -> list[str]:
        """Row keys in table order: direct, bare, edge-w1, edge-w2, litellm, portkey."""
        names: list[str] = []
        for kind in TARGET_KINDS:
            if kind not in self.args.targets:
                continue
            if kind == "edge":
                names += [f"edge-w{n}" for n in self.args.workers]
            else:
                names.append(kind)
        return names

    @staticmethod
    def label(target: str) -> str:
        """Human name of a row."""
        if target.startswith("edge-w"):
            return f"edge --workers {target[6:]}"
        return {"direct": "direct to mock", "bare": "bare Hypercorn-Trio app",
                "litellm": "LiteLLM proxy", "portkey": "Portkey gateway"}[target]

    @staticmethod
    def applies(scenario: str, target: str) -> bool:
        """Which targets a scenario loads: the hit path exists only in edge."""
        if target == "bare":
            return False  # measured once per concurrency, as the ceiling
        if scenario == "hit":
            return target.startswith("edge")
        return True

    # -- services

    def _launch(self, name: str, argv: list[str], port: int, env: dict[str, str],
                cwd: Path) -> Service:
        log = self.logdir / f"{name.replace(' ', '-')}.log"
        service = Service(name, argv, port, log, env, cwd)
        self.services.append(service)
        service.start()
        return service

    def start(self) -> None:
        """Start everything requested at once, then wait for each; skip what fails."""
        args = self.args
        targets = self.target_names()
        python = sys.executable
        pending: list[tuple[str, Service, str, tuple[tuple[str, str], ...]]] = []
        for mock, delay in (("mock", 0), ("mock50", SLOW_DELAY_MS)):
            port = free_port()
            service = self._launch(f"{mock} upstream", mock_command(python, port, delay),
                                   port, child_env({}), self.workdir)
            self.mock_ports[mock] = port
            pending.append((mock, service, "/v1/models", AUTH))
        for name, service, path, headers in pending:
            wait_ready(service, path, headers)  # no mock, no benchmark: let it raise
            self.by_target[name] = service
        if "direct" in targets:
            self.by_target["direct"] = self.by_target["mock"]

        waiting: list[tuple[str, Service, str]] = []
        if "bare" in targets and any(key in SCENARIOS for key in args.scenarios):
            answer = http_call(self.mock_ports["mock"], "POST", "/v1/chat/completions",
                               chat_body(FAST_MODEL), AUTH)[2]
            body_file = self.workdir / "bare-body.json"
            body_file.write_bytes(answer)
            port = free_port()
            argv = [python, "-m", "benchmarks.bare_app", "--port", str(port),
                    "--body-file", str(body_file)]
            waiting.append(("bare", self._launch("bare app", argv, port, child_env({}),
                                                 REPO_ROOT), "/"))
            self.ports["bare"] = port

        config = self.workdir / "edge.toml"
        _edge_config(config, self.mock_ports["mock"], self.mock_ports["mock50"])
        env = child_env({EDGE_KEY_ENV: "sk-bench", "METRICS_PORT": "0"})
        for variable in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
            env.pop(variable, None)  # only the two mock providers, whatever the caller set
        for target in (t for t in targets if t.startswith("edge-w")):
            port = free_port()
            argv = [python, "-m", "edge", "serve", "--config", str(config),
                    "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0",
                    "--workers", target[6:], "--log-level", args.edge_log_level]
            waiting.append((target, self._launch(target, argv, port, env, self.workdir),
                            "/health/ready"))
            self.ports[target] = port

        if "litellm" in targets:
            found = rivals.find_litellm(args.litellm)
            if found.path is None:
                self.notices.append(f"LiteLLM proxy: skipped, {found.missing}")
            else:
                port = free_port()
                launch = rivals.litellm_launch(found.path, port, {
                    FAST_MODEL: self.mock_ports["mock"], SLOW_MODEL: self.mock_ports["mock50"],
                }, self.workdir)
                self.versions["litellm"] = found.version
                self.rival_keys["litellm"] = launch.api_key
                waiting.append(("litellm", self._launch(
                    "litellm", launch.argv, port, child_env(launch.env), self.workdir),
                    launch.ready_path))
                self.ports["litellm"] = port
        if "portkey" in targets:
            found = rivals.find_portkey(args.portkey)
            if found.path is None:
                self.notices.append(f"Portkey gateway: skipped, {found.missing}")
            else:
                port = free_port()
                launch = rivals.portkey_launch(found.path, port)
                self.versions["portkey"] = found.version
                waiting.append(("portkey", self._launch(
                    "portkey", launch.argv, port, child_env(launch.env), self.workdir),
                    launch.ready_path))
                self.ports["portkey"] = port

        for target, service, path in waiting:
            try:
                wait_ready(service, path, timeout=120.0)
            except BenchError as exc:
                print(f"{service.name} failed to start: {exc}", file=sys.stderr)
                service.stop()
                self.notices.append(f"{self.label(target)}: skipped, did not start "
                                    f"({str(exc).splitlines()[0]})")
                continue
            self.by_target[target] = service
        if "direct" in targets:
            self.ports["direct"] = self.mock_ports["mock"]

    # -- requests

    def request_for(self, scenario: Scenario, target: str) -> Request:
        """The exact request ``target`` gets in ``scenario``."""
        unique = not scenario.cached and self.args.miss_kind == "unique"
        body = chat_body(scenario.model, stream=scenario.stream, unique=unique)
        slow = scenario.model == SLOW_MODEL
        mock_port = self.mock_ports["mock50" if slow else "mock"]
        if target == "direct":
            return Request(mock_port, body, AUTH, unique=unique)
        if target == "portkey":
            return Request(self.ports[target], body, rivals.portkey_headers(mock_port),
                           unique=unique)
        if target == "litellm":
            key = self.rival_keys["litellm"]
            return Request(self.ports[target], body, (("Authorization", f"Bearer {key}"),),
                           unique=unique)
        headers: tuple[tuple[str, str], ...] = AUTH
        if not scenario.cached and self.args.miss_kind == "no-store":
            headers = (*AUTH, ("Cache-Control", "no-store"))
        return Request(self.ports[target], body, headers, unique=unique)

    def prepare(self) -> None:
        """Build and validate every (scenario, target) request; make the cells."""
        targets = self.target_names()
        sweeping = any(key in SCENARIOS for key in self.args.scenarios)
        for conc in self.args.concurrency:
            if "bare" in targets and sweeping:
                self.cells[("ceiling", "bare", conc)] = Cell("ceiling", "bare",
                                                             self.label("bare"), conc)
        for key in (s for s in self.args.scenarios if s in SCENARIOS):
            scenario = SCENARIOS[key]
            for target in targets:
                if not self.applies(key, target):
                    continue
                reason, header = self._validate(scenario, target)
                for conc in self.args.concurrency:
                    self.cells[(key, target, conc)] = Cell(
                        key, target, self.label(target), conc, skipped=reason,
                        cache_header=header)
        if "bare" in targets and "bare" not in self.by_target:
            for cell in self.cells.values():
                if cell.target == "bare":
                    cell.skipped = "did not start"

    def _validate(self, scenario: Scenario, target: str) -> tuple[str | None, str | None]:
        if target not in self.by_target:
            return "not running (see the notices)", None
        request = self.request_for(scenario, target)
        try:
            headers = check_answer(request, scenario.stream)
            # Each edge worker has its own L1: ask until one answers from it (every
            # worker has then stored the answer, or soon will under load).
            for _ in range(8 if scenario.cached else 0):
                headers = check_answer(request, scenario.stream)
                if headers.get("x-edge-cache", "").startswith("hit"):
                    break
        except (BenchError, OSError) as exc:
            reason = f"answer check failed: {str(exc).splitlines()[0][:160]}"
            print(f"{self.label(target)} / {scenario.key}: {reason}", file=sys.stderr)
            return reason, None
        self.requests[(scenario.key, target)] = request
        return None, headers.get("x-edge-cache")

    # -- measurement

    def _alive(self, target: str) -> str | None:
        service = self.by_target.get("mock" if target == "direct" else target)
        if service is None:
            return "not running"
        code = service.exited()
        if code is not None:
            return f"exited with code {code} during the run"
        return None

    def _measure(self, request: Request, conc: int, name: str) -> LoadResult:
        args = self.args
        if args.warmup > 0:
            run_closed(request, args.warmup, conc, use_wrk=self.use_wrk, threads=args.threads,
                       processes=args.processes, workdir=self.workdir, name=name)
        return run_closed(request, args.duration, conc, use_wrk=self.use_wrk,
                          threads=args.threads, processes=args.processes,
                          workdir=self.workdir, name=name)

    def sweep(self) -> None:
        """Every live cell once per round, round by round, concurrency by concurrency."""
        rounds = self.args.rounds
        bare_request = Request(self.ports.get("bare", 0), chat_body(FAST_MODEL), AUTH)
        for round_no in range(1, rounds + 1):
            for conc in self.args.concurrency:
                for (scenario, target, c), cell in self.cells.items():
                    if c != conc or cell.skipped:
                        continue
                    dead = self._alive(target)
                    if dead:
                        cell.skipped = dead
                        continue
                    request = bare_request if target == "bare" else \
                        self.requests[(scenario, target)]
                    print(f"round {round_no}/{rounds}  c={conc:<4} {scenario:<8} "
                          f"{cell.label} ...", flush=True)
                    try:
                        cell.results.append(self._measure(request, conc,
                                                          f"{scenario}-{target}"))
                    except (BenchError, RuntimeError, OSError) as exc:
                        cell.skipped = f"load failed: {str(exc).splitlines()[0][:160]}"
                        print(f"  {cell.label} failed: {exc}", file=sys.stderr)
        for cell in self.cells.values():
            if cell.results and not cell.skipped:
                ordered = sorted(cell.results, key=lambda r: r.requests_per_s)
                cell.result = ordered[(len(ordered) - 1) // 2]
        for cell in self.cells.values():
            bare = self.cells.get(("ceiling", "bare", cell.concurrency))
            if cell.result and bare and bare.result and bare.result.requests_per_s:
                cell.ratio_to_bare = cell.result.requests_per_s / bare.result.requests_per_s

    def fixed_rate(self) -> None:
        """Open loop at ``--rate`` to the 50 ms mock: direct, then through each proxy."""
        args = self.args
        scenario = SCENARIOS["miss50"]
        for target in self.target_names():
            if target == "bare":
                continue
            row = RateRow(target, self.label(target))
            self.rate_rows[target] = row
            if target not in self.by_target:
                row.skipped = "not running (see the notices)"
                continue
            request = self.request_for(scenario, target)
            try:
                check_answer(request, False)
            except (BenchError, OSError) as exc:
                row.skipped = f"answer check failed: {str(exc).splitlines()[0][:160]}"
                continue
            self.requests[(RATE, target)] = request
        warm = min(3.0, args.rate_duration / 4)
        for round_no in range(1, args.rounds + 1):
            for target, row in self.rate_rows.items():
                if row.skipped:
                    continue
                dead = self._alive(target)
                if dead:
                    row.skipped = dead
                    continue
                request = self.requests[(RATE, target)]
                print(f"round {round_no}/{args.rounds}  rate={args.rate:g}/s  "
                      f"{row.label} ...", flush=True)
                spec = RateSpec(host="127.0.0.1", port=request.port, path=request.path,
                                flows=(Flow(request.body, request.headers),), rate=args.rate,
                                duration_s=args.rate_duration, max_connections=512)
                run_rate(dataclasses.replace(spec, duration_s=warm))
                row.results.append(run_rate(spec))
        for row in self.rate_rows.values():
            if row.results:
                # Median round by p99: the figure the target is strictest about.
                ordered = sorted(row.results, key=lambda r: r.p99_ms)
                row.result = ordered[(len(ordered) - 1) // 2]
        direct = self.rate_rows.get("direct")
        if direct and direct.result:
            for row in self.rate_rows.values():
                if row.result and row is not direct:
                    row.added_p50_ms = row.result.p50_ms - direct.result.p50_ms
                    row.added_p99_ms = row.result.p99_ms - direct.result.p99_ms

    # -- verdicts

    def verdicts(self, concurrency: int = 64) -> list[Verdict]:
        """The issue's targets, from this run: edge --workers 1 at c = ``concurrency``."""
        def result(scenario: str, target: str) -> LoadResult | None:
            found = self.cells.get((scenario, target, concurrency))
            return found.result if found else None

        out: list[Verdict] = []
        edge = "edge-w1"
        miss = result("miss", edge)
        bare = result("ceiling", "bare")
        for name, got, floor in (("hit path vs bare app", result("hit", edge), 0.80),
                                 ("miss path (0 ms mock) vs bare app", miss, 0.60)):
            wanted = f">= {floor:.0%} of bare req/s"
            if got is None or bare is None or not bare.requests_per_s:
                out.append(Verdict(name, wanted, "not measured", None))
                continue
            ratio = got.requests_per_s / bare.requests_per_s
            out.append(Verdict(name, wanted,
                               f"{ratio:.1%} ({got.requests_per_s:.0f} vs "
                               f"{bare.requests_per_s:.0f} req/s; gap "
                               f"{100 * (ratio - floor):+.1f} points)", ratio >= floor))
        for rival, factor in (("portkey", 1.0), ("litellm", 10.0)):
            other = result("miss", rival)
            label = self.label(rival)
            wanted = "more req/s than Portkey" if factor == 1.0 else "at least 10x its req/s"
            if miss is None or other is None:
                out.append(Verdict(f"miss path vs {label}", wanted, "not measured", None))
                out.append(Verdict(f"miss path p99 vs {label}", "lower p99", "not measured",
                                   None))
                continue
            ratio = miss.requests_per_s / max(other.requests_per_s, 1e-9)
            out.append(Verdict(f"miss path vs {label}", wanted,
                               f"{ratio:.2f}x ({miss.requests_per_s:.0f} vs "
                               f"{other.requests_per_s:.0f} req/s)",
                               ratio >= factor if factor > 1 else ratio > factor))
            out.append(Verdict(f"miss path p99 vs {label}", "lower p99",
                               f"{miss.p99_ms:.1f} vs {other.p99_ms:.1f} ms",
                               miss.p99_ms < other.p99_ms))
        row = self.rate_rows.get(edge)
        for name, limit, added in (
                ("50 ms mock at rate: added p50", 2.0, row.added_p50_ms if row else None),
                ("50 ms mock at rate: added p99", 10.0, row.added_p99_ms if row else None)):
            wanted = f"<= {limit:g} ms over direct"
            if added is None:
                out.append(Verdict(name, wanted, "not measured", None))
            else:
                out.append(Verdict(name, wanted, f"{added:+.2f} ms", added <= limit))
        return out


def _fmt(value: float | None, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def _align(lines: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for n, line in enumerate(lines):
        cells = [line[0].ljust(widths[0]), line[1].ljust(widths[1])]
        cells += [c.rjust(w) for c, w in zip(line[2:], widths[2:], strict=True)]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def render(h: Harness) -> str:
    """The sweep table, the fixed-rate table, the notices and the verdicts."""
    lines: list[tuple[str, ...]] = [
        ("scenario", "target", "c", "req/s", "p50 ms", "p99 ms", "errors", "vs bare")]
    skipped: dict[tuple[str, str], str] = {}
    order = ["ceiling", *SCENARIOS]
    for cell in sorted(h.cells.values(), key=lambda c: (
            order.index(c.scenario), h.target_names().index(c.target), c.concurrency)):
        if cell.skipped:
            skipped[(cell.scenario, cell.label)] = cell.skipped
            continue
        res = cell.result
        if res is None:
            continue
        ratio = f"{cell.ratio_to_bare:.2f}x" if cell.ratio_to_bare is not None else "-"
        lines.append((cell.scenario, cell.label, str(cell.concurrency),
                      _fmt(res.requests_per_s, ".0f"), _fmt(res.p50_ms, ".1f"),
                      _fmt(res.p99_ms, ".1f"), str(res.errors), ratio))
    out = _align(lines) if len(lines) > 1 else ["(no cell measured)"]
    headers = {(c.scenario, c.label): c.cache_header for c in h.cells.values() if c.cache_header}
    out += [f"  {s} / {label}: x-edge-cache: {v}" for (s, label), v in headers.items()]
    out += [f"  {s} / {label}: skipped, {why}" for (s, label), why in skipped.items()]
    if h.args.rounds > 1:
        for cell in h.cells.values():
            if cell.result:
                out.append(f"  {cell.scenario} / {cell.label} / c={cell.concurrency}: req/s "
                           "per round " + ", ".join(f"{r.requests_per_s:.0f}"
                                                    for r in cell.results))
    if h.rate_rows:
        out += ["", f"Fixed rate: {h.args.rate:g} requests/s, open loop, 50 ms mock, "
                    f"{h.args.rate_duration:g} s per run (latency from each request's due time)"]
        rate_lines: list[tuple[str, ...]] = [
            ("target", "", "req/s", "p50 ms", "p99 ms", "+p50 ms", "+p99 ms", "errors", "late")]
        for row in h.rate_rows.values():
            if row.result is None:
                continue
            res = row.result
            rate_lines.append((row.label, "", _fmt(res.requests_per_s, ".1f"),
                               _fmt(res.p50_ms, ".2f"), _fmt(res.p99_ms, ".2f"),
                               _fmt(row.added_p50_ms, "+.2f"), _fmt(row.added_p99_ms, "+.2f"),
                               str(res.errors), str(res.late)))
        out += _align(rate_lines) if len(rate_lines) > 1 else ["(no target measured)"]
        out += [f"  {row.label}: skipped, {row.skipped}"
                for row in h.rate_rows.values() if row.skipped]
        if h.args.rounds > 1:
            out += [f"  {row.label}: p50/p99 per round " + ", ".join(
                f"{r.p50_ms:.2f}/{r.p99_ms:.2f}" for r in row.results)
                for row in h.rate_rows.values() if row.results]
    out += [f"  {notice}" for notice in h.notices]
    return "\n".join(out)


def render_verdicts(verdicts: Sequence[Verdict]) -> str:
    """The issue's targets as a short list."""
    word = {True: "MET", False: "NOT MET", None: "not measured"}
    return "\n".join(f"  [{word[v.met]}] {v.name}: wanted {v.wanted}; measured {v.measured}"
                     for v in verdicts)


def write_outputs(h: Harness, meta: dict[str, Any], verdicts: Sequence[Verdict],
                  out_dir: Path) -> list[Path]:
    """harness.csv, harness.json and latency.png; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    csv_path = out_dir / "harness.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["scenario", "target", "concurrency", "requests_per_s", "p50_ms",
                         "p99_ms", "errors", "ratio_to_bare", "rounds_requests_per_s",
                         "x_edge_cache", "skipped"])
        for cell in h.cells.values():
            res = cell.result
            writer.writerow([
                cell.scenario, cell.target, cell.concurrency,
                f"{res.requests_per_s:.1f}" if res else "", f"{res.p50_ms:.3f}" if res else "",
                f"{res.p99_ms:.3f}" if res else "", res.errors if res else "",
                f"{cell.ratio_to_bare:.4f}" if cell.ratio_to_bare is not None else "",
                " ".join(f"{r.requests_per_s:.1f}" for r in cell.results),
                cell.cache_header or "", cell.skipped or "",
            ])
        for row in h.rate_rows.values():
            res = row.result
            writer.writerow([
                f"{RATE}{h.args.rate:g}", row.target, "",
                f"{res.requests_per_s:.1f}" if res else "", f"{res.p50_ms:.3f}" if res else "",
                f"{res.p99_ms:.3f}" if res else "", res.errors if res else "", "",
                "", "", row.skipped or "",
            ])
    written.append(csv_path)
    json_path = out_dir / "harness.json"
    json_path.write_text(json.dumps({
        **meta,
        "cells": [cell.to_dict() for cell in h.cells.values()],
        "fixed_rate": [row.to_dict() for row in h.rate_rows.values()],
        "targets": [v.to_dict() for v in verdicts],
        "notices": h.notices,
    }, indent=1) + "\n")
    written.append(json_path)
    panels: dict[str, dict[str, list[tuple[int, float, float, float]]]] = {}
    bare = [(c.concurrency, c.result.requests_per_s, c.result.p50_ms, c.result.p99_ms)
            for c in h.cells.values() if c.target == "bare" and c.result]
    for key in SCENARIOS:
        series: dict[str, list[tuple[int, float, float, float]]] = {}
        for target in h.target_names():
            points = sorted(
                (c.concurrency, c.result.requests_per_s, c.result.p50_ms, c.result.p99_ms)
                for c in h.cells.values()
                if c.scenario == key and c.target == target and c.result)
            if target == "bare":
                points = sorted(bare)
            if points:
                series[h.label(target)] = points
        if any(c.scenario == key and c.result for c in h.cells.values()):
            panels[SCENARIOS[key].label] = series
    png = out_dir / "latency.png"
    title = (f"edge harness, {meta['date'][:16].replace('T', ' ')} UTC, "
             f"{meta['load_tool']}, {meta['cpu_count']} CPUs shared")
    if charts.latency_chart(panels, png, title):
        written.append(png)
    elif not charts.available():
        print("note: matplotlib is not installed, no PNG drawn (pip install matplotlib)",
              file=sys.stderr)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Run the harness; exit 0 when it ran (skipped rivals included), 2 on a harness error."""
    args = parse_args(argv)
    command = command_line("benchmarks.harness", argv)
    picked = pick_tool(args.tool, args.threads, args.processes)
    if picked is None:
        print("error: --tool wrk but wrk is not on PATH", file=sys.stderr)
        return 2
    wrk, tool = picked
    here = probe_interpreter(sys.executable)
    if not (here.can_run_edge and here.can_run_mock and here.can_run_bare):
        print(f"error: {sys.executable} cannot run edge, the mock or the bare app: "
              f"{here.problem}", file=sys.stderr)
        return 2
    started = datetime.now(UTC)
    load_before = os.getloadavg()
    print(f"edge benchmark harness, {started:%Y-%m-%d %H:%M} UTC")
    print(f"command:      {command}")
    print(f"interpreter:  {sys.executable} ({here.version}), edge fastpath: {here.fastpath}, "
          f"on {platform.platform()}")
    print(f"load:         {tool} closed loop, c = {','.join(map(str, args.concurrency))}, "
          f"{args.duration:g} s per cell after {args.warmup:g} s warm-up, {args.rounds} "
          f"round(s); fixed rate by benchmarks.loadgen (open loop)")
    print(f"scenarios:    {', '.join(args.scenarios)}; misses by {args.miss_kind}")
    print(f"CPUs:         {os.cpu_count()} (load average {load_before[0]:.2f} "
          f"{load_before[1]:.2f} {load_before[2]:.2f} at start)")
    print(flush=True)

    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edge-harness-") as tmp:
        workdir = Path(tmp)
        logdir = args.log_dir or workdir
        logdir.mkdir(parents=True, exist_ok=True)
        harness = Harness(args, workdir, logdir, wrk is not None)
        with services_stopped(harness.services):
            harness.start()
            for key, version in harness.versions.items():
                print(f"{harness.label(key)}: version {version}")
            harness.prepare()
            harness.sweep()
            if RATE in args.scenarios:
                harness.fixed_rate()
    load_after = os.getloadavg()
    verdicts = harness.verdicts()
    meta = {
        "command": command,
        "date": started.isoformat(timespec="seconds"),
        "interpreter": {"path": sys.executable, "version": here.version,
                        "fastpath": here.fastpath},
        "platform": platform.platform(),
        "load_tool": tool,
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "rounds": args.rounds,
        "rate_per_s": args.rate,
        "rate_duration_s": args.rate_duration,
        "miss_kind": args.miss_kind,
        "edge_workers": args.workers,
        "rival_versions": harness.versions,
        "cpu_count": os.cpu_count(),
        "load_average_start": load_before,
        "load_average_end": load_after,
        "elapsed_s": round(time.monotonic() - t0, 1),
    }
    print()
    print(render(harness))
    print()
    print("Targets (edge --workers 1, c = 64, ratios within this run):")
    print(render_verdicts(verdicts))
    print(f"\nload average at the end: {load_after[0]:.2f} {load_after[1]:.2f} "
          f"{load_after[2]:.2f}; elapsed {meta['elapsed_s']:.0f} s")
    for path in write_outputs(harness, meta, verdicts, args.out_dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run_script(main)
