"""The bundled mock provider, driven by the official SDKs and raw HTTP over real sockets."""

from __future__ import annotations

import base64
import json
import math
import os
import signal
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import trio

import edge.mock_upstream as mock_module
from edge.mock_upstream import MockOptions, serve_mock

REPO_ROOT = str(Path(mock_module.__file__).resolve().parents[1])
OPENAI_HEADERS = {"authorization": "Bearer test-key"}
ANTHROPIC_HEADERS = {"x-api-key": "test-key", "anthropic-version": "2023-06-01"}
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "metric": {"type": "boolean"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "extra": {"type": "object"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "note": {"type": "string"},
            },
            "required": ["city", "days", "metric", "tags", "extra", "unit"],
        },
    },
}
TIME_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string"}},
            "required": ["zone"],
        },
    },
}


@asynccontextmanager
async def running(options: MockOptions | None = None) -> AsyncIterator[str]:
    """A mock on a free port for the duration of the block; yields its base URL."""
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_mock, options or MockOptions())
        yield f"http://127.0.0.1:{port}"
        nursery.cancel_scope.cancel()


@pytest.fixture
async def base_url(nursery: trio.Nursery) -> str:
    port = await nursery.start(serve_mock, MockOptions())
    return f"http://127.0.0.1:{port}"


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, headers=OPENAI_HEADERS) as http:
        yield http


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}


def claude(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-3-5-haiku-latest",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


def sse(body: str) -> list[tuple[str | None, str]]:
    """(event name, data) pairs of a complete SSE body."""
    events = []
    for block in body.split("\n\n"):
        if not block.strip():
            continue
        name = None
        data = []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data.append(line[len("data: ") :])
        events.append((name, "\n".join(data)))
    return events


async def stats(base: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base) as http:
        response = await http.get("/mock/stats")
        assert response.status_code == 200
        result: dict[str, Any] = response.json()
        return result


async def collect_lines(response: httpx.Response, lines: list[str]) -> None:
    """Append the response's lines to `lines` as they arrive (kept if the read fails)."""
    async for line in response.aiter_lines():
        lines.append(line)


async def wait_for_stat(base: str, key: str, value: int) -> None:
    """Poll /mock/stats until `key` reaches `value` (fails after a generous deadline)."""
    with trio.fail_after(10):
        while True:
            if (await stats(base))[key] == value:
                return
            await trio.sleep(0.01)


# --------------------------------------------------------------------------- OpenAI chat


async def test_chat_with_openai_sdk(base_url: str) -> None:
    async with openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="x", max_retries=0) as sdk:
        first = await sdk.chat.completions.create(
            model="gpt-4o",
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hello there, mock"},
            ],
        )
        again = await sdk.chat.completions.create(
            model="gpt-4o",
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hello there, mock"},
            ],
        )
    assert first.object == "chat.completion"
    assert first.id.startswith("chatcmpl-")
    assert first.id == again.id  # deterministic from the request
    assert first.model == "gpt-4o"
    assert first.choices[0].message.role == "assistant"
    assert first.choices[0].message.content == "Mock reply to: Hello there, mock"
    assert first.choices[0].finish_reason == "stop"
    assert first.usage is not None
    assert first.usage.prompt_tokens == (len("Be brief.") + len("Hello there, mock")) // 4
    assert first.usage.completion_tokens == 6
    assert first.usage.total_tokens == first.usage.prompt_tokens + 6


async def test_chat_stream_with_openai_sdk(base_url: str) -> None:
    async with openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="x", max_retries=0) as sdk:
        stream = await sdk.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "stream  me please"}], stream=True
        )
        chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == "Mock reply to: stream  me please"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert pieces == ["Mock ", "reply ", "to: ", "stream  ", "me ", "please"]
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_chat_raw_stream_has_done_and_usage_chunk(client: httpx.AsyncClient) -> None:
    body = chat("count me", stream=True, stream_options={"include_usage": True})
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse(response.text)
    assert events[-1] == (None, "[DONE]")
    chunks = [json.loads(data) for _, data in events[:-1]]
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}
    assert all(chunk["usage"] is None for chunk in chunks[:-1])
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"


async def test_chat_max_tokens_truncates_and_n_repeats(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/chat/completions", json=chat("one two three four", max_tokens=2, n=3)
    )
    reply = response.json()
    assert [c["index"] for c in reply["choices"]] == [0, 1, 2]
    assert {c["message"]["content"] for c in reply["choices"]} == {"Mock reply"}
    assert {c["finish_reason"] for c in reply["choices"]} == {"length"}
    assert reply["usage"]["completion_tokens"] == 6

    response = await client.post(
        "/v1/chat/completions", json=chat("one two", max_completion_tokens=3, stream=True)
    )
    chunks = [json.loads(d) for _, d in sse(response.text)[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "Mock reply to:"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_chat_content_parts_and_long_text(client: httpx.AsyncClient) -> None:
    parts = [
        {"type": "text", "text": "first"},
        {"type": "image_url", "image_url": {"url": "u"}},
        {"type": "text", "text": "second"},
    ]
    body = {"model": "m", "messages": [{"role": "user", "content": parts}]}
    reply = (await client.post("/v1/chat/completions", json=body)).json()
    assert reply["choices"][0]["message"]["content"] == "Mock reply to: first second"

    long_text = "x" * 500
    reply = (await client.post("/v1/chat/completions", json=chat(long_text))).json()
    assert reply["choices"][0]["message"]["content"] == "Mock reply to: " + "x" * 200
    assert reply["usage"]["prompt_tokens"] == 125


# --------------------------------------------------------------------------- OpenAI tools


async def test_chat_tool_call_json(base_url: str) -> None:
    async with openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="x", max_retries=0) as sdk:
        reply = await sdk.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=[WEATHER_TOOL, TIME_TOOL],
        )
        forced = await sdk.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "Time?"}],
            tools=[WEATHER_TOOL, TIME_TOOL],
            tool_choice={"type": "function", "function": {"name": "get_time"}},
        )
        declined = await sdk.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "Just talk"}],
            tools=[WEATHER_TOOL],
            tool_choice="none",
        )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {
        "city": "Weather in Paris?",
        "days": 1,
        "metric": True,
        "tags": [],
        "extra": {},
        "unit": "celsius",
    }
    assert forced.choices[0].message.tool_calls is not None
    forced_call = forced.choices[0].message.tool_calls[0]
    assert forced_call.type == "function"
    assert forced_call.function.name == "get_time"
    assert json.loads(forced_call.function.arguments) == {"zone": "Time?"}
    assert declined.choices[0].message.content == "Mock reply to: Just talk"
    assert declined.choices[0].message.tool_calls is None


async def test_chat_tool_result_reply(client: httpx.AsyncClient) -> None:
    messages = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21C"},
    ]
    body = {"model": "m", "messages": messages, "tools": [WEATHER_TOOL]}
    reply = (await client.post("/v1/chat/completions", json=body)).json()
    assert reply["choices"][0]["message"]["content"] == "Tool said: sunny, 21C"
    assert reply["choices"][0]["finish_reason"] == "stop"


async def test_chat_tool_call_stream(client: httpx.AsyncClient) -> None:
    body = chat("Weather in Rome?", tools=[WEATHER_TOOL], stream=True)
    response = await client.post("/v1/chat/completions", json=body)
    events = sse(response.text)
    assert events[-1] == (None, "[DONE]")
    chunks = [json.loads(d) for _, d in events[:-1]]
    first = chunks[0]["choices"][0]["delta"]
    assert first["role"] == "assistant"
    assert first["tool_calls"][0]["id"].startswith("call_")
    assert first["tool_calls"][0]["function"]["name"] == "get_weather"
    pieces = [
        call["function"]["arguments"]
        for chunk in chunks[1:]
        for call in chunk["choices"][0]["delta"].get("tool_calls", [])
    ]
    assert len(pieces) >= 2
    assert all(p for p in pieces)
    assert json.loads("".join(pieces))["city"] == "Weather in Rome?"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


# --------------------------------------------------------------------------- embeddings, models


async def test_embeddings_float_and_base64(base_url: str) -> None:
    async with openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="x", max_retries=0) as sdk:
        floats = await sdk.embeddings.create(
            model="text-embedding-3-small", input=["alpha", "beta"], encoding_format="float"
        )
        again = await sdk.embeddings.create(
            model="text-embedding-3-small", input="alpha", encoding_format="float"
        )
    assert [d.index for d in floats.data] == [0, 1]
    alpha, beta = floats.data[0].embedding, floats.data[1].embedding
    assert len(alpha) == 8
    assert alpha == again.data[0].embedding
    assert alpha != beta
    assert math.isclose(math.fsum(v * v for v in alpha), 1.0, rel_tol=1e-5)
    assert floats.model == "text-embedding-3-small"
    assert floats.usage.prompt_tokens == 2

    async with httpx.AsyncClient(base_url=base_url, headers=OPENAI_HEADERS) as http:
        raw = (
            await http.post(
                "/v1/embeddings",
                json={"model": "e", "input": ["alpha"], "encoding_format": "base64"},
            )
        ).json()
        wide = (
            await http.post(
                "/v1/embeddings",
                json={"model": "e", "input": [[1, 2, 3], [4, 5]], "dimensions": 32},
            )
        ).json()
    decoded = struct.unpack("<8f", base64.b64decode(raw["data"][0]["embedding"]))
    assert list(decoded) == alpha
    assert [len(d["embedding"]) for d in wide["data"]] == [32, 32]
    assert wide["usage"] == {"prompt_tokens": 5, "total_tokens": 5}


async def test_embeddings_reject_bad_input(client: httpx.AsyncClient) -> None:
    for body in (
        {"model": "e", "input": []},
        {"model": "e", "input": 3},
        {"model": "e", "input": "x", "encoding_format": "hex"},
        {"model": "e", "input": "x", "dimensions": 0},
    ):
        response = await client.post("/v1/embeddings", json=body)
        assert response.status_code == 400, body
        assert response.json()["error"]["type"] == "invalid_request_error"


async def test_models_list(base_url: str) -> None:
    async with openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="x", max_retries=0) as sdk:
        page = await sdk.models.list()
    ids = [m.id for m in page.data]
    assert "gpt-4o-mini" in ids
    assert all(m.object == "model" for m in page.data)
    async with httpx.AsyncClient(base_url=base_url, headers=ANTHROPIC_HEADERS) as http:
        listing = (await http.get("/v1/models")).json()
    assert listing["data"]
    assert all(m["type"] == "model" for m in listing["data"])
    assert listing["has_more"] is False


# --------------------------------------------------------------------------- Anthropic


async def test_messages_with_anthropic_sdk(base_url: str) -> None:
    async with anthropic.AsyncAnthropic(base_url=base_url, api_key="x", max_retries=0) as sdk:
        message = await sdk.messages.create(
            model="claude-3-5-haiku-latest",
            max_tokens=50,
            system="You are terse.",
            messages=[{"role": "user", "content": "Hi Claude"}],
        )
        async with sdk.messages.stream(
            model="claude-3-5-haiku-latest",
            max_tokens=50,
            system=[{"type": "text", "text": "terse"}],
            messages=[{"role": "user", "content": [{"type": "text", "text": "Stream it"}]}],
        ) as stream:
            pieces = [text async for text in stream.text_stream]
            final = await stream.get_final_message()
    assert message.type == "message"
    assert message.id.startswith("msg_")
    assert message.model == "claude-3-5-haiku-latest"
    assert message.content[0].type == "text"
    assert message.content[0].text == "Mock reply to: Hi Claude"
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == (len("You are terse.") + len("Hi Claude")) // 4
    assert message.usage.output_tokens == 5
    assert pieces == ["Mock ", "reply ", "to: ", "Stream ", "it"]
    assert final.content[0].type == "text"
    assert final.content[0].text == "Mock reply to: Stream it"
    assert final.usage.output_tokens == 5


async def test_messages_raw_stream_event_order(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url, headers=ANTHROPIC_HEADERS) as http:
        response = await http.post("/v1/messages", json=claude("a b", stream=True, max_tokens=4))
    events = sse(response.text)
    names = [name for name, _ in events]
    assert names == ["message_start", "content_block_start", "ping"] + [
        "content_block_delta"
    ] * 4 + ["content_block_stop", "message_delta", "message_stop"]
    payloads = [json.loads(data) for _, data in events]
    assert [p["type"] for p in payloads] == names
    assert payloads[0]["message"]["usage"]["input_tokens"] == 1
    deltas = [p["delta"] for p in payloads if p["type"] == "content_block_delta"]
    assert {d["type"] for d in deltas} == {"text_delta"}
    assert "".join(d["text"] for d in deltas) == "Mock reply to: a"
    assert payloads[-2]["delta"]["stop_reason"] == "max_tokens"
    assert payloads[-2]["usage"]["output_tokens"] == 4


async def test_messages_tool_use_json_and_stream(base_url: str) -> None:
    tools: Any = [
        {
            "name": "lookup",
            "input_schema": {
                "type": "object",
                "properties": {"q": {"type": "string"}, "n": {"type": "number"}},
                "required": ["q", "n"],
            },
        },
        {"name": "other", "input_schema": {"type": "object", "properties": {}}},
    ]
    async with anthropic.AsyncAnthropic(base_url=base_url, api_key="x", max_retries=0) as sdk:
        message = await sdk.messages.create(
            model="claude-3-5-haiku-latest",
            max_tokens=50,
            tools=tools,
            messages=[{"role": "user", "content": "find cats"}],
        )
        forced = await sdk.messages.create(
            model="claude-3-5-haiku-latest",
            max_tokens=50,
            tools=tools,
            tool_choice={"type": "tool", "name": "other"},
            messages=[{"role": "user", "content": "find cats"}],
        )
    assert message.stop_reason == "tool_use"
    block = message.content[0]
    assert block.type == "tool_use"
    assert block.id.startswith("toolu_")
    assert block.name == "lookup"
    assert block.input == {"q": "find cats", "n": 1}
    forced_block = forced.content[0]
    assert forced_block.type == "tool_use"
    assert forced_block.name == "other"
    assert forced_block.input == {}

    async with httpx.AsyncClient(base_url=base_url, headers=ANTHROPIC_HEADERS) as http:
        response = await http.post(
            "/v1/messages", json=claude("find dogs", tools=tools, stream=True)
        )
    payloads = [json.loads(data) for _, data in sse(response.text)]
    assert payloads[1]["content_block"]["type"] == "tool_use"
    assert payloads[1]["content_block"]["name"] == "lookup"
    parts = [p["delta"]["partial_json"] for p in payloads if p["type"] == "content_block_delta"]
    assert len(parts) >= 2
    assert all(
        p["delta"]["type"] == "input_json_delta"
        for p in payloads
        if p["type"] == "content_block_delta"
    )
    assert json.loads("".join(parts)) == {"q": "find dogs", "n": 1}
    assert payloads[-2]["delta"]["stop_reason"] == "tool_use"


async def test_messages_tool_result_and_stop_sequence(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url, headers=ANTHROPIC_HEADERS) as http:
        body = {
            "model": "c",
            "max_tokens": 50,
            "messages": [
                {"role": "user", "content": "lookup"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}}
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_1",
                            "content": [{"type": "text", "text": "42 results"}],
                        }
                    ],
                },
            ],
            "tools": [{"name": "lookup", "input_schema": {"type": "object"}}],
        }
        result = (await http.post("/v1/messages", json=body)).json()
        stopped = (
            await http.post("/v1/messages", json=claude("alpha STOP beta", stop_sequences=["STOP"]))
        ).json()
    assert result["content"] == [{"type": "text", "text": "Tool said: 42 results"}]
    assert result["stop_reason"] == "end_turn"
    assert stopped["content"][0]["text"] == "Mock reply to: alpha "
    assert stopped["stop_reason"] == "stop_sequence"
    assert stopped["stop_sequence"] == "STOP"


async def test_messages_errors_in_anthropic_format(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as http:
        no_key = await http.post(
            "/v1/messages", json=claude("x"), headers={"anthropic-version": "2023-06-01"}
        )
        no_version = await http.post("/v1/messages", json=claude("x"), headers={"x-api-key": "k"})
        body = claude("x")
        del body["max_tokens"]
        no_max = await http.post("/v1/messages", json=body, headers=ANTHROPIC_HEADERS)
        bad_json = await http.post("/v1/messages", content=b"{nope", headers=ANTHROPIC_HEADERS)
        wrong_method = await http.get("/v1/messages", headers=ANTHROPIC_HEADERS)
    assert no_key.status_code == 401
    assert no_key.json() == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "x-api-key header is required"},
    }
    assert no_version.status_code == 400
    assert no_version.json()["error"]["type"] == "invalid_request_error"
    assert no_max.status_code == 400
    assert "max_tokens" in no_max.json()["error"]["message"]
    assert bad_json.status_code == 400
    assert bad_json.json()["type"] == "error"
    assert wrong_method.status_code == 405
    assert wrong_method.json()["type"] == "error"


# --------------------------------------------------------------------------- OpenAI errors


async def test_openai_errors(base_url: str, client: httpx.AsyncClient) -> None:
    async with httpx.AsyncClient(base_url=base_url) as anonymous:
        no_auth = await anonymous.post("/v1/chat/completions", json=chat("x"))
        empty_bearer = await anonymous.post(
            "/v1/chat/completions", json=chat("x"), headers={"authorization": "Bearer"}
        )
    assert no_auth.status_code == 401
    assert no_auth.json()["error"]["code"] == "invalid_api_key"
    assert set(no_auth.json()["error"]) == {"message", "type", "param", "code"}
    assert empty_bearer.status_code == 401

    unknown = await client.post("/v1/nothing", json={})
    assert unknown.status_code == 404
    assert "error" in unknown.json()
    wrong = await client.get("/v1/chat/completions")
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "POST"
    assert wrong.json()["error"]["type"] == "invalid_request_error"
    malformed = await client.post("/v1/chat/completions", content=b'{"model": ')
    assert malformed.status_code == 400
    assert malformed.json()["error"]["type"] == "invalid_request_error"
    not_object = await client.post("/v1/chat/completions", content=b"[1, 2]")
    assert not_object.status_code == 400
    missing = await client.post("/v1/chat/completions", json={"model": "m", "messages": []})
    assert missing.status_code == 400
    assert missing.json()["error"]["param"] == "messages"

    async with openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="x", max_retries=0) as sdk:
        with pytest.raises(openai.NotFoundError):
            await sdk.post("/nowhere", cast_to=object, body={})


# --------------------------------------------------------------------------- directives


async def test_directive_status_and_retry_after(base_url: str, client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/chat/completions", json=chat("!mock status=429 retry_after=2 ignored text")
    )
    assert response.status_code == 429
    assert response.headers["retry-after"] == "2"
    assert response.json()["error"]["code"] == "rate_limit_exceeded"

    async with anthropic.AsyncAnthropic(base_url=base_url, api_key="x", max_retries=0) as sdk:
        with pytest.raises(anthropic.InternalServerError) as caught:
            await sdk.messages.create(
                model="c", max_tokens=5, messages=[{"role": "user", "content": "!mock status=529"}]
            )
    assert caught.value.status_code == 529
    assert caught.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]


async def test_directive_words_and_ignored_rest(client: httpx.AsyncClient) -> None:
    reply = (
        await client.post("/v1/chat/completions", json=chat("!mock words=5 whatever follows"))
    ).json()
    assert reply["choices"][0]["message"]["content"] == "w0 w1 w2 w3 w4"
    assert reply["usage"]["completion_tokens"] == 5
    plain = (await client.post("/v1/chat/completions", json=chat("!mock delay_ms=0 first"))).json()
    other = (await client.post("/v1/chat/completions", json=chat("!mock delay_ms=0 second"))).json()
    assert plain["choices"][0]["message"]["content"] == "Mock reply to: !mock delay_ms=0"
    assert other["choices"][0]["message"]["content"] == plain["choices"][0]["message"]["content"]


async def test_directive_typos_are_rejected(client: httpx.AsyncClient) -> None:
    for text in (
        "!mock stauts=500",
        "!mock delay_ms=soon",
        "!mock status=200",
        "!mock words=-1",
        "!mock words=1000000",
    ):
        response = await client.post("/v1/chat/completions", json=chat(text))
        assert response.status_code == 400, text
        assert "mock directive" in response.json()["error"]["message"]


async def test_directive_cut_after_stream(client: httpx.AsyncClient) -> None:
    lines: list[str] = []
    async with client.stream(
        "POST", "/v1/chat/completions", json=chat("!mock cut_after=3 words=10", stream=True)
    ) as resp:
        assert resp.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            await collect_lines(resp, lines)
    data = [line[len("data: ") :] for line in lines if line.startswith("data: ")]
    assert "[DONE]" not in data
    chunks = [json.loads(d) for d in data]
    contents = [c["choices"][0]["delta"].get("content") for c in chunks[1:]]
    assert contents == ["w0 ", "w1 ", "w2 "]


async def test_directive_cut_after_anthropic_stream(base_url: str) -> None:
    lines: list[str] = []
    async with httpx.AsyncClient(base_url=base_url, headers=ANTHROPIC_HEADERS) as http:
        async with http.stream(
            "POST", "/v1/messages", json=claude("!mock cut_after=2 words=9", stream=True)
        ) as resp:
            with pytest.raises(httpx.RemoteProtocolError):
                await collect_lines(resp, lines)
    names = [line[len("event: ") :] for line in lines if line.startswith("event: ")]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
    ]


async def test_directive_cut_after_plain_body(client: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        await client.post("/v1/chat/completions", json=chat("!mock cut_after=1"))
    # The connection was dropped, not the server: the next request is answered.
    response = await client.post("/v1/chat/completions", json=chat("after the cut"))
    assert response.status_code == 200


async def test_directive_close(client: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        await client.post("/v1/chat/completions", json=chat("!mock close=1"))
    with pytest.raises(httpx.RemoteProtocolError):
        await client.post(
            "/v1/chat/completions", json=chat("!mock close=1 delay_ms=1", stream=True)
        )


async def test_directive_invalid(base_url: str, client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json=chat("!mock invalid=1"))
    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.content)
    streamed = await client.post("/v1/chat/completions", json=chat("!mock invalid=1", stream=True))
    first_data = sse(streamed.text)[0][1]
    with pytest.raises(json.JSONDecodeError):
        json.loads(first_data)
    async with httpx.AsyncClient(base_url=base_url, headers=ANTHROPIC_HEADERS) as http:
        messages = await http.post("/v1/messages", json=claude("!mock invalid=1"))
    assert messages.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(messages.content)


async def test_directive_chunk_delay_streams_everything(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/chat/completions", json=chat("!mock chunk_delay_ms=1 words=4", stream=True)
    )
    chunks = [json.loads(d) for _, d in sse(response.text)[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "w0 w1 w2 w3"
    assert sse(response.text)[-1] == (None, "[DONE]")


# --------------------------------------------------------------------------- disconnects


async def test_disconnect_mid_stream_is_counted(base_url: str, client: httpx.AsyncClient) -> None:
    body = chat("!mock chunk_delay_ms=100 words=200", stream=True)
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                break  # leave after the first chunk; closing the response drops the socket
    await wait_for_stat(base_url, "disconnects", 1)
    await wait_for_stat(base_url, "in_flight", 0)


async def test_disconnect_during_delay_is_counted(base_url: str, client: httpx.AsyncClient) -> None:
    async with trio.open_nursery() as nursery:

        async def slow_request() -> None:
            await client.post("/v1/chat/completions", json=chat("!mock delay_ms=60000"))

        nursery.start_soon(slow_request)
        await wait_for_stat(base_url, "in_flight", 1)
        assert (await stats(base_url))["disconnects"] == 0
        nursery.cancel_scope.cancel()  # httpx closes the connection of a cancelled request
    await wait_for_stat(base_url, "disconnects", 1)
    await wait_for_stat(base_url, "in_flight", 0)


async def test_complete_answers_are_not_disconnects(base_url: str) -> None:
    for _ in range(5):
        async with httpx.AsyncClient(base_url=base_url, headers=OPENAI_HEADERS) as http:
            response = await http.post(
                "/v1/chat/completions", json=chat("!mock delay_ms=1 chunk_delay_ms=1", stream=True)
            )
            assert sse(response.text)[-1] == (None, "[DONE]")
    await wait_for_stat(base_url, "in_flight", 0)
    assert (await stats(base_url))["disconnects"] == 0


# --------------------------------------------------------------------------- fail rate, stats


async def test_fail_rate_one_fails_everything() -> None:
    async with running(MockOptions(fail_rate=1.0)) as base:
        async with httpx.AsyncClient(base_url=base) as http:
            for _ in range(3):
                response = await http.post(
                    "/v1/chat/completions", json=chat("x"), headers=OPENAI_HEADERS
                )
                assert response.status_code == 500
                assert response.json()["error"]["type"] == "server_error"
            messages = await http.post("/v1/messages", json=claude("x"), headers=ANTHROPIC_HEADERS)
            assert messages.status_code == 500
            assert messages.json()["error"]["type"] == "api_error"
            embeddings = await http.post(
                "/v1/embeddings", json={"model": "e", "input": "x"}, headers=OPENAI_HEADERS
            )
            assert embeddings.status_code == 500


async def test_fail_rate_is_reproducible_with_a_seed() -> None:
    runs = []
    for _ in range(2):
        async with running(MockOptions(fail_rate=0.5, seed=7)) as base:
            async with httpx.AsyncClient(base_url=base, headers=OPENAI_HEADERS) as http:
                runs.append(
                    [
                        (await http.post("/v1/chat/completions", json=chat("x"))).status_code
                        for _ in range(20)
                    ]
                )
    assert runs[0] == runs[1]
    assert set(runs[0]) == {200, 500}


async def test_stats_and_reset(base_url: str, client: httpx.AsyncClient) -> None:
    await client.post("/v1/chat/completions", json=chat("one"))
    await client.post("/v1/chat/completions", json=chat("two"))
    await client.post("/v1/embeddings", json={"model": "e", "input": "x"})
    await client.get("/v1/nothing")
    counted = await stats(base_url)
    # the test's client kept one connection alive; `stats` opens one of its own
    assert counted.pop("connections") == 2
    assert counted == {
        "requests": 4,
        "by_path": {"/v1/chat/completions": 2, "/v1/embeddings": 1, "/v1/nothing": 1},
        "disconnects": 0,
        "in_flight": 0,
    }
    reset = await client.post("/mock/reset")
    assert reset.status_code == 200
    assert reset.json()["requests"] == 0
    assert await stats(base_url) == {"requests": 0, "by_path": {}, "disconnects": 0, "in_flight": 0,
                                     "connections": 1}
    assert (await client.get("/mock/reset")).status_code == 405


async def test_delay_option_is_applied() -> None:
    async with running(MockOptions(delay_ms=60000)) as base:
        async with httpx.AsyncClient(base_url=base, headers=OPENAI_HEADERS) as http:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(http.post, "/v1/chat/completions", json=chat("x")))
                await wait_for_stat(base, "in_flight", 1)
                # Still held back while the control endpoint answers at once.
                assert (await stats(base))["in_flight"] == 1
                nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- HTTP/1.1 layer


class RawResponses:
    """Reads Content-Length framed responses off a raw socket, keeping any surplus bytes."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def _fill(self) -> None:
        chunk = await self.stream.receive_some(65536)
        assert chunk, "the server closed the connection"
        self.buffer += chunk

    async def next(self) -> tuple[int, bytes]:
        while b"\r\n\r\n" not in self.buffer:
            await self._fill()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in lines[1:]
            if line.lower().startswith(b"content-length:")
        )
        while len(self.buffer) < length:
            await self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(lines[0].split()[1]), body


def raw_request(text: str) -> bytes:
    payload = json.dumps(chat(text)).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: mock\r\n"
        b"Authorization: Bearer k\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload
    )


async def test_keep_alive_and_pipelining(base_url: str) -> None:
    port = int(base_url.rsplit(":", 1)[1])
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        responses = RawResponses(stream)
        texts = []
        for text in ("first", "second"):  # one after the other on the same socket
            await stream.send_all(raw_request(text))
            status, body = await responses.next()
            assert status == 200
            texts.append(json.loads(body)["choices"][0]["message"]["content"])
        # Two requests in one write: both answered, in order.
        await stream.send_all(raw_request("third") + raw_request("fourth"))
        for _ in range(2):
            status, body = await responses.next()
            assert status == 200
            texts.append(json.loads(body)["choices"][0]["message"]["content"])
    assert texts == [f"Mock reply to: {t}" for t in ("first", "second", "third", "fourth")]
    assert (await stats(base_url))["requests"] == 4


async def test_malformed_http_gets_400(base_url: str) -> None:
    port = int(base_url.rsplit(":", 1)[1])
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"THIS IS NOT HTTP\r\n\r\n")
        received = b""
        while chunk := await stream.receive_some(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 400 ")


async def test_server_survives_bad_clients(base_url: str, client: httpx.AsyncClient) -> None:
    port = int(base_url.rsplit(":", 1)[1])
    for junk in (b"", b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 99\r\n\r\n{"):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(junk)
        await stream.aclose()
    response = await client.post("/v1/chat/completions", json=chat("still here"))
    assert response.json()["choices"][0]["message"]["content"] == "Mock reply to: still here"


# --------------------------------------------------------------------------- options and CLI


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="fail_rate"):
        MockOptions(fail_rate=1.5)
    with pytest.raises(ValueError, match="delay_ms"):
        MockOptions(delay_ms=-1)


async def test_run_serves_until_sigterm() -> None:
    env = {**os.environ, "PYTHONPATH": REPO_ROOT}
    code = (
        "import sys; from edge.mock_upstream import MockOptions, run; "
        "sys.exit(run(MockOptions(port=0)))"
    )
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                [sys.executable, "-c", code],
                stderr=subprocess.PIPE,
                check=False,
                env=env,
            )
        )
        assert process.stderr is not None
        banner = b""
        with trio.fail_after(30):
            while b"\n" not in banner:
                chunk = await process.stderr.receive_some(1024)
                assert chunk, banner
                banner += chunk
        line = banner.decode().strip()
        assert line.startswith("mock upstream on http://127.0.0.1:")
        async with httpx.AsyncClient(base_url=line.rsplit(" ", 1)[1]) as http:
            assert (await http.get("/mock/stats")).status_code == 200
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await process.wait() == 0
