"""Per-key rpm/tpm limits: the limiter alone (fake clock, in process and in a real Redis),
then end to end through `edge serve` (one process, and two sharing one Redis)."""

from __future__ import annotations

import io
import math
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import orjson
import pytest
import redis
import trio
from _redis import RedisClusterProcesses, RedisServer, free_port
from _servers import EdgeProcess, MockUpstream, wait_until

from edge.config import AuthKey
from edge.errors import RateLimited
from edge.l2 import RedisTier
from edge.logs import log
from edge.ratelimit import WINDOW_S, RateLimiter, SlidingWindow

#: Upper bound for anything a test waits for; reaching it means a hang, not slowness.
HANG_GUARD = 10.0
#: Generous Redis timeouts: these tests are about limits, not about a slow machine.
CALM = {"socket_timeout": 1.0, "connect_timeout": 1.0, "probe_interval": 0.05}
T0 = 1_000_000.0  # a fake clock's start; whole seconds, so bucket arithmetic reads plainly


def key(name: str, rpm: int | None = None, tpm: int | None = None) -> AuthKey:
    return AuthKey(name=name, secret=None, sha256="0" * 64, rpm=rpm, tpm=tpm)


async def refused(limiter: RateLimiter, name: str, now: float | None) -> RateLimited:
    with pytest.raises(RateLimited) as info:
        await limiter.admit(name, now=now)
    return info.value


def stored_keys(url: str, prefix: str) -> list[str]:
    client = redis.Redis.from_url(url)
    try:
        return sorted(k.decode() for k in client.scan_iter(match=f"{prefix}*"))
    finally:
        client.close()


async def eventually(predicate: Callable[[], bool]) -> None:
    """Poll with a deadline: the Redis tier's health has no event to wait on."""
    with trio.fail_after(HANG_GUARD):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.01)


@asynccontextmanager
async def running_tier(url: str) -> AsyncIterator[RedisTier]:
    """A Redis tier with its probe running, once it is healthy; closed on exit."""
    tier = RedisTier(url, **CALM)
    async with trio.open_nursery() as nursery:
        await nursery.start(tier.run)
        try:
            await eventually(lambda: tier.healthy)
            yield tier
        finally:
            nursery.cancel_scope.cancel()
    await tier.aclose()


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the module's limiter tests; each test uses its own prefix."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield RedisServer(tmp_path_factory.mktemp("redis"), url=url)
        return
    server = RedisServer(tmp_path_factory.mktemp("redis"), port=free_port())
    server.start()
    try:
        yield server
    finally:
        server.close()


Factory = Callable[..., Awaitable[RateLimiter]]


@pytest.fixture
def log_lines(monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[dict]]:
    """edge's JSON log lines written during the test, parsed."""
    stream = io.StringIO()
    monkeypatch.setattr(log, "stream", stream)
    def lines() -> list[dict]:
        log.flush()  # lines are written by a background thread; take them all now
        return [orjson.loads(line) for line in stream.getvalue().splitlines()]

    return lines


def fallbacks(lines: list[dict]) -> int:
    return sum(1 for line in lines if "rate limits: Redis unavailable" in line["msg"])


@pytest.fixture(params=["local", "redis"])
async def make_limiter(request: pytest.FixtureRequest, shared_redis: RedisServer,
                       log_lines: Callable[[], list[dict]]) -> AsyncIterator[Factory]:
    """Build limiters on the parametrised backend; the same expectations hold for both.

    On Redis no call may have fallen back to the in-process window, or the test would
    prove nothing about the Lua script.
    """
    prefix = f"test:rl:{uuid.uuid4().hex[:12]}:"
    async with trio.open_nursery() as nursery:
        tiers: list[RedisTier] = []

        async def make(*keys: AuthKey) -> RateLimiter:
            if request.param == "local":
                return RateLimiter(keys, None)
            tier = RedisTier(shared_redis.url, **CALM)
            tiers.append(tier)
            await nursery.start(tier.run)
            await eventually(lambda: tier.healthy)
            return RateLimiter(keys, tier, key_prefix=prefix)

        make.backend = request.param  # type: ignore[attr-defined]
        make.prefix = prefix  # type: ignore[attr-defined]
        make.url = shared_redis.url  # type: ignore[attr-defined]
        try:
            yield make
        finally:
            nursery.cancel_scope.cancel()
    for tier in tiers:
        await tier.aclose()
    assert fallbacks(log_lines()) == 0


# -- the window itself ---------------------------------------------------------------


def test_window_is_bounded_and_totals_the_last_minute() -> None:
    window = SlidingWindow()
    events = [T0 + i * 0.1 for i in range(5000)]  # 500 seconds, ten events a second
    for at in events:
        window.add(at, 1)
    assert len(window.buckets) <= WINDOW_S
    now = events[-1]
    first_live_second = math.floor(now) - WINDOW_S + 1
    assert window.total == sum(1 for at in events if math.floor(at) >= first_live_second)


def test_window_wait_is_the_expiry_of_the_freeing_bucket() -> None:
    window = SlidingWindow()
    window.add(T0 + 0.5, 5)
    window.add(T0 + 10.2, 5)
    window.add(T0 + 20.9, 5)
    assert window.wait(T0 + 30, 100) == 0.0
    # under 10 once the first two buckets are gone: the second expires at T0 + 10 + 60
    assert window.wait(T0 + 30, 10) == pytest.approx(T0 + 70 - (T0 + 30))
    assert window.wait(T0 + 30, 15) == pytest.approx(T0 + 60 - (T0 + 30))


# -- limits, on both backends ----------------------------------------------------------


async def test_rpm_refuses_with_retry_after_until_the_window_frees(make_limiter: Factory) -> None:
    limiter = await make_limiter(key("team", rpm=3))
    for at in (T0 + 0.2, T0 + 10.5, T0 + 20.9):
        await limiter.admit("team", now=at)
    error = await refused(limiter, "team", T0 + 30)
    # the request at T0 + 0.2 counts from the start of its second for the window
    assert error.retry_after == pytest.approx(30.0, abs=1e-3)
    assert error.status == 429
    assert error.type == "rate_limit_error"
    assert error.headers() == [(b"retry-after", b"30")]
    assert "team" in error.message
    late = await refused(limiter, "team", T0 + 59.9)
    assert late.retry_after == pytest.approx(0.1, abs=2e-3)
    assert late.headers() == [(b"retry-after", b"1")]
    await limiter.admit("team", now=T0 + 60.0)  # the moment Retry-After named
    again = await refused(limiter, "team", T0 + 60.0)
    assert again.retry_after == pytest.approx(10.0, abs=1e-3)  # now T0 + 10.5 is the oldest


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.5, 0.999])
async def test_retry_after_is_never_more_than_the_true_wait(make_limiter: Factory,
                                                            fraction: float) -> None:
    limiter = await make_limiter(key("team", rpm=1))
    at = T0 + fraction
    await limiter.admit("team", now=at)
    for later in (0.0, 0.0004, 30.25):
        now = at + later
        error = await refused(limiter, "team", now)
        true_wait = at + WINDOW_S - now  # when the request leaves a rolling minute
        assert error.retry_after <= true_wait + 1e-3  # Redis rounds up to a millisecond
        [(_, header)] = error.headers()
        assert int(header) <= math.ceil(true_wait - 1e-6)  # a 60 s window: never 61
    # and a client that waits what it was told is admitted then
    [(_, header)] = (await refused(limiter, "team", at)).headers()
    await limiter.admit("team", now=at + int(header))


async def test_refused_requests_are_not_counted(make_limiter: Factory) -> None:
    limiter = await make_limiter(key("team", rpm=2))
    await limiter.admit("team", now=T0)
    await limiter.admit("team", now=T0 + 0.5)
    for i in range(10):
        await refused(limiter, "team", T0 + 10 + i)
    # both admitted requests leave together; the ten refusals left nothing behind
    await limiter.admit("team", now=T0 + 61)
    await limiter.admit("team", now=T0 + 61)
    await refused(limiter, "team", T0 + 61)


async def test_tpm_is_checked_before_and_charged_after(make_limiter: Factory) -> None:
    limiter = await make_limiter(key("team", tpm=100))
    await limiter.admit("team", now=T0)
    await limiter.charge("team", 60, now=T0)
    await limiter.admit("team", now=T0 + 1)  # 60 < 100: still admitted
    await limiter.charge("team", 50, now=T0 + 1)  # a charge itself never refuses
    error = await refused(limiter, "team", T0 + 2)
    # 110 tokens: dropping the 60 of T0 brings it under 100, at T0 + 60
    assert error.retry_after == pytest.approx(58.0, abs=1e-3)
    assert "100 tokens" in error.message
    await limiter.admit("team", now=T0 + 60)


async def test_tpm_only_key_does_not_count_requests(make_limiter: Factory) -> None:
    limiter = await make_limiter(key("team", tpm=1000))
    for i in range(30):  # thirty requests in one second: no rpm, so only tokens matter
        await limiter.admit("team", now=T0 + i * 0.01)
        await limiter.charge("team", 30, now=T0 + i * 0.01)
    await limiter.admit("team", now=T0 + 1)  # 900 < 1000
    await limiter.charge("team", 100, now=T0 + 1)
    await refused(limiter, "team", T0 + 1)


async def test_retry_after_is_the_later_of_both_limits(make_limiter: Factory) -> None:
    limiter = await make_limiter(key("team", rpm=1, tpm=10))
    await limiter.admit("team", now=T0)
    await limiter.charge("team", 20, now=T0 + 30)
    error = await refused(limiter, "team", T0 + 40)
    # rpm frees at T0 + 60 (20 s); the tokens of T0 + 30 stay until T0 + 90 (50 s)
    assert error.retry_after == pytest.approx(50.0, abs=1e-3)
    assert "1 requests and 10 tokens" in error.message


async def test_limits_are_per_key_and_unlimited_keys_do_no_work(make_limiter: Factory) -> None:
    limiter = await make_limiter(key("team", rpm=1), key("free"), key("other", rpm=1))
    for i in range(50):
        await limiter.admit("free", now=T0 + i)
        await limiter.admit("anonymous", now=T0 + i)
        await limiter.charge("free", 10**6, now=T0 + i)
    assert not limiter.limited("free")
    assert not limiter.limited("anonymous")
    assert limiter.limited("team")
    await limiter.admit("team", now=T0)
    await refused(limiter, "team", T0)
    await limiter.admit("other", now=T0)  # another key's limit is its own
    if make_limiter.backend == "redis":  # type: ignore[attr-defined]
        prefix = make_limiter.prefix  # type: ignore[attr-defined]
        assert stored_keys(make_limiter.url, prefix) == [f"{prefix}{{other}}", f"{prefix}{{team}}"]  # type: ignore[attr-defined]


async def test_charges_of_nothing_are_ignored(make_limiter: Factory) -> None:
    limiter = await make_limiter(key("team", tpm=1))
    await limiter.charge("team", 0, now=T0)
    await limiter.charge("team", -5, now=T0)
    await limiter.admit("team", now=T0)
    await limiter.charge("team", 1, now=T0)
    await refused(limiter, "team", T0)


async def test_long_idle_key_starts_afresh(make_limiter: Factory) -> None:
    limiter = await make_limiter(key("team", rpm=2, tpm=50))
    await limiter.admit("team", now=T0)
    await limiter.charge("team", 40, now=T0)
    await limiter.admit("team", now=T0 + 1)
    await refused(limiter, "team", T0 + 2)
    later = T0 + 10_000
    await limiter.admit("team", now=later)
    await limiter.admit("team", now=later + 0.5)
    error = await refused(limiter, "team", later + 0.5)
    assert error.retry_after == pytest.approx(59.5, abs=1e-3)


async def test_a_clock_stepping_back_still_counts(make_limiter: Factory) -> None:
    limiter = await make_limiter(key("team", rpm=2))
    await limiter.admit("team", now=T0 + 1000)
    await limiter.admit("team", now=T0)  # e.g. a wall clock set back
    error = await refused(limiter, "team", T0)
    assert error.retry_after > 0


async def test_tpm_precheck_admits_until_the_budget_is_reached(make_limiter: Factory) -> None:
    limiter = await make_limiter(key("team", tpm=100))
    for i in range(4):
        await limiter.admit("team", now=T0 + i)
        await limiter.charge("team", 25, now=T0 + i)
    error = await refused(limiter, "team", T0 + 4)  # exactly 100: the budget is reached
    assert error.retry_after == pytest.approx(56.0, abs=1e-3)  # 75 once T0's 25 expire


# -- Redis: shared limits, Redis's clock, outages -----------------------------------------


async def test_two_limiters_sharing_redis_enforce_one_limit(
        shared_redis: RedisServer, log_lines: Callable[[], list[dict]]) -> None:
    prefix = f"test:rl:{uuid.uuid4().hex[:12]}:"
    keys = (key("team", rpm=3), key("tokens", tpm=100))
    async with running_tier(shared_redis.url) as tier_a, running_tier(shared_redis.url) as tier_b:
        a = RateLimiter(keys, tier_a, key_prefix=prefix)
        b = RateLimiter(keys, tier_b, key_prefix=prefix)
        await a.admit("team", now=T0)
        await b.admit("team", now=T0 + 1)
        await a.admit("team", now=T0 + 2)
        assert (await refused(b, "team", T0 + 3)).retry_after == pytest.approx(57.0, abs=1e-3)
        await refused(a, "team", T0 + 3)
        await b.admit("team", now=T0 + 60)  # A's first request left the window for both
        await a.admit("tokens", now=T0)
        await a.charge("tokens", 100, now=T0)
        await refused(b, "tokens", T0 + 1)  # B never saw those tokens itself
    assert fallbacks(log_lines()) == 0


async def test_redis_clock_is_used_without_now(shared_redis: RedisServer) -> None:
    prefix = f"test:rl:{uuid.uuid4().hex[:12]}:"
    async with running_tier(shared_redis.url) as tier:
        limiter = RateLimiter([key("team", rpm=2)], tier, key_prefix=prefix)
        await limiter.admit("team")
        await limiter.admit("team")
        error = await refused(limiter, "team", None)
        assert 50.0 < error.retry_after <= 60.0  # wide: a loaded machine may stall between calls
    client = redis.Redis.from_url(shared_redis.url)
    try:
        ttl = client.ttl(f"{prefix}{{team}}")
        assert 0 < ttl <= WINDOW_S + 2  # an idle key's window disappears by itself
        fields = client.hgetall(f"{prefix}{{team}}")
    finally:
        client.close()
    assert fields[b"rn"] == b"2"
    assert len([f for f in fields if f.startswith(b"r") and f != b"rn"]) <= 2


async def test_redis_down_falls_back_to_the_process_window(
        redis_server: RedisServer, log_lines: Callable[[], list[dict]]) -> None:
    prefix = f"test:rl:{uuid.uuid4().hex[:12]}:"
    async with running_tier(redis_server.url) as tier:
        limiter = RateLimiter([key("team", rpm=3)], tier, key_prefix=prefix)
        await limiter.admit("team", now=T0)
        await limiter.admit("team", now=T0 + 1)
        redis_server.kill()
        await limiter.admit("team", now=T0 + 2)  # the process saw two already: third is fine
        error = await refused(limiter, "team", T0 + 3)
        assert error.retry_after == pytest.approx(57.0, abs=1e-3)
        await refused(limiter, "team", T0 + 4)
        assert not tier.healthy
        assert fallbacks(log_lines()) == 1  # one warning per outage, not per request
        redis_server.restart()
        await eventually(lambda: tier.healthy)
        # back on the (now empty) Redis: the window lives there again
        await limiter.admit("team", now=T0 + 5)
        assert stored_keys(redis_server.url, prefix) == [f"{prefix}{{team}}"]
        redis_server.kill()
        await refused(limiter, "team", T0 + 6)  # the process window kept counting
    assert fallbacks(log_lines()) == 2


async def test_admissions_while_redis_was_frozen_count_once_it_is_back(
        redis_server: RedisServer) -> None:
    prefix = f"test:rl:{uuid.uuid4().hex[:12]}:"
    async with running_tier(redis_server.url) as tier:
        limiter = RateLimiter([key("team", rpm=10, tpm=1000)], tier, key_prefix=prefix)
        admitted = 0
        for i in range(4):
            await limiter.admit("team", now=T0 + i * 0.1)
            admitted += 1
        redis_server.stop()
        try:
            for i in range(30):  # the process window refuses after six more
                try:
                    await limiter.admit("team", now=T0 + 1 + i * 0.1)
                except RateLimited:
                    break
                admitted += 1
            await limiter.charge("team", 990, now=T0 + 2)
            assert not tier.healthy
        finally:
            redis_server.cont()
        await eventually(lambda: tier.healthy)
        # a fresh limiter (another replica, or this one restarted) sees only Redis
        other = RateLimiter([key("team", rpm=10, tpm=1000)], tier, key_prefix=prefix)
        await limiter.charge("team", 5, now=T0 + 3)  # the first call through sends the outage
        waits = []
        for i in range(5):
            try:
                await other.admit("team", now=T0 + 4 + i)
            except RateLimited as error:
                waits.append(error.retry_after)
            else:
                admitted += 1
        assert admitted == 10
        # the oldest counted request is the first, at T0: it frees the window at T0 + 60
        assert waits == pytest.approx([WINDOW_S - 4 - i for i in range(5)], abs=1e-3)
        client = redis.Redis.from_url(redis_server.url)
        try:
            fields = client.hgetall(f"{prefix}{{team}}")
        finally:
            client.close()
        assert int(fields[b"tn"]) == 995


async def test_charge_survives_redis_down(redis_server: RedisServer) -> None:
    prefix = f"test:rl:{uuid.uuid4().hex[:12]}:"
    async with running_tier(redis_server.url) as tier:
        limiter = RateLimiter([key("team", tpm=10)], tier, key_prefix=prefix)
        await limiter.admit("team", now=T0)
        redis_server.kill()
        await limiter.charge("team", 10, now=T0)
        await refused(limiter, "team", T0 + 1)


@pytest.mark.slow
async def test_limits_in_a_redis_cluster(redis_cluster: RedisClusterProcesses,
                                         log_lines: Callable[[], list[dict]]) -> None:
    prefix = f"test:rl:{uuid.uuid4().hex[:12]}:"
    tiers = [RedisTier(redis_cluster.url, cluster=True, **CALM) for _ in range(2)]
    async with trio.open_nursery() as nursery:
        for tier in tiers:
            await nursery.start(tier.run)
        await eventually(lambda: all(t.healthy for t in tiers))
        keys = [key(f"team-{i}", rpm=2) for i in range(8)]  # names spread over the slots
        a, b = (RateLimiter(keys, t, key_prefix=prefix) for t in tiers)
        for k in keys:
            await a.admit(k.name, now=T0)
            await b.admit(k.name, now=T0 + 1)
            await refused(a, k.name, T0 + 2)
        nursery.cancel_scope.cancel()
    for tier in tiers:
        await tier.aclose()
    assert fallbacks(log_lines()) == 0


# -- end to end: `edge serve` ------------------------------------------------------------
# These need the limiter wired into the app: `admit(tenant)` right after authentication
# (before the cache lookup, so hits count for rpm) and `charge(tenant, prompt+completion)`
# after every upstream answer (JSON and streamed; never for a hit).

E2E_KEYS = {
    "RPM_KEY": "edge-rl-rpm-6f0c1b", "HITS_KEY": "edge-rl-hits-94d2ee",
    "TPM_KEY": "edge-rl-tpm-1a7b3c", "TPM_HITS_KEY": "edge-rl-tpmhits-55e0af",
    "STREAM_KEY": "edge-rl-stream-c81d4e", "FREE_KEY": "edge-rl-free-2b9f60",
    "TEN_KEY": "edge-rl-ten-73ac02", "MOCK_KEY": "sk-rl-provider-0e4d",
}


def e2e_config(mock: MockUpstream, extra: str = "") -> str:
    return f"""
[auth]
keys = [
  {{ name = "rpm", key = "env:RPM_KEY", rpm = 3 }},
  {{ name = "hits", key = "env:HITS_KEY", rpm = 3 }},
  {{ name = "tokens", key = "env:TPM_KEY", tpm = 60 }},
  {{ name = "tokens-hits", key = "env:TPM_HITS_KEY", tpm = 60 }},
  {{ name = "stream", key = "env:STREAM_KEY", tpm = 60 }},
  {{ name = "free", key = "env:FREE_KEY" }},
  {{ name = "ten", key = "env:TEN_KEY", rpm = 10 }},
]
{extra}
[[providers]]
name = "mock"
kind = "openai"
base_url = "{mock.url}/v1"
api_key = "env:MOCK_KEY"
models = ["gpt-*"]
timeout_s = 10

[[providers]]
name = "mock-claude"
kind = "anthropic"
base_url = "{mock.url}"
api_key = "env:MOCK_KEY"
models = ["claude-*"]
timeout_s = 10
"""


@pytest.fixture(scope="module")
def mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockUpstream]:
    server = MockUpstream(tmp_path_factory.mktemp("mock"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def limited(mock: MockUpstream,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeProcess]:
    edge = EdgeProcess(tmp_path_factory.mktemp("limited"), config=e2e_config(mock), env=E2E_KEYS)
    yield edge
    edge.stop()


def chat(edge: EdgeProcess, env_key: str, content: str, **extra: object) -> httpx.Response:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(f"{edge.url}/v1/chat/completions", json=body, timeout=30,
                      headers={"authorization": f"Bearer {E2E_KEYS[env_key]}"})


def assert_429(response: httpx.Response) -> int:
    """The error is OpenAI-format with a whole-second Retry-After; returns that value."""
    assert response.status_code == 429, response.text
    retry_after = int(response.headers["retry-after"])
    assert 1 <= retry_after <= WINDOW_S
    assert response.headers.get("x-request-id")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "rate_limit_error"
    assert error["code"] == "rate_limit_exceeded"
    return retry_after


def test_e2e_rpm_refuses_the_fourth_request_in_a_minute(limited: EdgeProcess) -> None:
    for i in range(3):
        assert chat(limited, "RPM_KEY", f"rpm {i}").status_code == 200
    assert_429(chat(limited, "RPM_KEY", "rpm 3"))
    # the same key on the Anthropic front door: refused in Anthropic's format
    refused_message = httpx.post(
        f"{limited.url}/v1/messages", timeout=30, headers={"x-api-key": E2E_KEYS["RPM_KEY"]},
        json={"model": "claude-3-5-haiku-latest", "max_tokens": 16,
              "messages": [{"role": "user", "content": "rpm 4"}]})
    assert refused_message.status_code == 429
    assert int(refused_message.headers["retry-after"]) >= 1
    body = refused_message.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "rate_limit_error"
    # limits are per key: another key is served as usual
    assert chat(limited, "FREE_KEY", "rpm 3").status_code == 200


def test_e2e_cache_hits_count_for_rpm(limited: EdgeProcess) -> None:
    first = chat(limited, "HITS_KEY", "the same question")
    assert first.status_code == 200
    assert first.headers["x-edge-cache"] == "miss"
    for _ in range(2):
        assert chat(limited, "HITS_KEY", "the same question").headers["x-edge-cache"] == "hit-l1"
    assert_429(chat(limited, "HITS_KEY", "the same question"))


def test_e2e_tpm_counts_upstream_usage(limited: EdgeProcess) -> None:
    # the mock answers "!mock words=N" with N completion tokens and 3 prompt tokens
    first = chat(limited, "TPM_KEY", "!mock words=50")
    assert first.status_code == 200
    assert first.json()["usage"]["total_tokens"] == 53
    second = chat(limited, "TPM_KEY", "!mock words=40")  # 53 < 60: admitted
    assert second.status_code == 200
    assert_429(chat(limited, "TPM_KEY", "!mock words=1"))  # 96 >= 60


def test_e2e_cache_hits_do_not_count_for_tpm(limited: EdgeProcess) -> None:
    assert chat(limited, "TPM_HITS_KEY", "!mock words=50").status_code == 200  # 53 tokens
    for _ in range(3):
        hit = chat(limited, "TPM_HITS_KEY", "!mock words=50")
        assert hit.headers["x-edge-cache"] == "hit-l1"
    assert chat(limited, "TPM_HITS_KEY", "!mock words=5").status_code == 200  # 53 < 60
    assert_429(chat(limited, "TPM_HITS_KEY", "!mock words=2"))  # 61 >= 60


def test_e2e_streamed_answers_are_charged(limited: EdgeProcess) -> None:
    streamed = chat(limited, "STREAM_KEY", "!mock words=58", stream=True)
    assert streamed.status_code == 200
    assert streamed.text.endswith("data: [DONE]\n\n")
    chunks = [orjson.loads(line[6:]) for line in streamed.text.splitlines()
              if line.startswith("data: {")]
    # the client did not ask for usage and gets none; edge still counted the tokens
    assert chunks
    assert all(chunk.get("usage") is None for chunk in chunks)
    assert_429(chat(limited, "STREAM_KEY", "!mock words=1"))  # 61 >= 60


def l2_config(redis_server: RedisServer) -> str:
    """The [cache] table that puts the limiter's counters in `redis_server`."""
    return f"""
[cache]
l2_enabled = true
redis_url = "{redis_server.url}"
key_prefix = "rl-e2e-{uuid.uuid4().hex[:8]}:"
"""


def wait_l2_healthy(edge: EdgeProcess) -> None:
    wait_until(lambda: httpx.get(f"{edge.url}/health").json()["cache"]["l2_healthy"],
               what="L2 healthy")


def test_e2e_rpm_holds_across_a_redis_sigstop(
        tmp_path: Path, mock: MockUpstream, redis_server: RedisServer) -> None:
    edge = EdgeProcess(tmp_path, config=e2e_config(mock, l2_config(redis_server)), env=E2E_KEYS)
    try:
        wait_l2_healthy(edge)
        statuses = [chat(edge, "TEN_KEY", f"before {i}").status_code for i in range(4)]
        redis_server.stop()
        try:
            statuses += [chat(edge, "TEN_KEY", f"frozen {i}").status_code for i in range(8)]
        finally:
            redis_server.cont()
        wait_l2_healthy(edge)
        statuses += [chat(edge, "TEN_KEY", f"after {i}").status_code for i in range(6)]
        assert statuses.count(200) == 10, statuses
        assert set(statuses) == {200, 429}
    finally:
        edge.stop()


def test_e2e_two_processes_share_one_limit_through_redis(
        tmp_path: Path, mock: MockUpstream, redis_server: RedisServer) -> None:
    l2 = l2_config(redis_server)
    a = EdgeProcess(tmp_path, config=e2e_config(mock, l2), env=E2E_KEYS)
    b = EdgeProcess(tmp_path, config=e2e_config(mock, l2), env=E2E_KEYS)
    try:
        for edge in (a, b):
            wait_l2_healthy(edge)
        assert chat(a, "RPM_KEY", "shared 1").status_code == 200
        assert chat(b, "RPM_KEY", "shared 2").status_code == 200
        assert chat(a, "RPM_KEY", "shared 3").status_code == 200
        assert_429(chat(b, "RPM_KEY", "shared 4"))
        assert_429(chat(a, "RPM_KEY", "shared 5"))
        # Redis gone: nothing fails, and each process limits what it saw itself
        redis_server.kill()
        assert chat(b, "RPM_KEY", "alone 1").status_code == 200  # b admitted one before
        assert chat(b, "RPM_KEY", "alone 2").status_code == 200
        assert_429(chat(b, "RPM_KEY", "alone 3"))
        assert chat(a, "RPM_KEY", "alone 4").status_code == 200  # a had admitted two
        assert_429(chat(a, "RPM_KEY", "alone 5"))
    finally:
        a.stop(), b.stop()
