"""A scriptable in-test provider: each test says what every upstream call gets back.

`edge mock-upstream` covers the usual faults; some answers it cannot give (a 200 `{}`,
a stream of megabytes in big events) are scripted here instead. `FakeUpstream(reply)`
serves real HTTP/1.1 on a free loopback port; `reply(path, body)` returns a `Reply`
whose body is bytes, or an iterable of bytes sent as HTTP chunks as it produces them
(a stream, which the upstream can also end early: it stops at the iterator's end).
"""

from __future__ import annotations

import collections
import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FakeUpstream", "Reply", "chat_chunk", "sse"]


@dataclass
class Reply:
    body: bytes | Iterable[bytes]
    status: int = 200
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def sse(data: dict[str, Any] | str, event: str | None = None) -> bytes:
    """One server-sent event; `data` as JSON unless it is already text (e.g. "[DONE]")."""
    text = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event is not None else ""
    return f"{head}data: {text}\n\n".encode()


def chat_chunk(content: str | None = None, finish: str | None = None,
               usage: dict[str, int] | None = None) -> dict[str, Any]:
    """A `chat.completion.chunk` with one choice (none if it only carries `usage`)."""
    chunk: dict[str, Any] = {"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                             "created": 1, "model": "gpt-4o"}
    if usage is not None:
        chunk["choices"], chunk["usage"] = [], usage
    else:
        delta = {"content": content} if content is not None else {}
        chunk["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
    return chunk


class FakeUpstream:
    """Serves until `close()`; `calls[path]` counts the POSTs each path received."""

    def __init__(self, reply: Callable[[str, dict[str, Any]], Reply]) -> None:
        self.reply = reply
        self.calls: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def answer(self, path: str, headers: dict[str, str], raw: bytes) -> Reply:
        """The reply to one POST; a subclass that needs the headers or the raw body
        (signatures, key checks) answers here instead of through `reply`."""
        return self.reply(path, json.loads(raw))

    def count(self, path: str) -> int:
        with self._lock:
            return self.calls[path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # each write goes out at once, as servers do

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return

            def do_POST(self) -> None:  # noqa: N802 - stdlib's name
                raw = self.rfile.read(int(self.headers.get("content-length", "0")))
                with fake._lock:
                    fake.calls[self.path] += 1
                headers = {name.lower(): value for name, value in self.headers.items()}
                reply = fake.answer(self.path, headers, raw)
                self.send_response(reply.status)
                self.send_header("content-type", reply.content_type)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if isinstance(reply.body, bytes):
                    self.send_header("content-length", str(len(reply.body)))
                    # head and body in one write, as real servers send a small answer
                    self._headers_buffer.extend([b"\r\n", reply.body])  # type: ignore[attr-defined]
                    self.flush_headers()
                    return
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                try:
                    for part in reply.body:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:
                    self.close_connection = True  # edge hung up: that is the point of some tests

        return Handler
