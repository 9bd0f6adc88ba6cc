"""Overload recovery: `python -m benchmarks.overload` (issue [6/7]).

A proxy that is pushed past what it can serve should, once the push stops, serve at its
normal rate again at once. It does not when work for clients that already left is still
running: upstream calls nobody will read, queued requests whose sockets are closed. This
benchmark measures that, through each target in turn in front of the same mock upstream
(edge, one worker; LiteLLM and Portkey when installed, see `benchmarks.rivals`):

1. normal: a closed loop of `--connections` keep-alive connections for `--normal-s`, each
   request a cache miss (a prompt no other uses); its rate R is the normal rate;
2. burst: the same closed loop keeps running (the users who stay, on the connections
   they have) while an open loop sends `--factor` x R for `--burst-s` from a process of
   its own; a burst client gives up on an answer after `--give-up-s` and closes;
3. after: the steady loop's rate in windows of `--window-s` for `--after-s` from the
   moment the burst stops being scheduled.

It prints, per target, R, what the burst got (2xx/s, errors), the steady loop's share of
R during the burst and in every window after it, and the recovery time: the end of the
first window at >= 90 % of R (the target for edge: within 5 s). Writes overload.txt and
overload.csv into `--out-dir` (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.loadgen import (
    SEQ_MARKER,
    Flow,
    LoadResult,
    LoadSpec,
    RateSpec,
    run_load,
    run_rate,
)
from benchmarks.services import REPO_ROOT, BenchError, command_line, run_script, services_stopped
from benchmarks.streams import MODEL, Lab, Target

TARGETS = ("edge", "litellm", "portkey")
RECOVERED = 0.90


@dataclass(slots=True)
class Row:
    """One target's run: normal rate, the burst, the windows after it."""

    target: str
    normal_rps: float = 0.0
    burst_rate: float = 0.0
    burst_rps: float = 0.0
    burst_errors: int = 0
    during_rps: float = 0.0
    windows: list[float] = field(default_factory=list)
    window_s: float = 1.0
    note: str = ""

    @property
    def recovery_s(self) -> float | None:
        """End of the first window after the burst at >= 90 % of the normal rate."""
        for i, rps in enumerate(self.windows):
            if self.normal_rps and rps >= RECOVERED * self.normal_rps:
                return (i + 1) * self.window_s
        return None


def _body() -> bytes:
    return json.dumps({"model": MODEL, "max_tokens": 16, "messages": [
        {"role": "user", "content": f"overload {SEQ_MARKER.decode()}"}]}).encode()


def _steady_spec(target: Target, args: argparse.Namespace, duration_s: float) -> LoadSpec:
    return LoadSpec("127.0.0.1", target.port, "/v1/chat/completions", _body(), target.headers,
                    connections=args.connections, duration_s=duration_s,
                    timeout_s=args.give_up_s * 5)


def _steady_main(spec: LoadSpec, results: Any) -> None:
    """The users who stay: one closed loop through every phase, each answer timestamped."""
    try:
        results.put(run_load(spec))
    except BaseException as exc:  # report, never hang the parent
        results.put(repr(exc))
        raise


def _burst_main(spec: RateSpec, lead_s: float, results: Any) -> None:
    """The users who come all at once and give up: the open loop, after `lead_s`."""
    try:
        time.sleep(lead_s)
        started_ns = time.perf_counter_ns()
        results.put((started_ns, run_rate(spec).to_dict()))
    except BaseException as exc:
        results.put((0, {"error": repr(exc)}))
        raise


def run_target(target: Target, args: argparse.Namespace) -> Row:
    """Normal rate, then the steady loop through a burst and after it, against one target.

    The steady loop keeps its connections through all of it, as the users who stay would,
    so the windows after the burst measure the target, not reconnecting into a full
    accept queue.
    """
    row = Row(target.name, window_s=args.window_s)
    run_load(_steady_spec(target, args, 1.0))  # warm: connections, imports, first calls
    row.normal_rps = run_load(_steady_spec(target, args, args.normal_s)).requests_per_s
    if row.normal_rps <= 0:
        row.note = "no 2xx answers in the normal phase"
        return row
    row.burst_rate = row.normal_rps * args.factor
    burst = RateSpec("127.0.0.1", target.port, (Flow(_body(), target.headers),),
                     rate=row.burst_rate, duration_s=args.burst_s, path="/v1/chat/completions",
                     max_connections=args.burst_connections, timeout_s=args.give_up_s)
    lead_s = 2.0  # the steady loop runs alone first; both children start (and import) then
    context = multiprocessing.get_context("spawn")
    steady_q, burst_q = context.Queue(), context.Queue()
    children = [
        context.Process(target=_steady_main, daemon=True, args=(
            _steady_spec(target, args, lead_s + args.burst_s + args.after_s + 1.0), steady_q)),
        context.Process(target=_burst_main, daemon=True, args=(burst, lead_s, burst_q))]
    for child in children:
        child.start()
    try:
        limit = lead_s + args.burst_s + args.after_s + 60
        started_ns, outcome = burst_q.get(timeout=limit)
        steady = steady_q.get(timeout=limit)
    finally:
        for child in children:
            child.join(timeout=10)
            if child.is_alive():
                child.kill()
    if "error" in outcome:
        raise BenchError(f"burst client failed: {outcome}")
    if not isinstance(steady, LoadResult):
        raise BenchError(f"steady client failed: {steady}")
    row.burst_rps, row.burst_errors = outcome["requests_per_s"], outcome["errors"]
    stopped_ns, step = started_ns + int(args.burst_s * 1e9), int(args.window_s * 1e9)
    row.during_rps = steady.rate_between(started_ns, stopped_ns)
    row.windows = [steady.rate_between(stopped_ns + i * step, stopped_ns + (i + 1) * step)
                   for i in range(max(1, round(args.after_s / args.window_s)))]
    return row


def render(rows: list[Row]) -> str:
    lines = [f"{'target':8} {'normal/s':>9} {'burst':>13} {'burst 2xx/s':>11} "
             f"{'errors':>7} {'steady in it':>12} {'recovered':>10}  "
             "steady loop's windows after it (share of normal)"]
    for r in rows:
        if r.note:
            lines.append(f"{r.target:8} {r.note}")
            continue
        shares = " ".join(f"{w / r.normal_rps:.2f}" for w in r.windows)
        rec = "never" if r.recovery_s is None else f"{r.recovery_s:g} s"
        lines.append(f"{r.target:8} {r.normal_rps:9.0f} {r.burst_rate:9.0f} r/s "
                     f"{r.burst_rps:11.0f} {r.burst_errors:7d} "
                     f"{r.during_rps / r.normal_rps:12.2f} {rec:>10}  {shares}")
    return "\n".join(lines)


def write_outputs(rows: list[Row], out_dir: Path, head: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    table = out_dir / "overload.txt"
    table.write_text(head + "\n" + render(rows) + "\n")
    csv_path = out_dir / "overload.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["target", "normal_rps", "burst_rate", "burst_rps", "burst_errors",
                         "steady_during_rps", "recovery_s", "window_s", "windows_rps", "note"])
        for r in rows:
            writer.writerow([r.target, f"{r.normal_rps:.1f}", f"{r.burst_rate:.1f}",
                             f"{r.burst_rps:.1f}", r.burst_errors, f"{r.during_rps:.1f}",
                             "" if r.recovery_s is None else r.recovery_s, r.window_s,
                             " ".join(f"{w:.1f}" for w in r.windows), r.note])
    return [table, csv_path]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overload",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help=f"comma-separated, from {','.join(TARGETS)} (default all)")
    parser.add_argument("--connections", type=int, default=64,
                        help="closed-loop connections (default 64)")
    parser.add_argument("--normal-s", type=float, default=5.0)
    parser.add_argument("--factor", type=float, default=4.0,
                        help="the burst's rate as a multiple of the normal rate (default 4)")
    parser.add_argument("--burst-s", type=float, default=10.0)
    parser.add_argument("--burst-connections", type=int, default=1024,
                        help="connections the burst may open (default 1024)")
    parser.add_argument("--give-up-s", type=float, default=1.0,
                        help="a burst client closes its connection after this (default 1)")
    parser.add_argument("--after-s", type=float, default=10.0)
    parser.add_argument("--window-s", type=float, default=1.0)
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    parser.add_argument("--litellm", help="path of the litellm command")
    parser.add_argument("--portkey", help="Portkey's directory or start-server.js")
    args = parser.parse_args(argv)
    args.targets = [t for t in args.targets.split(",") if t]
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    for name in ("normal_s", "factor", "burst_s", "give_up_s", "after_s", "window_s"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    # What Lab reads to start the mock and edge: an unpaced mock, edge's default pool.
    args.tokens, args.token_ms, args.streams = 16, 0.0, 256
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="edge-overload-") as tmp:
        lab = Lab(args, Path(tmp))
        with services_stopped(lab.services):
            lab.start_mock()
            for name in args.targets:
                target = lab.start(name)
                if isinstance(target, str):
                    rows.append(Row(name, note=f"skipped: {target}"))
                    print(f"{name}: skipped ({target})", file=sys.stderr)
                    continue
                rows.append(run_target(target, args))
                print(render(rows[-1:]), file=sys.stderr, flush=True)
                lab.stop(target)
    head = (f"{command_line('benchmarks.overload', argv)}\n"
            f"burst {args.factor:g}x normal for {args.burst_s:g} s, clients give up after "
            f"{args.give_up_s:g} s; recovered = first {args.window_s:g} s window after it "
            f"at >= {RECOVERED:.0%} of normal; python {sys.version.split()[0]}, "
            f"cpus={multiprocessing.cpu_count()}")
    print(head)
    print(render(rows))
    for path in write_outputs(rows, args.out_dir, head):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run_script(main)
