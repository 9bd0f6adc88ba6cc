"""The `anthropic` provider kind, end to end through real processes and sockets.

Two upstreams: `edge mock-upstream` (Anthropic's JSON and SSE, tools, `!mock` faults), and
`CannedUpstream`, a small scripted HTTP server in this process for what the mock cannot do
(an `error` event mid-stream, an upstream that echoes our key, capturing the wire request).
The e2e tests drive `edge serve` with the official openai SDK; the provider tests call
`AnthropicProvider` directly for the native methods the /v1/messages front door uses.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import openai
import orjson
import pytest
from _servers import EdgeProcess, MockUpstream
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter

from edge.anthropic_stream import MessageAssembler, replay_events
from edge.config import ProviderConfig
from edge.dialects import OpenAIDialect
from edge.errors import UpstreamConnectError, UpstreamError, UpstreamStatus, UpstreamTimeout
from edge.providers import KINDS, make_provider
from edge.providers.anthropic import AnthropicProvider
from edge.routing import Breaker, Deployment, DeploymentStats
from edge.schema import validate_chat
from edge.sse import frame_event

PROVIDER_KEY = "sk-ant-test-provider-secret-0123456789"
HAIKU = "claude-3-haiku-20240307"  # has a built-in price: 0.25 / 1.25 USD per Mtok
EVENT: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    },
}

# --------------------------------------------------------------------------- canned upstream

CANNED_MESSAGE = {
    "id": "msg_canned01",
    "type": "message",
    "role": "assistant",
    "model": "canned-echo",
    "content": [{"type": "text", "text": "canned answer"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 11, "output_tokens": 2},
}
_PARTIAL = [
    ("message_start", {"type": "message_start", "message": {
        **CANNED_MESSAGE, "content": [], "stop_reason": None,
        "usage": {"input_tokens": 11, "output_tokens": 1}}}),
    ("content_block_start", {"type": "content_block_start", "index": 0,
                             "content_block": {"type": "text", "text": ""}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "text_delta", "text": "partial "}}),
]
_OVERLOADED = ("error", {"type": "error",
                         "error": {"type": "overloaded_error", "message": "Overloaded"}})


class _CannedHandler(BaseHTTPRequestHandler):
    """HTTP/1.0: one request per connection, an SSE body simply ends at the close."""

    server: _CannedServer

    def do_POST(self) -> None:  # noqa: N802 - the name http.server dispatches to
        raw = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.server.seen.append((self.path, headers, raw))
        body = json.loads(raw)
        key = headers.get("x-api-key", "")
        model, stream = body.get("model"), body.get("stream") is True
        if model == "canned-echo" and stream:
            self._events(replay_events(CANNED_MESSAGE))
        elif model == "canned-echo":
            self._json(200, CANNED_MESSAGE)
        elif model == "canned-error-event":
            self._events([*_PARTIAL, _OVERLOADED])
        elif model == "canned-error-first":
            self._events([_OVERLOADED])
        elif model == "canned-leak" and stream:
            self._events([*_PARTIAL, ("error", {"type": "error", "error": {
                "type": "api_error", "message": f"stream broke for key {key}"}})])
        elif model == "canned-leak":
            self._json(400, {"type": "error", "error": {
                "type": "invalid_request_error", "message": f"bad request with key {key}"}})
        elif model == "canned-not-sse":
            self._json(200, CANNED_MESSAGE)
        else:
            self._json(404, {"type": "error", "error": {"type": "not_found_error",
                                                        "message": f"no model {model}"}})

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = orjson.dumps(body)
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _events(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.end_headers()
        self.wfile.write(b"".join(frame_event(name, data) for name, data in events))

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Quiet: pytest shows the failing assertion, not an access log."""


class _CannedServer(ThreadingHTTPServer):
    daemon_threads = True
    seen: list[tuple[str, dict[str, str], bytes]]


class CannedUpstream:
    def __init__(self) -> None:
        self.server = _CannedServer(("127.0.0.1", 0), _CannedHandler)
        self.server.seen = []
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def seen(self) -> list[tuple[str, dict[str, str], bytes]]:
        return self.server.seen

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MockUpstream,
                                                                          CannedUpstream]]:
    mock = MockUpstream(tmp_path_factory.mktemp("anthropic-mock"))
    canned = CannedUpstream()
    yield mock, canned
    canned.stop()
    mock.stop()


@pytest.fixture(scope="module")
def stack(upstreams: tuple[MockUpstream, CannedUpstream],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EdgeProcess, MockUpstream,
                                                                      CannedUpstream]]:
    mock, canned = upstreams
    tmp = tmp_path_factory.mktemp("anthropic-edge")
    config = f"""
[routing]
max_attempts = 2

[[providers]]
name = "anthropic"
kind = "anthropic"
base_url = "{mock.url}"
api_key = "env:ANTH_KEY"
models = ["claude-*"]
timeout_s = 10

[[providers]]
name = "canned"
kind = "anthropic"
base_url = "{canned.url}"
api_key = "env:ANTH_KEY"
models = ["canned-*"]
timeout_s = 10
anthropic_version = "2023-01-01"
"""
    edge = EdgeProcess(tmp, config=config, env={"ANTH_KEY": PROVIDER_KEY})
    yield edge, mock, canned
    edge.stop()
    assert PROVIDER_KEY not in edge.log_path.read_text(errors="replace")


@pytest.fixture
def client(stack: tuple[EdgeProcess, MockUpstream, CannedUpstream]) -> Iterator[openai.OpenAI]:
    edge, _, _ = stack
    with openai.OpenAI(base_url=f"{edge.url}/v1", api_key="client-key", max_retries=0) as sdk:
        yield sdk


def _user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def _no_key(text: str) -> str:
    assert PROVIDER_KEY not in text
    return text


# --------------------------------------------------------------------------- e2e: chat


def test_registered_kind() -> None:
    assert KINDS["anthropic"] is AnthropicProvider


def test_chat_non_stream(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=HAIKU, messages=_user("hello claude"))
    completion = raw.parse()
    choice = completion.choices[0]
    assert choice.message.content == "Mock reply to: hello claude"
    assert choice.message.role == "assistant"
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "stop"
    assert completion.model == HAIKU
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-msg_")
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens > 0
    assert usage.completion_tokens == len("Mock reply to: hello claude".split())
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert raw.headers["x-edge-provider"] == "anthropic"
    assert raw.headers["x-edge-cache"] == "miss"
    meta = raw.http_response.json()["metadata"]
    expected = (usage.prompt_tokens * 0.25 + usage.completion_tokens * 1.25) / 1e6
    assert meta["provider"] == "anthropic"
    assert meta["cached"] is False
    assert meta["cost_usd"] > 0
    assert meta["cost_usd"] == pytest.approx(expected)
    _no_key(raw.http_response.text)


def test_chat_stream(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=HAIKU, stream=True, messages=_user("stream to me"))
    assert raw.headers["x-edge-provider"] == "anthropic"
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Mock reply to: stream to me"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.choices for c in chunks), "no usage chunk for a client that did not ask"
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].id.startswith("chatcmpl-msg_")


def test_chat_stream_include_usage(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model=HAIKU, stream=True, stream_options={"include_usage": True},
        messages=_user("count these tokens")))
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == len("Mock reply to: count these tokens".split())
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert chunks[-2].choices[0].finish_reason == "stop"


def test_tool_call_json(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=HAIKU, tools=[WEATHER_TOOL], messages=_user("Paris"))
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None
    assert len(calls) == 1
    assert calls[0].type == "function"
    assert calls[0].id.startswith("toolu_")
    assert calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}


def test_tool_call_stream(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model=HAIKU, stream=True, tools=[WEATHER_TOOL], tool_choice="required",
        messages=_user("a city with a rather long name, Llanfairpwllgwyngyll")))
    names, arguments, ids = [], [], set()
    for chunk in chunks:
        for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            assert call.index == 0
            if call.id:
                ids.add(call.id)
            if call.function and call.function.name:
                names.append(call.function.name)
            if call.function and call.function.arguments:
                arguments.append(call.function.arguments)
    assert names == ["get_weather"]
    assert len(ids) == 1
    assert len(arguments) > 1, "the mock splits the JSON; edge relays the pieces"
    assert json.loads("".join(arguments)) == {
        "city": "a city with a rather long name, Llanfairpwllgwyngyll"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_result_follow_up(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model=HAIKU, tools=[WEATHER_TOOL], messages=[
        {"role": "user", "content": "weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "toolu_prev1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_prev1", "content": "sunny, 21C"},
    ])
    assert completion.choices[0].message.content == "Tool said: sunny, 21C"
    assert completion.choices[0].finish_reason == "stop"


def test_system_prompt_reaches_the_upstream(client: openai.OpenAI) -> None:
    question = _user("what is the system prompt length")
    plain = client.chat.completions.create(model=HAIKU, messages=question)
    with_system = client.chat.completions.create(
        model=HAIKU, messages=[{"role": "system", "content": "S" * 400}, *question])
    assert plain.usage is not None
    assert with_system.usage is not None
    # the mock counts one prompt token per 4 characters, system prompt included
    assert with_system.usage.prompt_tokens - plain.usage.prompt_tokens == 100
    assert with_system.choices[0].message.content == plain.choices[0].message.content


@pytest.mark.parametrize("stream", [False, True])
def test_stop_sequences(client: openai.OpenAI, stream: bool) -> None:
    prompt = _user(f"alpha beta STOP gamma {stream}")
    if stream:
        chunks = list(client.chat.completions.create(
            model=HAIKU, messages=prompt, stop=["STOP"], stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = chunks[-1].choices[0].finish_reason
    else:
        completion = client.chat.completions.create(model=HAIKU, messages=prompt, stop="STOP")
        text = completion.choices[0].message.content or ""
        finish = completion.choices[0].finish_reason
    assert text == "Mock reply to: alpha beta "
    assert finish == "stop"


def test_max_tokens_finish_length(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=HAIKU, max_tokens=3, messages=_user("one two three four five"))
    assert completion.choices[0].message.content == "Mock reply to:"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3


def test_request_on_the_wire(stack: tuple[EdgeProcess, MockUpstream, CannedUpstream],
                             client: openai.OpenAI) -> None:
    """What the upstream really receives: headers, path and the translated body."""
    _, _, canned = stack
    canned.seen.clear()
    completion = client.chat.completions.create(
        model="canned-echo", max_tokens=77, temperature=0.5, stop=["END"], user="u-1",
        tools=[WEATHER_TOOL], messages=[{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "wire check"}])
    assert completion.choices[0].message.content == "canned answer"
    assert completion.model == "canned-echo"
    [(path, headers, raw)] = canned.seen
    assert path == "/v1/messages"
    assert headers["x-api-key"] == PROVIDER_KEY
    assert "authorization" not in headers
    assert headers["anthropic-version"] == "2023-01-01"
    assert headers["content-type"] == "application/json"
    assert json.loads(raw) == {
        "model": "canned-echo",
        "max_tokens": 77,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "wire check"}],
        "tools": [{"name": "get_weather", "description": "Weather for a city",
                   "input_schema": WEATHER_TOOL["function"]["parameters"]}],
        "stop_sequences": ["END"],
        "temperature": 0.5,
        "metadata": {"user_id": "u-1"},
    }


def test_stream_request_on_the_wire(stack: tuple[EdgeProcess, MockUpstream, CannedUpstream],
                                    client: openai.OpenAI) -> None:
    _, _, canned = stack
    canned.seen.clear()
    chunks = list(client.chat.completions.create(
        model="canned-echo", stream=True, messages=_user("wire check stream")))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "canned answer")
    [(_, headers, raw)] = canned.seen
    assert headers["accept"] == "text/event-stream"
    body = json.loads(raw)
    assert body["stream"] is True
    assert "stream_options" not in body
    assert body["max_tokens"] == 4096  # Anthropic requires it; OpenAI clients often omit it


# --------------------------------------------------------------------------- e2e: errors


def _error_body(response: httpx.Response) -> dict[str, Any]:
    _no_key(response.text)
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_upstream_400_passed_through(stack: tuple[EdgeProcess, MockUpstream, CannedUpstream]
                                     ) -> None:
    edge, mock, _ = stack
    mock.reset()
    response = httpx.post(f"{edge.url}/v1/chat/completions", json={
        "model": HAIKU, "messages": _user("!mock status=400")})
    assert response.status_code == 400
    error = _error_body(response)
    assert error["message"] == "mock directive status=400"
    assert error["type"] == "invalid_request_error"
    assert mock.stats()["by_path"] == {"/v1/messages": 1}, "a 400 is not retried"


def test_upstream_400_via_sdk(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=HAIKU, messages=_user("!mock status=400 sdk"))
    assert caught.value.status_code == 400
    assert "mock directive status=400" in caught.value.message


@pytest.mark.parametrize("status", [529, 500])
def test_upstream_5xx_retried_then_502(stack: tuple[EdgeProcess, MockUpstream, CannedUpstream],
                                       status: int) -> None:
    edge, mock, _ = stack
    mock.reset()
    response = httpx.post(f"{edge.url}/v1/chat/completions", json={
        "model": HAIKU, "messages": _user(f"!mock status={status}")})
    assert response.status_code == 502
    error = _error_body(response)
    assert f"mock directive status={status}" in error["message"]
    assert mock.stats()["by_path"] == {"/v1/messages": 2}, "max_attempts = 2"


def test_upstream_status_on_a_stream_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=HAIKU, stream=True,
                                       messages=_user("!mock status=400 streamed"))
    assert caught.value.status_code == 400


def test_error_event_mid_stream(stack: tuple[EdgeProcess, MockUpstream, CannedUpstream],
                                client: openai.OpenAI) -> None:
    edge, _, _ = stack
    received: list[str] = []

    def read_all() -> None:
        for chunk in client.chat.completions.create(
                model="canned-error-event", stream=True, messages=_user("break please")):
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)

    with pytest.raises(openai.APIError) as caught:
        read_all()
    assert received == ["partial "]
    assert "Overloaded" in caught.value.message
    with httpx.stream("POST", f"{edge.url}/v1/chat/completions", json={
            "model": "canned-error-event", "stream": True,
            "messages": _user("break again")}) as response:
        assert response.status_code == 200
        text = response.read().decode()
    assert "[DONE]" not in text, "a broken stream must not look complete"
    last = json.loads(text.strip().split("\n\n")[-1].removeprefix("data: "))
    assert last["error"]["message"] == "Overloaded"


def test_error_event_before_any_content_is_retried(
        stack: tuple[EdgeProcess, MockUpstream, CannedUpstream]) -> None:
    edge, _, canned = stack
    canned.seen.clear()
    response = httpx.post(f"{edge.url}/v1/chat/completions", json={
        "model": "canned-error-first", "stream": True, "messages": _user("first")})
    assert response.status_code == 502
    assert "Overloaded" in _error_body(response)["message"]
    assert len(canned.seen) == 2


def test_provider_key_is_redacted_from_upstream_errors(
        stack: tuple[EdgeProcess, MockUpstream, CannedUpstream]) -> None:
    edge, _, canned = stack
    canned.seen.clear()
    response = httpx.post(f"{edge.url}/v1/chat/completions", json={
        "model": "canned-leak", "messages": _user("leak")})
    assert response.status_code == 400
    assert _error_body(response)["message"] == "bad request with key [redacted]"
    with httpx.stream("POST", f"{edge.url}/v1/chat/completions", json={
            "model": "canned-leak", "stream": True, "messages": _user("leak")}) as streamed:
        text = _no_key(streamed.read().decode())
    assert "stream broke for key [redacted]" in text
    assert all(headers["x-api-key"] == PROVIDER_KEY for _, headers, _ in canned.seen)


def test_upstream_not_an_event_stream(stack: tuple[EdgeProcess, MockUpstream, CannedUpstream]
                                      ) -> None:
    edge, _, _ = stack
    response = httpx.post(f"{edge.url}/v1/chat/completions", json={
        "model": "canned-not-sse", "stream": True, "messages": _user("sse?")})
    assert response.status_code == 502
    assert "did not answer with an event stream" in _error_body(response)["message"]


def test_embeddings_refused(stack: tuple[EdgeProcess, MockUpstream, CannedUpstream]) -> None:
    edge, mock, _ = stack
    mock.reset()
    response = httpx.post(f"{edge.url}/v1/embeddings", json={"model": HAIKU, "input": "x"})
    assert response.status_code == 400
    assert "does not serve embeddings" in _error_body(response)["message"]
    assert mock.stats()["requests"] == 0


# --------------------------------------------------------------------------- e2e: cache


def test_cache_hit_for_claude(client: openai.OpenAI) -> None:
    prompt = _user("cache me, claude")
    first = client.chat.completions.with_raw_response.create(model=HAIKU, messages=prompt)
    second = client.chat.completions.with_raw_response.create(model=HAIKU, messages=prompt)
    assert first.headers["x-edge-cache"] == "miss"
    assert second.headers["x-edge-cache"] == "hit-l1"
    assert second.headers["x-edge-provider"] == "anthropic"
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    meta = second.http_response.json()["metadata"]
    assert meta["cached"] is True
    assert meta["cost_usd"] == 0


def test_streamed_miss_replayed_as_stream_hit(client: openai.OpenAI) -> None:
    prompt = _user("stream then replay")

    def streamed(**extra: Any) -> tuple[str, list[Any]]:
        raw = client.chat.completions.with_raw_response.create(
            model=HAIKU, messages=prompt, stream=True, **extra)
        return raw.headers["x-edge-cache"], list(raw.parse())

    miss_header, miss = streamed()
    hit_header, hit = streamed()
    assert (miss_header, hit_header) == ("miss", "hit-l1")
    text = "".join(c.choices[0].delta.content or "" for c in hit if c.choices)
    assert text == "Mock reply to: stream then replay"
    assert hit[-1].choices[0].finish_reason == "stop"
    assert {c.id for c in hit} == {c.id for c in miss}
    usage_header, with_usage = streamed(stream_options={"include_usage": True})
    assert usage_header == "hit-l1"
    assert with_usage[-1].usage is not None
    assert with_usage[-1].usage.completion_tokens > 0
    json_hit = client.chat.completions.with_raw_response.create(model=HAIKU, messages=prompt)
    assert json_hit.headers["x-edge-cache"] == "hit-l1"
    assert json_hit.parse().choices[0].message.content == text


def test_streamed_tool_call_cached(client: openai.OpenAI) -> None:
    prompt = _user("Bergen")
    list(client.chat.completions.create(model=HAIKU, messages=prompt, tools=[WEATHER_TOOL],
                                        stream=True))
    raw = client.chat.completions.with_raw_response.create(
        model=HAIKU, messages=prompt, tools=[WEATHER_TOOL])
    assert raw.headers["x-edge-cache"] == "hit-l1"
    choice = raw.parse().choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    assert json.loads(choice.message.tool_calls[0].function.arguments) == {"city": "Bergen"}


def test_provider_key_not_in_log(stack: tuple[EdgeProcess, MockUpstream, CannedUpstream]) -> None:
    edge, _, _ = stack
    log = edge.output()
    assert log, "edge logs something for the requests above"
    assert PROVIDER_KEY not in log


# --------------------------------------------------------------------------- provider, native

RETRY_ON = frozenset({408, 429, 500, 502, 503, 504})


def _provider(url: str, *, timeout_s: float = 10.0, stream_idle_timeout_s: float = 60.0,
              retry_on: frozenset[int] = RETRY_ON) -> AnthropicProvider:
    config = ProviderConfig(name="direct", kind="anthropic", base_url=url, api_key=PROVIDER_KEY,
                            models=("claude-*",), timeout_s=timeout_s,
                            stream_idle_timeout_s=stream_idle_timeout_s)
    provider = make_provider(config, httpx.AsyncHTTPTransport(), retry_on)
    assert isinstance(provider, AnthropicProvider)
    return provider


@pytest.fixture
async def mock_provider(upstreams: tuple[MockUpstream, CannedUpstream]
                        ) -> AsyncIterator[AnthropicProvider]:
    provider = _provider(upstreams[0].url)
    yield provider
    await provider.aclose()


@pytest.fixture
async def canned_provider(upstreams: tuple[MockUpstream, CannedUpstream]
                          ) -> AsyncIterator[AnthropicProvider]:
    provider = _provider(upstreams[1].url)
    yield provider
    await provider.aclose()


def _native(text: str, model: str = "claude-3-5-haiku-latest", **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 100, "messages": _user(text), **extra}


async def _collect(stream: Any, into: list[Any] | None = None) -> list[Any]:
    """Read `stream` to its end into `into` (kept when it raises), then close it."""
    items = [] if into is None else into
    try:
        async for item in stream:
            items.append(item)
    finally:
        await stream.aclose()
    return items


async def test_native_messages(mock_provider: AnthropicProvider) -> None:
    body = _native("native hello")
    message = await mock_provider.complete("chat", body, body["model"], orjson.dumps(body))
    Message.model_validate(message)
    assert message["content"] == [{"type": "text", "text": "Mock reply to: native hello"}]
    assert message["model"] == "claude-3-5-haiku-latest"
    assert message["stop_reason"] == "end_turn"
    # routing chose another upstream name: the body is re-encoded with it
    rerouted = await mock_provider.complete("chat", body, "claude-3-opus-latest",
                                            orjson.dumps(body))
    assert rerouted["model"] == "claude-3-opus-latest"
    # a stream flag on the JSON door is dropped rather than answered with SSE
    flagged = {**body, "stream": True}
    answer = await mock_provider.complete("chat", flagged, body["model"], orjson.dumps(flagged))
    assert answer["content"] == message["content"]


async def test_native_raw_forwarded_verbatim(canned_provider: AnthropicProvider,
                                             upstreams: tuple[MockUpstream, CannedUpstream]
                                             ) -> None:
    canned = upstreams[1]
    canned.seen.clear()
    raw = b'{"model":  "canned-echo", "max_tokens": 5,\n "messages": [{"role": "user", ' \
          b'"content": "hi"}], "x_vendor_field": {"keep": true}}'
    body = orjson.loads(raw)
    assert await canned_provider.complete("chat", body, "canned-echo", raw) == CANNED_MESSAGE
    assert canned.seen[-1][2] == raw
    assert canned.seen[-1][1]["x-api-key"] == PROVIDER_KEY
    assert canned.seen[-1][1]["anthropic-version"] == "2023-06-01"  # the config default


async def test_native_stream(mock_provider: AnthropicProvider) -> None:
    body = _native("native stream please")  # no stream flag: open_stream adds it
    events = await _collect(await mock_provider.open_stream("chat", body, body["model"], None))
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert names.count("content_block_delta") > 1
    for name, data in events:
        if name != "ping":
            assert EVENT.validate_python(data).type == name
    assembler = MessageAssembler()
    for name, data in events:
        assembler.feed(name, data)
    assert assembler.finished
    message = assembler.result()
    assert message["content"] == [{"type": "text", "text": "Mock reply to: native stream please"}]
    assert message["usage"]["output_tokens"] == len("Mock reply to: native stream please".split())


async def test_native_stream_cut_before_message_stop(mock_provider: AnthropicProvider) -> None:
    body = _native("!mock cut_after=1", stream=True)
    stream = await mock_provider.open_stream("chat", body, body["model"], orjson.dumps(body))
    events: list[tuple[str, dict[str, Any]]] = []
    with pytest.raises(UpstreamConnectError):  # a cut chunked body, or an early clean end
        await _collect(stream, events)
    seen = [name for name, _ in events]
    assert seen[0] == "message_start"
    assert "message_stop" not in seen


async def test_native_stream_invalid_json(mock_provider: AnthropicProvider) -> None:
    body = _native("!mock invalid=1")
    stream = await mock_provider.open_stream("chat", body, body["model"], None)
    with pytest.raises(UpstreamError, match="invalid event stream"):
        await _collect(stream)


async def test_native_stream_error_event(canned_provider: AnthropicProvider) -> None:
    body = _native("x", model="canned-error-event")
    stream = await canned_provider.open_stream("chat", body, body["model"], None)
    events: list[tuple[str, dict[str, Any]]] = []
    with pytest.raises(UpstreamError) as caught:
        await _collect(stream, events)
    assert [name for name, _ in events] == [
        "message_start", "content_block_start", "content_block_delta"]
    assert caught.value.message == "Overloaded"
    assert caught.value.code == "overloaded_error"
    assert caught.value.status == 502


async def test_native_stream_idle_timeout(upstreams: tuple[MockUpstream, CannedUpstream]) -> None:
    provider = _provider(upstreams[0].url, stream_idle_timeout_s=0.5)
    try:
        body = _native("!mock chunk_delay_ms=5000 slow")
        stream = await provider.open_stream("chat", body, body["model"], None)
        with pytest.raises(UpstreamTimeout):
            await _collect(stream)
    finally:
        await provider.aclose()


def _deployment(provider: AnthropicProvider, model: str) -> Deployment:
    return Deployment(provider, model, DeploymentStats(0.0, 0.0), Breaker(3, 30.0))


async def _open_chat(provider: AnthropicProvider, body: dict[str, Any], model: str) -> Any:
    """An OpenAI-format stream from the anthropic kind: the chat door translates it."""
    source = await OpenAIDialect("chat", validate_chat).open(
        _deployment(provider, model), body, orjson.dumps(body))
    return _Replayed(source)


class _Replayed:
    """An `EventSource` read as a plain stream, its first item included."""

    def __init__(self, source: Any) -> None:
        self.source, self.first = source, [source.first]

    def __aiter__(self) -> _Replayed:
        return self

    async def __anext__(self) -> Any:
        item = self.first.pop() if self.first else await self.source.next()
        if item is None:
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        await self.source.aclose()


async def test_chat_stream_error_event(canned_provider: AnthropicProvider) -> None:
    body = {"model": "canned-error-event", "messages": _user("x"), "stream": True}
    stream = await _open_chat(canned_provider, body, "canned-error-event")
    chunks: list[dict[str, Any]] = []
    with pytest.raises(UpstreamError, match="^Overloaded$"):
        await _collect(stream, chunks)
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""}, {"content": "partial "}]


async def test_chat_stream_chunks(mock_provider: AnthropicProvider) -> None:
    body = {"model": HAIKU, "messages": _user("chunks"), "stream": True}
    stream = await _open_chat(mock_provider, body, HAIKU)
    chunks = [chunk async for chunk in stream]
    await stream.aclose()
    usage = chunks[-1]
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == 4
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert all(c["model"] == HAIKU and c["object"] == "chat.completion.chunk" for c in chunks)


@pytest.mark.parametrize(
    ("status", "retry_on", "retryable", "kind"),
    [
        (400, RETRY_ON, False, "invalid_request_error"),
        (429, RETRY_ON, True, "rate_limit_error"),
        (500, RETRY_ON, True, "api_error"),
        (529, RETRY_ON, True, "overloaded_error"),
        (529, frozenset({500}), False, "overloaded_error"),
    ],
)
async def test_status_errors(upstreams: tuple[MockUpstream, CannedUpstream], status: int,
                             retry_on: frozenset[int], retryable: bool, kind: str) -> None:
    provider = _provider(upstreams[0].url, retry_on=retry_on)
    try:
        body = _native(f"!mock status={status} retry_after=3")
        with pytest.raises(UpstreamStatus) as caught:
            await provider.complete("chat", body, body["model"], None)
    finally:
        await provider.aclose()
    error = caught.value
    assert (error.status, error.retryable, error.type) == (status, retryable, kind)
    assert error.message == f"mock directive status={status}"
    assert error.retry_after == 3.0


async def test_embeddings_not_served(mock_provider: AnthropicProvider) -> None:
    for call in (mock_provider.complete, mock_provider.open_stream):
        with pytest.raises(UpstreamStatus) as caught:
            await call("embeddings", {"model": HAIKU, "input": "x"}, HAIKU, None)
        error = caught.value
        assert error.status == 400
        assert not error.retryable
        assert error.message == "provider direct (anthropic) does not serve embeddings"

