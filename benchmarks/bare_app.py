"""The ceiling: the cheapest ASGI app Hypercorn's Trio worker can serve.

Whatever edge does per request costs on top of this, so the yardstick reports every
target as a ratio of this app's throughput measured in the same run. It reads the
request body (clients post JSON) and answers a fixed JSON body the size of a mock chat
completion; ``--body-file`` makes it answer exactly the bytes the mock upstream sent.

Run it alone with ``python -m benchmarks.bare_app --port 8001``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGISendCallable,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Scope,
)

# Shaped like a non-streaming chat completion from the mock upstream, so the bytes on
# the wire are comparable when no --body-file is given.
DEFAULT_BODY: bytes = json.dumps(
    {
        "id": "chatcmpl-bench0000000000000000000000",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "This is a deterministic reply from the benchmark ceiling app.",
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 24, "completion_tokens": 12, "total_tokens": 36},
        "system_fingerprint": "fp_bench",
    },
    separators=(",", ":"),
).encode()


def make_app(body: bytes) -> ASGIFramework:
    """Build the app around one pre-encoded body; headers are built once, not per request."""
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": 200,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
    }
    finish: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body,
                                     "more_body": False}

    async def app(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        # Drain the request body: a real handler has to, and skipping it would flatter
        # the ceiling.
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            if not message["more_body"]:
                break
        await send(start)
        await send(finish)

    return app


async def serve_app(app: ASGIFramework, host: str, port: int, label: str,
                    backlog: int | None = None) -> None:
    """Serve `app` on Hypercorn's Trio worker until SIGINT or SIGTERM (shared with
    `benchmarks.stream_app`, so both ceilings run on exactly the same server setup)."""
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = "-"
    config.loglevel = "WARNING"
    if backlog is not None:
        config.backlog = backlog
    shutdown = trio.Event()

    async def wait_for_signal() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                shutdown.set()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait_for_signal)
        bound = await nursery.start(
            lambda task_status: serve(
                app, config, shutdown_trigger=shutdown.wait, task_status=task_status
            )
        )
        print(f"{label} listening on {', '.join(bound)}", file=sys.stderr, flush=True)
        await shutdown.wait()
        nursery.cancel_scope.deadline = trio.current_time() + 5


def main(argv: list[str] | None = None) -> int:
    """Parse flags and serve until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bare_app", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument(
        "--body-file", type=Path, help="answer these bytes instead of the built-in completion"
    )
    args = parser.parse_args(argv)
    body = args.body_file.read_bytes() if args.body_file else DEFAULT_BODY
    trio.run(serve_app, make_app(body), args.host, args.port, "bare app")
    return 0


if __name__ == "__main__":
    sys.exit(main())
