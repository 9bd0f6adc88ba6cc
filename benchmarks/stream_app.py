"""The streaming ceiling: a bare Hypercorn-Trio ASGI app that streams a paced answer itself.

`benchmarks.streams` puts it beside edge: it does what a proxy's server layer cannot avoid
(accept, parse, one ASGI message per event) and nothing else, so edge's first-event time
and lateness are read against it. It streams the chat frames the paced mock sends (a
role frame, N content events T ms apart, a finish frame, `[DONE]`), each event its own
`http.response.body` message, the wake-ups set from the stream's start as the mock does.

Run it alone with ``python -m benchmarks.stream_app --port 8002 --tokens 50 --token-ms 20``.
"""

from __future__ import annotations

import argparse
import sys

import orjson
import trio
from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, Scope

from benchmarks.bare_app import serve_app

_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache")]


def _frame(delta: dict[str, str], finish: str | None = None) -> bytes:
    chunk = {"id": "chatcmpl-bare", "object": "chat.completion.chunk", "created": 0,
             "model": "gpt-4o-mini",
             "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def make_app(tokens: int, token_ms: float) -> ASGIFramework:
    """The app: every POST gets the same paced stream, whatever its body says."""
    lead = _frame({"role": "assistant", "content": ""})
    words = [_frame({"content": f"w{i} "}) for i in range(tokens)]
    tail = _frame({}, "stop") + b"data: [DONE]\n\n"
    pace = token_ms / 1000.0

    async def app(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})  # type: ignore[typeddict-item]
            await send({"type": "lifespan.shutdown.complete"})  # type: ignore[typeddict-item]
            return
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body", False):  # type: ignore[union-attr]
            pass
        if scope["method"] == "GET":  # the readiness probe
            await send({"type": "http.response.start", "status": 200, "headers": [],
                        "trailers": False})
            await send({"type": "http.response.body", "body": b"ok", "more_body": False})
            return
        await send({"type": "http.response.start", "status": 200, "headers": _HEADERS,
                    "trailers": False})
        start = trio.current_time()
        for index, word in enumerate(words):
            if index:
                await trio.sleep_until(start + index * pace)
            body = lead + word if index == 0 else word
            if index == tokens - 1:
                body += tail
            await send({"type": "http.response.body", "body": body,
                        "more_body": index < tokens - 1})

    return app  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    """Parse flags and serve until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stream_app", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--tokens", type=int, default=50)
    parser.add_argument("--token-ms", type=float, default=20.0)
    args = parser.parse_args(argv)
    # The backlog edge listens with, so neither refuses a burst the other would take.
    trio.run(serve_app, make_app(args.tokens, args.token_ms), args.host, args.port,
             "stream app", 1024)
    return 0


if __name__ == "__main__":
    sys.exit(main())
