"""/health's `l1_healthy` reports the L1 as it is, not a constant.

The L1 counts as healthy while it answers lookups and its expiry sweep keeps running;
the sweep is driven here by trio's MockClock, the real Cache in process.
"""

from __future__ import annotations

import trio

from edge.cache import SWEEP_INTERVAL_S, Cache
from edge.config import CacheConfig
from edge.metrics import Metrics


async def test_l1_healthy_follows_the_sweep(autojump_clock: trio.abc.Clock) -> None:
    cache = Cache(CacheConfig(), Metrics())
    assert not cache.l1_healthy  # nothing sweeps yet
    async with trio.open_nursery() as nursery:
        await nursery.start(cache.run)
        await trio.sleep(SWEEP_INTERVAL_S * 10)
        assert cache.l1_healthy
        nursery.cancel_scope.cancel()
    assert not cache.l1_healthy  # the sweep stopped


async def test_l1_that_cannot_answer_is_unhealthy(autojump_clock: trio.abc.Clock) -> None:
    cache = Cache(CacheConfig(), Metrics())

    class Broken:
        def get(self, key: str, now: float) -> None:
            raise RuntimeError("broken")

        def sweep(self, now: float, budget: int) -> int:
            return 0

    async with trio.open_nursery() as nursery:
        await nursery.start(cache.run)
        await trio.sleep(SWEEP_INTERVAL_S * 2)
        assert cache.l1_healthy
        cache.l1 = Broken()  # type: ignore[assignment]
        assert not cache.l1_healthy
        nursery.cancel_scope.cancel()
