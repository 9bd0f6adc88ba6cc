"""The two cache tiers and the in-flight table (SPEC §4 "Caching").

Theory of operation
-------------------
An entry is a complete, successful answer in OpenAI format, serialised once (`Entry.body`,
without edge's `metadata`), plus who produced it and what it cost. L1 is the compiled LRU
in this process; L2 is Redis, written in the background (`RedisTier.put_nowait`) and read
with a short timeout. An L2 hit fills L1 for what is left of the entry's own TTL.

Coalescing: the first request for a key that misses becomes the *leader* of a `Flight`;
identical requests arriving while it runs become *followers* and wait on the flight.
When the leader finishes it stores the answer and wakes them; they are served as hits.
If the leader fails, the followers get the same error: the leader already walked every
candidate with the configured attempts, so repeating that would only multiply the load
on a failing upstream. If the leader is abandoned (its client left and nobody was waiting
at that moment), a late follower wakes with no answer and no error and tries on its own,
usually becoming the next leader. A follower never waits on a flight that can't end: the
leader always finishes its flight in a `finally`.
"""

from __future__ import annotations

import math
import time
from typing import Any

import orjson
import trio

from .config import CacheConfig
from .errors import BadRequest, EdgeError
from .fastpath import Entry, LRUCache, cache_key
from .l2 import RedisTier
from .logs import log
from .metrics import Metrics
from .tracing import Tracing

FORMAT = b"E1"  # L2 value format version; a value with another prefix is ignored
_ENTRY_OVERHEAD = 256  # bytes of bookkeeping per L1 entry, counted against l1_max_bytes
SWEEP_INTERVAL_S = 1.0
NO_KEY = -1  # never a request's key (keys are unsigned 128-bit digests): health probe, no-store


def exact(body: bytes, provider: str, model: str, cost_usd: float) -> Entry:
    """The entry to keep for an answer just serialised, its body copied to exact size.

    orjson's output keeps its whole growth buffer (~8 KB for a 2 KB answer); the copy
    (~0.5 us) is what makes 100k cached answers fit in ~300 MB. It is made as soon as the
    answer is serialised, before the client's response is built: copied later, in
    `Cache.store`, it landed in holes that request's other buffers had left and cost 38
    bytes more per entry (benchmarks.memory: 2,618 against 2,580).
    """
    return Entry(bytes(memoryview(body)), provider, model, cost_usd)


def encode(entry: Entry, expires_at: float) -> bytes:
    """The L2 value: format, metadata (with the wall-clock expiry), newline, body.

    L1 keeps an entry's deadline in its node; L2 carries the wall-clock second it stops
    being served (`time.time()`) beside it, so a replica that fills its L1 from an L2 hit
    keeps the TTL the writer chose (`x-edge-cache-ttl`). Wall clock, not monotonic, since
    replicas share no other clock; NTP-level skew moves an expiry by that much, no more.
    """
    meta = {"p": entry.provider, "m": entry.model, "c": entry.cost_usd, "x": expires_at}
    return FORMAT + orjson.dumps(meta) + b"\n" + entry.body


def decode(raw: bytes) -> tuple[Entry, float | None] | None:
    """The entry and its wall-clock expiry (None in values written before it was stored)
    from an L2 value, or None for a value edge did not write."""
    if not raw.startswith(FORMAT):
        return None
    head, sep, body = raw[len(FORMAT):].partition(b"\n")
    if not sep or not body.startswith(b"{"):
        return None
    try:
        meta = orjson.loads(head)
        expires = meta.get("x")
        entry = Entry(body, str(meta["p"]), str(meta["m"]), float(meta["c"]))
        return entry, None if expires is None else float(expires)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None


class Flight:
    """One upstream call that identical requests share."""

    __slots__ = ("done", "entry", "error", "waiters", "_idle")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.entry: Entry | None = None
        self.error: EdgeError | None = None
        self.waiters = 0
        self._idle = trio.Event()
        self._idle.set()

    def join(self) -> None:
        if self.waiters == 0:
            self._idle = trio.Event()
        self.waiters += 1

    def leave(self) -> None:
        self.waiters -= 1
        if self.waiters == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Returns once no follower is waiting (at once if none is)."""
        await self._idle.wait()


class Cache:
    """L1 + optional L2 + the in-flight table, for one worker process."""

    def __init__(self, config: CacheConfig, metrics: Metrics,
                 tracing: Tracing | None = None) -> None:
        self.config = config
        self.tracing = tracing if tracing is not None else Tracing()
        self.enabled = config.enabled
        self.ttl_s = config.ttl_s
        self.max_entry_bytes = config.max_entry_bytes
        self.global_scope = config.scope == "global"
        self.metrics = metrics
        self.l1 = LRUCache(config.l1_max_entries, config.l1_max_bytes)
        self.l2: RedisTier | None = None
        if config.enabled and config.l2_enabled:
            self.l2 = RedisTier(config.redis_url, cluster=config.redis_cluster,
                                key_prefix=config.key_prefix, on_error=self._l2_down)
        self.flights: dict[int, Flight] = {}
        self._swept_at = -math.inf  # trio time of the last L1 expiry sweep
        self._hit_l1 = metrics.cache_hits.labels("l1")
        self._hit_l2 = metrics.cache_hits.labels("l2")
        self._lat_l1 = metrics.cache_latency.labels("l1")
        self._lat_l2 = metrics.cache_latency.labels("l2")

    @staticmethod
    def _l2_down(reason: str) -> None:
        log.warning("L2 cache unavailable; serving from L1 and upstream", reason=reason)

    @property
    def l1_healthy(self) -> bool:
        """The L1 answers a lookup and its expiry sweep ran lately (expired entries are
        being dropped): false before `run` starts, and once the sweep stops."""
        if trio.current_time() - self._swept_at > 3 * SWEEP_INTERVAL_S:
            return False
        try:
            self.l1.get(NO_KEY, time.monotonic())
        except Exception:  # a broken L1 is exactly what this reports
            return False
        return True

    @property
    def l2_configured(self) -> bool:
        return self.l2 is not None

    @property
    def l2_healthy(self) -> bool:
        return self.l2 is not None and self.l2.healthy

    def key(self, endpoint: str, body: dict[str, Any], tenant: str) -> int:
        scope = endpoint if self.global_scope else f"{endpoint}|{tenant}"
        try:
            return cache_key(body, scope)
        except (ValueError, TypeError) as exc:  # too deep for the canonical form
            raise BadRequest(f"The request body cannot be cached: {exc}") from None

    async def lookup(self, key: int) -> tuple[Entry, str] | None:
        """The live entry for `key` and the tier it came from, or None.

        A hit is counted here; a miss only when the request then leads an upstream call
        (`lead_or_follow`): a coalesced follower is served as a hit instead.
        """
        began = time.perf_counter()
        now = time.monotonic()
        entry = self.l1.get(key, now)
        if entry is not None:
            self._lat_l1.observe(time.perf_counter() - began)
            self._hit_l1.inc()
            return entry, "l1"  # type: ignore[return-value]
        if self.l2 is not None and self.l2.healthy:
            with self.tracing.span("l2.get") as span:
                raw = await self.l2.get(f"{key:032x}")
                span.set("edge.hit", raw is not None)
            self._lat_l2.observe(time.perf_counter() - began)
            decoded = None if raw is None else decode(raw)
            if decoded is not None:
                found, expires_at = decoded
                # An entry of the old format has no expiry: L1 keeps it for ttl_s.
                left = self.ttl_s if expires_at is None else expires_at - time.time()
                if left > 0:
                    self._hit_l2.inc()
                    self.l1.put(key, found, len(found.body) + _ENTRY_OVERHEAD, now + left)
                    return found, "l2"
        return None

    def store(self, key: int, entry: Entry, ttl_s: int | None) -> None:
        """Keep `entry` in L1 and queue it for L2, unless it is over max_entry_bytes."""
        if len(entry.body) > self.max_entry_bytes:
            return  # served, but one answer must not crowd out thousands
        ttl = ttl_s if ttl_s is not None else self.ttl_s
        # `entry` came from `exact` (its body already copied to exact size)
        self.l1.put(key, entry, len(entry.body) + _ENTRY_OVERHEAD, time.monotonic() + ttl)
        if self.l2 is not None and not self.l2.put_nowait(
                f"{key:032x}", encode(entry, time.time() + ttl), ttl):
            self.metrics.l2_dropped_writes.inc()

    # -- coalescing ------------------------------------------------------------------

    def lead_or_follow(self, key: int) -> tuple[bool, Flight]:
        """(True, new flight) for the leader; (False, the running flight) for a follower."""
        flight = self.flights.get(key)
        if flight is not None:
            return False, flight
        flight = Flight()
        self.flights[key] = flight
        self.metrics.cache_misses.inc()
        return True, flight

    def served_follower(self) -> None:
        """A follower got its leader's answer: an L1 hit (from this process's memory)."""
        self._hit_l1.inc()

    def finish(self, key: int, flight: Flight, entry: Entry | None = None,
               error: EdgeError | None = None) -> None:
        """End the flight (always, in a `finally`): wake its followers with the outcome."""
        flight.entry = entry
        flight.error = error
        if self.flights.get(key) is flight:
            del self.flights[key]
        flight.done.set()

    # -- background work -------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Runs in the service nursery: the L2 writer/probe and the L1 expiry sweep."""
        async with trio.open_nursery() as nursery:
            if self.l2 is not None:
                await nursery.start(self.l2.run)
            nursery.start_soon(self._sweep)
            task_status.started()

    async def _sweep(self) -> None:
        try:
            while True:
                self._swept_at = trio.current_time()
                await trio.sleep(SWEEP_INTERVAL_S)
                self.l1.sweep(time.monotonic(), 1000)
        finally:
            self._swept_at = -math.inf

    async def aclose(self) -> None:
        if self.l2 is not None:
            await self.l2.aclose()
