"""The yardstick: what edge costs per request, beside baselines measured in the same run.

One command, ``python -m benchmarks.overhead``, starts on free loopback ports the mock
upstream, edge pointed at it and the bare Hypercorn-Trio app, waits until each is
ready, checks each target answers 200 with a JSON body, then drives the same closed-loop
load at each in turn (wrk with a Lua script when installed, else benchmarks.loadgen)
and prints one table:

    (a) direct to the mock upstream       what the upstream alone sustains
    (b) edge, miss path                   Cache-Control: no-store, every request goes upstream
    (c) bare Hypercorn-Trio app           the ceiling for any app on this server stack
    (d) edge, hit path                    the same body again, answered from the cache
    (e), (f) the same as (b), (d) with governance on: 10 client keys with budgets, the
             caller one of them, and a SQLite store taking a ledger row per request
    (g), (h) the same question as (b), (d) through POST /v1/responses, on (b)'s edge

(g) and (h) go to (b)'s edge, whose provider has `responses_api = false`, so a miss is
translated through the hub to the mock's chat endpoint, and every answer, hit or miss,
is kept in the (memory) response store as any stored response is (SPEC §8 targets: a
hit costs at most 10 % more than (d), a translated miss at most 15 % more than (b)).

Machines are noisy, so absolute figures mean little across runs; the ratio to the bare
app, measured minutes apart on the same box, is the figure to compare. The harness
itself uses only the standard library (and the shared benchmarks.services, .drivers and
.loadgen), so it runs under any interpreter; ``--python`` picks the interpreter for
edge and the bare app, while the mock upstream and the load always use the one running
this script, so the baselines do not move when the interpreter under test changes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.drivers import (
    CHAT_BODY,
    CHAT_PATH,
    CLIENT_KEY,
    USER_PROMPT,
    Request,
    pick_tool,
    run_closed,
)
from benchmarks.loadgen import LoadResult
from benchmarks.services import (
    REPO_ROOT,
    BenchError,
    Interpreter,
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

__all__ = ["BenchError", "Row", "Target", "main", "render_table", "validate"]


@dataclass(frozen=True, slots=True)
class Target:
    """One row of the table: where the load goes and with which headers."""

    key: str
    label: str
    port: int
    headers: tuple[tuple[str, str], ...]
    path: str = CHAT_PATH
    body: bytes = CHAT_BODY


@dataclass(slots=True)
class Row:
    """A measured (or skipped) target."""

    key: str
    label: str
    result: LoadResult | None = None
    skipped: str | None = None
    ratio_to_bare: float | None = None
    cache_header: str | None = None
    rounds: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for --json."""
        return {
            "target": self.key,
            "label": self.label,
            "skipped": self.skipped,
            "ratio_to_bare": self.ratio_to_bare,
            "x_edge_cache": self.cache_header,
            "rounds_requests_per_s": self.rounds,
            **(self.result.to_dict() if self.result else {}),
        }


def validate(target: Target) -> tuple[bytes, dict[str, str]]:
    """Check the target answers our request with 200 and a JSON body; return body, headers."""
    status, headers, body = http_call(target.port, "POST", target.path, target.body,
                                      target.headers)
    if status != 200:
        raise BenchError(f"{target.label}: expected 200, got {status}: {body[:300]!r}")
    try:
        json.loads(body)
    except ValueError as exc:
        raise BenchError(f"{target.label}: answer is not JSON ({exc}): {body[:300]!r}") from exc
    return body, headers


def run_target(
    target: Target, args: argparse.Namespace, use_wrk: bool, workdir: Path
) -> LoadResult:
    """Warm up (result thrown away), then measure."""
    request = Request(port=target.port, body=target.body, headers=target.headers,
                      path=target.path)

    def once(duration: float) -> LoadResult:
        return run_closed(request, duration, args.connections, use_wrk=use_wrk,
                          threads=args.threads, processes=args.processes, workdir=workdir,
                          name=target.key)

    if args.warmup > 0:
        once(args.warmup)
    return once(args.duration)


def _fmt(value: float | None, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def render_table(rows: Sequence[Row]) -> str:
    """The table as aligned plain text (also valid inside a Markdown code block)."""
    header = ("target", "req/s", "p50 ms", "p99 ms", "errors", "vs bare", "load CPU")
    lines = [header]
    for row in rows:
        res = row.result
        if res is None:
            lines.append((row.label, "skipped", "", "", "", "", ""))
            continue
        ratio = f"{row.ratio_to_bare:.2f}x" if row.ratio_to_bare is not None else "-"
        load_cpu = f"{100 * res.client_cpu_s / res.duration_s:.0f}%" if res.duration_s else "-"
        lines.append((row.label, _fmt(res.requests_per_s, ".0f"), _fmt(res.p50_ms, ".1f"),
                      _fmt(res.p99_ms, ".1f"), str(res.errors), ratio, load_cpu))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        cells = [line[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True)]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    notes = [f"  {row.label}: skipped, {row.skipped}" for row in rows if row.skipped]
    notes += [f"  {row.label}: x-edge-cache: {row.cache_header}"
              for row in rows if row.cache_header]
    notes += [f"  {row.label}: req/s per round " + ", ".join(f"{v:.0f}" for v in row.rounds)
              for row in rows if len(row.rounds) > 1]
    notes.append("  load CPU: the load generator's own CPU time as a share of one core")
    return "\n".join(out + notes)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command-line flags."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.overhead", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per target")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds, discarded")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--processes", type=int, default=1, help="loadgen processes")
    parser.add_argument("--tool", choices=("auto", "wrk", "loadgen"), default="auto")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter for edge and the bare app (default: this one)")
    parser.add_argument("--targets", default="abcd",
                        help="subset of a-h to run (e, f: governance on; g, h: the "
                             "Responses API; neither by default)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every target this many times, interleaved; report the "
                             "median round")
    parser.add_argument("--workers", type=int, default=1, help="edge serve --workers")
    parser.add_argument("--edge-log-level", default="info",
                        help="edge serve --log-level (default: edge's own, one line a request)")
    parser.add_argument("--mock-delay-ms", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--log-dir", type=Path,
                        help="keep the services' output here (default: a scratch directory)")
    args = parser.parse_args(argv)
    if set(args.targets) - set(LABELS) or not args.targets:
        parser.error("--targets takes letters from 'abcdefgh'")
    if args.duration <= 0 or args.connections < 1 or args.rounds < 1:
        parser.error("--duration, --connections and --rounds must be positive")
    return args


LABELS = {
    "a": "(a) direct to mock upstream",
    "b": "(b) edge, miss (no-store)",
    "c": "(c) bare Hypercorn-Trio app",
    "d": "(d) edge, hit (same body)",
    "e": "(e) edge+governance, miss",
    "f": "(f) edge+governance, hit",
    "g": "(g) edge, Responses miss (translated)",
    "h": "(h) edge, Responses hit",
}
RESPONSES_PATH = "/v1/responses"
# (b)'s question in the Responses format: the same system text, prompt and limits
RESPONSES_BODY = json.dumps({
    "model": "gpt-4o-mini", "instructions": "You are a concise assistant.",
    "input": USER_PROMPT, "max_output_tokens": 64, "temperature": 0,
}, separators=(",", ":")).encode()
# The rows that do not send (b)'s request, by key.
REQUESTS = {"g": (RESPONSES_PATH, RESPONSES_BODY), "h": (RESPONSES_PATH, RESPONSES_BODY)}
# (b)'s edge: the built-in provider's settings, but translating the Responses API (one
# made from OPENAI_API_KEY passes it through), so (g) measures the hub as (b) does not.
EDGE_CONFIG = """
[[providers]]
name = "openai"
kind = "openai"
base_url = "{url}"
api_key = "env:OPENAI_API_KEY"
models = ["*"]
responses_api = false
"""
GOVERNED_KEYS = 10
GOVERNED_CALLER = "sk-bench-team-3"


def governed_config(mock_port: int, workdir: Path) -> str:
    """(e), (f)'s edge: 10 keys with budgets no run can spend, and a SQLite store."""
    keys = ",\n  ".join(
        f'{{ name = "team-{i}", key = "sk-bench-team-{i}", budget_usd = 1000000.0, '
        f'budget_period = "month" }}' for i in range(GOVERNED_KEYS))
    return (f'[[providers]]\nname = "openai"\nkind = "openai"\n'
            f'base_url = "http://127.0.0.1:{mock_port}/v1"\napi_key = "sk-bench"\n'
            f'models = ["*"]\n\n[auth]\nkeys = [\n  {keys}\n]\n\n'
            f'[store]\nurl = "sqlite:///{workdir / "governed.db"}"\n')
AUTH = (("Authorization", f"Bearer {CLIENT_KEY}"),)


class Harness:
    """Starts the services a run needs, validates and loads the targets, owns the rows.

    A part that cannot start, validate or survive the load turns its rows into
    "skipped, because ..." and the rest of the run goes on.
    """

    def __init__(self, args: argparse.Namespace, python: str, interp: Interpreter,
                 here: Interpreter, workdir: Path, logdir: Path, use_wrk: bool) -> None:
        self.args = args
        self.python = python
        self.interp = interp
        self.here = here
        self.workdir = workdir
        self.logdir = logdir
        self.use_wrk = use_wrk
        self.rows = {key: Row(key, LABELS[key]) for key in LABELS if key in args.targets}
        self.targets: dict[str, Target] = {}
        self.services: list[Service] = []
        self.owner: dict[str, Service] = {}

    def skip(self, keys: set[str], reason: str) -> None:
        """Mark rows skipped (the first reason wins) and forget their targets."""
        for key in sorted(keys & set(self.rows)):
            self.rows[key].skipped = self.rows[key].skipped or reason
        for key in keys:
            self.targets.pop(key, None)

    def _launch(self, name: str, argv: list[str], port: int, env: dict[str, str],
                cwd: Path, keys: dict[str, tuple[tuple[str, str], ...]]) -> Service:
        service = Service(name, argv, port, self.logdir / f"{name.split()[0]}.log", env, cwd)
        self.services.append(service)
        service.start()
        for key, headers in keys.items():
            path, body = REQUESTS.get(key, (CHAT_PATH, CHAT_BODY))
            self.targets[key] = Target(key, LABELS[key], port, headers, path, body)
            self.owner[key] = service
        return service

    def bring_up(self, service: Service, ready_path: str,
                 headers: Sequence[tuple[str, str]] = ()) -> bool:
        """Wait for readiness and validate its targets; on failure stop it, skip its rows."""
        keys = {key for key, owner in self.owner.items() if owner is service}
        try:
            wait_ready(service, ready_path, headers)
            for key in sorted(keys & set(self.rows)):
                # Twice: the second answer shows what the load will see (a hit, for (d)).
                validate(self.targets[key])
                self.rows[key].cache_header = validate(self.targets[key])[1].get("x-edge-cache")
        except (BenchError, OSError) as exc:
            print(f"{service.name} failed: {exc}", file=sys.stderr)
            service.stop()
            self.skip(keys, f"{service.name} failed: {str(exc).splitlines()[0]}")
            return False
        return True

    def start(self) -> None:
        """Mock first (its answer sizes the bare app), then the bare app and edge together."""
        args = self.args
        mock: Service | None = None
        if set(self.rows) & set("abdefgh"):
            if self.here.can_run_mock:
                port = free_port()
                mock = self._launch(
                    "mock upstream", mock_command(sys.executable, port, args.mock_delay_ms),
                    port, child_env({}), self.workdir, {"a": AUTH},
                )
                if not self.bring_up(mock, "/v1/models", AUTH):
                    mock = None
            else:
                self.skip(set("abdefgh"), f"{sys.executable} cannot run the mock upstream "
                                      f"({self.here.problem})")
        mock_body = validate(self.targets["a"])[0] if "a" in self.targets else None

        pending: list[tuple[Service, str]] = []
        if "c" in self.rows and not self.interp.can_run_bare:
            self.skip({"c"}, f"{self.python} cannot import trio/hypercorn "
                             f"({self.interp.problem})")
        elif "c" in self.rows:
            port = free_port()
            argv = [self.python, "-m", "benchmarks.bare_app", "--port", str(port)]
            if mock_body is not None:
                # Answer exactly the bytes the mock answers, so only the server stack differs.
                (self.workdir / "body.json").write_bytes(mock_body)
                argv += ["--body-file", str(self.workdir / "body.json")]
            bare = self._launch("bare app", argv, port, child_env({}), REPO_ROOT, {"c": AUTH})
            pending.append((bare, "/"))

        edge_keys = set(self.rows) & {"b", "d", "g", "h"}
        if edge_keys and mock is None:
            self.skip(edge_keys, "no mock upstream to point edge at")
        elif edge_keys and not self.interp.can_run_edge:
            self.skip(edge_keys, f"{self.python} cannot import edge.cli ({self.interp.problem})")
        elif edge_keys and mock is not None:
            port = free_port()
            env = child_env({"OPENAI_API_KEY": "sk-bench", "METRICS_PORT": "0"})
            config = self.workdir / "edge.toml"
            config.write_text(EDGE_CONFIG.format(url=f"http://127.0.0.1:{mock.port}/v1"))
            argv = [self.python, "-m", "edge", "serve", "--host", "127.0.0.1",
                    "--port", str(port), "--metrics-port", "0", "--workers", str(args.workers),
                    "--log-level", args.edge_log_level, "--config", str(config)]
            # cwd is the scratch directory and the config is named, so nothing else is read.
            edge = self._launch("edge", argv, port, env, self.workdir, {
                "b": (*AUTH, ("Cache-Control", "no-store")),
                "d": AUTH,
                "g": (*AUTH, ("Cache-Control", "no-store")),
                "h": AUTH,
            })
            pending.append((edge, "/health/ready"))

        governed_keys = set(self.rows) & {"e", "f"}
        if governed_keys and mock is None:
            self.skip(governed_keys, "no mock upstream to point edge at")
        elif governed_keys and not self.interp.can_run_edge:
            self.skip(governed_keys,
                      f"{self.python} cannot import edge.cli ({self.interp.problem})")
        elif governed_keys and mock is not None:
            port = free_port()
            config = self.workdir / "governed.toml"
            config.write_text(governed_config(mock.port, self.workdir))
            argv = [self.python, "-m", "edge", "serve", "--config", str(config),
                    "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0",
                    "--workers", str(args.workers), "--log-level", args.edge_log_level]
            caller = (("Authorization", f"Bearer {GOVERNED_CALLER}"),)
            governed = self._launch("edge+governance", argv, port, child_env({}),
                                    self.workdir, {"e": (*caller, ("Cache-Control", "no-store")),
                                                   "f": caller})
            pending.append((governed, "/health/ready"))

        for service, path in pending:
            self.bring_up(service, path)

    def _fail(self, key: str, exc: BenchError) -> None:
        """A target that breaks under load is reported and dropped, not fatal."""
        row = self.rows[key]
        service = self.owner.get(key)
        code = service.exited() if service else None
        died = service is not None and code is not None
        detail = f"{service.name} exited with code {code}; its output:\n{service.log_tail()}" \
            if service is not None and died else ""
        print(f"{row.label} failed: {exc}\n{detail}", file=sys.stderr)
        self.skip({key}, f"load failed: {str(exc).splitlines()[0]}" + (
            f" ({service.name} exited with code {code})" if service is not None and died else ""))

    def measure(self) -> None:
        """Every live target once per round, interleaved; keep the median round."""
        measured: dict[str, list[LoadResult]] = {key: [] for key in self.rows}
        rounds = self.args.rounds
        for round_no in range(1, rounds + 1):
            for key, row in self.rows.items():
                if key not in self.targets:
                    continue
                print(f"round {round_no}/{rounds}: measuring {row.label} ...", flush=True)
                try:
                    measured[key].append(
                        run_target(self.targets[key], self.args, self.use_wrk, self.workdir))
                except BenchError as exc:
                    self._fail(key, exc)
        for key, results in measured.items():
            if results and key in self.targets:
                # The median round as a whole, so its latencies belong to its throughput.
                ordered = sorted(results, key=lambda r: r.requests_per_s)
                self.rows[key].result = ordered[(len(ordered) - 1) // 2]
                self.rows[key].rounds = [r.requests_per_s for r in results]
        bare = self.rows.get("c")
        bare_rps = bare.result.requests_per_s if bare and bare.result else None
        for row in self.rows.values():
            if row.result is not None and bare_rps:
                row.ratio_to_bare = row.result.requests_per_s / bare_rps


def main(argv: Sequence[str] | None = None) -> int:
    """Run the yardstick; exit 0 when every requested target was measured, else 1."""
    args = parse_args(argv)
    command = command_line("benchmarks.overhead", argv)
    picked = pick_tool(args.tool, args.threads, args.processes)
    if picked is None:
        print("error: --tool wrk but wrk is not on PATH", file=sys.stderr)
        return 2
    wrk, tool = picked
    python = shutil.which(args.python) or args.python
    interp = probe_interpreter(python)
    here = interp if python == sys.executable else probe_interpreter(sys.executable)
    started_at = datetime.now(UTC)

    print(f"edge overhead yardstick, {started_at:%Y-%m-%d %H:%M} UTC")
    print(f"command:      {command}")
    print(f"edge/bare on: {interp.path} ({interp.version}), edge fastpath: {interp.fastpath}")
    print(f"mock + load:  {sys.executable} ({here.version}) on {platform.platform()}")
    print(f"load:         {tool}, {args.connections} connections, "
          f"{args.duration:g} s per target after {args.warmup:g} s warm-up, "
          f"{args.rounds} round(s)")
    print(f"CPUs:         {os.cpu_count()} (load average {os.getloadavg()[0]:.2f} at start)")
    if interp.problem:
        print(f"note:         {interp.path}: {interp.problem}")
    print(flush=True)

    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        workdir = Path(tmp)
        logdir = args.log_dir or workdir
        logdir.mkdir(parents=True, exist_ok=True)
        harness = Harness(args, python, interp, here, workdir, logdir, wrk is not None)
        with services_stopped(harness.services):
            harness.start()
            harness.measure()
    rows = list(harness.rows.values())

    print()
    print(render_table(rows))
    for row in rows:
        if row.result is not None and row.result.error_kinds:
            print(f"  {row.label}: errors by kind {row.result.error_kinds}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "command": command,
            "date": started_at.isoformat(timespec="seconds"),
            "interpreter": {"path": interp.path, "version": interp.version,
                            "fastpath": interp.fastpath, "problem": interp.problem},
            "harness_interpreter": {"path": sys.executable, "version": here.version},
            "load_tool": tool,
            "connections": args.connections,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "cpu_count": os.cpu_count(),
            "rows": [row.to_dict() for row in rows],
        }, indent=2) + "\n")
    return 0 if all(row.result is not None for row in rows) else 1


if __name__ == "__main__":
    run_script(main)
