"""Where time is the logic (breaker cooldowns, backoff, hedging, coalescing), on MockClock.

The real code runs in process: `Attempts` (edge/failover.py) over real provider adapters
whose httpx transport is an in-process ASGI upstream speaking OpenAI's wire format, and
the breaker of both fast-path twins. Virtual time makes the waits exact and instant, so
these tests neither sleep nor flake on a busy machine; the end-to-end tests keep only the
wiring.
"""

from __future__ import annotations

import json
import types
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
import trio
from _twins import impl  # noqa: F401 - the fixture

from edge.cache import Cache, Entry
from edge.config import CacheConfig, ProviderConfig, RoutingConfig
from edge.errors import ServiceUnavailable, UpstreamError
from edge.failover import BACKOFF_BASE_S, Attempts
from edge.fastpath import BREAKER_CLOSED, BREAKER_HALF_OPEN, BREAKER_OPEN, Breaker, DeploymentStats
from edge.metrics import Metrics
from edge.providers import make_provider
from edge.routing import Deployment

RETRY_ON = frozenset({429, 500, 502, 503, 504})
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Script = Callable[[int], Awaitable[tuple[int, dict[str, str], dict[str, Any]]]]


def completion(text: str) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def upstream(script: Script) -> Callable[[dict[str, Any], Receive, Send], Awaitable[None]]:
    """An OpenAI-format upstream as an ASGI app; `script(call_number)` decides each answer."""
    calls = 0

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        nonlocal calls
        assert scope["path"] == "/v1/chat/completions"
        while (await receive()).get("more_body"):
            pass  # drain the request body; only the call count matters here
        calls += 1
        status, headers, body = await script(calls)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                *((k.encode(), v.encode()) for k, v in headers.items())]})
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})

    return app


def deployment(name: str, script: Script, failures: int = 5,
               cooldown_s: float = 30.0) -> Deployment:
    config = ProviderConfig(name=name, kind="openai", base_url=f"http://{name}.test/v1",
                            api_key="sk-test", models=("m",))
    provider = make_provider(config, httpx.ASGITransport(app=upstream(script)), RETRY_ON)
    return Deployment(provider, "m", DeploymentStats(1.0, 1.0), Breaker(failures, cooldown_s))


async def ask(plan: list[Deployment], routing: RoutingConfig) -> tuple[str, Deployment]:
    async def attempt(dep: Deployment) -> dict[str, Any]:
        return await dep.provider.complete("chat", dict(BODY), dep.model, None)

    try:
        answer, dep = await Attempts(plan, attempt, routing, Metrics()).run()
    finally:
        for dep in plan:
            await dep.provider.aclose()
    return answer["choices"][0]["message"]["content"], dep


def unavailable(retry_after: str | None = None) -> tuple[int, dict[str, str], dict[str, Any]]:
    headers = {} if retry_after is None else {"retry-after": retry_after}
    return 503, headers, {"error": {"message": "busy", "type": "server_error"}}


# -- backoff ---------------------------------------------------------------------------


async def test_backoff_before_a_retry_of_the_same_candidate(
        autojump_clock: trio.testing.MockClock) -> None:
    async def script(call: int) -> tuple[int, dict[str, str], dict[str, Any]]:
        return unavailable() if call == 1 else (200, {}, completion("second"))

    began = trio.current_time()
    text, _ = await ask([deployment("a", script)], RoutingConfig(max_attempts=2))
    assert text == "second"
    assert trio.current_time() - began == pytest.approx(BACKOFF_BASE_S)  # the first round's


async def test_retry_after_lengthens_the_backoff(autojump_clock: trio.testing.MockClock) -> None:
    async def script(call: int) -> tuple[int, dict[str, str], dict[str, Any]]:
        return unavailable("2") if call == 1 else (200, {}, completion("later"))

    began = trio.current_time()
    text, _ = await ask([deployment("a", script)], RoutingConfig(max_attempts=2))
    assert text == "later"
    assert trio.current_time() - began == pytest.approx(2.0)


async def test_no_backoff_when_moving_to_the_next_candidate(
        autojump_clock: trio.testing.MockClock) -> None:
    async def failing(call: int) -> tuple[int, dict[str, str], dict[str, Any]]:
        return unavailable("30")

    async def good(call: int) -> tuple[int, dict[str, str], dict[str, Any]]:
        return 200, {}, completion("b")

    began = trio.current_time()
    text, dep = await ask([deployment("a", failing), deployment("b", good)], RoutingConfig())
    assert (text, dep.provider.name) == ("b", "b")
    assert trio.current_time() == began  # failover within a round waits for nothing


# -- hedging ---------------------------------------------------------------------------


async def test_hedge_starts_after_hedge_after_ms_and_the_fast_one_wins(
        autojump_clock: trio.testing.MockClock) -> None:
    slow_cancelled = trio.Event()

    async def slow(call: int) -> tuple[int, dict[str, str], dict[str, Any]]:
        try:
            await trio.sleep(60)
        except trio.Cancelled:
            slow_cancelled.set()
            raise
        return 200, {}, completion("slow")

    async def fast(call: int) -> tuple[int, dict[str, str], dict[str, Any]]:
        return 200, {}, completion("fast")

    began = trio.current_time()
    text, dep = await ask([deployment("slow", slow), deployment("fast", fast)],
                          RoutingConfig(hedge_after_ms=250))
    assert (text, dep.provider.name) == ("fast", "fast")
    assert trio.current_time() - began == pytest.approx(0.25)  # the hedge began then, not before
    assert slow_cancelled.is_set()  # the loser's upstream call was cancelled


async def test_no_hedge_when_the_first_answers_in_time(
        autojump_clock: trio.testing.MockClock) -> None:
    hedged = False

    async def prompt(call: int) -> tuple[int, dict[str, str], dict[str, Any]]:
        await trio.sleep(0.2)
        return 200, {}, completion("first")

    async def other(call: int) -> tuple[int, dict[str, str], dict[str, Any]]:
        nonlocal hedged
        hedged = True
        return 200, {}, completion("other")

    text, _ = await ask([deployment("a", prompt), deployment("b", other)],
                        RoutingConfig(hedge_after_ms=250))
    assert (text, hedged) == ("first", False)



async def test_a_hedge_never_wraps_round_to_a_running_candidate(
        autojump_clock: trio.testing.MockClock) -> None:
    """Both slow: the hedge starts the second at hedge_after_ms, and no further hedge
    restarts the first while its call runs, though max_attempts would allow a third."""
    calls = {"a": 0, "b": 0}

    def slow(name: str, seconds: float) -> Script:
        async def script(call: int) -> tuple[int, dict[str, str], dict[str, Any]]:
            calls[name] += 1
            await trio.sleep(seconds)
            return 200, {}, completion(name)
        return script

    began = trio.current_time()
    text, _ = await ask([deployment("a", slow("a", 1.5)), deployment("b", slow("b", 1.5))],
                        RoutingConfig(hedge_after_ms=100, max_attempts=3))
    assert text == "a"  # started first, answered first
    assert calls == {"a": 1, "b": 1}
    assert trio.current_time() - began == pytest.approx(1.5)

# -- breaker cooldown ------------------------------------------------------------------


async def test_open_breaker_skips_the_candidate_without_a_call(
        autojump_clock: trio.testing.MockClock) -> None:
    """Attempts reads the breaker on the monotonic clock; the cooldown itself is the
    breaker's logic, driven here on virtual time through its `now` arguments."""
    a_calls = 0

    async def failing(call: int) -> tuple[int, dict[str, str], dict[str, Any]]:
        nonlocal a_calls
        a_calls += 1
        return unavailable()

    async def good(call: int) -> tuple[int, dict[str, str], dict[str, Any]]:
        return 200, {}, completion("b")

    a = deployment("a", failing, failures=1)
    b = deployment("b", good)
    with pytest.raises(UpstreamError):
        await ask([a], RoutingConfig(max_attempts=1))
    assert a_calls == 1
    text, dep = await ask([a, b], RoutingConfig(max_attempts=2))
    # a's circuit is open: its turn is used up without a call, and b answers
    assert (text, dep.provider.name, a_calls) == ("b", "b", 1)


async def test_breaker_cooldown_and_half_open_probe(
        autojump_clock: trio.testing.MockClock, impl: types.ModuleType) -> None:  # noqa: F811
    breaker = impl.Breaker(2, 30.0)
    breaker.failure(trio.current_time())
    assert breaker.state(trio.current_time()) == BREAKER_CLOSED  # one of two failures
    breaker.failure(trio.current_time())
    opened = trio.current_time()
    assert breaker.state(opened) == BREAKER_OPEN
    await trio.sleep(29.9)
    assert not breaker.acquire(trio.current_time())
    await trio.sleep(0.1)
    assert trio.current_time() - opened == pytest.approx(30.0)
    assert breaker.state(trio.current_time()) == BREAKER_HALF_OPEN
    assert breaker.acquire(trio.current_time())  # the single probe
    assert not breaker.acquire(trio.current_time())  # and no second one beside it
    breaker.failure(trio.current_time())  # the probe failed: a fresh cooldown
    assert breaker.state(trio.current_time()) == BREAKER_OPEN
    await trio.sleep(30.0)
    assert breaker.acquire(trio.current_time())
    breaker.success(trio.current_time())
    assert breaker.state(trio.current_time()) == BREAKER_CLOSED


# -- coalescing window -----------------------------------------------------------------


async def test_coalescing_window_is_the_leaders_flight(
        autojump_clock: trio.testing.MockClock) -> None:
    """Identical requests that arrive while the leader's upstream call runs (here 5 s of
    virtual time) share its answer; one that arrives after it ended leads its own."""
    cache = Cache(CacheConfig(), Metrics())
    key = cache.key("chat", dict(BODY), "tenant")
    served: list[tuple[float, bool, str | None]] = []

    async def request(arrive_at: float) -> None:
        await trio.sleep_until(arrive_at)
        leader, flight = cache.lead_or_follow(key)
        if leader:
            try:
                await trio.sleep(5.0)  # the upstream call
                entry = Entry(b'{"id": "x"}', "a", "m", 0.0)
            finally:
                cache.finish(key, flight, entry)
            served.append((trio.current_time(), True, entry.provider))
            return
        flight.join()
        try:
            await flight.done.wait()
        finally:
            flight.leave()
        served.append((trio.current_time(), False,
                       flight.entry.provider if flight.entry is not None else None))

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for offset in (0.0, 1.0, 4.9, 5.1):
            nursery.start_soon(request, start + offset)
    assert sorted((round(t - start, 3), lead, p) for t, lead, p in served) == [
        (5.0, False, "a"), (5.0, False, "a"), (5.0, True, "a"),  # one flight, three served
        (10.1, True, "a"),  # 5.1 s: after the flight ended, a flight of its own
    ]
    assert not cache.flights


async def test_followers_share_the_leaders_error(autojump_clock: trio.testing.MockClock) -> None:
    cache = Cache(CacheConfig(), Metrics())
    key = cache.key("chat", dict(BODY), "tenant")
    leader, flight = cache.lead_or_follow(key)
    assert leader
    follower, same = cache.lead_or_follow(key)
    assert (follower, same) == (False, flight)

    async def fail_later() -> None:
        await trio.sleep(3.0)
        cache.finish(key, flight, error=ServiceUnavailable("every provider failed"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fail_later)
        await same.done.wait()
    assert isinstance(same.error, ServiceUnavailable)
    assert same.entry is None
    assert cache.lead_or_follow(key)[0]  # the next request leads again
