"""SPEC §4 "Caching" end to end: the openai SDK and httpx against real edge processes."""

from __future__ import annotations

import threading

import httpx
import openai
import orjson
import pytest
from _fake_upstream import FakeUpstream, Reply
from _scrape import metric
from _servers import EdgeProcess, MockUpstream, wait_until

from edge.answer_meta import with_metadata


def provider_toml(mock: MockUpstream, extra: str = "") -> str:
    return f"""
{extra}

[[providers]]
name = "mock"
kind = "openai"
base_url = "{mock.url}/v1"
api_key = "env:MOCK_KEY"
models = ["gpt-*", "text-embedding-*"]
timeout_s = 5

[models."gpt-4o"]
input_per_mtok = 2.0
output_per_mtok = 8.0
"""


ENV = {"MOCK_KEY": "sk-mock-secret-abcdef123456"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("cache")
    mock = MockUpstream(tmp)
    edge = EdgeProcess(tmp, config=provider_toml(mock), env=ENV)
    yield edge, mock
    edge.stop()
    mock.stop()


def chat(edge: EdgeProcess, content: str, **extra) -> httpx.Response:
    headers = extra.pop("headers", {})
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(f"{edge.url}/v1/chat/completions", json=body, headers=headers, timeout=30)


def upstream_calls(mock: MockUpstream) -> int:
    return mock.stats()["by_path"].get("/v1/chat/completions", 0)


def test_miss_then_hit_l1(stack) -> None:
    edge, mock = stack
    before = upstream_calls(mock)
    first = chat(edge, "cache me")
    second = chat(edge, "cache me")
    assert first.headers["x-edge-cache"] == "miss"
    assert second.headers["x-edge-cache"] == "hit-l1"
    assert second.headers["x-edge-provider"] == "mock"
    assert second.headers["x-edge-cost-usd"] == "0"
    assert upstream_calls(mock) == before + 1
    a, b = first.json(), second.json()
    assert a["metadata"]["cached"] is False
    assert a["metadata"]["cost_usd"] > 0
    assert b["metadata"] == {**b["metadata"], "provider": "mock", "cached": True,
                             "cache_tier": "l1", "cost_usd": 0.0}
    a.pop("metadata"), b.pop("metadata")
    assert a == b


def test_key_ignores_order_whitespace_stream_user(stack) -> None:
    edge, _ = stack
    url = f"{edge.url}/v1/chat/completions"
    one = b'{"model":"gpt-4o","temperature":1,"messages":[{"role":"user","content":"order"}]}'
    two = (b'{ "messages" : [ { "content" : "order", "role" : "user" } ] ,\n'
           b'  "temperature": 1.0, "model": "gpt-4o", "user": "someone" }')
    assert httpx.post(url, content=one).headers["x-edge-cache"] == "miss"
    assert httpx.post(url, content=two).headers["x-edge-cache"] == "hit-l1"
    # a field that changes the answer changes the key
    three = b'{"model":"gpt-4o","temperature":0.5,"messages":[{"role":"user","content":"order"}]}'
    assert httpx.post(url, content=three).headers["x-edge-cache"] == "miss"


def test_stream_miss_is_stored_and_served_as_json_and_sse(stack) -> None:
    edge, mock = stack
    client = openai.OpenAI(base_url=f"{edge.url}/v1", api_key="k", max_retries=0)
    messages = [{"role": "user", "content": "stream then hit"}]
    before = upstream_calls(mock)
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="gpt-4o", messages=messages, stream=True) if c.choices)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=messages)
    assert raw.headers["x-edge-cache"] == "hit-l1"
    assert raw.parse().choices[0].message.content == streamed == "Mock reply to: stream then hit"
    with client.chat.completions.with_streaming_response.create(
            model="gpt-4o", messages=messages, stream=True,
            stream_options={"include_usage": True}) as response:
        assert response.headers["x-edge-cache"] == "hit-l1"
        chunks = list(response.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == streamed
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0
    assert upstream_calls(mock) == before + 1
    client.close()


def test_tool_call_stream_assembled_and_replayed(stack) -> None:
    edge, _ = stack
    client = openai.OpenAI(base_url=f"{edge.url}/v1", api_key="k", max_retries=0)
    tools = [{"type": "function", "function": {
        "name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}},
                                         "required": ["q"]}}}]
    messages = [{"role": "user", "content": "find it"}]
    list(client.chat.completions.create(model="gpt-4o", messages=messages, tools=tools,
                                        stream=True))
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=messages,
                                                           tools=tools)
    assert raw.headers["x-edge-cache"] == "hit-l1"
    choice = raw.parse().choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls[0].function.name == "lookup"
    assert choice.message.tool_calls[0].function.arguments == '{"q":"find it"}'
    client.close()


def test_cut_stream_is_not_stored(stack) -> None:
    edge, mock = stack
    content = "!mock cut_after=2 words=10"
    for _ in range(2):
        with httpx.stream("POST", f"{edge.url}/v1/chat/completions", json={
                "model": "gpt-4o", "stream": True,
                "messages": [{"role": "user", "content": content}]}) as r:
            assert r.headers["x-edge-cache"] == "miss"
            r.read()


def test_no_cache_refreshes_and_no_store_bypasses(stack) -> None:
    edge, mock = stack
    before = upstream_calls(mock)
    assert chat(edge, "refresh me").headers["x-edge-cache"] == "miss"
    refreshed = chat(edge, "refresh me", headers={"cache-control": "no-cache"})
    assert refreshed.headers["x-edge-cache"] == "refresh"
    assert upstream_calls(mock) == before + 2
    assert chat(edge, "refresh me").headers["x-edge-cache"] == "hit-l1"

    assert chat(edge, "never stored", headers={"cache-control": "no-store"}).headers[
        "x-edge-cache"] == "bypass"
    assert chat(edge, "never stored").headers["x-edge-cache"] == "miss"
    assert chat(edge, "never stored", headers={"cache-control": "no-store"}).headers[
        "x-edge-cache"] == "bypass"


def test_per_request_ttl(stack) -> None:
    edge, _ = stack
    assert chat(edge, "short lived", headers={"x-edge-cache-ttl": "1"}).headers[
        "x-edge-cache"] == "miss"
    # it is a hit until it expires, then a miss: poll, never sleep blindly
    wait_until(lambda: chat(edge, "short lived").headers["x-edge-cache"] == "miss",
               deadline=15, interval=0.2, what="entry to expire")


def test_bad_ttl_header(stack) -> None:
    edge, _ = stack
    r = chat(edge, "x", headers={"x-edge-cache-ttl": "soon"})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "x-edge-cache-ttl"


def test_embeddings_cached(stack) -> None:
    edge, mock = stack
    url = f"{edge.url}/v1/embeddings"
    body = {"model": "text-embedding-3-small", "input": ["cache", "these"]}
    first, second = httpx.post(url, json=body), httpx.post(url, json=body)
    assert (first.headers["x-edge-cache"], second.headers["x-edge-cache"]) == ("miss", "hit-l1")
    assert first.json()["data"] == second.json()["data"]


def test_identical_requests_in_flight_coalesce(stack) -> None:
    """One upstream call; the followers are hits everywhere: header, metadata, hits{l1},
    never misses, and each saved the leader's cost."""
    edge, mock = stack
    n = 8
    before = upstream_calls(mock)
    counters = ("llm_edge_cache_misses_total", "llm_edge_cache_hits_total",
                "llm_edge_cost_saved_usd_total")
    counted = {name: metric(edge.url, name) for name in counters}
    results: list[httpx.Response] = []
    lock = threading.Lock()

    def one() -> None:
        r = chat(edge, "!mock delay_ms=1500 coalesce me")
        with lock:
            results.append(r)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [200] * n
    assert upstream_calls(mock) == before + 1
    leader = [r for r in results if r.headers["x-edge-cache"] == "miss"]
    assert len(leader) == 1
    followers = [r for r in results if r is not leader[0]]
    assert [r.headers["x-edge-cache"] for r in followers] == ["hit-l1"] * (n - 1)
    assert [r.json()["metadata"]["cache_tier"] for r in followers] == ["l1"] * (n - 1)
    cost = float(leader[0].headers["x-edge-cost-usd"])
    assert cost > 0
    delta = {name: metric(edge.url, name) - counted[name] for name in counters}
    assert delta["llm_edge_cache_misses_total"] == 1
    assert delta["llm_edge_cache_hits_total"] == n - 1
    assert delta["llm_edge_cost_saved_usd_total"] == pytest.approx((n - 1) * cost, rel=1e-6)


def test_followers_get_the_leaders_error(stack) -> None:
    edge, mock = stack
    before = upstream_calls(mock)
    results: list[int] = []

    def one() -> None:
        results.append(chat(edge, "!mock status=400 delay_ms=800").status_code)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [400] * 4
    assert upstream_calls(mock) == before + 1


def test_leader_disconnect_keeps_call_for_followers(stack) -> None:
    edge, mock = stack
    body = {"model": "gpt-4o", "messages": [{"role": "user",
                                             "content": "!mock delay_ms=1500 leader leaves"}]}
    before_disc = mock.stats()["disconnects"]
    follower: dict[str, httpx.Response] = {}

    def follow() -> None:
        follower["r"] = httpx.post(f"{edge.url}/v1/chat/completions", json=body, timeout=30)

    with httpx.Client(timeout=0.4) as leader:
        in_flight = mock.stats()["in_flight"]

        def lead() -> None:
            try:
                leader.post(f"{edge.url}/v1/chat/completions", json=body)
            except httpx.TimeoutException:
                pass  # the leader's client gives up and hangs up

        t_lead = threading.Thread(target=lead)
        t_lead.start()
        wait_until(lambda: mock.stats()["in_flight"] > in_flight, what="leader upstream")
        t_follow = threading.Thread(target=follow)
        t_follow.start()
        t_lead.join()
    t_follow.join()
    assert follower["r"].status_code == 200
    assert follower["r"].headers["x-edge-cache"] == "hit-l1"
    assert mock.stats()["disconnects"] == before_disc  # the upstream call was not cut


@pytest.mark.parametrize(("scope", "second_tenant"), [("key", "miss"), ("global", "hit-l1")])
def test_scope_isolates_or_shares_tenants(tmp_path, scope: str, second_tenant: str) -> None:
    """scope = "key": each client key sees only its own entries; "global": all share."""
    mock = MockUpstream(tmp_path)
    edge = EdgeProcess(tmp_path, config=provider_toml(mock, f'[cache]\nscope = "{scope}"\n'),
                       env={**ENV, "EDGE_API_KEYS": "key-alpha,key-beta"})
    try:
        def ask(key: str) -> str:
            return httpx.post(f"{edge.url}/v1/chat/completions",
                              headers={"authorization": f"Bearer {key}"},
                              json={"model": "gpt-4o",
                                    "messages": [{"role": "user", "content": "tenant"}]}
                              ).headers["x-edge-cache"]

        assert ask("key-alpha") == "miss"
        assert ask("key-beta") == second_tenant
        assert ask("key-alpha") == "hit-l1"
    finally:
        edge.stop()
        mock.stop()


def test_cache_disabled_bypasses(tmp_path) -> None:
    mock = MockUpstream(tmp_path)
    edge = EdgeProcess(tmp_path, config=provider_toml(mock, "[cache]\nenabled = false\n"),
                       env=ENV)
    try:
        for _ in range(2):
            assert chat(edge, "off").headers["x-edge-cache"] == "bypass"
    finally:
        edge.stop()
        mock.stop()


def test_cache_metrics(stack) -> None:
    edge, _ = stack
    chat(edge, "metric me")
    chat(edge, "metric me")
    text = httpx.get(f"{edge.url}/metrics").text
    assert 'llm_edge_cache_hits_total{tier="l1"}' in text
    assert "llm_edge_cache_misses_total" in text
    saved = [line for line in text.splitlines()
             if line.startswith("llm_edge_cost_saved_usd_total{")]
    assert saved
    assert float(saved[0].rsplit(" ", 1)[1]) > 0
    assert "llm_edge_cache_latency_seconds_bucket" in text


def test_a_200_that_is_not_an_answer_is_502_and_never_cached(tmp_path) -> None:
    """An upstream 200 `{}` is refused like invalid JSON (SPEC §4: 502), on every endpoint
    and for JSON and SSE clients alike, and a repeat goes upstream again (nothing stored)."""
    fake = FakeUpstream(lambda path, body: Reply(b"{}"))
    config = f"""
[routing]
breaker_failures = 1000   # every answer here fails; the breaker is not under test

[[providers]]
name = "empty"
kind = "openai"
base_url = "{fake.url}/v1"
api_key = "env:MOCK_KEY"
models = ["gpt-*", "text-embedding-*"]

[[providers]]
name = "empty-claude"
kind = "anthropic"
base_url = "{fake.url}"
api_key = "env:MOCK_KEY"
models = ["claude-*"]
"""
    edge = EdgeProcess(tmp_path, config=config, env=ENV)
    try:
        messages = [{"role": "user", "content": "empty answer"}]
        asks = [
            ("/v1/chat/completions", {"model": "gpt-4o", "messages": messages}),
            ("/v1/embeddings", {"model": "text-embedding-3-small", "input": "empty answer"}),
            ("/v1/messages", {"model": "claude-3-5-haiku-latest", "max_tokens": 16,
                              "messages": messages}),
        ]
        for path, body in asks:
            for attempt in range(2):
                r = httpx.post(f"{edge.url}{path}", json=body, timeout=30)
                assert r.status_code == 502, (path, attempt, r.text)
                error = r.json()["error"]
                assert error["type"] == ("api_error" if path == "/v1/messages"
                                         else "upstream_error")
                assert "x-edge-cache" not in r.headers
        # one call per attempt (max_attempts = 3 on the single candidate), none cached
        assert fake.count("/v1/chat/completions") == 6
        assert fake.count("/v1/embeddings") == 6
        assert fake.count("/v1/messages") == 6
        # an SSE client of the same question is not served a replay of `{}` (only [DONE])
        with httpx.stream("POST", f"{edge.url}/v1/chat/completions",
                          json={**asks[0][1], "stream": True}, timeout=30) as r:
            r.read()
        assert r.status_code == 502
        assert b"[DONE]" not in r.content
        text = httpx.get(f"{edge.url}/metrics").text
        assert 'llm_edge_cache_hits_total{tier="l1"} 0.0' in text
    finally:
        edge.stop()
        fake.close()


@pytest.mark.parametrize("answer", [{}, {"id": "x"}, {"choices": [{"index": 0}], "usage": {}}])
def test_metadata_splice_is_valid_json_for_any_object(answer: dict) -> None:
    spliced = orjson.loads(with_metadata(orjson.dumps(answer), provider="p", tier="l1",
                                         latency_ms=1.0, cost=0.0))
    assert spliced == {**answer, "metadata": {"provider": "p", "cached": True, "cache_tier": "l1",
                                              "latency_ms": 1.0, "cost_usd": 0.0}}
