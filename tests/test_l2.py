"""The Redis tier against a real redis-server: round trips, bounds, and faults."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis
import trio
from _redis import RedisClusterProcesses, RedisServer

from edge.l2 import L2Unavailable, RedisTier

#: Upper bound for anything a test waits for; reaching it means a hang, not slowness.
HANG_GUARD = 10.0
#: Generous timeouts for tests that are not about timeouts (a loaded CI machine is slow).
CALM: dict[str, Any] = {"socket_timeout": 1.0, "connect_timeout": 1.0}


def unique_prefix() -> str:
    return f"test:{uuid.uuid4().hex[:12]}:"


async def eventually(predicate: Callable[[], Awaitable[bool]] | Callable[[], bool]) -> None:
    """Poll `predicate` (sync or async) until it is true, failing at the hang guard."""
    with trio.fail_after(HANG_GUARD):
        while True:
            result = predicate()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await trio.sleep(0.01)


@asynccontextmanager
async def running(tier: RedisTier) -> AsyncIterator[RedisTier]:
    """Run the tier's background work for the duration of the block, then close it."""
    async with trio.open_nursery() as nursery:
        await nursery.start(tier.run)
        try:
            yield tier
        finally:
            nursery.cancel_scope.cancel()
    await tier.aclose()


async def stored(tier: RedisTier, key: str, value: bytes) -> bool:
    return await tier.get(key) == value


async def test_round_trip_sets_ttl_and_prefix(redis_server: RedisServer) -> None:
    prefix = unique_prefix()
    direct = redis.Redis.from_url(redis_server.url)
    async with running(RedisTier(redis_server.url, key_prefix=prefix, **CALM)) as tier:
        await eventually(lambda: tier.healthy)
        assert await tier.get("absent") is None
        assert tier.misses == 1

        assert tier.put_nowait("k1", b"\x00value\xff", ttl_s=120)
        await eventually(lambda: stored(tier, "k1", b"\x00value\xff"))
        assert tier.hits >= 1
        assert tier.writes == 1

        assert direct.get(prefix + "k1") == b"\x00value\xff"
        assert direct.exists("k1") == 0
        assert 0 < direct.ttl(prefix + "k1") <= 120
    direct.close()


async def test_queued_writes_are_pipelined_in_batches(redis_server: RedisServer) -> None:
    tier = RedisTier(redis_server.url, key_prefix=unique_prefix(), **CALM)
    assert await tier.probe()
    # queued before the writer runs, so the writer finds them all waiting at once
    for i in range(50):
        assert tier.put_nowait(f"k{i}", f"v{i}".encode(), ttl_s=60)
    async with running(tier):
        await eventually(lambda: tier.writes == 50)
        assert [await tier.get(f"k{i}") for i in range(50)] == [f"v{i}".encode() for i in range(50)]
    assert tier.dropped_writes == 0


async def test_full_queue_drops_and_counts(redis_server: RedisServer) -> None:
    tier = RedisTier(redis_server.url, key_prefix=unique_prefix(), queue_size=2, **CALM)
    assert await tier.probe()  # healthy, but the writer is not running: nothing drains
    assert tier.put_nowait("a", b"1", ttl_s=60)
    assert tier.put_nowait("b", b"2", ttl_s=60)
    assert not tier.put_nowait("c", b"3", ttl_s=60)
    assert tier.dropped_writes == 1
    assert not tier.put_nowait("d", b"4", ttl_s=0)  # EX cannot express it: refused
    assert tier.dropped_writes == 1
    await tier.aclose()


async def test_down_until_first_probe(redis_server: RedisServer) -> None:
    tier = RedisTier(redis_server.url, key_prefix=unique_prefix(), **CALM)
    assert not tier.healthy
    assert await tier.get("k") is None
    assert tier.skipped == 1
    assert not tier.put_nowait("k", b"v", ttl_s=60)
    assert tier.dropped_writes == 1
    with pytest.raises(L2Unavailable):
        await tier.call(lambda r: r.ping())
    await tier.aclose()


async def test_missing_redis_reports_once_and_never_raises() -> None:
    from _redis import free_port

    reasons: list[str] = []
    url = f"redis://127.0.0.1:{free_port()}/0"
    tier = RedisTier(url, probe_interval=0.02, on_error=reasons.append)
    async with running(tier):
        await eventually(lambda: len(reasons) == 1)
        # let more probes fail: a tier that stays down reports only once
        await eventually(lambda: tier.probe_failures >= 3)
        assert not tier.healthy
        assert await tier.get("k") is None
        assert not tier.put_nowait("k", b"v", ttl_s=60)
    assert len(reasons) == 1
    assert "ConnectionError" in reasons[0]


async def test_killed_redis_then_restart_recovers(redis_server: RedisServer) -> None:
    reasons: list[str] = []
    tier = RedisTier(
        redis_server.url,
        key_prefix=unique_prefix(),
        probe_interval=0.05,
        health_interval=3600,  # here the get must be what finds Redis gone
        on_error=reasons.append,
        **CALM,
    )
    async with running(tier):
        await eventually(lambda: tier.healthy)
        assert tier.put_nowait("k", b"before", ttl_s=60)
        await eventually(lambda: stored(tier, "k", b"before"))

        redis_server.kill()
        assert await tier.get("k") is None  # no exception, just a miss
        assert not tier.healthy
        assert tier.errors == 1
        assert len(reasons) == 1
        assert not tier.put_nowait("k", b"during", ttl_s=60)
        assert await tier.get("k") is None  # skipped without touching Redis
        assert tier.errors == 1

        redis_server.restart()
        await eventually(lambda: tier.healthy)
        assert tier.put_nowait("k", b"after", ttl_s=60)
        await eventually(lambda: stored(tier, "k", b"after"))
    assert len(reasons) == 1


async def test_an_idle_tier_sees_a_killed_redis_and_not_a_stopped_one(
        redis_server: RedisServer) -> None:
    """/health reads `healthy`: it must go false when Redis dies, with no request at all.
    A Redis that only answers slowly (SIGSTOP: reads time out) is left to requests."""
    reasons: list[str] = []
    tier = RedisTier(redis_server.url, key_prefix=unique_prefix(), probe_interval=0.05,
                     health_interval=0.05, on_error=reasons.append,
                     socket_timeout=0.1, connect_timeout=1.0)
    async with running(tier):
        await eventually(lambda: tier.healthy)
        redis_server.stop()
        pings = tier.health_pings
        await eventually(lambda: tier.health_pings >= pings + 3)  # each one timed out
        assert tier.healthy
        redis_server.cont()
        redis_server.kill()
        await eventually(lambda: not tier.healthy)
        assert tier.errors == 0  # no operation ran: the health PING found it
        assert len(reasons) == 1
        redis_server.restart()
        await eventually(lambda: tier.healthy)


async def test_stopped_redis_get_returns_none_and_recovers(redis_server: RedisServer) -> None:
    prefix = unique_prefix()
    direct = redis.Redis.from_url(redis_server.url)
    direct.set(prefix + "k", b"v")
    direct.close()
    tier = RedisTier(redis_server.url, key_prefix=prefix, probe_interval=0.05)  # 50 ms timeouts
    async with running(tier):
        await eventually(lambda: tier.healthy)

        redis_server.stop()
        started = time.perf_counter()
        assert await tier.get("k") is None
        elapsed_ms = (time.perf_counter() - started) * 1000
        print(f"get against a SIGSTOPped Redis took {elapsed_ms:.1f} ms")
        assert not tier.healthy
        assert tier.errors == 1

        redis_server.cont()
        await eventually(lambda: stored(tier, "k", b"v"))
        assert tier.healthy


async def test_concurrent_gets_against_stopped_redis_all_complete(
    redis_server: RedisServer,
) -> None:
    tier = RedisTier(
        redis_server.url,
        key_prefix=unique_prefix(),
        socket_timeout=0.2,
        threads=4,
        probe_interval=0.05,
    )
    results: list[bytes | None] = []

    async def one_get() -> None:
        results.append(await tier.get("k"))

    async with running(tier):
        await eventually(lambda: tier.healthy)
        redis_server.stop()
        # all start while the tier still looks healthy: 4 take a thread, the rest find
        # the limiter exhausted and miss at once instead of queueing behind Redis
        with trio.fail_after(HANG_GUARD):
            async with trio.open_nursery() as nursery:
                for _ in range(40):
                    nursery.start_soon(one_get)
        assert results == [None] * 40
        assert tier.skipped >= 36
        assert not tier.healthy

        redis_server.cont()
        await eventually(lambda: tier.healthy)
        assert tier.put_nowait("k", b"v", ttl_s=60)
        await eventually(lambda: stored(tier, "k", b"v"))


async def test_call_runs_a_lua_script(redis_server: RedisServer) -> None:
    prefix = unique_prefix()
    script = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
    async with running(RedisTier(redis_server.url, key_prefix=prefix, **CALM)) as tier:
        await eventually(lambda: tier.healthy)
        assert await tier.call(lambda r: r.eval(script, 1, prefix + "n", 5)) == 5
        assert await tier.call(lambda r: r.eval(script, 1, prefix + "n", 2)) == 7

        with pytest.raises(L2Unavailable) as caught:
            await tier.call(lambda r: r.eval("return redis.error_reply('boom')", 0))
        assert isinstance(caught.value.__cause__, redis.ResponseError)
        assert not tier.healthy  # any Redis error marks the tier down until a probe
        await eventually(lambda: tier.healthy)


def test_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError, match="schemes"):
        RedisTier("http://127.0.0.1:6379")
    with pytest.raises(ValueError, match="decode_responses"):
        RedisTier("redis://127.0.0.1:6379/0?decode_responses=true")
    with pytest.raises(ValueError, match="database 0"):
        RedisTier("redis://127.0.0.1:6379/3", cluster=True)
    with pytest.raises(ValueError, match="positive"):
        RedisTier("redis://127.0.0.1:6379", socket_timeout=0)


@pytest.mark.slow
async def test_cluster_round_trip_across_slots(redis_cluster: RedisClusterProcesses) -> None:
    prefix = unique_prefix()
    keys = [f"key-{i}" for i in range(30)]
    tier = RedisTier(redis_cluster.url, cluster=True, key_prefix=prefix, **CALM)
    async with running(tier):
        await eventually(lambda: tier.healthy)
        for key in keys:
            assert tier.put_nowait(key, key.encode(), ttl_s=60)
        await eventually(lambda: tier.writes == len(keys))
        assert [await tier.get(key) for key in keys] == [key.encode() for key in keys]

        script = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
        assert await tier.call(lambda r: r.eval(script, 1, prefix + "n", 3)) == 3

    # the keys really are spread: every master holds some of them
    held = []
    for port in redis_cluster.ports:
        node = redis.Redis(host="127.0.0.1", port=port)
        held.append(sum(1 for _ in node.scan_iter(match=prefix + "key-*")))
        node.close()
    assert sum(held) == len(keys)
    assert all(count > 0 for count in held), held


def test_entry_carries_its_expiry_and_old_entries_still_decode() -> None:
    from edge.cache import Entry, decode, encode

    entry = Entry(b'{"id":"x"}', "mock", "gpt-4o", 0.5)
    assert decode(encode(entry, 1_800_000_000.25)) == (entry, 1_800_000_000.25)
    # written before the expiry was stored: read as an entry with the default TTL
    old = b'E1{"p":"mock","m":"gpt-4o","c":0.5}\n{"id":"x"}'
    assert decode(old) == (entry, None)
    assert decode(b'E1["p"]\n{"id":"x"}') is None
