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

Machines are noisy, so absolute figures mean little across runs; the ratio to the bare
app, measured minutes apart on the same box, is the figure to compare. The harness
itself uses only the standard library (plus benchmarks.loadgen), so it runs under any
interpreter; ``--python`` picks the interpreter for edge and the bare app, while the
mock upstream and the load always use the one running this script, so the baselines do
not move when the interpreter under test changes.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks.loadgen import LoadResult, LoadSpec, run_load

REPO_ROOT = Path(__file__).resolve().parent.parent
CHAT_PATH = "/v1/chat/completions"
CLIENT_KEY = "x"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0

# A small, ordinary chat completion request; the same bytes go to every target.
CHAT_BODY: bytes = json.dumps(
    {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": "In one sentence, why do proxies cache responses?"},
        ],
        "max_tokens": 64,
        "temperature": 0,
    },
    separators=(",", ":"),
).encode()

_WRK_SCRIPT = """\
wrk.method = "POST"
wrk.body = [==[{body}]==]
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "EDGE-BENCH %d %d %d %d %d %d %d %d %d\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


class BenchError(RuntimeError):
    """A part of the harness could not start or answer; the message says which."""


@dataclass(frozen=True, slots=True)
class Target:
    """One row of the table: where the load goes and with which headers."""

    key: str
    label: str
    port: int
    headers: tuple[tuple[str, str], ...]


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


@dataclass(slots=True)
class Interpreter:
    """What ``--python`` can run, found by asking it rather than assuming."""

    path: str
    version: str = "unknown"
    can_run_bare: bool = False
    can_run_mock: bool = False
    can_run_edge: bool = False
    fastpath: str = "n/a"
    problem: str | None = None


@dataclass(slots=True)
class Service:
    """A child process we started, its port and where its output goes."""

    name: str
    argv: list[str]
    port: int
    log_path: Path
    env: dict[str, str]
    cwd: Path
    process: subprocess.Popen[bytes] | None = None
    _log: Any = field(default=None, repr=False)

    def start(self) -> None:
        """Start in its own session so stopping it reaches its worker processes too."""
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env=self.env, cwd=self.cwd, start_new_session=True,
        )

    def exited(self) -> int | None:
        """The exit code if the process has already ended."""
        return None if self.process is None else self.process.poll()

    def log_tail(self, lines: int = 15) -> str:
        """The end of its output, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM to its process group, wait, SIGKILL on timeout; safe to call twice."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc is not None:
            # Workers a master left behind share its process group (our new session).
            _signal_group(proc.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def free_port() -> int:
    """A loopback port that was free a moment ago (the child binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_call(
    port: int, method: str, path: str, body: bytes | None = None,
    headers: Sequence[tuple[str, str]] = (), timeout: float = 10.0,
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection; returns status, lower-cased headers, body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        all_headers = dict(headers)
        if body is not None:
            all_headers.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=body, headers=all_headers)
        response = conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        conn.close()


def wait_ready(
    service: Service, path: str, headers: Sequence[tuple[str, str]] = (),
    timeout: float = READY_TIMEOUT_S,
) -> None:
    """Poll ``GET path`` until 200, the deadline passes, or the process dies."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        code = service.exited()
        if code is not None:
            raise BenchError(
                f"{service.name} exited with code {code} before it was ready; its output:\n"
                f"{service.log_tail()}"
            )
        try:
            status, _, _ = http_call(service.port, "GET", path, headers=headers, timeout=2.0)
            if status == 200:
                return
            last = f"HTTP {status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise BenchError(
        f"{service.name} not ready after {timeout:.0f}s on GET {path} ({last}); its output:\n"
        f"{service.log_tail()}"
    )


def validate(target: Target) -> tuple[bytes, dict[str, str]]:
    """Check the target answers our request with 200 and a JSON body; return body, headers."""
    status, headers, body = http_call(target.port, "POST", CHAT_PATH, CHAT_BODY, target.headers)
    if status != 200:
        raise BenchError(f"{target.label}: expected 200, got {status}: {body[:300]!r}")
    try:
        json.loads(body)
    except ValueError as exc:
        raise BenchError(f"{target.label}: answer is not JSON ({exc}): {body[:300]!r}") from exc
    return body, headers


def probe_interpreter(python: str) -> Interpreter:
    """Ask ``python`` what it can import, from the repository root, without side effects."""
    info = Interpreter(path=python)
    code = (
        "import importlib.util as u, json, platform, sys\n"
        "def ok(*names):\n"
        "    try:\n"
        "        for n in names: __import__(n)\n"
        "        return None\n"
        "    except Exception as e:\n"
        "        return f'{type(e).__name__}: {e}'\n"
        "bare = ok('trio', 'hypercorn.trio')\n"
        "mock = bare or ok('edge.mock_upstream')\n"
        "edge = bare or ok('edge.cli')\n"
        "fast = 'n/a'\n"
        "if edge is None:\n"
        "    fast = 'compiled' if ok('edge._fastpath') is None else 'pure Python'\n"
        "print(json.dumps({'version': platform.python_implementation() + ' ' + "
        "sys.version.split()[0], 'bare': bare, 'mock': mock, 'edge': edge, 'fastpath': fast}))\n"
    )
    try:
        done = subprocess.run(
            [python, "-c", code], capture_output=True, text=True, timeout=60,
            cwd=REPO_ROOT, env=_child_env({}),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        info.problem = f"cannot run {python}: {exc}"
        return info
    if done.returncode != 0:
        info.problem = f"{python} failed: {done.stderr.strip()[-300:]}"
        return info
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    info.version = facts["version"]
    info.can_run_bare = facts["bare"] is None
    info.can_run_mock = facts["mock"] is None
    info.can_run_edge = facts["edge"] is None
    info.fastpath = facts["fastpath"]
    info.problem = facts["bare"] or facts["edge"] or facts["mock"]
    return info


def _child_env(overrides: dict[str, str]) -> dict[str, str]:
    """Our environment minus anything that would make a run depend on the caller's setup."""
    env = {
        k: v for k, v in os.environ.items()
        if k not in {"EDGE_CONFIG", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "EDGE_API_KEYS",
                     "ENABLE_L2_CACHE", "REDIS_URL", "ENABLE_TRACING", "PORT", "HOST"}
    }
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


def mock_command(python: str, port: int, delay_ms: int) -> list[str]:
    """``edge mock-upstream`` when the CLI exists, else the module's own entry point."""
    probe = subprocess.run(
        [python, "-c", "import edge.cli"], capture_output=True, cwd=REPO_ROOT,
        env=_child_env({}), timeout=60,
    )
    if probe.returncode == 0:
        return [python, "-m", "edge", "mock-upstream", "--host", "127.0.0.1",
                "--port", str(port), "--delay-ms", str(delay_ms)]
    options = f"host='127.0.0.1', port={port}" + (f", delay_ms={delay_ms}" if delay_ms else "")
    return [python, "-c",
            f"from edge.mock_upstream import MockOptions, run; run(MockOptions({options}))"]


def wrk_version() -> str | None:
    """``wrk 4.1.0`` or None when wrk is not on PATH."""
    exe = shutil.which("wrk")
    if exe is None:
        return None
    done = subprocess.run([exe, "-v"], capture_output=True, text=True, timeout=10)
    first = (done.stdout or done.stderr).strip().splitlines()
    return " ".join(first[0].split()[:2]) if first else "wrk"


def _lua_string_ok(text: str) -> bool:
    return "]==]" not in text and "\n" not in text


def run_wrk(
    target: Target, duration: float, connections: int, threads: int, workdir: Path,
) -> LoadResult:
    """Drive ``target`` with wrk and read the summary our Lua ``done`` hook prints."""
    body = CHAT_BODY.decode()
    if not _lua_string_ok(body):
        raise BenchError("request body cannot be embedded in the wrk script")
    headers = "\n".join(
        f'wrk.headers["{name}"] = "{value}"'
        for name, value in (("Content-Type", "application/json"), *target.headers)
    )
    script = workdir / f"wrk_{target.key}.lua"
    script.write_text(_WRK_SCRIPT.format(body=body, headers=headers))
    argv = [
        "wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(duration))}s",
        "--timeout", "10s", "-s", str(script), f"http://127.0.0.1:{target.port}{CHAT_PATH}",
    ]
    cpu_before = os.times()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    cpu_after = os.times()
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("EDGE-BENCH ")), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout}")
    requests, duration_us, connect, read, write, status, timeout, p50, p99 = (
        int(v) for v in line.split()[1:]
    )
    seconds = duration_us / 1e6
    ok = requests - status
    return LoadResult(
        requests_per_s=ok / seconds if seconds else 0.0,
        p50_ms=p50 / 1000,
        p99_ms=p99 / 1000,
        ok=ok,
        errors=connect + read + write + status + timeout,
        duration_s=seconds,
        client_cpu_s=(cpu_after.children_user + cpu_after.children_system)
        - (cpu_before.children_user + cpu_before.children_system),
        statuses={},
        error_kinds={k: v for k, v in (("connect", connect), ("read", read), ("write", write),
                                       ("status", status), ("timeout", timeout)) if v},
    )


def run_target(
    target: Target, args: argparse.Namespace, use_wrk: bool, workdir: Path
) -> LoadResult:
    """Warm up (result thrown away), then measure."""
    def once(duration: float) -> LoadResult:
        if use_wrk:
            return run_wrk(target, duration, args.connections, args.threads, workdir)
        return run_load(LoadSpec(
            host="127.0.0.1", port=target.port, path=CHAT_PATH, body=CHAT_BODY,
            headers=target.headers, connections=args.connections, duration_s=duration,
            processes=args.processes,
        ))

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


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def services_stopped(services: list[Service]) -> Iterator[None]:
    """Whatever happens inside (error, Ctrl-C, SIGTERM), stop every started service."""
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        yield
    finally:
        for service in reversed(services):
            service.stop()
        signal.signal(signal.SIGTERM, previous)


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
    parser.add_argument("--targets", default="abcd", help="subset of a, b, c, d to run")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every target this many times, interleaved; report the "
                             "median round")
    parser.add_argument("--workers", type=int, default=1, help="edge serve --workers")
    parser.add_argument("--edge-log-level", default="warning", help="edge serve --log-level")
    parser.add_argument("--mock-delay-ms", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--log-dir", type=Path,
                        help="keep the services' output here (default: a scratch directory)")
    args = parser.parse_args(argv)
    if set(args.targets) - set("abcd") or not args.targets:
        parser.error("--targets takes letters from 'abcd'")
    if args.duration <= 0 or args.connections < 1 or args.rounds < 1:
        parser.error("--duration, --connections and --rounds must be positive")
    return args


LABELS = {
    "a": "(a) direct to mock upstream",
    "b": "(b) edge, miss (no-store)",
    "c": "(c) bare Hypercorn-Trio app",
    "d": "(d) edge, hit (same body)",
}
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
        self.rows = {key: Row(key, LABELS[key]) for key in "abcd" if key in args.targets}
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
            self.targets[key] = Target(key, LABELS[key], port, headers)
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
        if set(self.rows) & set("abd"):
            if self.here.can_run_mock:
                port = free_port()
                mock = self._launch(
                    "mock upstream", mock_command(sys.executable, port, args.mock_delay_ms),
                    port, _child_env({}), self.workdir, {"a": AUTH},
                )
                if not self.bring_up(mock, "/v1/models", AUTH):
                    mock = None
            else:
                self.skip(set("abd"), f"{sys.executable} cannot run the mock upstream "
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
            bare = self._launch("bare app", argv, port, _child_env({}), REPO_ROOT, {"c": AUTH})
            pending.append((bare, "/"))

        edge_keys = set(self.rows) & {"b", "d"}
        if edge_keys and mock is None:
            self.skip(edge_keys, "no mock upstream to point edge at")
        elif edge_keys and not self.interp.can_run_edge:
            self.skip(edge_keys, f"{self.python} cannot import edge.cli ({self.interp.problem})")
        elif edge_keys and mock is not None:
            port = free_port()
            env = _child_env({
                "OPENAI_API_KEY": "sk-bench",
                "OPENAI_BASE_URL": f"http://127.0.0.1:{mock.port}/v1",
                "METRICS_PORT": "0",
            })
            argv = [self.python, "-m", "edge", "serve", "--host", "127.0.0.1",
                    "--port", str(port), "--metrics-port", "0", "--workers", str(args.workers),
                    "--log-level", args.edge_log_level]
            # cwd is the scratch directory so no ./edge.toml changes the run.
            edge = self._launch("edge", argv, port, env, self.workdir, {
                "b": (*AUTH, ("Cache-Control", "no-store")),
                "d": AUTH,
            })
            pending.append((edge, "/health/ready"))

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
    given = list(sys.argv[1:] if argv is None else argv)
    command = " ".join(["python -m benchmarks.overhead", *map(shlex.quote, given)])
    wrk = wrk_version() if args.tool != "loadgen" else None
    if args.tool == "wrk" and wrk is None:
        print("error: --tool wrk but wrk is not on PATH", file=sys.stderr)
        return 2
    tool = (f"{wrk}, {args.threads} thread(s)" if wrk is not None
            else f"benchmarks.loadgen, {args.processes} process(es)")
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
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; services stopped", file=sys.stderr)
        sys.exit(130)
