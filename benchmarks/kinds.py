"""CPU per request of a miss to each provider kind, beside the openai-kind miss in the same run.

``python -m benchmarks.kinds`` starts `edge mock-upstream` (the openai kind's upstream)
and, in this process, the Gemini and Bedrock fakes of tests/_fake_kinds.py (they speak
the real wire formats; the Bedrock fake verifies each SigV4 signature), then one edge
with three providers. It sends the same chat request (``Cache-Control: no-store``, so
every one goes upstream) to a model of each kind, a few clients at a time, and reads
edge's own CPU time (user + system, from /proc) before and after each batch: CPU ms per
request, and each kind's ratio to the openai kind's. The openai kind passes the request
through untranslated; gemini and bedrock go through the hub both ways (and bedrock signs).

The fakes are slower than the bundled mock, and an HTTP server of another make (the
standard library's) costs edge reads of its own: the azure row, native pass-through to
such a fake, tells that part from the translation's. Short by design (a few seconds per kind):
the machines are shared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.services import (
    REPO_ROOT,
    Service,
    child_env,
    free_port,
    mock_command,
    run_script,
    services_stopped,
    wait_ready,
)

sys.path.insert(0, str(REPO_ROOT / "tests"))
from _fake_kinds import AzureFake, BedrockFake, GeminiFake  # noqa: E402 - the test fakes

ACCESS_KEY, SECRET_KEY, REGION = "AKIDBENCHKEY", "bench-secret", "us-east-1"
MODELS = {"openai": "gpt-4o-mini", "azure": "azure-gpt-4o", "gemini": "gemini-2.5-flash",
          "bedrock": "anthropic.claude-3-haiku-20240307-v1:0"}
BODY = {"messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Say hello to the benchmark, please."}],
        "max_tokens": 64, "temperature": 0.2}


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _post(url: str, model: str) -> int:
    data = json.dumps({**BODY, "model": model}).encode()
    request = urllib.request.Request(url, data=data, headers={
        "content-type": "application/json", "cache-control": "no-store"})
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()
        return int(response.status)


def _batch(url: str, model: str, requests: int, clients: int) -> None:
    with ThreadPoolExecutor(clients) as pool:
        statuses = list(pool.map(lambda _: _post(url, model), range(requests)))
    if any(status != 200 for status in statuses):
        raise SystemExit(f"{model}: not every answer was 200: {set(statuses)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="per kind (default 400)")
    parser.add_argument("--clients", type=int, default=1,
                        help="concurrent clients (1: no kind gains from batched wake-ups)")
    parser.add_argument("--rounds", type=int, default=3, help="kinds alternate, this often")
    args = parser.parse_args()

    gemini, bedrock = GeminiFake("bench-gemini-key"), BedrockFake(ACCESS_KEY, SECRET_KEY,
                                                                  REGION)
    azure = AzureFake("bench-gemini-key", [MODELS["azure"]])
    mock_port, edge_port = free_port(), free_port()
    config = Path(tempfile.mkdtemp()) / "edge.toml"
    config.write_text(f"""
[[providers]]
name = "openai"
kind = "openai"
base_url = "http://127.0.0.1:{mock_port}/v1"
api_key = "env:BENCH_KEY"
models = ["gpt-*"]

[[providers]]
name = "azure"
kind = "azure"
base_url = "{azure.url}"
api_key = "env:GEMINI_BENCH_KEY"
models = ["azure-*"]

[[providers]]
name = "gemini"
kind = "gemini"
base_url = "{gemini.url}"
api_key = "env:GEMINI_BENCH_KEY"
models = ["gemini-*"]

[[providers]]
name = "bedrock"
kind = "bedrock"
region = "{REGION}"
base_url = "{bedrock.url}"
models = ["anthropic.*"]
""")
    env = child_env({"BENCH_KEY": "k", "GEMINI_BENCH_KEY": "bench-gemini-key",
                     "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                     "AWS_CONFIG_FILE": "/nonexistent", "AWS_EC2_METADATA_DISABLED": "true",
                     "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"})
    logs = config.parent
    mock = Service("mock", mock_command(sys.executable, mock_port), mock_port,
                   logs / "mock.log", env, REPO_ROOT)
    edge = Service("edge", [sys.executable, "-m", "edge", "serve", "--config", str(config),
                            "--port", str(edge_port), "--metrics-port", "0",
                            "--log-level", "warning"], edge_port, logs / "edge.log", env,
                   REPO_ROOT)
    url = f"http://127.0.0.1:{edge_port}/v1/chat/completions"
    cpu_ms: dict[str, list[float]] = {kind: [] for kind in MODELS}
    try:
        with services_stopped([mock, edge]):
            mock.start()
            wait_ready(mock, "/mock/stats")
            edge.start()
            wait_ready(edge, "/health/ready")
            pid = edge.pid
            assert pid is not None
            for model in MODELS.values():  # warm-up: connections, credentials, memos
                _batch(url, model, 50, args.clients)
            for _ in range(args.rounds):
                for kind, model in MODELS.items():
                    before = _cpu_seconds(pid)
                    _batch(url, model, args.requests, args.clients)
                    cpu_ms[kind].append((_cpu_seconds(pid) - before) * 1000 / args.requests)
    finally:
        for fake in (gemini, bedrock, azure):
            fake.close()
    base = min(cpu_ms["openai"])
    print(f"edge CPU per miss ({args.requests} requests x {args.rounds} rounds per kind, "
          f"{args.clients} clients; best round)")
    print(f"{'kind':<10}{'CPU ms/request':>16}{'vs openai':>12}")
    for kind, samples in cpu_ms.items():
        best = min(samples)
        print(f"{kind:<10}{best:>16.3f}{best / base:>11.2f}x")
    print(f"(at {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC, "
          f"load average {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    run_script(main)
