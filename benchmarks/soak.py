"""Soak: minutes of steady mixed load with upstream faults, watching edge's memory.

    python -m benchmarks.soak [--minutes 10] [--rate 50] [--restart-every 60]

Not part of CI: it runs for minutes on purpose. It starts two mock upstreams and
``edge serve --workers 1`` with a config of two providers for ``gpt-*``: the first mock
answers 500 to a share of requests (``--fail-rate``, 0.2) and is killed (SIGKILL) and
started again every ``--restart-every`` seconds, so edge keeps failing over to the
second; then it sends an open-loop load at ``--rate`` requests/s for ``--minutes``:

    35 %  JSON, drawn from a working set of 2,000 prompts (cache hits once warm)
    35 %  JSON, every request distinct, Cache-Control: no-store (always upstream)
    15 %  streaming, from the working set (replayed from the cache once warm)
    15 %  streaming, distinct, no-store

Before the clock starts, every prompt of the working set is asked a few times, so the
cache is in steady state. Every ``--sample-every`` seconds (10) it reads edge's RSS from
/proc and the interval's answers (2xx, errors, p50, p99). It writes ``soak.csv``,
``soak.json`` and ``soak.png`` (RSS over time) to ``--out-dir`` and says whether RSS
stayed flat: the average of the last third of the
samples within ``--flat-tolerance`` (10 %) of the first third's.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import charts
from benchmarks.drivers import CHAT_PATH, chat_body
from benchmarks.loadgen import Flow, LoadResult, LoadSpec, RateSpec, run_load, run_rate
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
    tree_rss_bytes,
    wait_ready,
)

AUTH = (("Authorization", "Bearer x"),)
KEY_ENV = "EDGE_SOAK_UPSTREAM_KEY"
WORKING_SET = 2000


@dataclass(slots=True)
class Sample:
    """One interval: when it ended, edge's RSS then, and what the clients got during it."""

    t_s: float
    rss_bytes: int
    result: LoadResult


def soak_flows(stream_share: float) -> tuple[Flow, ...]:
    """Half cacheable from a bounded working set, half distinct and uncached."""
    store = (*AUTH, ("Cache-Control", "no-store"))
    plain, streamed = (1 - stream_share) / 2, stream_share / 2
    return (
        Flow(chat_body(unique=True), AUTH, plain, key_space=WORKING_SET),
        Flow(chat_body(unique=True), store, plain),
        Flow(chat_body(stream=True, unique=True), AUTH, streamed, key_space=WORKING_SET),
        Flow(chat_body(stream=True, unique=True), store, streamed),
    )


def edge_config(path: Path, flaky_port: int, steady_port: int) -> None:
    """Two OpenAI-kind providers for the same models: the flaky mock first."""
    text = ""
    for name, port in (("flaky", flaky_port), ("steady", steady_port)):
        text += (f'[[providers]]\nname = "{name}"\nkind = "openai"\n'
                 f'base_url = "http://127.0.0.1:{port}/v1"\napi_key = "env:{KEY_ENV}"\n'
                 'models = ["gpt-*"]\n\n')
    path.write_text(text)


class Restarter(threading.Thread):
    """Kills the flaky mock every ``every`` seconds and starts it again on its port."""

    def __init__(self, service: Service, every: float, t0: float) -> None:
        super().__init__(name="restarter", daemon=True)
        self.service = service
        self.every = every
        self.t0 = t0
        self.stop = threading.Event()
        self.marks: list[float] = []
        self.problems: list[str] = []
        self.calls_before_restarts = 0  # chat calls the mock counted before each kill

    def run(self) -> None:
        while not self.stop.wait(self.every):
            self.marks.append(time.monotonic() - self.t0)
            self.calls_before_restarts += upstream_calls(self.service.port)
            self.service.kill()
            if self.stop.wait(1.0):  # an outage of about a second
                break
            self.service.start()
            try:
                wait_ready(self.service, "/v1/models", AUTH, timeout=30)
            except BenchError as exc:
                self.problems.append(str(exc).splitlines()[0])


def upstream_calls(port: int) -> int:
    """Chat completions a mock has answered since it started (its /mock/stats); 0 if down."""
    try:
        status, _, body = http_call(port, "GET", "/mock/stats", headers=AUTH, timeout=5.0)
        paths = json.loads(body).get("by_path", {}) if status == 200 else {}
        return int(paths.get(CHAT_PATH, 0))
    except (OSError, ValueError):
        return 0


def flat_verdict(samples: Sequence[Sample], tolerance: float) -> tuple[bool, float, float]:
    """(flat?, first-third mean MB, last-third mean MB)."""
    third = max(1, len(samples) // 3)
    first = statistics.fmean(s.rss_bytes for s in samples[:third]) / 1e6
    last = statistics.fmean(s.rss_bytes for s in samples[-third:]) / 1e6
    return abs(last - first) <= tolerance * first, first, last


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak; exit 0 when RSS stayed flat, 1 when it did not, 2 on an error."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=50.0, help="requests/s, open loop")
    parser.add_argument("--stream-share", type=float, default=0.3)
    parser.add_argument("--fail-rate", type=float, default=0.2,
                        help="share of the first provider's answers that are 500s")
    parser.add_argument("--restart-every", type=float, default=60.0,
                        help="seconds between kills of the first provider (0: never)")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds")
    parser.add_argument("--flat-tolerance", type=float, default=0.10)
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    parser.add_argument("--log-dir", type=Path)
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0 or args.sample_every <= 0:
        parser.error("--minutes, --rate and --sample-every must be positive")
    if not 0 <= args.stream_share <= 1 or not 0 <= args.fail_rate <= 1:
        parser.error("--stream-share and --fail-rate must be between 0 and 1")
    command = command_line("benchmarks.soak", argv)
    here = probe_interpreter(sys.executable)
    started = datetime.now(UTC)
    print(f"edge soak, {started:%Y-%m-%d %H:%M} UTC")
    print(f"command:     {command}")
    print(f"interpreter: {sys.executable} ({here.version}), edge fastpath: {here.fastpath}, "
          f"on {platform.platform()}")
    print(f"load:        {args.rate:g} req/s open loop for {args.minutes:g} min, "
          f"{args.stream_share:.0%} streaming, half from a working set of {WORKING_SET}; "
          f"provider 1 fails {args.fail_rate:.0%} and is killed every "
          f"{args.restart_every:g} s")
    print(f"CPUs:        {os.cpu_count()} (load average {os.getloadavg()[0]:.2f} at start)",
          flush=True)

    samples: list[Sample] = []
    services: list[Service] = []
    restarter: Restarter | None = None
    with tempfile.TemporaryDirectory(prefix="edge-soak-") as tmp, services_stopped(services):
        workdir = Path(tmp)
        logdir = args.log_dir or workdir
        logdir.mkdir(parents=True, exist_ok=True)
        flaky_port, steady_port, edge_port = free_port(), free_port(), free_port()
        flaky = Service("flaky mock", mock_command(sys.executable, flaky_port, 0,
                                                   args.fail_rate, seed=1),
                        flaky_port, logdir / "flaky-mock.log", child_env({}), workdir)
        steady = Service("steady mock", mock_command(sys.executable, steady_port), steady_port,
                         logdir / "steady-mock.log", child_env({}), workdir)
        config = workdir / "edge.toml"
        edge_config(config, flaky_port, steady_port)
        env = child_env({KEY_ENV: "sk-soak", "METRICS_PORT": "0"})
        for variable in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
            env.pop(variable, None)
        edge = Service("edge", [sys.executable, "-m", "edge", "serve", "--config", str(config),
                                "--host", "127.0.0.1", "--port", str(edge_port),
                                "--metrics-port", "0", "--workers", "1",
                                "--log-level", "warning"],
                       edge_port, logdir / "edge.log", env, workdir)
        services += [flaky, steady, edge]
        for service in services:
            service.start()
        wait_ready(flaky, "/v1/models", AUTH)
        wait_ready(steady, "/v1/models", AUTH)
        wait_ready(edge, "/health/ready")
        assert edge.pid is not None

        # Fill the working set first (8 draws per key leave ~0.03 % of keys unseen), so
        # the samples watch a cache in steady state, not one still growing by design.
        warm = run_load(LoadSpec(
            host="127.0.0.1", port=edge_port, path=CHAT_PATH, body=chat_body(unique=True),
            headers=AUTH, connections=16, duration_s=600, key_space=WORKING_SET,
            max_requests=8 * WORKING_SET))
        print(f"warm-up:     {warm.ok} of {8 * WORKING_SET} requests over the working set "
              f"answered 2xx; edge RSS {sum(tree_rss_bytes(edge.pid).values()) / 1e6:.1f} MB",
              flush=True)
        flows = soak_flows(args.stream_share)
        t0 = time.monotonic()
        if args.restart_every > 0:
            restarter = Restarter(flaky, args.restart_every, t0)
            restarter.start()
        end = t0 + args.minutes * 60
        seed = 0
        try:
            while time.monotonic() < end - 0.5:
                seed += 1
                window = min(args.sample_every, end - time.monotonic())
                result = run_rate(RateSpec(
                    host="127.0.0.1", port=edge_port, path=CHAT_PATH, flows=flows,
                    rate=args.rate, duration_s=window, seed=seed, timeout_s=30.0,
                    nonce=f"soak{seed}"))
                rss = sum(tree_rss_bytes(edge.pid).values())
                if edge.exited() is not None:
                    raise BenchError(f"edge exited with code {edge.exited()}:\n"
                                     f"{edge.log_tail()}")
                sample = Sample(time.monotonic() - t0, rss, result)
                samples.append(sample)
                print(f"  {sample.t_s:6.0f} s  RSS {rss / 1e6:6.1f} MB  2xx {result.ok:5d}  "
                      f"errors {result.errors:3d}  p50 {result.p50_ms:6.1f} ms  "
                      f"p99 {result.p99_ms:7.1f} ms  statuses {result.statuses}", flush=True)
        finally:
            if restarter is not None:
                restarter.stop.set()
                restarter.join(timeout=40)
        # Upstream calls per provider, warm-up included: shows how much edge used each.
        flaky_calls = upstream_calls(flaky_port) + (
            restarter.calls_before_restarts if restarter else 0)
        steady_calls = upstream_calls(steady_port)

    if len(samples) < 3:
        raise BenchError("too few samples to judge; run for longer")
    flat, first, last = flat_verdict(samples, args.flat_tolerance)
    ok = sum(s.result.ok for s in samples)
    errors = sum(s.result.errors for s in samples)
    kinds: dict[str, int] = {}
    for s in samples:
        for kind, n in s.result.error_kinds.items():
            kinds[kind] = kinds.get(kind, 0) + n
    marks = restarter.marks if restarter else []
    print()
    print(f"requests:    {ok} answered 2xx, {errors} errors {kinds or ''} "
          f"({100 * errors / max(1, ok + errors):.2f} %)")
    print(f"upstream:    {flaky_calls} chat calls reached provider 1 (the flaky one), "
          f"{steady_calls} provider 2 (warm-up included)")
    print(f"restarts:    provider 1 killed {len(marks)} times"
          + (f"; problems: {restarter.problems}" if restarter and restarter.problems else ""))
    low = min(s.rss_bytes for s in samples) / 1e6
    high = max(s.rss_bytes for s in samples) / 1e6
    print(f"RSS:         first third {first:.1f} MB, last third {last:.1f} MB "
          f"({100 * (last - first) / first:+.1f} %), min {low:.1f}, max {high:.1f} MB")
    print(f"verdict:     RSS {'stayed flat' if flat else 'did NOT stay flat'} "
          f"(last third within {args.flat_tolerance:.0%} of the first)")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")

    args.out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = args.out_dir / "soak.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["t_s", "rss_mb", "ok", "errors", "p50_ms", "p99_ms", "late",
                         "statuses", "error_kinds"])
        for s in samples:
            r = s.result
            writer.writerow([f"{s.t_s:.1f}", f"{s.rss_bytes / 1e6:.2f}", r.ok, r.errors,
                             f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", r.late,
                             json.dumps(r.statuses, sort_keys=True),
                             json.dumps(r.error_kinds, sort_keys=True)])
    print(f"wrote {csv_path}")
    summary: dict[str, Any] = {
        "command": command, "date": started.isoformat(timespec="seconds"),
        "minutes": args.minutes, "rate": args.rate, "flat": flat,
        "first_third_mb": first, "last_third_mb": last, "ok": ok, "errors": errors,
        "error_kinds": kinds, "restarts_at_s": marks,
        "upstream_calls": {"flaky": flaky_calls, "steady": steady_calls},
    }
    (args.out_dir / "soak.json").write_text(json.dumps(summary, indent=1) + "\n")
    png = args.out_dir / "soak.png"
    title = (f"edge RSS, {args.minutes:g} min at {args.rate:g} req/s, "
             f"{args.stream_share:.0%} streaming, provider 1 failing {args.fail_rate:.0%}")
    if charts.rss_chart([s.t_s for s in samples], [s.rss_bytes / 1e6 for s in samples], png,
                        title, marks):
        print(f"wrote {png}")
    else:
        print("note: matplotlib is not installed, no PNG drawn", file=sys.stderr)
    return 0 if flat else 1


if __name__ == "__main__":
    run_script(main)
