"""`edge mock-upstream --tokens N --token-ms T`: N content events per streamed answer,
T ms apart, in every dialect the mock speaks; through the real spawned mock."""

from __future__ import annotations

import subprocess
import sys

import httpx
import orjson
import pytest
from _servers import spawn_mock

_OPENAI = {"authorization": "Bearer sk-mock"}
_ANTHROPIC = {"x-api-key": "sk-mock", "anthropic-version": "2023-06-01"}


def _events(response: httpx.Response) -> list[dict]:
    """The JSON payload of every SSE event, in order (the [DONE] sentinel left out)."""
    out = []
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append(orjson.loads(line[6:]))
    return out


def _chat_stream(url: str, prompt: str) -> tuple[list[str], dict]:
    body = {"model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": prompt}]}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=_OPENAI,
                      timeout=30) as response:
        assert response.status_code == 200
        events = _events(response)
    pieces = [e["choices"][0]["delta"]["content"] for e in events
              if e["choices"] and e["choices"][0]["delta"].get("content")]
    return pieces, events[-1]["usage"]


def _messages_stream(url: str) -> tuple[int, int]:
    body = {"model": "claude-3-5-haiku-latest", "max_tokens": 1000, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream("POST", f"{url}/v1/messages", json=body, headers=_ANTHROPIC,
                      timeout=30) as response:
        events = _events(response)
    deltas = sum(1 for e in events if e["type"] == "content_block_delta")
    usage = next(e["usage"]["output_tokens"] for e in events if e["type"] == "message_delta")
    return deltas, usage


def _responses_stream(url: str) -> tuple[int, int]:
    body = {"model": "gpt-4o-mini", "stream": True, "input": "hi"}
    with httpx.stream("POST", f"{url}/v1/responses", json=body, headers=_OPENAI,
                      timeout=30) as response:
        events = _events(response)
    deltas = sum(1 for e in events if e["type"] == "response.output_text.delta")
    done = next(e for e in events if e["type"] == "response.completed")
    return deltas, done["response"]["usage"]["output_tokens"]


def test_tokens_fixes_the_event_count_in_every_dialect(tmp_path) -> None:
    mock = spawn_mock(tmp_path, "--tokens", "7", "--token-ms", "5")
    try:
        pieces, usage = _chat_stream(mock.url, "a unique prompt")
        assert len(pieces) == 7
        assert usage["completion_tokens"] == 7
        assert "".join(pieces).startswith("Mock reply to:")
        assert _messages_stream(mock.url) == (7, 7)
        assert _responses_stream(mock.url) == (7, 7)
        plain = httpx.post(f"{mock.url}/v1/chat/completions", headers=_OPENAI, timeout=30,
                           json={"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]})
        assert plain.json()["usage"]["completion_tokens"] == 7
        assert len(plain.json()["choices"][0]["message"]["content"].split()) == 7
    finally:
        mock.stop()


def test_a_paced_stream_arrives_in_order_and_complete(tmp_path) -> None:
    mock = spawn_mock(tmp_path, "--tokens", "40", "--token-ms", "2")
    try:
        pieces, usage = _chat_stream(mock.url, "count")
        assert len(pieces) == 40
        assert usage["completion_tokens"] == 40
        assert pieces[:4] == ["Mock ", "reply ", "to: ", "count "]
        assert pieces[4:] == [f"w{i} " for i in range(4, 39)] + ["w39"]
    finally:
        mock.stop()


def test_defaults_are_unchanged(tmp_path) -> None:
    mock = spawn_mock(tmp_path)
    try:
        pieces, usage = _chat_stream(mock.url, "hello there")
        assert "".join(pieces) == "Mock reply to: hello there"
        assert usage["completion_tokens"] == len(pieces) == 5
    finally:
        mock.stop()


@pytest.mark.parametrize("flags", [("--tokens", "-3"), ("--tokens", "2.5"), ("--tokens", "0"),
                                   ("--tokens", "x"), ("--token-ms", "-1"),
                                   ("--token-ms", "nan"), ("--token-ms", "soon")])
def test_bad_values_exit_2(flags: tuple[str, str]) -> None:
    done = subprocess.run([sys.executable, "-m", "edge", "mock-upstream", *flags],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert flags[0] in done.stderr
