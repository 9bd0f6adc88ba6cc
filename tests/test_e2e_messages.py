"""The /v1/messages front door with the official anthropic SDK, to a Claude model (native)
and to an OpenAI-kind model (translated both ways), streaming and tools included."""

from __future__ import annotations

import re
from collections.abc import Iterator

import anthropic
import httpx
import pytest
from _servers import EdgeProcess, MockUpstream

KEY = "sk-front-door-provider-secret-42"
TOOLS = [{"name": "get_weather", "description": "Weather for a city",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]}}]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("messages")
    mock = MockUpstream(tmp)
    config = f"""
[[providers]]
name = "claude"
kind = "anthropic"
base_url = "{mock.url}"
api_key = "env:K"
models = ["claude-*"]

[[providers]]
name = "oai"
kind = "openai"
base_url = "{mock.url}/v1"
api_key = "env:K"
models = ["gpt-*"]
"""
    edge = EdgeProcess(tmp, config=config, env={"K": KEY})
    yield edge, mock
    edge.stop()
    mock.stop()


@pytest.fixture
def client(stack) -> Iterator[anthropic.Anthropic]:
    edge, _ = stack
    with anthropic.Anthropic(base_url=edge.url, api_key="client-key", max_retries=0) as client:
        yield client


@pytest.mark.parametrize(("model", "provider"), [("claude-3-haiku-20240307", "claude"),
                                                 ("gpt-4o-mini", "oai")])
def test_message_non_stream(client: anthropic.Anthropic, model: str, provider: str) -> None:
    raw = client.messages.with_raw_response.create(
        model=model, max_tokens=100, system="Be brief.",
        messages=[{"role": "user", "content": f"hello from {provider}"}])
    message = raw.parse()
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.content[0].type == "text"
    assert message.content[0].text == f"Mock reply to: hello from {provider}"
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0
    assert message.usage.output_tokens > 0
    assert raw.headers["x-edge-provider"] == provider
    assert raw.http_response.json()["metadata"]["provider"] == provider


@pytest.mark.parametrize("model", ["claude-3-haiku-20240307", "gpt-4o-mini"])
def test_message_stream(client: anthropic.Anthropic, model: str) -> None:
    with client.messages.stream(model=model, max_tokens=100,
                                messages=[{"role": "user", "content": f"stream {model}"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == f"Mock reply to: stream {model}"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0


@pytest.mark.parametrize("model", ["claude-3-haiku-20240307", "gpt-4o-mini"])
def test_stream_text_arrives_while_the_upstream_pauses(stack, model: str) -> None:
    """Native and translated streams alike: what edge has is sent before it waits on the
    upstream again (the whole stream takes a minute; the first words must not)."""
    edge, _ = stack
    client = anthropic.Anthropic(base_url=edge.url, api_key="client-key", max_retries=0,
                                 timeout=30.0)
    words: list[str] = []
    with client.messages.stream(
            model=model, max_tokens=100,
            messages=[{"role": "user", "content": "!mock words=60 chunk_delay_ms=1000"}]) as s:
        for text in s.text_stream:
            if text:
                words.append(text)
            if len(words) == 2:
                break
    assert len(words) == 2
    client.close()


@pytest.mark.parametrize("model", ["claude-3-haiku-20240307", "gpt-4o-mini"])
def test_tools_both_ways(client: anthropic.Anthropic, model: str) -> None:
    first = client.messages.create(
        model=model, max_tokens=200, tools=TOOLS,
        messages=[{"role": "user", "content": "Paris"}])
    assert first.stop_reason == "tool_use"
    call = next(b for b in first.content if b.type == "tool_use")
    assert call.name == "get_weather"
    assert call.input == {"city": "Paris"}

    with client.messages.stream(model=model, max_tokens=200, tools=TOOLS,
                                messages=[{"role": "user", "content": "Rome"}]) as s:
        streamed = s.get_final_message()
    block = next(b for b in streamed.content if b.type == "tool_use")
    assert block.input == {"city": "Rome"}
    assert streamed.stop_reason == "tool_use"

    follow = client.messages.create(
        model=model, max_tokens=200, tools=TOOLS,
        messages=[{"role": "user", "content": "Paris"},
                  {"role": "assistant", "content": [b.model_dump() for b in first.content]},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                                "content": "sunny, 21C"}]}])
    assert follow.content[0].text == "Tool said: sunny, 21C"


@pytest.mark.parametrize("model", ["claude-3-haiku-20240307", "gpt-4o-mini"])
def test_cached_message_replayed_as_json_and_stream(client: anthropic.Anthropic,
                                                    model: str) -> None:
    messages = [{"role": "user", "content": f"cache the front door {model}"}]
    first = client.messages.with_raw_response.create(model=model, max_tokens=50,
                                                     messages=messages)
    assert first.headers["x-edge-cache"] == "miss"
    again = client.messages.with_raw_response.create(model=model, max_tokens=50,
                                                     messages=messages)
    assert again.headers["x-edge-cache"] == "hit-l1"
    assert again.parse().content == first.parse().content
    with client.messages.stream(model=model, max_tokens=50, messages=messages) as s:
        assert s.response.headers["x-edge-cache"] == "hit-l1"
        assert s.get_final_text() == first.parse().content[0].text


def test_streamed_miss_then_json_hit(client: anthropic.Anthropic) -> None:
    messages = [{"role": "user", "content": "stream first, json later"}]
    with client.messages.stream(model="claude-3-haiku-20240307", max_tokens=50,
                                messages=messages) as s:
        text = s.get_final_text()
    hit = client.messages.with_raw_response.create(model="claude-3-haiku-20240307",
                                                   max_tokens=50, messages=messages)
    assert hit.headers["x-edge-cache"] == "hit-l1"
    assert hit.parse().content[0].text == text


def test_errors_in_anthropic_format(stack, client: anthropic.Anthropic) -> None:
    edge, _ = stack
    r = httpx.post(f"{edge.url}/v1/messages", json={
        "model": "claude-3-haiku-20240307", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400
    body = r.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]
    r = httpx.post(f"{edge.url}/v1/messages", content=b"{broken")
    assert r.status_code == 400
    assert r.json()["type"] == "error"
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="no-such-model", max_tokens=10,
                               messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model="claude-3-haiku-20240307", max_tokens=10,
                               messages=[{"role": "user", "content": "!mock status=400"}])
    assert KEY not in str(info.value)
    r = httpx.get(f"{edge.url}/v1/messages")
    assert r.status_code == 405
    assert r.json()["type"] == "error"
    # other Messages API paths (the SDK's count_tokens) are not served, in Anthropic's format
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.count_tokens(model="claude-3-haiku-20240307",
                                     messages=[{"role": "user", "content": "x"}])
    assert missing.value.body["type"] == "error"  # type: ignore[index]
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


def test_upstream_failure_mid_stream_ends_with_error_event(stack) -> None:
    edge, _ = stack
    body = {"model": "gpt-4o-mini", "max_tokens": 100, "stream": True,
            "messages": [{"role": "user", "content": "!mock cut_after=2 words=10"}]}
    with httpx.stream("POST", f"{edge.url}/v1/messages", json=body) as r:
        text = r.read().decode()
    assert r.status_code == 200
    assert "event: error" in text
    assert "event: message_stop" not in text


def test_translated_stream_message_ids_are_random_and_unique(client: anthropic.Anthropic) -> None:
    """A translated stream names its message itself; ids from a clock and id() repeated."""
    ids = []
    for i in range(6):
        with client.messages.stream(model="gpt-4o-mini", max_tokens=20, messages=[
                {"role": "user", "content": f"id {i}"}]) as s:
            ids.append(s.get_final_message().id)
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"msg_[0-9a-f]{24}", i) for i in ids), ids


def test_key_never_in_output(stack) -> None:
    edge, _ = stack
    assert KEY not in edge.output()
