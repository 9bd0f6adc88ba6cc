"""Budgets (SPEC §7): UTC windows, exact nano-USD spend, refusals, and Redis counters
shared by two clients of one real redis-server."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest
import redis
import trio
from _redis import RedisServer
from redis.crc import key_slot

from edge.auth import KeyPolicy
from edge.budgets import (
    RedisSpend,
    SpendCounters,
    budget_error,
    redis_key,
    window,
)
from edge.errors import RateLimited
from edge.l2 import RedisTier
from edge.ratelimit import RateLimiter
from edge.redis_scripts import BUDGET_LUA, BUDGET_STEP, LIMITS_LUA, WINDOW_STEP
from edge.store import KeyRecord, StoreService, UsageRow, open_store

HANG_GUARD = 20.0
CALM = {"socket_timeout": 1.0, "connect_timeout": 1.0, "probe_interval": 0.05}


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def policy(name: str = "team-a", budget: float | None = 1.0, period: str = "total",
           rpm: int | None = None, tpm: int | None = None) -> KeyPolicy:
    return KeyPolicy(name=name, source="config", budget_usd=budget, budget_period=period,
                     rpm=rpm, tpm=tpm)


@pytest.mark.parametrize(("period", "now", "start", "end"), [
    ("1h", "2026-03-07 14:59:59.999", "2026-03-07 14:00", "2026-03-07 15:00"),
    ("1h", "2026-03-07 15:00:00", "2026-03-07 15:00", "2026-03-07 16:00"),
    ("1d", "2026-12-31 23:59:59", "2026-12-31 00:00", "2027-01-01 00:00"),
    # 2026-03-09 is a Monday: its own first second starts a new week
    ("7d", "2026-03-09 00:00:00", "2026-03-09 00:00", "2026-03-16 00:00"),
    ("7d", "2026-03-08 23:59:59", "2026-03-02 00:00", "2026-03-09 00:00"),
    ("7d", "2026-03-15 12:00:00", "2026-03-09 00:00", "2026-03-16 00:00"),
    ("month", "2024-02-29 23:59:59", "2024-02-01 00:00", "2024-03-01 00:00"),  # leap year
    ("month", "2025-02-28 12:00:00", "2025-02-01 00:00", "2025-03-01 00:00"),
    ("month", "2026-12-31 23:59:59", "2026-12-01 00:00", "2027-01-01 00:00"),
    ("month", "2026-04-30 23:59:59", "2026-04-01 00:00", "2026-05-01 00:00"),
    ("month", "2026-05-01 00:00:00", "2026-05-01 00:00", "2026-06-01 00:00"),
])
def test_windows_start_and_end_on_utc_boundaries(period: str, now: str, start: str,
                                                 end: str) -> None:
    assert window(period, ts(now)) == (ts(start), ts(end))


def test_total_never_resets_and_unknown_periods_are_refused() -> None:
    assert window("total", ts("2026-03-07 14:00")) == (0.0, None)
    with pytest.raises(ValueError, match="unknown budget period"):
        window("week", 0.0)


def test_a_key_without_budget_is_never_refused() -> None:
    counters = SpendCounters()
    free = policy(budget=None)
    counters.charge(free, 1e6, now=0.0)
    assert counters.refusal(free, now=0.0) is None
    assert counters.spent("team-a", "total", now=0.0) == 1e6


def test_spend_adds_exactly_to_the_nano_usd_and_refuses_at_the_budget() -> None:
    """Ten thousand costs of $0.0001 reach $1 exactly: floats summed naively do not."""
    counters = SpendCounters()
    key = policy(budget=1.0)
    drift = 0.0
    for i in range(9999):
        counters.charge(key, 0.0001, now=float(i))
        drift += 0.0001
        assert counters.refusal(key, now=float(i)) is None
    assert drift != 0.9999  # the float sum has drifted; the counters must not
    assert counters.spent("team-a", "total", now=1e4) == 0.9999
    counters.charge(key, 0.0001, now=1e4)
    assert counters.refusal(key, now=1e4) == (1.0, 1.0, None)


def test_a_sequence_of_odd_costs_is_exact_to_one_nano_usd() -> None:
    counters = SpendCounters()
    key = policy(budget=0.000_003_5)
    costs = [0.000_000_001, 0.000_001_234, 0.000_000_999, 0.000_001_265]
    for cost in costs:
        assert counters.refusal(key, now=5.0) is None
        counters.charge(key, cost, now=5.0)
    assert counters.spent("team-a", "total", now=5.0) == 0.000_003_499
    assert counters.refusal(key, now=5.0) is None  # 3499 nano < 3500 nano
    counters.charge(key, 0.000_000_001, now=5.0)
    assert counters.refusal(key, now=5.0) == (0.000_003_5, 0.000_003_5, None)


def test_in_flight_requests_overshoot_by_their_own_cost_only() -> None:
    """Three requests pass the check before any is charged; all three are charged and the
    key ends past its budget by their cost, and the next request is refused."""
    counters = SpendCounters()
    key = policy(budget=0.01)
    counters.charge(key, 0.009, now=1.0)
    admitted = [counters.refusal(key, now=1.0) is None for _ in range(3)]
    assert admitted == [True, True, True]
    for _ in range(3):
        counters.charge(key, 0.002, now=1.0)
    assert counters.refusal(key, now=1.0) == (0.015, 0.01, None)


def test_the_window_resets_at_its_end_and_the_refusal_names_the_reset() -> None:
    counters = SpendCounters()
    key = policy(budget=0.5, period="1d")
    noon = ts("2026-03-07 12:00")
    counters.charge(key, 0.5, now=noon)
    midnight = ts("2026-03-08 00:00")
    assert counters.refusal(key, now=noon) == (0.5, 0.5, midnight)
    error = budget_error("team-a", (0.5, 0.5, midnight), noon)
    assert error.status == 429
    assert error.type == "insufficient_quota"
    assert error.code == "budget_exceeded"
    assert "team-a" in error.message
    assert "0.500000" in error.message
    assert "2026-03-08T00:00:00Z" in error.message
    assert error.headers() == [(b"retry-after", b"43200")]
    assert counters.refusal(key, now=midnight - 0.001) is not None
    assert counters.refusal(key, now=midnight) is None
    assert counters.spent("team-a", "1d", now=midnight) == 0.0
    counters.charge(key, 0.25, now=midnight + 1)
    assert counters.spent("team-a", "1d", now=midnight + 1) == 0.25


def test_a_total_budget_refusal_has_no_retry_after() -> None:
    error = budget_error("team-a", (2.0, 1.0, None), 0.0)
    assert error.headers() == []
    assert "never resets" in error.message


async def test_counters_are_seeded_from_the_store_ledger(tmp_path) -> None:
    """A restart forgets nothing: spend since each key's window start comes from the ledger."""
    now = ts("2026-03-07 12:00")
    store = StoreService(open_store(f"sqlite:///{tmp_path}/edge.db"))
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        await store.create_key(KeyRecord(name="bob", digest=b"\x01" * 32, key_prefix="sk-edge-bob",
                                         created_at=now, budget_usd=0.003, budget_period="1d"))
        rows = [("team-a", ts("2026-03-01 10:00"), 0.25),  # this month, not today
                ("team-a", ts("2026-03-07 09:00"), 0.000_000_007),
                ("bob", ts("2026-03-06 23:59"), 1.0),        # yesterday: not in the 1d window
                ("bob", ts("2026-03-07 00:00"), 0.001),
                ("bob", ts("2026-03-07 11:00"), 0.002)]
        await trio.to_thread.run_sync(store.backend.insert_usage, [
            UsageRow(time=t, request_id=f"r{i}", key_name=k, endpoint="/v1/chat/completions",
                     model="gpt-4o", provider="openai", upstream_model="gpt-4o", cache="miss",
                     status=200, prompt_tokens=1, completion_tokens=1, cost_usd=c,
                     saved_usd=0.0, latency_ms=1.0)
            for i, (k, t, c) in enumerate(rows)])
        counters = SpendCounters()
        team = policy("team-a", 0.25, "month")
        bob = policy("bob", 0.003, "1d")
        await counters.seed(store, [team, bob], now)
        assert counters.spent("team-a", "month", now) == 0.250_000_007
        assert counters.spent("bob", "1d", now) == 0.003
        assert counters.refusal(team, now) == (0.250_000_007, 0.25, ts("2026-04-01 00:00"))
        assert counters.refusal(bob, now) == (0.003, 0.003, ts("2026-03-08 00:00"))
        nursery.cancel_scope.cancel()
    await store.aclose()


@asynccontextmanager
async def running_tier(url: str) -> AsyncIterator[RedisTier]:
    tier = RedisTier(url, **CALM)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(tier.run)
        try:
            with trio.fail_after(HANG_GUARD):
                while not tier.healthy:  # noqa: ASYNC110 - the tier has no event to wait on
                    await trio.sleep(0.01)
            yield tier
        finally:
            nursery.cancel_scope.cancel()
    await tier.aclose()


async def test_two_clients_sharing_one_redis_enforce_one_budget(
        redis_server: RedisServer) -> None:
    # Redis expires the window's key by its own clock: the window must be today's
    today, resets = window("1d", time.time())
    assert resets is not None
    now = today + 1.0
    key = policy("team-a", 0.000_01, "1d")
    async with running_tier(redis_server.url) as tier_a, running_tier(redis_server.url) as tier_b:
        a = RedisSpend(tier_a, SpendCounters(), prefix="t:budget:")
        b = RedisSpend(tier_b, SpendCounters(), prefix="t:budget:")
        for i in range(9):  # alternate: each client sees the other's charges
            client = a if i % 2 == 0 else b
            assert await client.refusal(key, now) is None
            assert await client.charge(key, 0.000_001_111, now) == (i + 1) * 1111
        assert await b.refusal(key, now) is None  # 9999 nano < 10000
        await a.charge(key, 0.000_000_001, now)
        assert await b.refusal(key, now) == (0.000_01, 0.000_01, resets)
        assert await a.refusal(key, now) == (0.000_01, 0.000_01, resets)
        # the next day is a new key, starting from zero
        assert await a.refusal(key, resets) is None
    client = redis.Redis.from_url(redis_server.url)
    try:
        name = redis_key("t:budget:", "team-a", "1d", now)
        assert client.get(name) == b"10000"
        assert client.ttl(name) > 0
        assert client.expiretime(name) == int(resets)
    finally:
        client.close()


async def test_redis_seed_fills_only_missing_windows_and_total_never_expires(
        redis_server: RedisServer) -> None:
    now = ts("2026-03-07 12:00")
    async with running_tier(redis_server.url) as tier:
        spend = RedisSpend(tier, SpendCounters(), prefix="s:")
        await spend.seed({"team-a": ("total", 0.5)}, now)
        await spend.seed({"team-a": ("total", 9.0)}, now)  # Redis already knows: kept
        key = policy("team-a", 0.75, "total")
        assert await spend.charge(key, 0.25, now) == 750_000_000
        assert await spend.refusal(key, now) == (0.75, 0.75, None)
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.ttl(redis_key("s:", "team-a", "total", now)) == -1
    finally:
        client.close()


async def test_redis_down_falls_back_to_this_process_counters(
        redis_server: RedisServer) -> None:
    now = 100.0
    key = policy("team-a", 0.002, "total")
    async with running_tier(redis_server.url) as tier:
        spend = RedisSpend(tier, SpendCounters(), prefix="d:")
        await spend.charge(key, 0.001, now)
        redis_server.kill()
        await spend.charge(key, 0.001, now)  # not lost: counted here
        assert await spend.refusal(key, now) == (0.002, 0.002, None)


def test_the_scripts_are_built_from_one_copy_of_each_function() -> None:
    assert BUDGET_LUA.startswith(BUDGET_STEP)
    assert LIMITS_LUA.startswith(BUDGET_STEP + WINDOW_STEP)
    for script in (BUDGET_LUA, LIMITS_LUA):
        assert script.count("local function budget_step(") == 1
    assert LIMITS_LUA.count("local function window_step(") == 1


def script_calls(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))
    finally:
        client.close()


async def test_a_budget_rides_in_the_rate_limit_calls(redis_server: RedisServer) -> None:
    now = time.time()
    start, resets = window("1d", now)
    key = policy("team-a", 0.000_003, "1d", rpm=2, tpm=1000)
    async with running_tier(redis_server.url) as tier:
        limiter = RateLimiter([key], tier, key_prefix="r:rl:")
        spend = RedisSpend(tier, SpendCounters(), prefix="r:budget:")
        other = RedisSpend(tier, SpendCounters(), prefix="r:budget:")  # another replica
        await other.charge(key, 0.000_001_5, now)  # loads BUDGET_LUA, spends 1500 nano
        await limiter.admit("team-a")  # loads LIMITS_LUA
        before = script_calls(redis_server.url)

        # the admission reads the spend: the check after a miss needs no trip of its own
        await spend.read_with(key, lambda ride: limiter.admit("team-a", ride=ride), now)
        assert spend.local.refusal(key, now) is None
        assert spend.local.spent("team-a", "1d", now) == 0.000_001_5
        # the charge: tokens and nano-USD in one call
        assert limiter.charges("team-a", 40)
        total = await spend.charge(
            key, 0.000_001_5, now, carry=lambda ride: limiter.charge("team-a", 40, ride=ride))
        assert total == 3000
        assert script_calls(redis_server.url) - before == 2

        # a refused admission reads nothing and counts nothing
        with pytest.raises(RateLimited):
            await spend.read_with(key, lambda ride: limiter.admit("team-a", ride=ride), now)
        assert await other.refusal(key, now) == (0.000_003, 0.000_003, resets)
    client = redis.Redis.from_url(redis_server.url)
    try:
        budget_name = redis_key("r:budget:", "team-a", "1d", now)
        assert budget_name == f"r:budget:{{team-a}}:1d:{int(start)}"
        assert key_slot(budget_name.encode()) == key_slot(b"r:rl:{team-a}")
        assert client.get(budget_name) == b"3000"
        assert client.hget("r:rl:{team-a}", "tn") == b"40"
        assert client.hget("r:rl:{team-a}", "rn") == b"2"  # the refused one is not counted
    finally:
        client.close()


async def test_redis_down_under_a_ride_falls_back_to_this_process(
        redis_server: RedisServer) -> None:
    now = time.time()
    key = policy("team-a", 0.000_002, "1d", rpm=100, tpm=1000)
    async with running_tier(redis_server.url) as tier:
        limiter = RateLimiter([key], tier, key_prefix="f:rl:")
        spend = RedisSpend(tier, SpendCounters(), prefix="f:budget:")
        await spend.read_with(key, lambda ride: limiter.admit("team-a", ride=ride), now)
        await spend.charge(key, 0.000_001, now,
                           carry=lambda ride: limiter.charge("team-a", 10, ride=ride))
        redis_server.kill()
        await spend.read_with(key, lambda ride: limiter.admit("team-a", ride=ride), now)
        assert await spend.charge(
            key, 0.000_001, now, carry=lambda ride: limiter.charge("team-a", 10, ride=ride)
        ) == 2000  # counted here
        assert spend.local.refusal(key, now) == (0.000_002, 0.000_002, window("1d", now)[1])
