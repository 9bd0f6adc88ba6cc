"""SPEC §9 `least_busy`: fewest requests in flight first, ties in config order.

`rank` on both hot-path twins first; then end to end: two deployments of one model group,
each on its own fake; a streamed answer whose prompt starts with "hold" stops after its
first event until the test sets `Held.release`, so "busy" is a state the test controls,
never a matter of timing.
"""

from __future__ import annotations

import json
import threading
import types
from collections.abc import Iterator

import httpx
import pytest
from _fake_upstream import FakeUpstream, Reply, chat_chunk, sse
from _scrape import metric
from _servers import EdgeProcess, wait_until

ENV = {"K": "sk-least-busy-0123456789"}
LEAST_BUSY = 4


def test_rank_least_busy_orders_by_attempts_in_flight(impl: types.ModuleType) -> None:
    stats = [impl.DeploymentStats(1.0, 1.0) for _ in range(4)]
    breaker = impl.Breaker(1, 10.0)
    breakers = [breaker] * 4
    assert impl.STRATEGY_LEAST_BUSY == LEAST_BUSY
    assert impl.rank(LEAST_BUSY, stats, breakers, 0.0, 0, 0, 30.0) == [0, 1, 2, 3]
    for index, busy in enumerate((2, 0, 1, 0)):
        for _ in range(busy):
            stats[index].begin()
    assert impl.rank(LEAST_BUSY, stats, breakers, 0.0, 0, 0, 30.0) == [1, 3, 2, 0]
    stats[0].end()
    stats[0].end()
    stats[0].end()  # one end too many never goes below zero
    assert stats[0].inflight == 0
    assert impl.rank(LEAST_BUSY, stats, breakers, 0.0, 0, 0, 30.0) == [0, 1, 3, 2]


def test_rank_least_busy_skips_an_open_circuit(impl: types.ModuleType) -> None:
    stats = [impl.DeploymentStats(1.0, 1.0) for _ in range(2)]
    stats[1].begin()
    opened = impl.Breaker(1, 10.0)
    opened.failure(0.0)
    assert impl.rank(LEAST_BUSY, stats, [opened, impl.Breaker(1, 10.0)], 1.0, 0, 0,
                     30.0) == [1]


class Held:
    """Answers chat completions; "hold ..." streams wait for `release` after one event."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def __call__(self, path: str, body: dict) -> Reply:
        text = f"reply to: {body['messages'][-1]['content']}"
        if body.get("stream"):
            return Reply(self._stream(text), content_type="text/event-stream")
        return Reply(json.dumps({
            "id": "chatcmpl-busy", "object": "chat.completion", "created": 1,
            "model": body["model"],
            "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}]}).encode())

    def _stream(self, text: str) -> Iterator[bytes]:
        yield sse(chat_chunk(text))
        if text.startswith("reply to: hold"):
            self.release.wait(60)
        yield sse(chat_chunk(finish="stop"))
        yield sse("[DONE]")


def provider(name: str, fake: FakeUpstream) -> str:
    return f"""
[[providers]]
name = "{name}"
kind = "openai"
base_url = "{fake.url}/v1"
api_key = "env:K"
models = ["{name}-*"]
"""


@pytest.fixture
def held() -> Iterator[tuple[Held, FakeUpstream, FakeUpstream]]:
    answers = Held()
    first, second = FakeUpstream(answers), FakeUpstream(answers)
    yield answers, first, second
    answers.release.set()
    first.close()
    second.close()


def served_by(edge: EdgeProcess, content: str) -> str:
    r = httpx.post(f"{edge.url}/v1/chat/completions", timeout=30, json={
        "model": "busy", "messages": [{"role": "user", "content": content}]})
    assert r.status_code == 200
    provider: str = r.headers["x-edge-provider"]
    return provider


def test_least_busy_sends_new_requests_to_the_idle_deployment(tmp_path, held) -> None:
    answers, first, second = held
    edge = EdgeProcess(tmp_path, env=ENV, config=f"""
[routing]
strategy = "least_busy"

[cache]
enabled = false

[models."busy"]
deployments = ["a/gpt-4o-mini", "b/gpt-4o-mini"]
{provider("a", first)}{provider("b", second)}""")
    client = httpx.Client(timeout=30)
    # each held stream with its line iterator, kept alive: a dropped iterator hangs up
    streams: list[tuple[httpx.Response, Iterator[str]]] = []

    def hold(content: str) -> str:
        """Start a held stream, read its first event, and say who serves it."""
        request = client.build_request("POST", f"{edge.url}/v1/chat/completions", json={
            "model": "busy", "stream": True,
            "messages": [{"role": "user", "content": content}]})
        response = client.send(request, stream=True)
        assert response.status_code == 200
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
        streams.append((response, lines))
        return response.headers["x-edge-provider"]

    try:
        assert served_by(edge, "idle") == "a"  # nothing in flight: config order
        assert hold("hold one") == "a"
        # a has one in flight: every new request goes to b, which finishes each in turn
        assert [served_by(edge, f"while a is busy {i}") for i in range(3)] == ["b"] * 3
        assert hold("hold two") == "b"
        assert served_by(edge, "one each") == "a"  # one in flight on each: config order
        answers.release.set()
        for _, lines in streams:
            assert [line for line in lines if line][-1] == "data: [DONE]"
        wait_until(lambda: metric(edge.url, "llm_edge_inflight_requests") == 0,
                   what="the held streams to end")
        assert [served_by(edge, f"idle again {i}") for i in range(2)] == ["a", "a"]
        assert first.count("/v1/chat/completions") == 5
        assert second.count("/v1/chat/completions") == 4
    finally:
        for response, _ in streams:
            response.close()
        client.close()
        edge.stop()
