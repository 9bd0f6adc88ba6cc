"""SPEC §3 routing and the failover rules, end to end, with several mock upstreams and faults."""

from __future__ import annotations

import httpx
import openai
import pytest
from _redis import free_port
from _servers import EdgeProcess, MockUpstream, wait_until

ENV = {"K": "sk-routing-secret-0123456789"}


def provider(name: str, url: str, models: str = '["gpt-*"]', timeout_s: float = 5) -> str:
    return f"""
[[providers]]
name = "{name}"
kind = "openai"
base_url = "{url}/v1"
api_key = "env:K"
models = {models}
timeout_s = {timeout_s}
"""


def chat(edge: EdgeProcess, content: str = "route me", model: str = "gpt-4o",
         stream: bool = False) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": content}]}
    if stream:
        body["stream"] = True
    return httpx.post(f"{edge.url}/v1/chat/completions", json=body, timeout=30,
                      headers={"cache-control": "no-store"})


def calls(mock: MockUpstream) -> int:
    return mock.stats()["by_path"].get("/v1/chat/completions", 0)


def metric(edge: EdgeProcess, line_start: str) -> float:
    for line in httpx.get(f"{edge.url}/metrics").text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
def mocks(tmp_path):
    started: list[MockUpstream] = []

    def start(*args: str) -> MockUpstream:
        m = MockUpstream(tmp_path, *args)
        started.append(m)
        return m

    yield start
    for m in started:
        m.stop()


def test_500_fails_over_to_next_provider(tmp_path, mocks) -> None:
    bad, good = mocks("--fail-rate", "1.0"), mocks()
    edge = EdgeProcess(tmp_path, env=ENV, config="[routing]\nbreaker_failures = 100\n" +
                       provider("bad", bad.url) + provider("good", good.url))
    try:
        r = chat(edge)
        assert r.status_code == 200
        assert r.headers["x-edge-provider"] == "good"
        assert r.json()["metadata"]["provider"] == "good"
        assert calls(bad) == 1
        assert calls(good) == 1
        assert metric(edge, 'llm_edge_failovers_total{provider="bad"}') == 1
        assert metric(edge, 'llm_edge_provider_errors_total{provider="bad"') == 1
    finally:
        edge.stop()


def test_stream_fails_over_before_first_byte(tmp_path, mocks) -> None:
    bad, good = mocks("--fail-rate", "1.0"), mocks()
    edge = EdgeProcess(tmp_path, env=ENV, config=provider("bad", bad.url) +
                       provider("good", good.url))
    try:
        client = openai.OpenAI(base_url=f"{edge.url}/v1", api_key="k", max_retries=0)
        with client.chat.completions.with_streaming_response.create(
                model="gpt-4o", stream=True,
                messages=[{"role": "user", "content": "stream over"}]) as response:
            assert response.headers["x-edge-provider"] == "good"
            text = "".join(c.choices[0].delta.content or "" for c in response.parse()
                           if c.choices)
        assert text == "Mock reply to: stream over"
        client.close()
    finally:
        edge.stop()


def test_connection_refused_and_timeout_fail_over(tmp_path, mocks) -> None:
    slow, good = mocks("--delay-ms", "3000"), mocks()
    dead = f"http://127.0.0.1:{free_port()}"
    edge = EdgeProcess(tmp_path, env=ENV, config="[routing]\nmax_attempts = 3\n" +
                       provider("dead", dead) + provider("slow", slow.url, timeout_s=0.3) +
                       provider("good", good.url))
    try:
        r = chat(edge)
        assert r.status_code == 200
        assert r.headers["x-edge-provider"] == "good"
        assert calls(slow) == 1
    finally:
        edge.stop()


def test_all_candidates_failing_is_502(tmp_path, mocks) -> None:
    a, b = mocks("--fail-rate", "1.0"), mocks("--fail-rate", "1.0")
    edge = EdgeProcess(tmp_path, env=ENV, config="[routing]\nmax_attempts = 4\n" +
                       provider("a", a.url) + provider("b", b.url))
    try:
        r = chat(edge)
        assert r.status_code == 502
        err = r.json()["error"]
        assert err["type"] == "upstream_error"
        assert set(err) == {"message", "type", "param", "code"}
        assert calls(a) == 2
        assert calls(b) == 2
        assert "x-edge-provider" not in r.headers
    finally:
        edge.stop()


def test_429_retry_after_honoured_then_passed_on(tmp_path, mocks) -> None:
    only = mocks()
    edge = EdgeProcess(tmp_path, env=ENV, config="[routing]\nmax_attempts = 2\n" +
                       provider("only", only.url))
    try:
        r = chat(edge, "!mock status=429 retry_after=1")
        assert r.status_code == 429
        assert r.headers["retry-after"] == "1"
        assert r.json()["error"]["type"] == "rate_limit_error" or r.json()["error"]["code"]
        assert calls(only) == 2
    finally:
        edge.stop()


def test_open_breaker_is_skipped_and_reported(tmp_path, mocks) -> None:
    bad, good = mocks("--fail-rate", "1.0"), mocks()
    edge = EdgeProcess(tmp_path, env=ENV, config=(
        "[routing]\nbreaker_failures = 2\nbreaker_cooldown_s = 600\n" +
        provider("bad", bad.url) + provider("good", good.url)))
    try:
        for _ in range(2):
            assert chat(edge).headers["x-edge-provider"] == "good"
        assert calls(bad) == 2
        for _ in range(3):
            assert chat(edge).headers["x-edge-provider"] == "good"
        assert calls(bad) == 2  # the open circuit is not tried any more
        health = httpx.get(f"{edge.url}/health").json()
        assert health["providers"]["bad"] == {"configured": True, "healthy": False,
                                              "keys": {"total": 1, "available": 1}}
        assert health["providers"]["good"]["healthy"] is True
        assert metric(edge, 'llm_edge_circuit_open{provider="bad"}') == 1
        assert metric(edge, 'llm_edge_circuit_open{provider="good"}') == 0
    finally:
        edge.stop()


def test_every_circuit_open_fails_fast_with_503(tmp_path, mocks) -> None:
    bad = mocks("--fail-rate", "1.0")
    edge = EdgeProcess(tmp_path, env=ENV, config=(
        "[routing]\nmax_attempts = 2\nbreaker_failures = 1\nbreaker_cooldown_s = 600\n" +
        provider("bad", bad.url)))
    try:
        first = chat(edge)  # the call fails and opens the circuit; the second turn is skipped
        assert first.status_code == 502
        assert "after 1 attempt(s)" in first.json()["error"]["message"]  # a skipped turn is none
        before = calls(bad)
        r = chat(edge)
        assert r.status_code == 503
        assert int(r.headers["retry-after"]) > 500
        assert r.json()["error"]["code"] == "circuit_open"
        assert calls(bad) == before  # no upstream was called
        health = httpx.get(f"{edge.url}/health")
        assert health.status_code == 503
        assert health.json()["status"] == "unhealthy"
    finally:
        edge.stop()


def test_half_open_probe_closes_the_circuit(tmp_path, mocks) -> None:
    flaky = mocks()
    edge = EdgeProcess(tmp_path, env=ENV, config=(
        "[routing]\nmax_attempts = 1\nbreaker_failures = 1\nbreaker_cooldown_s = 1\n" +
        provider("flaky", flaky.url)))
    try:
        assert chat(edge, "!mock status=500").status_code == 502
        assert chat(edge).status_code == 503
        # after the cooldown one probe is admitted; it succeeds and closes the circuit
        wait_until(lambda: chat(edge).status_code == 200, deadline=15, interval=0.2,
                   what="half-open probe")
        assert metric(edge, 'llm_edge_circuit_open{provider="flaky"}') == 0
    finally:
        edge.stop()


def test_hedge_wins_and_loser_is_cancelled(tmp_path, mocks) -> None:
    slow, fast = mocks("--delay-ms", "5000"), mocks()
    edge = EdgeProcess(tmp_path, env=ENV, config=(
        "[routing]\nhedge_after_ms = 100\n" + provider("slow", slow.url) +
        provider("fast", fast.url)))
    try:
        r = chat(edge)
        assert r.status_code == 200
        assert r.headers["x-edge-provider"] == "fast"
        assert calls(slow) == 1
        # the loser's server sees the disconnect (its connection was closed)
        wait_until(lambda: slow.stats()["disconnects"] >= 1, what="loser cancelled")
        assert metric(edge, 'llm_edge_hedges_total{provider="fast"}') == 1
    finally:
        edge.stop()


def test_hedges_try_each_candidate_once_not_the_running_one_again(tmp_path, mocks) -> None:
    """The wiring of a hedge between two slow providers in `edge serve`: each is called
    once and the hedge is counted for the second. The timing logic (no hedge wraps round
    to a running candidate) is test_time_logic.py's, on virtual time."""
    a, b = mocks("--delay-ms", "600"), mocks("--delay-ms", "600")
    edge = EdgeProcess(tmp_path, env=ENV, config=(
        "[routing]\nhedge_after_ms = 100\nmax_attempts = 3\n" + provider("a", a.url) +
        provider("b", b.url)))
    try:
        r = chat(edge)
        assert r.status_code == 200
        assert calls(a) == 1
        assert calls(b) == 1
        assert metric(edge, 'llm_edge_hedges_total{provider="b"}') == 1
        assert metric(edge, 'llm_edge_hedges_total{provider="a"}') == 0
    finally:
        edge.stop()


def test_latency_strategy_prefers_the_faster_deployment(tmp_path, mocks) -> None:
    slow, fast = mocks("--delay-ms", "300"), mocks()
    edge = EdgeProcess(tmp_path, env=ENV, config=(
        '[routing]\nstrategy = "latency"\n' + provider("slow", slow.url) +
        provider("fast", fast.url)))
    try:
        providers = [chat(edge, f"q{i}").headers["x-edge-provider"] for i in range(6)]
        # each unmeasured deployment is tried first once; then the faster one wins
        assert providers[:2] == ["slow", "fast"]
        assert providers[2:] == ["fast"] * 4
    finally:
        edge.stop()


def test_cost_strategy_picks_the_cheaper_deployment(tmp_path, mocks) -> None:
    a, b = mocks(), mocks()
    edge = EdgeProcess(tmp_path, env=ENV, config=(
        '[routing]\nstrategy = "cost"\n'
        '[models."smart"]\ndeployments = ["pricey/gpt-4o", "cheap/gpt-4o-mini"]\n' +
        provider("pricey", a.url) + provider("cheap", b.url)))
    try:
        r = chat(edge, model="smart")
        assert r.headers["x-edge-provider"] == "cheap"
        assert r.json()["model"] == "gpt-4o-mini"  # the deployment's upstream name was sent
    finally:
        edge.stop()


def test_group_pin_and_fallbacks(tmp_path, mocks) -> None:
    a, b = mocks("--fail-rate", "1.0"), mocks()
    edge = EdgeProcess(tmp_path, env=ENV, config=(
        "[routing]\nmax_attempts = 2\n"
        '[models."main-model"]\nfallbacks = ["backup-model"]\n' +
        provider("a", a.url, '["main-*"]') + provider("b", b.url, '["backup-*", "gpt-*"]')))
    try:
        r = chat(edge, model="main-model")
        assert r.status_code == 200
        assert r.headers["x-edge-provider"] == "b"
        assert r.json()["model"] == "backup-model"
        pinned = chat(edge, model="b/gpt-4o")
        assert pinned.headers["x-edge-provider"] == "b"
        assert pinned.json()["model"] == "gpt-4o"
        assert chat(edge, model="nobody-serves-this").status_code == 404
    finally:
        edge.stop()


def test_failover_strategy_moves_recent_failures_back(tmp_path, mocks) -> None:
    bad, good = mocks("--fail-rate", "1.0"), mocks()
    edge = EdgeProcess(tmp_path, env=ENV, config=(
        '[routing]\nstrategy = "failover"\nbreaker_failures = 100\nbreaker_cooldown_s = 600\n' +
        provider("bad", bad.url) + provider("good", good.url)))
    try:
        assert chat(edge).headers["x-edge-provider"] == "good"
        assert calls(bad) == 1
        assert chat(edge).headers["x-edge-provider"] == "good"
        assert calls(bad) == 1  # failed recently: tried after "good", which answered
    finally:
        edge.stop()
