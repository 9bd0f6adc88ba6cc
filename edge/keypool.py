"""A provider's API keys, and which one the next request sends (SPEC §9 "Key pools").

Theory of operation
-------------------
A kind names the header that carries its key (`Provider.key_header`); the pool prebuilds
that header's value for each key, so a request pays one pick and one header append, and a
provider with a single key and no limits never reads the clock.

* **Spread.** `pick` is smooth weighted round-robin over the keys free now: each pick adds
  every free key's weight to its running credit, takes the key with the most credit (the
  first in config order on a tie) and takes the free keys' total weight from it. Over any
  run of picks each key's share is its weight's, interleaved rather than in bursts, and the
  order is deterministic.
* **Rest.** A key of a pool (`api_keys`) the upstream answered 429 *rests* for the
  answer's Retry-After (default `DEFAULT_REST_S`; within `MIN_REST_S`..`MAX_REST_S`,
  either header form, `providers.base.retry_after_seconds`) while the others carry on; `on_rest`
  counts it (a metric). A single `api_key` never rests: with nothing to carry on, resting
  would turn one 429 into refusing every request for the wait, where the breaker and
  failover already answer a provider that keeps saying 429.
* **Own limits.** A key with `rpm`/`tpm` counts its requests (when picked) and its tokens
  (after the answer, `charge`) in the pool's `RateLimiter`, in Redis when the L2 tier is
  on, so the limit holds for the whole fleet in one round trip per request. A key the
  limiter refuses is *held* here until its window frees (the refusal says when), so the
  next picks skip it without asking again.
* **Exhausted.** While every key rests or is held, `blocked_until` is the soonest one
  frees (0.0 while some key is free): the router skips the deployment like one whose
  circuit is open, and a 503's Retry-After is `retry_after()`. `pick` raises `KeysResting`
  when it finds no key free, which failover treats the same way.

Times are on `clock` (`time.monotonic`; tests pass their own).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence

from .config import ProviderKey
from .errors import RateLimited, ServiceUnavailable
from .l2 import RedisTier
from .ratelimit import RateLimiter

__all__ = ["DEFAULT_REST_S", "MAX_REST_S", "MIN_REST_S", "Key", "KeyPool", "KeysResting"]

#: How long a key rests after a 429 that did not say (no usable Retry-After).
DEFAULT_REST_S = 30.0
#: The bounds of a rest. At least a second, so a 429 saying "Retry-After: 0" still sends
#: the retry to another key; at most an hour, so a key told to wait days (a quota reset, or
#: a buggy upstream) costs one probe call an hour rather than being lost until a restart.
MIN_REST_S = 1.0
MAX_REST_S = 3600.0


class KeysResting(ServiceUnavailable):
    """Every key of a provider is resting or at its own limit: no call was made.

    Not a verdict on the provider (its breaker does not hear of it): failover moves on to
    the next candidate, and with none left the client gets 503 with Retry-After.
    """

    default_code = "upstream_keys_resting"


class Key:
    """One key of a pool: its secret, prebuilt header value, weight, limits and state."""

    __slots__ = ("credit", "free_at", "header_value", "limited", "name", "rpm", "secret",
                 "tpm", "weight")

    def __init__(self, spec: ProviderKey, header_format: str) -> None:
        self.secret = spec.secret
        self.header_value = header_format.format(spec.secret)
        self.weight = spec.weight
        self.rpm = spec.rpm
        self.tpm = spec.tpm
        self.limited = spec.rpm is not None or spec.tpm is not None
        # The limiter's name for this key (its Redis hash): a digest, never the secret, and
        # the same in every replica whatever the key's place in the config.
        self.name = "k" + hashlib.sha256(spec.secret.encode()).hexdigest()[:24]
        self.credit = 0.0
        self.free_at = 0.0  # resting or held until then


class KeyPool:
    """The keys of one provider; see the module docstring."""

    __slots__ = ("blocked_until", "clock", "header_name", "keys", "limiter", "on_rest", "only",
                 "rests")

    def __init__(self, specs: Sequence[ProviderKey], header: tuple[str, str] | None,
                 clock: Callable[[], float] = time.monotonic, *, rests: bool = True) -> None:
        self.header_name = header[0] if header is not None else ""
        fmt = header[1] if header is not None else "{}"
        self.keys = tuple(Key(spec, fmt) for spec in specs)
        # The single unlimited key, picked without reading the clock while it is free.
        self.only = self.keys[0] if len(self.keys) == 1 and not self.keys[0].limited else None
        self.clock = clock
        self.rests = rests
        self.blocked_until = 0.0
        self.on_rest: Callable[[], None] | None = None
        self.limiter: RateLimiter | None = None
        self.share(None)

    def share(self, tier: RedisTier | None, key_prefix: str = "edge:v1:pk:") -> None:
        """Count the keys' own rpm/tpm in this process, or with `tier` (the L2 Redis) in
        Redis for every replica, under `key_prefix`."""
        limited = [key for key in self.keys if key.limited]
        if limited:
            self.limiter = RateLimiter(limited, tier, key_prefix, self.clock)

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(key.secret for key in self.keys)

    # -- the request path ------------------------------------------------------------

    def pick(self) -> Key | None:
        """The key the next request sends; None for a provider without keys.

        Raises:
            KeysResting: every key is resting or held.
        """
        only = self.only
        if only is not None and not self.blocked_until:
            return only
        if not self.keys:
            return None
        now = self.clock()
        best: Key | None = None
        total = 0.0
        for key in self.keys:
            if key.free_at > now:
                continue
            key.credit += key.weight
            total += key.weight
            if best is None or key.credit > best.credit:
                best = key
        if best is None:
            self._recheck(now)
            raise self.resting()
        best.credit -= total
        if self.blocked_until:
            self.blocked_until = 0.0  # a key is free again
        return best

    async def admit(self, key: Key) -> Key:
        """`key` once its own limiter admitted the request, or the next key that is admitted
        (each refused one held until its window frees).

        Raises:
            KeysResting: every key is resting or held.
        """
        limiter = self.limiter
        assert limiter is not None
        for _ in range(len(self.keys)):
            try:
                await limiter.admit(key.name)
            except RateLimited as refused:
                self._hold(key, self.clock() + (refused.retry_after or 1.0))
            else:
                return key
            picked = self.pick()
            assert picked is not None
            key = picked
            if not key.limited:
                return key
        raise self.resting()

    async def charge(self, key: Key, tokens: int) -> None:
        """The tokens an answer sent with `key` used, against the key's tpm."""
        if key.tpm is not None and self.limiter is not None:
            await self.limiter.charge(key.name, tokens)

    def rest(self, key: Key, retry_after: float | None) -> bool:
        """The upstream answered `key` with 429: it rests for `retry_after` seconds, and
        True says that another key is free meanwhile (the wait was this key's alone)."""
        if not self.rests:
            return False
        wait = DEFAULT_REST_S if retry_after is None else retry_after
        self._hold(key, self.clock() + min(max(wait, MIN_REST_S), MAX_REST_S))
        if self.on_rest is not None:
            self.on_rest()
        return self.usable()

    # -- what the router and /health read -----------------------------------------------

    def usable(self) -> bool:
        """False while every key rests or is held (no clock read while some key is free)."""
        until = self.blocked_until
        return not until or self.clock() >= until

    def retry_after(self) -> float:
        """Seconds until some key is free again; 0.0 if one is free now."""
        until = self.blocked_until
        return max(0.0, until - self.clock()) if until else 0.0

    def available(self) -> int:
        """Keys free now."""
        now = self.clock()
        return sum(1 for key in self.keys if key.free_at <= now)

    def resting(self) -> KeysResting:
        wait = self.retry_after()
        return KeysResting(
            f"Every API key of this provider is resting after a 429 or at its own limit; "
            f"retry after {math.ceil(wait)} s.", retry_after=max(wait, 1.0))

    # -- internals -------------------------------------------------------------------

    def _hold(self, key: Key, until: float) -> None:
        key.free_at = max(key.free_at, until)
        key.credit = 0.0  # a key back from rest starts even, not with a burst of credit
        self._recheck(self.clock())

    def _recheck(self, now: float) -> None:
        """Set `blocked_until` from the keys: the soonest free time if none is free now."""
        soonest = math.inf
        for key in self.keys:
            if key.free_at <= now:
                self.blocked_until = 0.0
                return
            soonest = min(soonest, key.free_at)
        self.blocked_until = soonest if soonest != math.inf else 0.0
