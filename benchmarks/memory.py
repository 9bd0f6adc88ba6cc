"""edge's memory with a full L1: RSS after 100,000 distinct ~2 KB answers are cached.

    python -m benchmarks.memory [--entries 100000] [--answer-bytes 2048]

Starts the mock upstream and ``edge serve --workers 1`` (default cache settings: 100,000
entries, 256 MiB) on free loopback ports, then fills edge's L1 through its real HTTP API:
``--entries`` distinct chat requests, each asking the mock (with a ``!mock words=N``
directive, N sized so the answer is ``--answer-bytes`` long) for its own answer. It reads
edge's resident set size from /proc (VmRSS, summed over edge and any child process)
before and after, checks that the oldest and a random sample of the entries still answer
``x-edge-cache: hit-l1`` (nothing was evicted), and prints the RSS against the issue's
limit of 300 MB. ``--json FILE`` keeps the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.drivers import CHAT_PATH
from benchmarks.loadgen import SEQ_MARKER, LoadResult, LoadSpec, run_load
from benchmarks.services import (
    BenchError,
    Service,
    child_env,
    command_line,
    free_port,
    http_call,
    mock_command,
    probe_interpreter,
    process_tree,
    rss_bytes,
    run_script,
    services_stopped,
    tree_rss_bytes,
    wait_ready,
)

AUTH = (("Authorization", "Bearer x"),)
LIMIT_BYTES = 300 * 1000 * 1000  # the "300 MB", read strictly (not MiB)
FILL_NONCE = "fill"


def fill_body(words: int, token: str = SEQ_MARKER.decode()) -> bytes:
    """A chat request whose answer is ``words`` words long, made distinct by ``token``."""
    return json.dumps({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": f"!mock words={words} entry {token}"}],
    }, separators=(",", ":")).encode()


def size_words(mock_port: int, answer_bytes: int) -> tuple[int, int]:
    """The ``words=N`` whose answer is closest to ``answer_bytes``; returns (N, size)."""
    def size(words: int) -> int:
        status, _, body = http_call(mock_port, "POST", CHAT_PATH, fill_body(words, "probe"),
                                    AUTH)
        if status != 200:
            raise BenchError(f"mock answered {status} to a sizing request: {body[:200]!r}")
        return len(body)

    low, high = size(50), size(350)
    per_word = (high - low) / 300
    guess = max(1, round(50 + (answer_bytes - low) / per_word))
    best = min(range(max(1, guess - 6), guess + 7), key=lambda n: abs(size(n) - answer_bytes))
    return best, size(best)


def mib(n: int) -> str:
    """``123.4 MiB (129.4 MB)``."""
    return f"{n / 2**20:.1f} MiB ({n / 1e6:.1f} MB)"


def edge_rss(edge: Service) -> int:
    """VmRSS of edge and its children (with --workers 1 there are none)."""
    assert edge.pid is not None
    return sum(tree_rss_bytes(edge.pid).values())


def peak_rss(pid: int) -> int:
    """VmHWM: the highest RSS the process ever had."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


def check_resident(edge_port: int, words: int, entries: int, sample: int) -> tuple[int, int]:
    """Ask again for the oldest entries and a random sample; count the L1 hits."""
    rng = random.Random(7)
    tokens = list(range(1, min(sample, entries) + 1))
    tokens += rng.sample(range(1, entries + 1), min(sample, entries))
    hits = 0
    for n in tokens:
        status, headers, _ = http_call(edge_port, "POST", CHAT_PATH,
                                       fill_body(words, f"{FILL_NONCE}-{n}"), AUTH)
        if status == 200 and headers.get("x-edge-cache") == "hit-l1":
            hits += 1
    return hits, len(tokens)


def main(argv: Sequence[str] | None = None) -> int:
    """Fill, measure, print; exit 0 when RSS is within the limit, 1 when not, 2 on error."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--answer-bytes", type=int, default=2048)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--sample", type=int, default=200,
                        help="oldest entries, and random ones, asked again at the end")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--log-dir", type=Path)
    args = parser.parse_args(argv)
    if args.entries < 1 or args.answer_bytes < 200:
        parser.error("--entries must be positive and --answer-bytes at least 200")
    command = command_line("benchmarks.memory", argv)
    here = probe_interpreter(sys.executable)
    started = datetime.now(UTC)
    print(f"edge L1 memory probe, {started:%Y-%m-%d %H:%M} UTC")
    print(f"command:     {command}")
    print(f"interpreter: {sys.executable} ({here.version}), edge fastpath: {here.fastpath}, "
          f"on {platform.platform()}")
    print(f"CPUs:        {os.cpu_count()} (load average {os.getloadavg()[0]:.2f} at start)",
          flush=True)

    figures: dict[str, Any] = {"command": command, "date": started.isoformat(timespec="seconds"),
                               "interpreter": {"path": sys.executable, "version": here.version,
                                               "fastpath": here.fastpath}}
    services: list[Service] = []
    with tempfile.TemporaryDirectory(prefix="edge-memory-") as tmp, services_stopped(services):
        workdir = Path(tmp)
        logdir = args.log_dir or workdir
        logdir.mkdir(parents=True, exist_ok=True)
        mock_port, edge_port = free_port(), free_port()
        mock = Service("mock upstream", mock_command(sys.executable, mock_port), mock_port,
                       logdir / "mock.log", child_env({}), workdir)
        services.append(mock)
        mock.start()
        env = child_env({"OPENAI_API_KEY": "sk-bench", "METRICS_PORT": "0",
                         "OPENAI_BASE_URL": f"http://127.0.0.1:{mock_port}/v1"})
        edge = Service("edge", [sys.executable, "-m", "edge", "serve", "--host", "127.0.0.1",
                                "--port", str(edge_port), "--metrics-port", "0",
                                "--workers", "1", "--log-level", "warning"],
                       edge_port, logdir / "edge.log", env, workdir)
        services.append(edge)
        edge.start()
        wait_ready(mock, "/v1/models", AUTH)
        wait_ready(edge, "/health/ready")
        assert edge.pid is not None

        words, answer = size_words(mock_port, args.answer_bytes)
        print(f"answers:     !mock words={words} -> {answer} bytes from the mock, "
              f"{args.entries} distinct requests")
        idle = edge_rss(edge)
        # Warm every code path on the way (imports, pools) without storing anything.
        warm = run_load(LoadSpec(
            host="127.0.0.1", port=edge_port, path=CHAT_PATH, body=fill_body(words),
            headers=(*AUTH, ("Cache-Control", "no-store")), connections=8, duration_s=60,
            max_requests=500, nonce="warm"))
        if warm.ok < 500:
            raise BenchError(f"warm-up failed: {warm.ok} ok, {warm.error_kinds}")
        baseline = edge_rss(edge)
        print(f"RSS idle:    {mib(idle)}; after 500 uncached requests: {mib(baseline)}",
              flush=True)

        done: list[LoadResult] = []
        failure: list[BaseException] = []

        def fill() -> None:
            try:
                done.append(run_load(LoadSpec(
                    host="127.0.0.1", port=edge_port, path=CHAT_PATH, body=fill_body(words),
                    headers=AUTH, connections=args.connections, duration_s=3600,
                    max_requests=args.entries, nonce=FILL_NONCE)))
            except BaseException as exc:  # reported by the main thread
                failure.append(exc)

        t0 = time.monotonic()
        worker = threading.Thread(target=fill, name="fill", daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(timeout=15)
            print(f"  {time.monotonic() - t0:5.0f} s  edge RSS {mib(edge_rss(edge))}",
                  flush=True)
        if failure:
            raise BenchError(f"fill failed: {failure[0]!r}")
        result = done[0]
        fill_s = time.monotonic() - t0
        print(f"fill:        {result.ok} ok, {result.errors} errors in {fill_s:.0f} s "
              f"({result.requests_per_s:.0f} req/s, p50 {result.p50_ms:.1f} ms)")
        if result.ok != args.entries or result.errors:
            raise BenchError(f"fill incomplete: {result.ok} of {args.entries} ok, "
                             f"errors {result.error_kinds}")
        time.sleep(2)  # let edge's background bookkeeping settle before reading memory
        full = edge_rss(edge)
        hits, asked = check_resident(edge_port, words, args.entries, args.sample)
        after_check = edge_rss(edge)
        pids = process_tree(edge.pid)
        peak = sum(peak_rss(p) for p in pids)
        per_entry = (full - baseline) / args.entries
        print(f"resident:    {hits} of {asked} re-asked entries (the {args.sample} oldest and "
              f"{args.sample} random) answered hit-l1")
        print(f"RSS full:    {mib(full)} (peak {mib(peak)}); growth {mib(full - baseline)}, "
              f"{per_entry:.0f} bytes per entry of {answer} answer bytes")
        met = full <= LIMIT_BYTES and hits == asked
        print(f"target:      RSS <= 300 MB with {args.entries} entries of ~2 KB: "
              f"{'MET' if met else 'NOT MET'} ({full / 1e6:.1f} MB, "
              f"{(full - LIMIT_BYTES) / 1e6:+.1f} MB against the limit)")
        figures.update({
            "entries": args.entries, "answer_bytes": answer, "mock_words": words,
            "rss_idle_bytes": idle, "rss_baseline_bytes": baseline, "rss_full_bytes": full,
            "rss_after_check_bytes": after_check, "rss_peak_bytes": peak,
            "bytes_per_entry": per_entry, "resident_hits": hits, "resident_asked": asked,
            "fill_seconds": fill_s, "fill": result.to_dict(), "edge_pids": pids,
            "limit_bytes": LIMIT_BYTES, "met": met,
            "load_average_end": os.getloadavg(),
        })
        if len(pids) > 1:
            print(f"processes:   {', '.join(f'{p}: {mib(rss_bytes(p))}' for p in pids)}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0 if figures.get("met") else 1


if __name__ == "__main__":
    run_script(main)
