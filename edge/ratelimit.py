"""Per-key `rpm` and `tpm` limits over a rolling 60-second window (SPEC §4 "Auth").

Theory of operation
-------------------
Both limits count in a *sliding window of one-second buckets*: an event at time t goes
into bucket ``floor(t)`` and counts until ``floor(t) + 60``, so it is counted for between
59 and 60 seconds: the window is this second and the 59 before it. That makes the wait
a refusal reports the exact moment the limiter frees, and never longer than the true
wait of a rolling minute (the oldest request left it no earlier than the start of its
second plus 60): `Retry-After` is at most 60, and a client that waits it is admitted.
The price is at most one second of slack at the window's far edge. A window holds at
most 60 buckets per kind, whatever the traffic, so memory per key is bounded.

* `admit(key)` runs before a request is served (cache hits included). It refuses the
  request while the key's tokens in the window already reach `tpm` (the pre-check that
  keeps one key from running far past its budget: tokens are only known after the
  answer) or its requests reach `rpm`; otherwise it counts the request. A refused request
  is not counted, so a client that keeps retrying is admitted as soon as the window frees.
  `RateLimited.retry_after` is the time until the oldest buckets have expired far enough
  for the next request to pass both checks.
* `charge(key, tokens)` runs after an upstream answer with its usage (prompt +
  completion). Cache hits are never charged.

Where the counters live: in this process when no Redis tier is given. With a tier, the
window of each key is one Redis hash, ``{prefix}{{name}}`` (the name a hash tag), updated
by one Lua script per call (`edge.redis_scripts.LIMITS_LUA`: one round trip, atomic, so
every replica and worker sharing the Redis enforces one limit together). A *ride*, a
budget counter under the same hash tag, can join that call, so a key's budget is read at
admission and charged with its tokens in the same round trips. The hash holds a field per
bucket and kind (``r<second>``, ``t<second>``), running totals (``rn``, ``tn``) and the
oldest bucket that may hold data (``h``); a call first drops the buckets that left the
window, subtracting them from the totals, so its cost is bounded by the window, not by
the traffic. The hash expires 62 s after its last write. With Redis the clock is Redis's
own (``TIME``; Redis 5 or later, whose scripts replicate their effects), so replicas need
not agree on time; a test may pass `now`.

Redis being down never fails a request: on `L2Unavailable` the call is decided by the
in-process window instead, and one warning is logged per outage. The in-process window
always shadows this process's own traffic, so during an outage each process enforces the
limits on what it has seen itself (limits become per-process until Redis is back). What
a process admits or charges while Redis is away is also kept apart, as *unsent* buckets,
and added to the Redis window by the first call that reaches Redis again (in the same
script, at the same age), so the outage's traffic still counts against the window that
follows it. A call that timed out may still have run once Redis resumes; its request is
then counted twice, which errs on the side of the limit.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NoReturn, Protocol

from .errors import RateLimited
from .l2 import L2Unavailable, RedisClient, RedisTier
from .logs import log
from .redis_scripts import LIMITS_LUA, WINDOW_S, tagged

if TYPE_CHECKING:
    from redis.commands.core import Script

__all__ = ["WINDOW_S", "Limits", "RateLimiter", "Ride", "SlidingWindow"]

#: A counter that rides along in the same script call: (its Redis key, which must carry
#: the limited key's hash tag, and its `budget_step` ARGV; see `edge.redis_scripts`).
Ride = tuple[str, Sequence[str]]


class Limits(Protocol):
    """What the limiter reads of a key: a client key (`AuthKey`) or a provider's key."""

    @property
    def name(self) -> str: ...
    @property
    def rpm(self) -> int | None: ...
    @property
    def tpm(self) -> int | None: ...


class SlidingWindow:
    """Amounts in one-second buckets over the last `WINDOW_S` seconds (at most 60 buckets).

    The in-process twin of the Redis hash: the same buckets, expiry and wait arithmetic,
    so falling back from Redis changes where the numbers live, not what they mean.
    """

    __slots__ = ("buckets", "total")

    def __init__(self) -> None:
        # [second, amount], oldest first; seconds strictly increase.
        self.buckets: deque[list[int]] = deque()
        self.total = 0

    def expire(self, now: float) -> None:
        """Drop the buckets that left the window at `now`."""
        first = math.floor(now) - WINDOW_S + 1
        buckets = self.buckets
        while buckets and buckets[0][0] < first:
            self.total -= buckets.popleft()[1]

    def add(self, now: float, amount: int) -> None:
        self.expire(now)
        second = math.floor(now)
        buckets = self.buckets
        if buckets and buckets[-1][0] >= second:
            # Same second, or a clock that stepped back: count it in the newest bucket,
            # which expires no earlier than `second` would.
            buckets[-1][1] += amount
        else:
            buckets.append([second, amount])
        self.total += amount

    def wait(self, now: float, limit: int) -> float:
        """Seconds until the total drops below `limit` (0 if it already is). Expire first."""
        total = self.total
        if total < limit:
            return 0.0
        for second, amount in self.buckets:
            total -= amount
            if total < limit:
                return second + WINDOW_S - now
        return math.floor(now) + WINDOW_S - now  # unreachable while totals are consistent

    def snapshot(self, now: float) -> list[tuple[int, int]]:
        """(age in whole seconds at `now`, amount) of each live bucket, oldest first."""
        self.expire(now)
        current = math.floor(now)
        return [(max(0, current - second), amount) for second, amount in self.buckets]

    def merged(self, newer: SlidingWindow) -> SlidingWindow:
        """This window with the amounts of `newer` (whose buckets are no older) added."""
        for second, amount in newer.buckets:
            self.add(second, amount)
        return self


class _Local:
    """One key's limits and its in-process windows."""

    __slots__ = ("name", "rpm", "tpm", "requests", "tokens", "unsent_requests", "unsent_tokens")

    def __init__(self, name: str, rpm: int | None, tpm: int | None) -> None:
        self.name = name
        self.rpm = rpm
        self.tpm = tpm
        self.requests = SlidingWindow()
        self.tokens = SlidingWindow()
        # counted here while Redis was away, not yet added to the Redis window
        self.unsent_requests = SlidingWindow()
        self.unsent_tokens = SlidingWindow()

    def admit(self, now: float) -> float:
        """Count one request and return 0, or return the seconds to wait (nothing counted)."""
        wait = 0.0
        if self.tpm is not None:
            self.tokens.expire(now)
            wait = self.tokens.wait(now, self.tpm)
        if self.rpm is not None:
            self.requests.expire(now)
            wait = max(wait, self.requests.wait(now, self.rpm))
            if wait == 0.0:
                self.requests.add(now, 1)
        return wait

    def shadow(self, now: float) -> None:
        """Record a request Redis admitted, so a later fallback starts from real numbers."""
        if self.rpm is not None:
            self.requests.add(now, 1)


class RateLimiter:
    """Per-key rpm/tpm limits, in Redis when a tier is given, else in this process.

    Args:
        keys: the configured client keys (or a provider's pool, `edge.keypool`); only those
            with `rpm` or `tpm` are limited.
        tier: the Redis tier shared by all replicas (the cache's L2), or None.
        key_prefix: prefix of the Redis hash of each key's window.
        clock: seconds for the in-process windows when `now` is not passed.
    """

    def __init__(
        self,
        keys: Sequence[Limits],
        tier: RedisTier | None,
        key_prefix: str = "edge:v1:rl:",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limits = {
            k.name: _Local(k.name, k.rpm, k.tpm)
            for k in keys
            if k.rpm is not None or k.tpm is not None
        }
        self._tier = tier
        self._prefix = key_prefix
        self._clock = clock
        self._script: Script | None = None
        self._degraded = False  # in a Redis outage, already warned about it

    def limited(self, key_name: str) -> bool:
        """True when `key_name` has an rpm or tpm limit (else admit/charge do nothing)."""
        return key_name in self._limits

    def charges(self, key_name: str, tokens: int) -> bool:
        """True when `charge(key_name, tokens)` makes a Redis call (a ride can join it)."""
        local = self._limits.get(key_name)
        return (self._tier is not None and local is not None and local.tpm is not None
                and tokens > 0)

    async def admit(self, key_name: str, now: float | None = None,
                    ride: Ride | None = None) -> int | None:
        """Count one request for `key_name`, or refuse it. With `ride`, the same script
        call runs its `budget_step` once the request is admitted: its answer is returned
        (None when Redis was not reached, or without a ride).

        Raises:
            RateLimited: the key's requests in the window reached `rpm`, or its tokens
                reached `tpm`; `retry_after` is the seconds until the window frees enough.
        """
        local = self._limits.get(key_name)
        if local is None:
            return None
        if self._tier is not None:
            try:
                allowed, wait_ms, rode = await self._redis(local, "admit", now, 0, ride)
            except L2Unavailable as exc:
                self._fall_back(exc)
            else:
                self._degraded = False
                if allowed:
                    local.shadow(self._now(now))
                    return rode
                self._refuse(local, wait_ms / 1000.0)
        at = self._now(now)
        wait = local.admit(at)
        if wait > 0.0:
            self._refuse(local, wait)
        if self._tier is not None and local.rpm is not None:
            local.unsent_requests.add(at, 1)
        return None

    async def charge(self, key_name: str, tokens: int, now: float | None = None,
                     ride: Ride | None = None) -> int | None:
        """Add the `tokens` an upstream answer used (prompt + completion) to the key's
        window; with `ride` (only when `charges` says so), run its `budget_step` in the
        same call and return its answer (None when Redis was not reached)."""
        local = self._limits.get(key_name)
        if local is None or local.tpm is None or tokens <= 0:
            return None
        at = self._now(now)
        local.tokens.add(at, tokens)
        if self._tier is None:
            return None
        try:
            rode = (await self._redis(local, "charge", now, tokens, ride))[2]
        except L2Unavailable as exc:
            self._fall_back(exc)
            local.unsent_tokens.add(at, tokens)
            return None
        self._degraded = False
        return rode

    # -- internals -------------------------------------------------------------------

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now

    def _refuse(self, local: _Local, wait: float) -> NoReturn:
        what = []
        if local.rpm is not None:
            what.append(f"{local.rpm} requests")
        if local.tpm is not None:
            what.append(f"{local.tpm} tokens")
        raise RateLimited(
            f"Rate limit exceeded for key '{local.name}' ({' and '.join(what)} per minute); "
            f"retry after {math.ceil(wait)} s.",
            retry_after=wait,
        )

    def _fall_back(self, exc: L2Unavailable) -> None:
        if not self._degraded:
            self._degraded = True
            log.warning("rate limits: Redis unavailable; enforcing them per process until it "
                        "is back", reason=str(exc))

    async def _redis(self, local: _Local, op: str, now: float | None, tokens: int,
                     ride: Ride | None) -> tuple[bool, int, int | None]:
        assert self._tier is not None
        keys = [tagged(self._prefix, local.name)]
        args: list[str | int] = [repr(-1.0 if now is None else float(now)), op, local.rpm or 0,
                                 local.tpm or 0, tokens, 0]
        # Taken out for this call, so a concurrent call cannot send them a second time.
        unsent = (local.unsent_requests, local.unsent_tokens)
        if unsent[0].buckets or unsent[1].buckets:
            local.unsent_requests, local.unsent_tokens = SlidingWindow(), SlidingWindow()
            at = self._now(now)
            for kind, window in zip("rt", unsent, strict=True):
                for age, amount in window.snapshot(at):
                    args += [kind, age, amount]
            args[5] = (len(args) - 6) // 3
        unsent_count = args[5]
        if ride is not None:
            keys.append(ride[0])
            args += ride[1]

        def run(client: RedisClient) -> tuple[bool, int, int | None]:
            script = self._script
            if script is None:
                # Script runs EVALSHA and loads the source on NOSCRIPT (a restarted Redis).
                script = self._script = client.register_script(LIMITS_LUA)
            allowed, wait_ms, rode = script(keys=keys, args=args, client=client)
            return bool(allowed), int(wait_ms), None if ride is None else int(rode)

        try:
            return await self._tier.call(run)
        except BaseException:  # L2Unavailable or cancelled: maybe never reached Redis
            if unsent_count:  # not in Redis after all: kept for the next call that gets in
                local.unsent_requests = unsent[0].merged(local.unsent_requests)
                local.unsent_tokens = unsent[1].merged(local.unsent_tokens)
            raise
