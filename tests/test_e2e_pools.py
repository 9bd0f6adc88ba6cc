"""SPEC §9 "Key pools", end to end: a spawned `edge serve` whose provider has several API
keys (`api_keys`, through `env:` references) in front of a fake that speaks OpenAI's wire
format and answers each key as the test scripts it (429 with Retry-After, or a 401 that
quotes the key back, as real upstreams do).

What the fake saw (`PoolFake.seen`: the key of every call, in order) is the proof of
which key edge sent; the client sees only statuses and bodies, never a key.
"""

from __future__ import annotations

import collections
import email.utils
import json
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from _fake_upstream import FakeUpstream, Reply, chat_chunk, sse
from _scrape import metric
from _servers import EdgeProcess, edge_factory  # noqa: F401 - a fixture, used by `serve`

K1, K2, K3 = "sk-pool-first-1111aaaa", "sk-pool-second-2222bbbb", "sk-pool-third-3333cccc"
SPARE = "sk-spare-single-4444dddd"
# debug: every line edge can log is checked for keys
ENV = {"K1": K1, "K2": K2, "K3": K3, "SPARE": SPARE, "LOG_LEVEL": "debug"}
SECRETS = (K1, K2, K3, SPARE)
MODEL = "gpt-4o-mini"
CHAT = "/v1/chat/completions"


class PoolFake(FakeUpstream):
    """OpenAI's chat completions; each call's key (its bearer token) decides the answer.

    `limited` maps a key to the Retry-After of the 429 it gets; `refused` keys get a 401
    whose message quotes the key, as OpenAI's "Incorrect API key provided" does.
    """

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.limited: dict[str, str] = {}
        self.refused: set[str] = set()
        super().__init__(lambda path, body: Reply(b""))

    @property
    def used(self) -> collections.Counter[str]:
        with self._lock:
            return collections.Counter(self.seen)

    def answer(self, path: str, headers: dict[str, str], raw: bytes) -> Reply:
        key = headers.get("authorization", "").removeprefix("Bearer ")
        with self._lock:
            self.seen.append(key)
        if key in self.limited:
            return _error(429, f"Rate limit reached for requests with key {key}.",
                          "rate_limit_exceeded", {"retry-after": self.limited[key]})
        if key in self.refused:
            return _error(401, f"Incorrect API key provided: {key}.", "invalid_api_key")
        body = json.loads(raw)
        text = f"pooled reply to: {body['messages'][-1]['content']}"
        if body.get("stream") and text.endswith("leak"):  # an error event quoting the key
            return Reply(iter([sse(chat_chunk("partial")),
                               sse({"error": {"message": f"overloaded for key {key}",
                                              "type": "server_error", "code": None}})]),
                         content_type="text/event-stream")
        if body.get("stream"):
            return Reply(iter([sse(chat_chunk(text)), sse(chat_chunk(finish="stop")),
                               sse(chat_chunk(usage=_USAGE)), sse("[DONE]")]),
                         content_type="text/event-stream")
        return Reply(json.dumps({
            "id": "chatcmpl-pool", "object": "chat.completion", "created": 1,
            "model": body["model"], "usage": _USAGE,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}]}).encode())


_USAGE = {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}


def _error(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> Reply:
    return Reply(json.dumps({"error": {"message": message, "type": "requests", "param": None,
                                       "code": code}}).encode(), status, headers=headers or {})


@pytest.fixture
def fakes() -> Iterator[Any]:
    started: list[PoolFake] = []

    def start() -> PoolFake:
        started.append(PoolFake())
        return started[-1]

    yield start
    for fake in started:
        fake.close()


@pytest.fixture
def serve(edge_factory):  # noqa: F811 - the fixture imported above
    """`edge serve` with this module's environment and a config; stopped at the end."""
    return lambda config: edge_factory(env=ENV, config=config)


def config(fake: PoolFake, api_keys: str, extra: str = "") -> str:
    return f"""
[cache]
enabled = false

[[providers]]
name = "pool"
kind = "openai"
base_url = "{fake.url}/v1"
api_keys = {api_keys}
models = ["gpt-*"]
timeout_s = 10
{extra}"""


def chat(edge: EdgeProcess, content: str, model: str = MODEL) -> httpx.Response:
    return httpx.post(f"{edge.url}{CHAT}", timeout=30,
                      json={"model": model, "messages": [{"role": "user", "content": content}]})


def spread(edge: EdgeProcess, fake: PoolFake, requests: int) -> collections.Counter[str]:
    """Send `requests` chats, each answered 200; how many calls each key made."""
    for i in range(requests):
        assert chat(edge, f"request {i}").status_code == 200
    return fake.used


def pool_keys(edge: EdgeProcess, provider: str = "pool") -> dict[str, int]:
    keys: dict[str, int] = httpx.get(f"{edge.url}/health").json()["providers"][provider]["keys"]
    return keys


def assert_redacted(edge: EdgeProcess, *texts: str) -> None:
    """No pool key in edge's log, in /health or /metrics, or in any of `texts`."""
    seen = [edge.output(), httpx.get(f"{edge.url}/health").text,
            httpx.get(f"{edge.url}/metrics").text, *texts]
    for secret in SECRETS:
        for text in seen:
            assert secret not in text


# --------------------------------------------------------------------------- rests on 429


def test_three_keys_keep_serving_while_two_are_rate_limited(serve, fakes) -> None:
    """(a), (e), (g) and the metric: with K1 and K2 answering 429 (Retry-After: 60),
    every request through the openai SDK, a stream first, gets its answer; each limited
    key is called once and rests, and from then on the fake sees K3 alone."""
    fake = fakes()
    fake.limited = {K1: "60", K2: "60"}
    edge = serve(config(fake, '["env:K1", "env:K2", "env:K3"]'))
    assert metric(edge.url, "llm_edge_upstream_key_rests_total", provider="pool") == 0
    with openai.OpenAI(base_url=f"{edge.url}/v1", api_key="any", max_retries=0) as client:
        stream = client.chat.completions.create(
            model=MODEL, stream=True, messages=[{"role": "user", "content": "stream 0"}])
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream
                       if chunk.choices)
        assert text == "pooled reply to: stream 0"
        for i in range(1, 7):
            answer = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"plain {i}"}])
            assert answer.choices[0].message.content == f"pooled reply to: plain {i}"
        stream = client.chat.completions.create(
            model=MODEL, stream=True, messages=[{"role": "user", "content": "stream 7"}])
        assert "".join(c.choices[0].delta.content or "" for c in stream
                       if c.choices) == "pooled reply to: stream 7"
    seen = list(fake.seen)
    assert seen[:3] == [K1, K2, K3]  # the first request tried the keys in config order
    assert seen[3:] == [K3] * 7  # every later one went straight to the healthy key
    assert metric(edge.url, "llm_edge_upstream_key_rests_total", provider="pool") == 2
    assert pool_keys(edge) == {"total": 3, "available": 1}
    assert httpx.get(f"{edge.url}/health").json()["providers"]["pool"]["healthy"] is True
    assert_redacted(edge)


def test_the_messages_door_is_served_by_the_pool(serve, fakes) -> None:
    """The anthropic SDK through /v1/messages, translated to the OpenAI-kind pool: K1's
    429 rests it and K2 answers, a stream and a plain answer alike."""
    fake = fakes()
    fake.limited = {K1: "60"}
    edge = serve(config(fake, '["env:K1", "env:K2"]'))
    with anthropic.Anthropic(base_url=edge.url, api_key="any", max_retries=0) as client:
        with client.messages.stream(model=MODEL, max_tokens=20, messages=[
                {"role": "user", "content": "claude streams"}]) as stream:
            assert stream.get_final_text() == "pooled reply to: claude streams"
        answer = client.messages.create(model=MODEL, max_tokens=20, messages=[
            {"role": "user", "content": "claude asks"}])
        assert answer.content[0].text == "pooled reply to: claude asks"  # type: ignore[union-attr]
    assert fake.seen == [K1, K2, K2]
    assert metric(edge.url, "llm_edge_upstream_key_rests_total", provider="pool") == 1


def test_weights_spread_requests_by_share(serve, fakes) -> None:
    """(b) weights 1 and 3: both keys serve, the heavier one at least twice as often."""
    fake = fakes()
    edge = serve(config(
        fake, '[{ key = "env:K1", weight = 1 }, { key = "env:K2", weight = 3 }]'))
    used = spread(edge, fake, 40)
    assert used[K1] + used[K2] == 40
    assert used[K1] >= 1
    assert used[K2] >= 2 * used[K1]
    assert pool_keys(edge) == {"total": 2, "available": 2}


def test_a_key_at_its_own_rpm_is_skipped(serve, fakes) -> None:
    """(c) K1 allows 2 requests a minute: it serves its two, then the others carry on;
    being at a limit is not a rest (no 429 was seen), so the metric stays at 0."""
    fake = fakes()
    edge = serve(config(
        fake, '[{ key = "env:K1", rpm = 2 }, "env:K2", "env:K3"]'))
    used = spread(edge, fake, 9)
    assert used[K1] == 2
    assert used[K2] + used[K3] == 7
    assert used[K2] >= 3
    assert used[K3] >= 3
    assert pool_keys(edge) == {"total": 3, "available": 2}
    assert metric(edge.url, "llm_edge_upstream_key_rests_total", provider="pool") == 0


def test_a_key_at_its_own_tpm_is_skipped(serve, fakes) -> None:
    """(c) K1 allows 10 tokens a minute and each answer uses 9: after two answers (three
    at most, since an answer's tokens are charged once it is sent) K2 serves the rest,
    where an even spread would have given K1 six of the twelve."""
    fake = fakes()
    edge = serve(config(fake, '[{ key = "env:K1", tpm = 10 }, "env:K2"]'))
    used = spread(edge, fake, 12)
    assert 2 <= used[K1] <= 3
    assert used[K2] == 12 - used[K1]
    assert pool_keys(edge) == {"total": 2, "available": 1}


def test_every_key_resting_skips_the_deployment(serve, fakes) -> None:
    """(d) once both keys rest, a model the pool alone serves gets 503 with Retry-After at
    once, without a call upstream; a model group with another deployment fails over to it.
    The 429s quote the key: the client's error body and edge's log never do."""
    fake, spare = fakes(), fakes()
    fake.limited = {K1: "60", K2: "60"}
    edge = serve(config(fake, '["env:K1", "env:K2"]', f"""
[[providers]]
name = "spare"
kind = "openai"
base_url = "{spare.url}/v1"
api_key = "env:SPARE"
models = ["spare-*"]

[models."solo"]
deployments = ["pool/{MODEL}"]

[models."spill"]
deployments = ["pool/{MODEL}", "spare/{MODEL}"]
"""))
    first = chat(edge, "rest them", model="solo")
    assert first.status_code == 429  # both keys were tried and both said 429
    assert first.headers["retry-after"] == "60"
    assert "[redacted]" in first.json()["error"]["message"]
    assert fake.seen == [K1, K2]
    assert pool_keys(edge) == {"total": 2, "available": 0}
    health = httpx.get(f"{edge.url}/health").json()["providers"]
    assert health["pool"]["healthy"] is False
    assert health["spare"]["healthy"] is True

    refused = chat(edge, "no key free", model="solo")
    assert refused.status_code == 503
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.json()["error"]["code"] == "upstream_keys_resting"
    assert fake.count(CHAT) == 2  # no upstream call

    spilled = chat(edge, "go elsewhere", model="spill")
    assert spilled.status_code == 200
    assert spilled.headers["x-edge-provider"] == "spare"
    assert fake.count(CHAT) == 2
    assert spare.seen == [SPARE]
    assert_redacted(edge, first.text, refused.text, spilled.text)


def test_retry_after_as_an_http_date_sets_the_rest(serve, fakes) -> None:
    """An HTTP-date Retry-After (RFC 9110) two minutes ahead rests the key about two
    minutes, not the 30 s default: the 503 that follows says so."""
    fake = fakes()
    fake.limited = {K1: email.utils.formatdate(time.time() + 120, usegmt=True)}
    edge = serve(config(fake, '["env:K1"]'))
    assert chat(edge, "dated").status_code == 429
    refused = chat(edge, "still resting")
    assert refused.status_code == 503
    assert 60 < int(refused.headers["retry-after"]) <= 120
    assert fake.count(CHAT) == 1


def test_a_non_finite_retry_after_is_ignored(serve, fakes) -> None:
    """"Retry-After: 1e999" is no number of seconds: the key rests the default 30 s and
    the client's 429 carries no Retry-After, rather than edge failing to render one."""
    fake = fakes()
    fake.limited = {K1: "1e999"}
    edge = serve(config(fake, '["env:K1"]'))
    first = chat(edge, "infinite")
    assert first.status_code == 429
    assert first.json()["error"]["code"] == "rate_limit_exceeded"
    refused = chat(edge, "resting")
    assert refused.status_code == 503
    assert 1 <= int(refused.headers["retry-after"]) <= 30


# --------------------------------------------------------------------------- redaction


def test_a_key_the_upstream_echoes_is_redacted_everywhere(serve, fakes) -> None:
    """(f) a 401 quoting the pool key back reaches the client with the key redacted, in a
    JSON answer and for a stream; so does an error event mid-stream that quotes it; the key
    is in no log line, /health or /metrics."""
    fake = fakes()
    fake.refused = {K1, K2}
    edge = serve(config(fake, '["env:K1", "env:K2"]'))
    plain = chat(edge, "who am I")
    assert plain.status_code == 401
    assert plain.json()["error"]["message"] == "Incorrect API key provided: [redacted]."
    streamed = httpx.post(f"{edge.url}{CHAT}", timeout=30, json={
        "model": MODEL, "stream": True, "messages": [{"role": "user", "content": "again"}]})
    assert streamed.status_code == 401
    assert "[redacted]" in streamed.text
    assert fake.seen == [K1, K2]  # a 401 is no rest: the spread goes on
    assert pool_keys(edge) == {"total": 2, "available": 2}
    fake.refused = set()
    cut = httpx.post(f"{edge.url}{CHAT}", timeout=30, json={
        "model": MODEL, "stream": True, "messages": [{"role": "user", "content": "leak"}]})
    assert cut.status_code == 200  # the error came after the first event: in the stream
    assert "overloaded for key [redacted]" in cut.text
    assert_redacted(edge, plain.text, streamed.text, cut.text)
