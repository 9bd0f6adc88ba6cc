"""LeanTransport against httpx's own transport and client, same server, same run.

    python -m benchmarks.transport [--duration 3] [--concurrency 32] [--rounds 1]

Starts a keep-alive HTTP/1.1 server in a subprocess (its own core on a 2-core box), then for
each concurrency level (1 and --concurrency) drives it in a closed loop with:

    LeanTransport          handle_async_request() called directly, as edge's providers do
    httpx.AsyncHTTPTransport  handle_async_request() called directly (httpcore pool)
    httpx.AsyncClient      client.get(), default settings

Each request builds an `httpx.Request` and reads the body to the end, so the numbers include
what a provider pays per call.  The table shows requests/s, p50/p99 latency and the ratio to
AsyncHTTPTransport at the same concurrency.  With --rounds N every row is measured N times,
interleaved, and the best round is kept (this box is shared and noisy).

The server is trio with a minimal hand-written request parser instead of h11, on purpose: it
has to be cheaper per request than the clients it measures, or every row would just report
the server's ceiling.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import httpx
import trio

_BODY = (
    b'{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,'
    b'"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant",'
    b'"content":"Hello! How can I help you today?"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":9,"completion_tokens":9,"total_tokens":18}}'
)
_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(_BODY)).encode()
    + b"\r\n\r\n"
    + _BODY
)


# ---------------------------------------------------------------- the server (subprocess)


async def _serve_connection(stream: trio.SocketStream) -> None:
    """Answer pipelined/keep-alive requests; bodies are skipped by Content-Length."""
    buf = bytearray()
    try:
        while True:
            end = buf.find(b"\r\n\r\n")
            while end < 0:
                data = await stream.receive_some(65536)
                if not data:
                    return
                buf += data
                end = buf.find(b"\r\n\r\n")
            head = bytes(buf[:end]).lower()
            length = 0
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : stop if stop >= 0 else None])
            total = end + 4 + length
            while len(buf) < total:
                data = await stream.receive_some(65536)
                if not data:
                    return
                buf += data
            del buf[:total]
            await stream.send_all(_RESPONSE)
    except trio.BrokenResourceError:
        return


async def _serve(port: int) -> None:
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1", backlog=1024)
    print(listeners[0].socket.getsockname()[1], flush=True)
    await trio.serve_listeners(_serve_connection, listeners)


# ---------------------------------------------------------------- the clients


_Send = Callable[[str], Awaitable[None]]


async def _measure(send: _Send, url: str, concurrency: int, duration: float) -> list[float]:
    """Closed loop: `concurrency` tasks send back to back until the deadline."""
    latencies: list[float] = []
    clock = time.perf_counter

    async def worker(deadline: float) -> None:
        while clock() < deadline:
            start = clock()
            await send(url)
            latencies.append(clock() - start)

    async with trio.open_nursery() as nursery:  # warm-up: open the pool's connections
        for _ in range(concurrency):
            nursery.start_soon(worker, clock() + min(0.3, duration / 5))
    latencies.clear()
    async with trio.open_nursery() as nursery:
        deadline = clock() + duration
        for _ in range(concurrency):
            nursery.start_soon(worker, deadline)
    return latencies


def _via_transport(transport: httpx.AsyncBaseTransport) -> _Send:
    async def send(url: str) -> None:
        response = await transport.handle_async_request(httpx.Request("GET", url))
        await response.aread()
        if response.status_code != 200:
            raise RuntimeError(f"unexpected status {response.status_code}")

    return send


def _via_client(client: httpx.AsyncClient) -> _Send:
    async def send(url: str) -> None:
        response = await client.get(url)
        if response.status_code != 200:
            raise RuntimeError(f"unexpected status {response.status_code}")

    return send


async def _run_row(kind: str, url: str, concurrency: int, duration: float) -> list[float]:
    # Imported here so the server subprocess does not load edge at all.
    from edge.transport import LeanTransport

    if kind == "LeanTransport":
        lean = LeanTransport()
        try:
            return await _measure(_via_transport(lean), url, concurrency, duration)
        finally:
            await lean.aclose()
    if kind == "httpx.AsyncHTTPTransport":
        async with httpx.AsyncHTTPTransport() as transport:
            return await _measure(_via_transport(transport), url, concurrency, duration)
    async with httpx.AsyncClient() as client:
        return await _measure(_via_client(client), url, concurrency, duration)


_KINDS = ("LeanTransport", "httpx.AsyncHTTPTransport", "httpx.AsyncClient")


def _percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, int(fraction * len(sorted_values)))
    return sorted_values[index]


async def _bench(url: str, levels: list[int], duration: float, rounds: int) -> None:
    best: dict[tuple[str, int], tuple[float, float, float]] = {}
    for _ in range(rounds):
        for concurrency in levels:
            for kind in _KINDS:
                latencies = await _run_row(kind, url, concurrency, duration)
                rps = len(latencies) / duration
                ordered = sorted(latencies)
                row = (rps, statistics.median(ordered) * 1e3, _percentile(ordered, 0.99) * 1e3)
                if (kind, concurrency) not in best or rps > best[(kind, concurrency)][0]:
                    best[(kind, concurrency)] = row
    header = (
        f"{'client':<26} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'vs httpx transport':>19}"
    )
    print(header)
    print("-" * len(header))
    for concurrency in levels:
        baseline = best[("httpx.AsyncHTTPTransport", concurrency)][0]
        for kind in _KINDS:
            rps, p50, p99 = best[(kind, concurrency)]
            print(
                f"{kind:<26} {concurrency:>4} {rps:>8.0f} {p50:>8.3f} {p99:>8.3f} "
                f"{rps / baseline:>18.2f}x"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.transport", description=__doc__)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per row")
    parser.add_argument("--concurrency", type=int, default=32, help="tasks in the concurrent rows")
    parser.add_argument("--rounds", type=int, default=1, help="repeat, keep the best round")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        trio.run(_serve, args.serve)
        return 0

    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.transport", "--serve", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        print(
            f"interpreter: {platform.python_implementation()} {platform.python_version()} "
            f"({sys.executable}); cpus: {os.cpu_count()}; httpx {httpx.__version__}; "
            f"trio {trio.__version__}"
        )
        print(
            f"server: trio keep-alive subprocess, {len(_BODY)}-byte JSON body; "
            f"{args.duration:g}s per row, best of {args.rounds} round(s)"
        )
        trio.run(_bench, url, [1, args.concurrency], args.duration, args.rounds)
    finally:
        server.terminate()
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
