"""Instructions per request of `edge serve`, counted by valgrind's callgrind.

Throughput on a shared 2-core machine moves by +-15 % between rounds; instructions do
not: callgrind counts what the edge process executes (all its threads) whatever else the
machine does, and runs of one build repeat to within 0.5 %. So a step of a few percent
between two builds, or between two request shapes on one build, is found here and the
yardstick (`benchmarks.overhead`) keeps the throughput ratios.

    python -m benchmarks.instructions [--modes chat-hit,chat-miss,resp-hit,resp-miss]
                                      [--requests 1000] [--warmup 200] [--idle 20]

For each mode: start the mock upstream and `valgrind --tool=callgrind --instr-atstart=no
python -m edge serve` (the interpreter running this script; its provider translates the
Responses API, as the yardstick's (b) edge does), send `--warmup` requests, count `--idle`
seconds with no traffic (the store's and service's pollers, charged per second, not per
request), then count `--requests` sequential requests and print the count per request,
raw and with the idle rate subtracted for the time the requests took. A miss sends
`Cache-Control: no-store`; a hit repeats the warm-up's body. Needs valgrind on PATH.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.drivers import CHAT_BODY, CHAT_PATH
from benchmarks.overhead import EDGE_CONFIG, RESPONSES_BODY, RESPONSES_PATH
from benchmarks.services import free_port, http_call

MODES = {
    "chat-hit": (CHAT_PATH, CHAT_BODY, False),
    "chat-miss": (CHAT_PATH, CHAT_BODY, True),
    "resp-hit": (RESPONSES_PATH, RESPONSES_BODY, False),
    "resp-miss": (RESPONSES_PATH, RESPONSES_BODY, True),
}
_TOTALS = re.compile(rb"^(?:totals|summary):\s*(\d+)", re.M)


def wait_answering(port: int, path: str, deadline: float) -> None:
    """Poll until `path` answers at all (the mock asks for a key: 401 is ready); unlike
    `services.wait_ready`, no `Service` owns these processes (valgrind wraps edge)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            if http_call(port, "GET", path, timeout=5.0)[0] < 500:
                return
        except OSError:
            pass  # not listening yet
        time.sleep(0.2)
    raise SystemExit(f"not ready: 127.0.0.1:{port}{path}")


def dumped_total(outdir: Path, before: set[Path]) -> int:
    """The instruction total of the dump files written since `before`."""
    total = 0
    for path in set(outdir.glob("cg.*")) - before:
        match = _TOTALS.search(path.read_bytes())
        if match:
            total += int(match.group(1))
    return total


def dump(pid: int, outdir: Path) -> int:
    before = set(outdir.glob("cg.*"))
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    return dumped_total(outdir, before)


def count(mode: str, args: argparse.Namespace, workdir: Path) -> tuple[float, float]:
    """(raw, net) instructions per request of `mode`."""
    path, body, miss = MODES[mode]
    mock_port, edge_port = free_port(), free_port()
    mock = subprocess.Popen([sys.executable, "-m", "edge", "mock-upstream",
                             "--port", str(mock_port)], stderr=subprocess.DEVNULL)
    config = workdir / f"{mode}.toml"
    config.write_text(EDGE_CONFIG.format(url=f"http://127.0.0.1:{mock_port}/v1"))
    outdir = workdir / mode
    outdir.mkdir()
    env = {**os.environ, "OPENAI_API_KEY": "sk-bench"}
    edge = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no",
         f"--callgrind-out-file={outdir}/cg.%p", sys.executable, "-m", "edge", "serve",
         "--config", str(config), "--port", str(edge_port), "--metrics-port", "0",
         "--log-level", "warning"],
        env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        wait_answering(mock_port, "/v1/models", 30)
        wait_answering(edge_port, "/health", 600)  # valgrind starts python 50x slower
        headers = {"content-type": "application/json"}
        if miss:
            headers["cache-control"] = "no-store"
        with httpx.Client(base_url=f"http://127.0.0.1:{edge_port}", timeout=120) as client:
            def send(n: int) -> None:
                for _ in range(n):
                    reply = client.post(path, content=body, headers=headers)
                    if reply.status_code != 200:
                        raise SystemExit(f"{mode}: {reply.status_code} {reply.text[:200]}")
            send(args.warmup)
            subprocess.run(["callgrind_control", "-z", str(edge.pid)], check=True,
                           capture_output=True)
            subprocess.run(["callgrind_control", "-i", "on", str(edge.pid)], check=True,
                           capture_output=True)
            idle_rate = 0.0
            if args.idle > 0:
                started = time.monotonic()
                time.sleep(args.idle)
                idle_rate = dump(edge.pid, outdir) / (time.monotonic() - started)
            started = time.monotonic()
            send(args.requests)
            took = time.monotonic() - started
            total = dump(edge.pid, outdir)
        raw = total / args.requests
        return raw, (total - idle_rate * took) / args.requests
    finally:
        edge.terminate()
        mock.terminate()
        for proc in (edge, mock):
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--idle", type=float, default=20.0)
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    modes = args.modes.split(",")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown modes {unknown}; known: {', '.join(MODES)}")
    print(f"# {sys.executable} (Python {sys.version.split()[0]}), {args.requests} requests "
          f"after {args.warmup}, idle {args.idle:g} s subtracted")
    print(f"{'mode':<10} {'raw/request':>14} {'net/request':>14}")
    with tempfile.TemporaryDirectory(prefix="edge-cg-") as tmp:
        for mode in modes:
            raw, net = count(mode, args, Path(tmp))
            print(f"{mode:<10} {raw:>14,.0f} {net:>14,.0f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
