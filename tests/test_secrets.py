"""Provider keys never leave edge (SPEC §4 "Auth"): not in responses, logs, metrics, /health
or `edge check-config` output, even when an upstream echoes them back.

The upstream here is a small in-test HTTP server that copies the credential it received
(`Authorization` for the OpenAI kind, `x-api-key` for the Anthropic kind) into its error
messages, error fields and stream error events, as some real servers and proxies do.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from _redis import free_port
from _servers import EdgeProcess

OPENAI_KEY = "sk-proj-SECRET-openai-7d1e4b9a0c"
ANTHROPIC_KEY = "sk-ant-SECRET-anthropic-52f08c3e"
CLIENT_KEY = "edge-client-SECRET-91b0d2"
REDIS_PASSWORD = "SECRET-redis-pw-4e6a"
SECRETS = (OPENAI_KEY, ANTHROPIC_KEY, CLIENT_KEY, REDIS_PASSWORD)
# Fragments that would still identify a key if it were cut or re-encoded on the way.
FRAGMENTS = ("SECRET-openai", "SECRET-anthropic", "SECRET-redis", "SECRET-91b0d2")

# Directives, chosen by the last user message; each makes the upstream echo the credential.
DIRECTIVES = ("echo-400", "echo-500", "echo-429", "echo-fields", "echo-plain", "echo-stream",
              "echo-answer", "echo-escaped")
# Stands for the credential in a JSON text that writes it JSON-escaped (\uXXXX), so the raw
# bytes never contain it and only decoding brings it back.
MARK = "@CREDENTIAL@"


def escaped(secret: str) -> str:
    return "".join(f"\\u{ord(ch):04x}" for ch in secret)


def leaks(text: str) -> list[str]:
    return [s for s in (*SECRETS, *FRAGMENTS) if s in text]


class EchoUpstream(BaseHTTPRequestHandler):
    """OpenAI and Anthropic endpoints that put the caller's credential in their errors."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
        return  # keep the test output quiet

    def do_POST(self) -> None:  # noqa: N802 - stdlib's name
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
        anthropic = self.path.endswith("/messages")
        secret = self.headers.get("x-api-key") if anthropic else self.headers.get("authorization")
        messages = body.get("messages") or [{"content": ""}]
        content = messages[-1].get("content")
        text = content if isinstance(content, str) else json.dumps(content)
        directive = next((d for d in DIRECTIVES if d in text), "")
        echo = f"Invalid request. Headers received: credential={secret}"
        if directive in ("echo-400", "echo-500", "echo-429"):
            status = int(directive[-3:])
            self.error(status, anthropic, {"message": echo, "type": "invalid_request_error"})
        elif directive == "echo-fields":
            self.error(400, anthropic, {"message": "bad field", "type": f"t-{secret}",
                                        "param": f"p-{secret}", "code": f"c-{secret}"})
        elif directive == "echo-plain":
            self.send(400, "text/plain", echo.encode())
        elif directive == "echo-stream" and body.get("stream"):
            self.stream_error(anthropic, echo)
        elif directive == "echo-escaped":
            self.escaped_error(anthropic, bool(body.get("stream")), secret or "")
        elif directive == "echo-answer":  # a normal answer whose text holds the credential
            self.answer(anthropic, body, bool(body.get("stream")), f"fine, {echo}")
        else:
            self.answer(anthropic, body, bool(body.get("stream")))

    def error(self, status: int, anthropic: bool, fields: dict[str, str]) -> None:
        payload = {"type": "error", "error": fields} if anthropic else {"error": fields}
        self.send(status, "application/json", json.dumps(payload).encode(),
                  [("retry-after", "0")] if status == 429 else [])

    def answer(self, anthropic: bool, body: dict[str, Any], stream: bool,
               text: str = "fine") -> None:
        model = body.get("model", "m")
        if anthropic:
            message = {"id": "msg_1", "type": "message", "role": "assistant", "model": model,
                       "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                       "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 1}}
            if not stream:
                self.send(200, "application/json", json.dumps(message).encode())
                return
            events = [
                ("message_start", {"type": "message_start",
                                   "message": {**message, "content": [], "stop_reason": None}}),
                ("content_block_start", {"type": "content_block_start", "index": 0,
                                         "content_block": {"type": "text", "text": ""}}),
                ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                         "delta": {"type": "text_delta", "text": text}}),
                ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                ("message_delta", {"type": "message_delta",
                                   "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                   "usage": {"output_tokens": 1}}),
                ("message_stop", {"type": "message_stop"}),
            ]
            self.send_sse(b"".join(f"event: {n}\ndata: {json.dumps(d)}\n\n".encode()
                                   for n, d in events))
            return
        head = {"id": "chatcmpl-1", "created": 1, "model": model}
        if not stream:
            completion = {**head, "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text},
                 "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
            self.send(200, "application/json", json.dumps(completion).encode())
            return
        chunks = [
            {**head, "object": "chat.completion.chunk", "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": text},
                 "finish_reason": None}]},
            {**head, "object": "chat.completion.chunk", "choices": [
                {"index": 0, "delta": {}, "finish_reason": "stop"}]},
            {**head, "object": "chat.completion.chunk", "choices": [],
             "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}},
        ]
        self.send_sse(b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks)
                      + b"data: [DONE]\n\n")

    def stream_error(self, anthropic: bool, echo: str) -> None:
        """A stream that starts well, then reports an error that echoes the credential."""
        if anthropic:
            start = {"type": "message_start", "message": {
                "id": "msg_1", "type": "message", "role": "assistant", "model": "m",
                "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": 3, "output_tokens": 0}}}
            error = {"type": "error", "error": {"type": "overloaded_error", "message": echo}}
            self.send_sse(f"event: message_start\ndata: {json.dumps(start)}\n\n"
                          f"event: error\ndata: {json.dumps(error)}\n\n".encode())
            return
        chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                 "model": "m", "choices": [{"index": 0, "delta": {"content": "par"},
                                            "finish_reason": None}]}
        error = {"error": {"message": echo, "type": "server_error"}}
        self.send_sse(f"data: {json.dumps(chunk)}\n\ndata: {json.dumps(error)}\n\n".encode())

    def escaped_error(self, anthropic: bool, stream: bool, secret: str) -> None:
        """An error (a JSON body, or a stream's error event) with the credential JSON-escaped
        in every field: message, type, param, code."""
        fields = {"message": f"denied for {MARK}", "type": f"t-{MARK}", "param": f"p-{MARK}",
                  "code": f"c-{MARK}"}
        error = {"type": "error", "error": fields} if anthropic else {"error": fields}
        text = json.dumps(error).replace(MARK, escaped(secret))
        if not stream:
            self.send(400, "application/json", text.encode())
        elif anthropic:
            start = {"type": "message_start", "message": {
                "id": "msg_1", "type": "message", "role": "assistant", "model": "m",
                "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": 3, "output_tokens": 0}}}
            self.send_sse(f"event: message_start\ndata: {json.dumps(start)}\n\n"
                          f"event: error\ndata: {text}\n\n".encode())
        else:
            chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                     "model": "m", "choices": [{"index": 0, "delta": {"content": "par"},
                                                "finish_reason": None}]}
            self.send_sse(f"data: {json.dumps(chunk)}\n\ndata: {text}\n\n".encode())

    def send_sse(self, payload: bytes) -> None:
        self.send(200, "text/event-stream", payload)

    def send(self, status: int, ctype: str, payload: bytes,
             headers: list[tuple[str, str]] | None = None) -> None:
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(payload)))
        for name, value in headers or []:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture(scope="module")
def echo_upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), EchoUpstream)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def edge_config(upstream: str) -> str:
    return f"""
[auth]
keys = [ {{ name = "client", key = "env:CLIENT_KEY" }} ]

[cache]
l2_enabled = true
redis_url = "redis://:{REDIS_PASSWORD}@127.0.0.1:{free_port()}/0"   # nothing listens there

[routing]
max_attempts = 2
breaker_failures = 1000

[[providers]]
name = "echo"
kind = "openai"
base_url = "{upstream}/v1"
api_key = "env:ECHO_OPENAI_KEY"
models = ["gpt-*"]
timeout_s = 10

[[providers]]
name = "echo-claude"
kind = "anthropic"
base_url = "{upstream}"
api_key = "env:ECHO_ANTHROPIC_KEY"
models = ["claude-*"]
timeout_s = 10
"""


ENV = {"ECHO_OPENAI_KEY": OPENAI_KEY, "ECHO_ANTHROPIC_KEY": ANTHROPIC_KEY,
       "CLIENT_KEY": CLIENT_KEY, "LOG_LEVEL": "debug"}


@pytest.fixture(scope="module")
def edge(echo_upstream: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeProcess]:
    proc = EdgeProcess(tmp_path_factory.mktemp("secrets"), config=edge_config(echo_upstream),
                       env=ENV)
    yield proc
    proc.stop()


def call(edge: EdgeProcess, path: str, model: str, directive: str, stream: bool) -> httpx.Response:
    body: dict[str, Any] = {"model": model, "stream": stream,
                            "messages": [{"role": "user", "content": f"please {directive}"}]}
    if path == "/v1/messages":
        body["max_tokens"] = 16
    return httpx.post(f"{edge.url}{path}", json=body, timeout=30,
                      headers={"authorization": f"Bearer {CLIENT_KEY}",
                               "cache-control": "no-store"})


def seen(response: httpx.Response) -> str:
    """Everything a client sees: status line, headers and body."""
    head = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
    return f"{response.status_code}\n{head}\n\n{response.text}"


ROUTES = [("/v1/chat/completions", "gpt-4o"), ("/v1/chat/completions", "claude-3-5-haiku"),
          ("/v1/messages", "claude-3-5-haiku"), ("/v1/messages", "gpt-4o")]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("directive", DIRECTIVES)
@pytest.mark.parametrize(("path", "model"), ROUTES,
                         ids=["chat-openai", "chat-anthropic", "messages-anthropic",
                              "messages-openai"])
def test_upstream_echo_never_reaches_the_client(edge: EdgeProcess, path: str, model: str,
                                                directive: str, stream: bool) -> None:
    response = call(edge, path, model, directive, stream)
    assert leaks(seen(response)) == []
    if directive in ("echo-400", "echo-429", "echo-500"):
        # the upstream's message is passed on (so the echo really happened), key redacted;
        # a 500 is retried, and once the attempts are spent the client gets 502
        expected = {"echo-400": 400, "echo-429": 429, "echo-500": 502}[directive]
        assert response.status_code == expected, response.text
        assert "Headers received" in response.text
    elif directive == "echo-stream" and stream:
        assert response.status_code == 200
        assert "Headers received" in response.text  # the error event reached the client
    elif directive == "echo-stream":
        assert response.status_code == 200  # not streamed: the upstream answered normally
    elif directive == "echo-escaped":
        # the error reached the client (as a status, or as the stream's last event) with
        # the decoded credential taken out
        assert response.status_code == (200 if stream else 400), response.text
        assert "[redacted]" in response.text
    elif directive == "echo-answer":
        assert response.status_code == 200, response.text
        assert "Headers received: credential=" in response.text  # the echo came through
    else:
        assert response.status_code == 400, response.text


@pytest.mark.parametrize("model", ["claude-3-5-haiku", "gpt-4o"])
def test_escaped_stream_error_through_the_openai_sdk(edge: EdgeProcess, model: str) -> None:
    client = openai.OpenAI(base_url=f"{edge.url}/v1", api_key=CLIENT_KEY, max_retries=0,
                           timeout=30)
    stream = client.chat.completions.create(
        model=model, stream=True, messages=[{"role": "user", "content": "please echo-escaped"}],
        extra_headers={"cache-control": "no-store"})
    with pytest.raises(openai.APIError) as caught:
        for _ in stream:
            pass
    error = caught.value
    assert "[redacted]" in str(error) or "[redacted]" in json.dumps(error.body)
    assert leaks(f"{error} {error!r} {json.dumps(error.body)}") == []
    client.close()


def test_normal_answers_still_flow(edge: EdgeProcess) -> None:
    for path, model in ROUTES:
        for stream in (False, True):
            response = call(edge, path, model, "say hi", stream)
            assert response.status_code == 200, response.text
            assert "fine" in response.text


def test_no_secret_in_logs_metrics_or_health(edge: EdgeProcess) -> None:
    # run every echo once more (one route per provider kind), so this test stands on its
    # own, then look everywhere
    for path, model in (ROUTES[0], ROUTES[2]):
        for directive in DIRECTIVES:
            call(edge, path, model, directive, stream=directive == "echo-stream")
    places = {
        "/metrics": httpx.get(f"{edge.url}/metrics").text,
        "metrics listener": httpx.get(f"{edge.metrics_url}/metrics").text,
        "/health": httpx.get(f"{edge.url}/health").text,
        "/v1/models": httpx.get(f"{edge.url}/v1/models",
                                headers={"authorization": f"Bearer {CLIENT_KEY}"}).text,
    }
    places["log"] = edge.output()
    assert "llm_edge_requests_total" in places["/metrics"]  # each place is really there
    assert '"l2_healthy":false' in places["/health"]
    assert '"level":"info"' in places["log"]
    found = {where: leaks(text) for where, text in places.items()}
    assert found == {where: [] for where in places}


# -- edge check-config --------------------------------------------------------------------


def check_config(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "edge.toml"
    path.write_text(text)
    env = {"PATH": "/usr/bin:/bin", "ECHO_OPENAI_KEY": OPENAI_KEY, "CLIENT_KEY": CLIENT_KEY,
           "ECHO_ANTHROPIC_KEY": ANTHROPIC_KEY}
    return subprocess.run([sys.executable, "-m", "edge", "check-config", str(path)],
                          capture_output=True, text=True, env=env, timeout=60, check=False)


def test_check_config_summary_has_no_secrets(tmp_path: Path) -> None:
    literal = edge_config("http://127.0.0.1:9").replace('"env:ECHO_ANTHROPIC_KEY"',
                                                         f'"{ANTHROPIC_KEY}"')
    done = check_config(tmp_path, literal)
    assert done.returncode == 0, done.stderr
    assert "echo-claude" in done.stdout  # it really summarised the providers
    assert "literal secret" in done.stdout  # and warned about the literal key
    assert leaks(done.stdout + done.stderr) == []


@pytest.mark.parametrize("mistake", [
    f'[auth]\nkeys = [ {{ name = "c", sha256 = "{CLIENT_KEY}" }} ]\n',
    f'[[providers]]\nname = "p"\nkind = "openai"\napi_kye = "{OPENAI_KEY}"\nmodels = ["x"]\n',
    f'[[providers]]\nname = "p"\nkind = "openai"\napi_key = ["{OPENAI_KEY}"]\nmodels = ["x"]\n',
    f'[auth]\nkeys = [ {{ name = "c", key = "env:CLIENT_KEY", rpm = "{CLIENT_KEY}" }} ]\n',
    f'[cache]\nredis_url = "http://:{REDIS_PASSWORD}@127.0.0.1:6379/0"\n',
], ids=["key-as-sha256", "misspelt-key", "wrong-type", "key-as-rpm", "bad-redis-scheme"])
def test_check_config_errors_do_not_echo_secrets(tmp_path: Path, mistake: str) -> None:
    done = check_config(tmp_path, mistake)
    assert done.returncode == 2
    assert "edge.toml" in done.stderr  # a real validation error, naming the file
    assert leaks(done.stdout + done.stderr) == []
