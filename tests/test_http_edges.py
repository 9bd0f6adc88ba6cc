"""HTTP/1.1 at the edges, through a real `edge serve` (RFC 9112, SECURITY.md "Limits on input").

edge runs here with small client bounds (`keep_alive_timeout_s`, `request_body_timeout_s`
of 1.5 s) so the tests can show both sides of them quickly:

- an answer still in progress is never cut: a paced upstream streams OpenAI chat chunks
  and a delayed JSON answer for several times the bounds, and all of it arrives;
- a client that owes edge something is: a body trickling in gets 408, an idle
  connection is closed at the configured keep-alive value;
- and the head rules: Content-Length with Transfer-Encoding is refused and the
  connection closed, `Expect: 100-continue` is answered only after auth and the size
  check, a head over 64 KiB gets 431, an absolute-form target is routed like its path.

The probes use raw sockets: the framing, the interim `100 Continue` and the closing of
the connection are exactly what a client library would hide.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from _servers import EdgeProcess, MockUpstream

from edge.config import load_config
from edge.request_head import MAX_HEAD_BYTES
from edge.server import hypercorn_config

CLIENT_KEY = "edge-test-client-key-http"
BOUND_S = 1.5  # keep_alive_timeout_s and request_body_timeout_s of the edge under test
PACE_S = 0.5  # the paced upstream's gap between stream chunks
EVENTS = 10  # chunks in the paced stream: 5 s of streaming, over three times the bounds
JSON_DELAY_S = 5.0  # the paced upstream's silence before a JSON answer
DEADLINE_S = 30.0  # generous: the machine is shared and busy


class PacedUpstream(BaseHTTPRequestHandler):
    """OpenAI's chat completions, slowly: a stream at one chunk per PACE_S, or a JSON
    answer after JSON_DELAY_S. The waits are the behaviour under test, not synchronisation."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
        return

    def do_POST(self) -> None:  # noqa: N802 - stdlib's name
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
        head = {"id": "chatcmpl-paced", "created": 1, "model": body["model"]}
        if not body.get("stream"):
            time.sleep(JSON_DELAY_S)
            answer = json.dumps({**head, "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "late but whole"},
                 "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}})
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer.encode())
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for i in range(EVENTS):
            delta: dict[str, Any] = {"content": f"w{i} "}
            if i == 0:
                delta["role"] = "assistant"
            self.chunk({**head, "object": "chat.completion.chunk",
                        "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
            time.sleep(PACE_S)
        self.chunk({**head, "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        self.chunk({**head, "object": "chat.completion.chunk", "choices": [],
                    "usage": {"prompt_tokens": 3, "completion_tokens": EVENTS,
                              "total_tokens": 3 + EVENTS}})
        self.frame(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")

    def chunk(self, data: dict[str, Any]) -> None:
        self.frame(f"data: {json.dumps(data)}\n\n".encode())

    def frame(self, payload: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(payload), payload))
        self.wfile.flush()


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeProcess]:
    tmp = tmp_path_factory.mktemp("http-edges")
    paced = ThreadingHTTPServer(("127.0.0.1", 0), PacedUpstream)
    paced.daemon_threads = True
    thread = threading.Thread(target=paced.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    mock = MockUpstream(tmp)
    config = f"""
[server]
max_request_bytes = 65536
keep_alive_timeout_s = {BOUND_S}
request_body_timeout_s = {BOUND_S}

[auth]
keys = [ {{ name = "tester", key = "env:CLIENT_KEY" }} ]

[cache]
enabled = false

[[providers]]
name = "paced"
kind = "openai"
base_url = "http://127.0.0.1:{paced.server_address[1]}/v1"
models = ["paced-*"]

[[providers]]
name = "mock"
kind = "openai"
base_url = "{mock.url}/v1"
api_key = "env:MOCK_KEY"
models = ["gpt-*"]
"""
    proc = EdgeProcess(tmp, config=config,
                       env={"CLIENT_KEY": CLIENT_KEY, "MOCK_KEY": "sk-mock-provider-key"})
    yield proc
    proc.stop()
    mock.stop()
    paced.shutdown()
    paced.server_close()


# -- a raw HTTP/1.1 client ---------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> dict[str, Any]:
        assert self.headers["content-type"] == "application/json"
        error: dict[str, Any] = json.loads(self.body)["error"]
        return error


class Raw:
    """One TCP connection to edge, read with a deadline on every wait."""

    def __init__(self, edge: EdgeProcess) -> None:
        self.sock = socket.create_connection(("127.0.0.1", edge.port), timeout=DEADLINE_S)
        self.reader = self.sock.makefile("rb")

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.reader.close()
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> Response:
        """The next response; an interim 1xx is returned like any other."""
        status_line = self.reader.readline()
        assert status_line.startswith(b"HTTP/1.1 "), f"no response, got {status_line!r}"
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        for _ in range(200):
            line = self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = b""
        if "content-length" in headers:
            body = self.reader.read(int(headers["content-length"]))
        return Response(status, headers, body)

    def closed(self) -> bool:
        """True once edge has closed the connection (EOF) within the deadline."""
        try:
            return self.reader.read(1) == b""
        except ConnectionResetError:
            return True


def chat_body(model: str = "gpt-4o", text: str = "hi", **extra: Any) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": text}],
                       **extra}).encode()


def post_head(body_size: int, *, key: str = CLIENT_KEY, target: str = "/v1/chat/completions",
              extra: str = "") -> bytes:
    return (f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {body_size}\r\n{extra}\r\n"
            ).encode()


# -- item 1: answers in progress are never cut -------------------------------------------


def test_stream_outlives_the_client_bounds(edge: EdgeProcess) -> None:
    """Every chunk and [DONE] arrive though the stream lasts over three times the bounds."""
    body = chat_body("paced-reasoner", stream=True)
    contents: list[str] = []
    done = False
    with httpx.stream("POST", f"{edge.url}/v1/chat/completions", content=body,
                      headers={"authorization": f"Bearer {CLIENT_KEY}",
                               "content-type": "application/json"},
                      timeout=DEADLINE_S) as reply:
        assert reply.status_code == 200
        assert reply.headers["x-edge-provider"] == "paced"
        for line in reply.iter_lines():
            if not line.startswith("data: "):
                continue
            assert not done, "data after [DONE]"
            data = line[len("data: "):]
            if data == "[DONE]":
                done = True
                continue
            event = json.loads(data)
            assert "error" not in event, event
            for choice in event["choices"]:
                if choice["delta"].get("content"):
                    contents.append(choice["delta"]["content"])
    assert contents == [f"w{i} " for i in range(EVENTS)]
    assert done


def test_json_answer_outlives_the_client_bounds(edge: EdgeProcess) -> None:
    """An upstream silent for over three times the bounds still gets its answer through."""
    reply = httpx.post(f"{edge.url}/v1/chat/completions", content=chat_body("paced-reasoner"),
                       headers={"authorization": f"Bearer {CLIENT_KEY}",
                                "content-type": "application/json"}, timeout=DEADLINE_S)
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == "late but whole"


def test_hypercorn_has_no_read_timeout(tmp_path: Path) -> None:
    """The bounds reach Hypercorn as keep-alive only; no timeout on reads mid-answer."""
    (tmp_path / "edge.toml").write_text("[server]\nkeep_alive_timeout_s = 12.5\n")
    hc = hypercorn_config(load_config(tmp_path / "edge.toml", env={},
                                      require_providers=False))
    assert hc.read_timeout is None
    assert hc.keep_alive_timeout == 12.5
    assert hc.h11_max_incomplete_size == MAX_HEAD_BYTES


# -- item 11: the edges of HTTP/1.1 ------------------------------------------------------


def test_content_length_with_transfer_encoding_is_refused_and_closed(edge: EdgeProcess) -> None:
    body = chat_body()
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    smuggled = (b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Authorization: Bearer " + CLIENT_KEY.encode() + b"\r\n\r\n")
    with Raw(edge) as conn:
        conn.send(post_head(len(body), extra="Transfer-Encoding: chunked\r\n")
                  + chunked + smuggled)
        reply = conn.response()
        assert reply.status == 400
        assert reply.error()["code"] == "ambiguous_framing"
        assert reply.headers["connection"] == "close"
        assert conn.closed(), "the pipelined request after it must never be served"


def test_expect_continue_with_a_wrong_key_gets_401_and_no_100(edge: EdgeProcess) -> None:
    body = chat_body()
    with Raw(edge) as conn:
        conn.send(post_head(len(body), key="wrong-key", extra="Expect: 100-continue\r\n"))
        reply = conn.response()
        assert reply.status == 401
        assert reply.error()["type"] == "authentication_error"


def test_expect_continue_over_the_size_limit_gets_413_and_no_100(edge: EdgeProcess) -> None:
    with Raw(edge) as conn:
        conn.send(post_head(10_000_000, extra="Expect: 100-continue\r\n"))
        reply = conn.response()
        assert reply.status == 413
        assert reply.error()["code"] == "request_too_large"


def test_expect_continue_good_request_gets_100_then_the_answer(edge: EdgeProcess) -> None:
    body = chat_body(text="after continue")
    with Raw(edge) as conn:
        conn.send(post_head(len(body), extra="Expect: 100-continue\r\n"))
        interim = conn.response()
        assert interim.status == 100
        conn.send(body)
        reply = conn.response()
        assert reply.status == 200, reply.body
        answer = json.loads(reply.body)
        assert answer["choices"][0]["message"]["content"] == "Mock reply to: after continue"


def test_a_head_over_64_kib_gets_431_and_is_closed(edge: EdgeProcess) -> None:
    body = chat_body()
    pad = "x-padding: " + "a" * 130_000 + "\r\n"
    with Raw(edge) as conn:
        conn.send(post_head(len(body), extra=pad) + body)
        reply = conn.response()
        assert reply.status == 431
        assert reply.error()["code"] == "request_header_fields_too_large"
        assert conn.closed()


def test_a_head_under_64_kib_is_served(edge: EdgeProcess) -> None:
    body = chat_body(text="big head")
    pad = "x-padding: " + "a" * (MAX_HEAD_BYTES - 1024) + "\r\n"
    with Raw(edge) as conn:
        conn.send(post_head(len(body), extra=pad) + body)
        reply = conn.response()
        assert reply.status == 200, reply.body


def test_absolute_form_target_is_routed_by_its_path(edge: EdgeProcess) -> None:
    body = chat_body(text="absolute")
    target = f"http://127.0.0.1:{edge.port}/v1/chat/completions"
    with Raw(edge) as conn:
        conn.send(post_head(len(body), target=target) + body)
        reply = conn.response()
        assert reply.status == 200, reply.body
        assert json.loads(reply.body)["choices"][0]["message"]["content"] == \
            "Mock reply to: absolute"
        conn.send(f"GET http://127.0.0.1:{edge.port}/v1/nothing HTTP/1.1\r\nHost: x\r\n"
                  f"Authorization: Bearer {CLIENT_KEY}\r\n\r\n".encode())
        missing = conn.response()
        assert missing.status == 404
        assert "/v1/nothing" in missing.error()["message"]


def test_a_body_slower_than_its_deadline_gets_408_and_is_closed(edge: EdgeProcess) -> None:
    body = chat_body(text="x" * 200)  # at one byte per 0.3 s this would take a minute
    with Raw(edge) as conn:
        conn.send(post_head(len(body)))
        answered = False
        for byte in body:  # one byte at a time until edge answers
            conn.send(bytes([byte]))
            readable, _, _ = select.select([conn.sock], [], [], 0.3)
            if readable:
                answered = True
                break
        assert answered, "the whole body was read: no deadline on it"
        reply = conn.response()
        assert reply.status == 408
        error = reply.error()
        assert error["type"] == "invalid_request_error"
        assert error["code"] == "request_timeout"
        assert reply.headers["connection"] == "close"
        assert conn.closed()


def test_an_idle_keep_alive_connection_is_closed_at_the_configured_value(
        edge: EdgeProcess) -> None:
    with Raw(edge) as conn:
        conn.send(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert conn.response().status == 200
        conn.send(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert conn.response().status == 200  # kept alive between requests
        assert conn.closed()  # then closed after BOUND_S idle, well within DEADLINE_S


def test_a_request_head_that_never_completes_is_closed(edge: EdgeProcess) -> None:
    with Raw(edge) as conn:
        conn.send(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert conn.closed()
