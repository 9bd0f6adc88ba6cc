"""Per-key spend budgets over UTC calendar windows (SPEC §7 "Budgets").

Theory of operation
-------------------
A key's `budget_period` names a window: `1h` starts at the top of the UTC hour, `1d` at
UTC midnight, `7d` on Monday 00:00 UTC, `month` on the 1st 00:00 UTC, and `total` at the
epoch and never ends (so a refusal for it carries no Retry-After). `window(period, now)`
is that arithmetic and nothing else.

Spend is counted in integer nano-USD (the store's unit, `edge.store.base.to_nano`), so a
long run of tiny costs adds up exactly, to 1e-9 USD, in any order.

The request path asks two things:

* `refusal(policy, now)` before serving: None, or (spent_usd, budget_usd, resets_at) when
  the key has already spent at least its budget in the current window. For a key with no
  budget it returns at once; for one with a budget it costs a dict lookup and one
  comparison while the key is under budget (the window roll-over is only looked at once
  the counter says "over", since a fresh window can only lower the spend).
* `charge(policy, usd, now)` when the answer is complete. Nothing is reserved up front,
  so requests already in flight when the budget runs out may take the key past it by
  their own cost, and no more: every later check sees their charges.

Where the counters live: `SpendCounters` in this process, seeded at start from the
store's ledger (spend since each key's window start), so a durable store means a restart
forgets nothing. `RedisSpend` keeps them in Redis instead, one string per (key name,
window start) holding nano-USD, expiring at the window's end, so every worker and replica
sharing the Redis enforces one budget. Each read or add is one `budget_step` call
(`edge.redis_scripts`): on its own (`BUDGET_LUA`, for a key with no rpm/tpm), or *riding*
in the key's rpm/tpm script call (`read_with`, `charge(carry=...)`), so a key with limits
and a budget pays one round trip at admission (which reads the spend the post-miss check
uses) and one for the charge (tokens and nano-USD together). Redis being down never fails a
request: the in-process counters, which shadow this process's own charges, decide instead.
"""

from __future__ import annotations

import calendar
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from .errors import BudgetExceeded
from .l2 import L2Unavailable, RedisClient, RedisTier
from .logs import log
from .ratelimit import Ride
from .redis_scripts import BUDGET_LUA, tagged
from .store.base import from_nano, to_nano

if TYPE_CHECKING:
    from redis.commands.core import Script

    from .store import StoreService

__all__ = [
    "PERIODS",
    "Budgeted",
    "Carrier",
    "Refusal",
    "RedisSpend",
    "SpendCounters",
    "budget_error",
    "redis_key",
    "script_args",
    "window",
]

PERIODS = ("1h", "1d", "7d", "month", "total")

_HOUR = 3600
_DAY = 86400
_EPOCH_MONDAY = 4  # 1970-01-01 was a Thursday: Monday is 4 days before it (mod 7)

#: (spent_usd, budget_usd, resets_at epoch seconds or None for `total`)
Refusal = tuple[float, float, float | None]

#: Runs another counter's script with a budget `Ride` joined to it (`RateLimiter.admit` or
#: `.charge`); the ride's answer, or None when Redis was not reached.
Carrier = Callable[[Ride], Awaitable["int | None"]]


class Budgeted(Protocol):
    """What budgets need of a key policy (edge.auth.KeyPolicy has it)."""

    @property
    def name(self) -> str: ...
    @property
    def budget_usd(self) -> float | None: ...
    @property
    def budget_nano(self) -> int | None: ...
    @property
    def budget_period(self) -> str: ...


def window(period: str, now: float) -> tuple[float, float | None]:
    """(start, end) of the `period` window holding `now`, UTC epoch seconds; end None for
    `total`, which starts at the epoch and never ends.

    Raises:
        ValueError: an unknown period.
    """
    if period == "1h":
        start = now // _HOUR * _HOUR
        return start, start + _HOUR
    if period == "1d":
        start = now // _DAY * _DAY
        return start, start + _DAY
    if period == "7d":
        days = now // _DAY
        start_day = days - (days - _EPOCH_MONDAY) % 7
        return start_day * _DAY, (start_day + 7) * _DAY
    if period == "month":
        moment = datetime.fromtimestamp(now, UTC)
        first = datetime(moment.year, moment.month, 1, tzinfo=UTC)
        days_in_month = calendar.monthrange(moment.year, moment.month)[1]
        begin = first.timestamp()
        return begin, begin + days_in_month * _DAY
    if period == "total":
        return 0.0, None
    raise ValueError(f"unknown budget period {period!r}; choose from {', '.join(PERIODS)}")


def budget_error(name: str, refusal: Refusal, now: float) -> BudgetExceeded:
    """The 429 for a key over budget: names the key, its spend, its budget and the reset."""
    spent, budget, resets_at = refusal
    if resets_at is None:
        when, retry_after = "this budget never resets", None
    else:
        stamp = datetime.fromtimestamp(resets_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        when, retry_after = f"the window resets at {stamp}", max(1.0, resets_at - now)
    return BudgetExceeded(
        f"Budget exceeded for key '{name}': spent ${spent:.6f} of its ${budget:.6f} budget; "
        f"{when}.",
        retry_after=retry_after,
    )


class _Window:
    """One key's spend in its current window."""

    __slots__ = ("period", "start", "end", "nano")

    def __init__(self, period: str, now: float, nano: int = 0) -> None:
        self.period = period
        start, end = window(period, now)
        self.start = start
        self.end = math.inf if end is None else end
        self.nano = nano

    def current(self, period: str, now: float) -> bool:
        return period == self.period and now < self.end


class SpendCounters:
    """Spend per key in its current window, in this process (integer nano-USD).

    Args:
        clock: wall-clock seconds (windows are UTC calendar windows) when `now` is omitted.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    def now(self, now: float | None = None) -> float:
        """`now`, or the clock's time when it is None."""
        return self._clock() if now is None else now

    def refusal(self, policy: Budgeted, now: float | None = None) -> Refusal | None:
        """None while the key may spend; else (spent, budget, resets_at) for the 429."""
        budget = policy.budget_nano
        if budget is None:
            return None
        counter = self._windows.get(policy.name)
        if counter is None or counter.nano < budget:
            return None
        return self._over(policy, counter, budget, self.now(now))

    def _over(self, policy: Budgeted, counter: _Window, budget: int,
              now: float) -> Refusal | None:
        if not counter.current(policy.budget_period, now):
            del self._windows[policy.name]  # a new window: nothing spent in it yet
            return None
        end = None if counter.end == math.inf else counter.end
        return from_nano(counter.nano), from_nano(budget), end

    def charge(self, policy: Budgeted, usd: float, now: float | None = None) -> int:
        """Add a completed answer's cost to the key's window; the window's new total (nano)."""
        return self.add(policy.name, policy.budget_period, to_nano(usd),
                        self.now(now))

    def add(self, name: str, period: str, nano: int, now: float) -> int:
        counter = self._windows.get(name)
        if counter is None or not counter.current(period, now):
            counter = self._windows[name] = _Window(period, now)
        counter.nano += nano
        return counter.nano

    def set(self, name: str, period: str, nano: int, now: float) -> None:
        """The key's spend in the window holding `now` is `nano` (a seed, or Redis's total)."""
        self._windows[name] = _Window(period, now, nano)

    def spent(self, name: str, period: str, now: float | None = None) -> float:
        """USD the key spent in the current `period` window (0 when nothing is counted)."""
        counter = self._windows.get(name)
        if counter is None or not counter.current(period, self.now(now)):
            return 0.0
        return from_nano(counter.nano)

    def spend_by_key(self) -> dict[str, float]:
        """Every counted key's spend in its window (the llm_edge_key_spend_usd gauge)."""
        return {name: from_nano(w.nano) for name, w in self._windows.items()}

    async def seed(self, store: StoreService, policies: Iterable[Budgeted],
                   now: float | None = None) -> None:
        """Load each key's spend since its window start from the store's ledger.

        Raises:
            StoreUnavailable: the store could not answer (counters start from zero then).
        """
        at = self.now(now)
        periods = {p.name: p.budget_period for p in policies}
        starts = {name: window(period, at)[0] for name, period in periods.items()}
        if not starts:
            return
        spent = await store.spend_by_key(starts)
        for name, period in periods.items():
            self.set(name, period, to_nano(spent.get(name, 0.0)), at)


# -- Redis --------------------------------------------------------------------------------

def redis_key(prefix: str, name: str, period: str, now: float) -> str:
    """The Redis string holding `name`'s spend in the `period` window that holds `now`
    (the name a hash tag, as in the rpm/tpm hash of the same key, so the two share a slot)."""
    return f"{tagged(prefix, name)}:{period}:{int(window(period, now)[0])}"


def script_args(op: str, period: str, nano: int, now: float) -> list[str]:
    """ARGV for `budget_step`: op, nano-USD, and the window's end (0 for `total`)."""
    end = window(period, now)[1]
    return [op, str(nano), str(0 if end is None else math.ceil(end))]


@dataclass(slots=True)
class RedisSpend:
    """Spend counters in Redis, shared by every worker and replica using it.

    Args:
        tier: the Redis tier (the cache's L2).
        local: the in-process counters that shadow this process's charges and decide
            while Redis is down.
        prefix: prefix of the per-window keys.
    """

    tier: RedisTier
    local: SpendCounters
    prefix: str = "edge:v1:budget:"
    _script: Script | None = None
    _degraded: bool = False

    async def refusal(self, policy: Budgeted, now: float | None = None) -> Refusal | None:
        """Like `SpendCounters.refusal`, with the spend read from Redis (one round trip)."""
        budget = policy.budget_nano
        if budget is None:
            return None
        at = self.local.now(now)
        try:
            spent = await self._run(self.ride(policy.name, policy.budget_period, "check", 0, at))
        except L2Unavailable as exc:
            self._fall_back(exc)
            return self.local.refusal(policy, at)
        self.local.set(policy.name, policy.budget_period, spent, at)
        if spent < budget:
            return None
        end = window(policy.budget_period, at)[1]
        return from_nano(spent), from_nano(budget), end

    async def read_with(self, policy: Budgeted, carry: Carrier,
                        now: float | None = None) -> None:
        """Read the key's spend in the round trip `carry` makes anyway (the rpm/tpm
        admission) into the local counter, where `local.refusal` then finds it with no
        round trip of its own. Redis not reached: the local counter stays as it is, which
        is the fallback's number."""
        at = self.local.now(now)
        spent = await carry(self.ride(policy.name, policy.budget_period, "check", 0, at))
        if spent is not None:
            self._degraded = False
            self.local.set(policy.name, policy.budget_period, spent, at)

    async def charge(self, policy: Budgeted, usd: float, now: float | None = None,
                     carry: Carrier | None = None) -> int:
        """Add the cost in Redis (and to the local shadow), in a round trip of its own or in
        the one `carry` makes (the tpm charge); the window's new total (nano)."""
        at = self.local.now(now)
        nano = to_nano(usd)
        total = self.local.add(policy.name, policy.budget_period, nano, at)
        ride = self.ride(policy.name, policy.budget_period, "charge", nano, at)
        try:
            counted = await (self._run(ride) if carry is None else carry(ride))
        except L2Unavailable as exc:
            self._fall_back(exc)
            return total
        if counted is None:  # the carrier did not reach Redis (and said so)
            return total
        self.local.set(policy.name, policy.budget_period, counted, at)
        return counted

    async def seed(self, spent: Mapping[str, tuple[str, float]], now: float) -> None:
        """Give Redis the store's numbers ({name: (period, usd)}) for windows it lacks."""
        for name, (period, usd) in spent.items():
            try:
                total = await self._run(self.ride(name, period, "seed", to_nano(usd), now))
            except L2Unavailable as exc:
                self._fall_back(exc)
                return
            self.local.set(name, period, total, now)

    def ride(self, name: str, period: str, op: str, nano: int, now: float) -> Ride:
        """The key and ARGV of one `budget_step` call on `name`'s window holding `now`."""
        return (redis_key(self.prefix, name, period, now),
                script_args(op, period, nano, now))

    def _fall_back(self, exc: Exception) -> None:
        if not self._degraded:
            self._degraded = True
            log.warning("budgets: Redis unavailable; counting spend per process until it is "
                        "back", reason=str(exc))

    async def _run(self, ride: Ride) -> int:
        key, args = ride

        def run(client: RedisClient) -> int:
            script = self._script
            if script is None:
                script = self._script = client.register_script(BUDGET_LUA)
            return int(script(keys=[key], args=args, client=client))

        result = await self.tier.call(run)
        self._degraded = False
        return result
