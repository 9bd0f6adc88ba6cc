"""Hostile input: hypothesis drives the ASGI app in process, and raw sockets probe the
limits the real server (Hypercorn) enforces.

What must hold for any input (SPEC §4 "Errors"): never a 500; every error in the documented
format (OpenAI's `{"error": {message, type, param, code}}`, Anthropic's on /v1/messages);
every response carries `x-request-id`; and a normal request still succeeds afterwards.

The app runs on its own Trio loop in a thread, opened once for the module (the service, and
the bundled mock upstream started in process); each example is one ASGI call made through
`trio.from_thread.run`, so hypothesis stays synchronous and examples stay cheap.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
from _servers import EdgeProcess, MockUpstream
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from edge import build_app
from edge.app import EdgeApp
from edge.config import load_config
from edge.logs import log
from edge.mock_upstream import MockOptions, serve_mock
from edge.service import open_edge

MAX_BODY = 65536
CLIENT_KEY = "edge-fuzz-client-key"
ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings", "/v1/messages")
FUZZ = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def config_text(mock_port: int) -> str:
    return f"""
[server]
max_request_bytes = {MAX_BODY}

[auth]
allow_anonymous = true
keys = [ {{ name = "fuzz", key = "env:FUZZ_KEY", rpm = 1000000, tpm = 1000000000 }} ]

[routing]
max_attempts = 2
breaker_failures = 100000   # scripted failures must not open circuits: the last check needs one

[[providers]]
name = "mock"
kind = "openai"
base_url = "http://127.0.0.1:{mock_port}/v1"
api_key = "env:MOCK_KEY"
models = ["gpt-*", "text-embedding-*"]
timeout_s = 10

[[providers]]
name = "mock-claude"
kind = "anthropic"
base_url = "http://127.0.0.1:{mock_port}"
api_key = "env:MOCK_KEY"
models = ["claude-*"]
timeout_s = 10
"""


@dataclass
class Reply:
    status: int
    headers: dict[bytes, bytes]
    body: bytes
    starts: int  # http.response.start messages sent (exactly one is correct)


class InProcess:
    """The ASGI app and its service on a Trio loop in a background thread."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.app: EdgeApp | None = None
        self.token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            raise RuntimeError(f"in-process edge did not start: {self._error!r}")

    def stop(self) -> None:
        if self._stop is not None and self.token is not None:
            trio.from_thread.run_sync(self._stop.set, trio_token=self.token)
        self._thread.join(30)

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported to the test through start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_mock, MockOptions())
            path = self.tmp / "edge.toml"
            path.write_text(config_text(port))
            config = load_config(path, env={"FUZZ_KEY": CLIENT_KEY, "MOCK_KEY": "sk-fuzz"})
            app = build_app(config)
            async with open_edge(config, app.metrics) as edge:
                app.edge = edge
                self.app = app
                self._stop = trio.Event()
                self.token = trio.lowlevel.current_trio_token()
                self._ready.set()
                await self._stop.wait()
            nursery.cancel_scope.cancel()

    def call(self, method: str, path: str, headers: list[tuple[bytes, bytes]],
             chunks: list[bytes]) -> Reply:
        assert self.app is not None
        assert self.token is not None
        return trio.from_thread.run(asgi_call, self.app, method, path, headers, chunks,
                                    trio_token=self.token)

    def normal_request_works(self) -> None:
        body = orjson.dumps({"model": "gpt-4o",
                             "messages": [{"role": "user", "content": "still alive?"}]})
        reply = self.call("POST", "/v1/chat/completions",
                          [(b"content-type", b"application/json"),
                           (b"authorization", b"Bearer " + CLIENT_KEY.encode()),
                           (b"cache-control", b"no-store")], [body])
        assert reply.status == 200, reply.body
        answer = orjson.loads(reply.body)
        assert answer["choices"][0]["message"]["content"] == "Mock reply to: still alive?"


async def asgi_call(app: EdgeApp, method: str, path: str, headers: list[tuple[bytes, bytes]],
                    chunks: list[bytes]) -> Reply:
    """One HTTP exchange as Hypercorn would drive it: the body in `chunks`, then, once
    the response is complete, a disconnect."""
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1", "method": method, "scheme": "http", "path": path,
        "raw_path": path.encode("utf-8", "surrogateescape"), "query_string": b"",
        "root_path": "", "headers": headers, "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8080), "extensions": {},
    }
    pending = [{"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
               for i, chunk in enumerate(chunks)] or [{"type": "http.request", "body": b""}]
    done = trio.Event()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            done.set()

    with trio.fail_after(30):  # a hang is a failure too
        await app(scope, receive, send)
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert starts, f"no response for {method} {path}"
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return Reply(starts[0]["status"], dict(starts[0]["headers"]), body, len(starts))


def assert_documented(reply: Reply, path: str) -> None:
    """The response contract for any input."""
    if currently_in_test_context():
        event(f"{path} -> {reply.status}")  # the spread, in hypothesis's statistics
    assert reply.starts == 1
    assert reply.status != 500, reply.body
    assert reply.status < 600, reply.body
    assert reply.headers.get(b"x-request-id")
    ctype = reply.headers.get(b"content-type", b"")
    if reply.status >= 400:
        assert ctype == b"application/json", (reply.status, ctype)
        error = orjson.loads(reply.body)
        if path == "/v1/messages":
            assert set(error) == {"type", "error"}
            assert error["type"] == "error"
            assert isinstance(error["error"]["type"], str)
            assert isinstance(error["error"]["message"], str)
            assert error["error"]["message"]
        else:
            assert set(error) == {"error"}
            inner = error["error"]
            assert set(inner) == {"message", "type", "param", "code"}, inner
            assert isinstance(inner["message"], str)
            assert inner["message"]
            assert isinstance(inner["type"], str)
            assert inner["param"] is None or isinstance(inner["param"], str)
            assert inner["code"] is None or isinstance(inner["code"], str)
        return
    if ctype.startswith(b"text/event-stream"):
        # a stream ends cleanly or with an error event, never just stops
        tail = reply.body.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
        assert (tail == b"data: [DONE]" or b"message_stop" in tail or b'"error"' in tail), tail
    elif ctype == b"application/json":
        assert isinstance(orjson.loads(reply.body), dict)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    threshold = log.threshold
    log.threshold = 40  # one info line per request would drown the test output
    running = InProcess(tmp_path_factory.mktemp("fuzz"))
    running.start()
    try:
        yield running
    finally:
        running.stop()
        log.threshold = threshold


# -- strategies ---------------------------------------------------------------------------
# Mostly well-formed requests with a few fields replaced by arbitrary JSON, so examples get
# past validation into routing, the cache, translation and the upstream; plus arbitrary JSON.

scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                 max_size=4),
    max_leaves=16,
)
# Scripted upstream behaviour (edge/mock_upstream.py): failures, cut streams, bad JSON.
texts = st.text(max_size=40) | st.sampled_from([
    "!mock status=500", "!mock status=429 retry_after=0", "!mock status=400", "!mock close=1",
    "!mock cut_after=1", "!mock invalid=1", "!mock words=3", "!mock status=503", "",
])
chat_models = st.sampled_from(["gpt-4o", "gpt-4o-mini", "claude-3-5-haiku-latest",
                               "anthropic/claude-3-5-haiku-latest", "mock/gpt-4o",
                               "unknown-model"])
openai_tools = st.lists(st.fixed_dictionaries({
    "type": st.just("function"),
    "function": st.fixed_dictionaries({"name": st.sampled_from(["f", "lookup"])},
                                      optional={"parameters": json_values})}), max_size=2)
chat_bodies = st.fixed_dictionaries(
    {"model": chat_models,
     "messages": st.lists(st.fixed_dictionaries({
         "role": st.sampled_from(["user", "user", "assistant", "system", "tool"]),
         "content": texts}), min_size=1, max_size=3)},
    optional={"stream": st.booleans(), "max_tokens": st.integers(1, 16),
              "temperature": st.floats(0, 2), "n": st.integers(1, 2),
              "stop": st.lists(st.text(max_size=3), max_size=2),
              "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
              "tools": openai_tools, "tool_choice": st.sampled_from(["auto", "none"]),
              "seed": st.integers(0, 9), "user": st.text(max_size=8)})
blocks = st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": texts}),
                  min_size=1, max_size=2)
messages_bodies = st.fixed_dictionaries(
    {"model": chat_models, "max_tokens": st.integers(1, 16),
     "messages": st.lists(st.fixed_dictionaries({
         "role": st.sampled_from(["user", "user", "assistant"]), "content": texts | blocks}),
         min_size=1, max_size=3)},
    optional={"stream": st.booleans(), "system": texts | blocks,
              "temperature": st.floats(0, 1), "stop_sequences": st.lists(st.text(max_size=3),
                                                                          max_size=2),
              "tools": st.lists(st.fixed_dictionaries({
                  "name": st.sampled_from(["f", "lookup"]),
                  "input_schema": st.just({"type": "object"}) | json_values}), max_size=2)})
embeddings_bodies = st.fixed_dictionaries(
    {"model": st.sampled_from(["text-embedding-3-small", "text-embedding-3-large", "gpt-4o"]),
     "input": texts | st.lists(texts, min_size=1, max_size=3)
     | st.lists(st.integers(0, 50_000), min_size=1, max_size=5)},
    optional={"dimensions": st.integers(1, 16),
              "encoding_format": st.sampled_from(["float", "base64"])})
REMOVE = object()


@st.composite
def mutated(draw: st.DrawFn, bodies: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    """A well-formed body with up to two fields replaced by arbitrary JSON or removed."""
    body = draw(bodies)
    for _ in range(draw(st.integers(0, 2))):
        field = draw(st.sampled_from(sorted(body)) | st.text(max_size=10))
        value = draw(json_values | st.just(REMOVE))
        if value is REMOVE:
            body.pop(field, None)
        else:
            body[field] = value
    return body


requests = (st.tuples(st.just("/v1/chat/completions"), mutated(chat_bodies))
            | st.tuples(st.just("/v1/messages"), mutated(messages_bodies))
            | st.tuples(st.just("/v1/embeddings"), mutated(embeddings_bodies))
            | st.tuples(st.sampled_from(ENDPOINTS), json_values))
header_values = st.binary(max_size=48) | st.sampled_from(
    [b"Bearer " + CLIENT_KEY.encode(), b"Bearer wrong", b"no-cache", b"no-store", b"0", b"-1",
     b"99999999999999999999", b"9" * 5000, b"application/json", b"\xff\xfe"])
headers = st.lists(
    st.tuples(st.sampled_from([b"authorization", b"x-api-key", b"cache-control",
                               b"x-edge-cache-ttl", b"x-request-id", b"content-type",
                               b"content-length", b"traceparent", b"anthropic-version",
                               b"x-something"]), header_values),
    max_size=4)


def split(body: bytes, cuts: list[int]) -> list[bytes]:
    """`body` in pieces at the given offsets (as a client sending small frames would)."""
    points = sorted({c % (len(body) + 1) for c in cuts})
    pieces, last = [], 0
    for point in points:
        pieces.append(body[last:point])
        last = point
    pieces.append(body[last:])
    return pieces


# -- in process ---------------------------------------------------------------------------


def test_fuzz_json_requests(stack: InProcess) -> None:
    @FUZZ
    @given(request=requests, extra=headers, cuts=st.lists(st.integers(0, 10_000), max_size=3))
    def run(request: tuple[str, Any], extra: list[tuple[bytes, bytes]],
            cuts: list[int]) -> None:
        path, body = request
        raw = json.dumps(body, ensure_ascii=False).encode()  # big ints too, unlike orjson
        reply = stack.call("POST", path, [(b"content-type", b"application/json"), *extra],
                           split(raw, cuts))
        assert_documented(reply, path)

    run()
    stack.normal_request_works()


def test_fuzz_raw_bytes(stack: InProcess) -> None:
    @FUZZ
    @given(path=st.sampled_from(ENDPOINTS), raw=st.binary(max_size=512) | st.sampled_from([
        b"", b"{", b"[]", b"null", b'{"model": "gpt-4o"', b'{"model": "gpt-4o", "model": 1}',
        b'{"model":"gpt-4o","messages":[{"role":"user","content":"\xff\xfe"}]}',
        b"\xef\xbb\xbf{}", b'"\\ud800"', b"1e999999", b"-" * 400]),
        extra=headers, cuts=st.lists(st.integers(0, 10_000), max_size=3))
    def run(path: str, raw: bytes, extra: list[tuple[bytes, bytes]], cuts: list[int]) -> None:
        reply = stack.call("POST", path, extra, split(raw, cuts))
        assert_documented(reply, path)

    run()
    stack.normal_request_works()


def test_fuzz_methods_and_paths(stack: InProcess) -> None:
    @settings(FUZZ, max_examples=60)
    @given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS",
                                   "TRACE", "BREW"]),
           path=st.sampled_from([*ENDPOINTS, "/v1/models", "/health", "/health/live",
                                 "/health/ready", "/metrics", "/", "/v1", "/v1/", "//v1/models",
                                 "/v1/chat/completions/", "/V1/MODELS"])
           | st.text(max_size=40).map(lambda s: "/" + s),
           extra=headers)
    def run(method: str, path: str, extra: list[tuple[bytes, bytes]]) -> None:
        reply = stack.call(method, path, extra, [b""])
        assert_documented(reply, path)
        assert reply.status in (200, 400, 401, 404, 405, 413), reply.status

    run()
    stack.normal_request_works()


def chat_headers() -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json"),
            (b"authorization", b"Bearer " + CLIENT_KEY.encode())]


@pytest.mark.parametrize("declared", [False, True], ids=["chunked", "content-length"])
def test_body_over_the_limit_is_413(stack: InProcess, declared: bool) -> None:
    chunks = [b"x" * 8192] * (MAX_BODY // 8192 + 1)
    extra = [(b"content-length", str(MAX_BODY + 8192).encode())] if declared else []
    for path in ENDPOINTS:
        reply = stack.call("POST", path, [*chat_headers(), *extra], chunks)
        assert reply.status == 413
        assert_documented(reply, path)
    stack.normal_request_works()


@pytest.mark.parametrize("depth", [65, 1000, 20_000])
def test_deep_nesting_is_400(stack: InProcess, depth: int) -> None:
    nested = b'{"model":"gpt-4o","messages":' + b"[" * depth + b"]" * depth + b"}"
    for path in ENDPOINTS:
        reply = stack.call("POST", path, chat_headers(), [nested])
        assert reply.status == 400, reply.body
        assert_documented(reply, path)
    stack.normal_request_works()


def test_non_utf8_and_odd_encodings_are_400(stack: InProcess) -> None:
    for raw in (b"\xff\xfe{\x00}", "{}".encode("utf-16"), b'{"model": "gpt-4o\xc3\x28"}',
                b'{"model":"gpt-4o","messages":[{"role":"user","content":"\\udc80"}]}'):
        for path in ENDPOINTS:
            reply = stack.call("POST", path, chat_headers(), [raw])
            assert_documented(reply, path)
            assert reply.status in (400, 502), (raw, reply.body)  # 502: upstream refused it
    stack.normal_request_works()


# -- through the real server (limits Hypercorn enforces) ------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeProcess]:
    tmp = tmp_path_factory.mktemp("served")
    mock = MockUpstream(tmp)
    edge = EdgeProcess(tmp, config=config_text(mock.port), env={"FUZZ_KEY": CLIENT_KEY,
                                                                  "MOCK_KEY": "sk-fuzz"})
    yield edge
    edge.stop()
    mock.stop()


def exchange(edge: EdgeProcess, data: bytes) -> tuple[int | None, bytes]:
    """Send raw bytes on a fresh connection; (status, body) of the answer, or (None, b"")
    if the server closed the connection without one."""
    with socket.create_connection(("127.0.0.1", edge.port), timeout=15) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass  # the server may stop reading and close once it has answered
        received = b""
        while True:
            try:
                part = sock.recv(65536)
            except OSError:
                break
            if not part:
                break
            received += part
            head, sep, body = received.partition(b"\r\n\r\n")
            if sep and _complete(head, body):
                break
    if not received.startswith(b"HTTP/1.1 "):
        return None, b""
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head[9:12]), body


def _complete(head: bytes, body: bytes) -> bool:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def request_bytes(path: str, body: bytes, extra: bytes = b"", chunked: bool = False) -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nhost: edge\r\ncontent-type: application/json\r\n"
            f"authorization: Bearer {CLIENT_KEY}\r\nconnection: close\r\n").encode() + extra
    if chunked:
        framed = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 4096]), body[i:i + 4096])
                          for i in range(0, len(body), 4096))
        return head + b"transfer-encoding: chunked\r\n\r\n" + framed + b"0\r\n\r\n"
    return head + b"content-length: %d\r\n\r\n" % len(body) + body


def still_serving(edge: EdgeProcess) -> None:
    body = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "ok?"}]})
    status, answer = exchange(edge, request_bytes("/v1/chat/completions", body))
    assert status == 200, answer
    assert edge.alive()


HEADER_FLOODS = {
    "many-headers": b"".join(b"x-h%d: v\r\n" % i for i in range(20_000)),
    "huge-header": b"x-big: " + b"a" * 300_000 + b"\r\n",
}


@pytest.mark.parametrize("flood", list(HEADER_FLOODS), ids=list(HEADER_FLOODS))
def test_header_floods_are_refused(served: EdgeProcess, flood: str) -> None:
    status, _ = exchange(served, request_bytes("/v1/chat/completions", b"{}",
                                               HEADER_FLOODS[flood]))
    assert status in (None, 400, 431)  # Hypercorn's own answer, before edge sees anything
    still_serving(served)


def test_huge_request_line_is_refused(served: EdgeProcess) -> None:
    status, _ = exchange(served, b"GET /" + b"a" * 300_000 + b" HTTP/1.1\r\nhost: e\r\n\r\n")
    assert status in (None, 400, 414, 431)
    still_serving(served)


def test_garbage_instead_of_http_is_refused(served: EdgeProcess) -> None:
    status, _ = exchange(served, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64)
    assert status in (None, 400)
    still_serving(served)


@pytest.mark.parametrize("path", ENDPOINTS)
def test_chunked_body_over_the_limit_is_413_in_format(served: EdgeProcess, path: str) -> None:
    status, body = exchange(served, request_bytes(path, b"x" * (MAX_BODY * 2), chunked=True))
    assert status == 413
    error = orjson.loads(body)
    assert error["error"]["type"] in ("invalid_request_error", "request_too_large")
    still_serving(served)


def test_non_utf8_and_deep_bodies_through_the_server(served: EdgeProcess) -> None:
    deep = b'{"model":"gpt-4o","messages":' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    for body in (b"\xff\xfe\xfd", b'{"model":"gpt-4o\xc3\x28"}', deep):
        status, answer = exchange(served, request_bytes("/v1/chat/completions", body))
        assert status == 400, answer
        assert set(orjson.loads(answer)["error"]) == {"message", "type", "param", "code"}
    still_serving(served)
