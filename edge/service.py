"""The long-lived service: providers, router, metrics and the nursery for background work.

`open_edge(config)` is entered once per worker, in the ASGI lifespan; everything that must
outlive a single request (connection pools, the L2 writer, health probes) lives here and
is closed when it exits. Requests never spawn tasks into this nursery.

A background task that fails after start-up is restarted, after a backoff that doubles
from `RESTART_BACKOFF_S` to `RESTART_BACKOFF_MAX_S`, with the exception logged at error:
the tasks are caches and probes, so one failure (a bug on a rare input, say) should cost
a sweep or a probe, not the process. A task that keeps failing (`MAX_RESTARTS` times in a
row, each within `STABLE_AFTER_S` of its restart) is not going to recover by itself: the
service stops being ready and `open_edge` raises `BackgroundTaskFailed`, which ends the
process with a non-zero status so its supervisor starts a fresh one. Never the third
outcome, a process that stays up without its background work (503 for ever while
/health/live says 200).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import trio

from .admin import AdminAPI
from .auth import Authenticator, KeyPolicy
from .budgets import RedisSpend, Refusal, SpendCounters
from .cache import Cache
from .config import Config
from .logs import log
from .metrics import Metrics
from .pricing import PriceTable
from .providers import Provider, make_provider
from .ratelimit import RateLimiter
from .routing import Router
from .stats import Stats
from .store import open_store
from .store.base import StoreUnavailable, UsageRow, from_nano
from .store.service import StoreService
from .tracing import Tracing
from .transport import LeanTransport


def make_transport(max_connections: int) -> httpx.AsyncBaseTransport:
    """The upstream transport: edge's lean HTTP/1.1 client (measured 2-5x httpx's own;
    benchmarks/RESULTS.md), behind httpx's transport interface."""
    return LeanTransport(max_connections=max_connections)


RESTART_BACKOFF_S = 0.5
RESTART_BACKOFF_MAX_S = 30.0
MAX_RESTARTS = 5
STABLE_AFTER_S = 60.0


class BackgroundTaskFailed(Exception):
    """A background task kept failing after restarts; the process should be replaced."""


async def supervise(name: str, task: Callable[..., Awaitable[object]], *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Run `task` (started like `nursery.start(task)`) for ever, restarting it on failure.

    A failure before `task` has started is start-up's to report and is raised as is.
    """
    failures = 0
    started = False
    while True:
        began = trio.current_time()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(task)
                if not started:
                    started = True
                    task_status.started()
            raise RuntimeError("returned, but must run until cancelled")
        except Exception as exc:
            if not started:
                raise
            failures = 1 if trio.current_time() - began >= STABLE_AFTER_S else failures + 1
            error = _describe(exc)
            if failures > MAX_RESTARTS:
                log.error("background task keeps failing; stopping so the process is replaced",
                          task=name, failures=failures, error=error)
                raise BackgroundTaskFailed(f"{name} failed {failures} times in a row: {error}") \
                    from exc
            delay = min(RESTART_BACKOFF_MAX_S, RESTART_BACKOFF_S * 2 ** (failures - 1))
            log.error("background task failed; restarting it", task=name, failures=failures,
                      restart_in_s=delay, error=error)
        await trio.sleep(delay)


def _describe(exc: BaseException) -> str:
    """The failure itself, not the nursery's wrapping of it."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return repr(exc)


class Edge:
    """Everything a request needs that outlives it."""

    def __init__(self, config: Config, metrics: Metrics | None = None,
                 tracing: Tracing | None = None) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self.prices = PriceTable(config.models)
        retry_on = frozenset(config.routing.retry_on)
        inject = tracing.inject if tracing is not None and tracing.enabled else None
        self.providers: dict[str, Provider] = {
            p.name: make_provider(p, make_transport(p.max_connections), retry_on, inject)
            for p in config.providers
        }
        self.router = Router(config, self.providers, self.prices)
        self.cache = Cache(config.cache, self.metrics, tracing)
        # Counters live in Redis when L2 is on, so limits hold across workers and replicas.
        self.limiter = RateLimiter(config.auth.keys, self.cache.l2,
                                   key_prefix=config.cache.key_prefix + "rl:")
        for provider in self.providers.values():  # its keys' own limits and 429 rests
            provider.keys.share(self.cache.l2, config.cache.key_prefix + "pk:")
            provider.keys.on_rest = self.metrics.child(
                self.metrics.upstream_key_rests, provider.name).inc
        # Admin-made keys, the usage ledger and stored responses (SPEC §7). Postgres is
        # first reached by the probe in `store.run`, so a database that is down does not
        # stop start-up; a SQLite file that cannot be opened does (StoreUnavailable).
        self.store = StoreService(
            open_store(config.store.url),
            retention_days=config.store.usage_retention_days,
            on_error=self._store_down,
        )
        # Who is calling (file keys and the store's), what each key spent in its budget
        # window (per process, seeded from the ledger in `open_edge`), and /admin/*.
        self.auth = Authenticator(config.auth, self.store)
        self.spend = SpendCounters()
        # With L2 on, spend lives in Redis, so a budget holds across workers and replicas;
        # `spend` shadows this process's charges and decides while Redis is down.
        self.shared_spend = (None if self.cache.l2 is None else
                             RedisSpend(self.cache.l2, self.spend,
                                        prefix=config.cache.key_prefix + "budget:"))
        # The dashboard's reports (/admin/stats, /admin/providers), read by /ui.
        self.stats = Stats(self.store, self.metrics, self.router, self.providers)
        self.admin = AdminAPI(self.store, self.auth, self.spend, reports={
            "stats": self.stats.report, "providers": self._providers_report})
        self._budgeted: list[KeyPolicy] = []
        self.ready = False
        self.draining = False
        log.add_secrets(k.secret for p in config.providers for k in p.keys)
        log.add_secrets(k.secret for k in config.auth.keys)

    async def _providers_report(self, query_string: bytes) -> dict[str, object]:
        return self.stats.providers_report()

    def record_usage(self, row: UsageRow) -> None:
        """Queue one ledger row for the store's batch writer; never waits. A full queue
        drops the row, which `llm_edge_usage_rows_dropped_total` counts."""
        if not self.store.record_usage(row):
            self.metrics.usage_rows_dropped.inc()

    async def seed_spend(self) -> None:
        """Start each key's spend counter from the ledger, so a restart with a durable
        store forgets nothing it charged. A store that is down leaves them at zero."""
        policies = [*self.auth.config_policies.values(),
                    *(KeyPolicy.from_record(k) for k in self.store.cached_keys())]
        budgeted = [p for p in policies if p.budget_usd is not None]
        try:
            await self.spend.seed(self.store, budgeted)
        except StoreUnavailable as exc:
            log.warning("budgets: the store is down; spend counters start from zero",
                        reason=str(exc))
        self._budgeted = budgeted
        self.metrics.key_spend_window(self.spend.spend_by_key())

    async def seed_shared_spend(self) -> None:
        """Give Redis the ledger's spend for windows it has no counter for (a window another
        replica already counts in Redis is kept as it is). Needs the cache running."""
        shared = self.shared_spend
        if shared is None or not self._budgeted:
            return
        now = self.spend.now()
        await shared.seed({p.name: (p.budget_period, self.spend.spent(p.name, p.budget_period,
                                                                      now))
                           for p in self._budgeted}, now)

    async def admit(self, policy: KeyPolicy) -> None:
        """Count the request against its key's rpm/tpm (call only for a limited key). With
        L2 on and a budget, the same round trip reads the key's spend for `budget_refusal`.

        Raises:
            RateLimited: the key is at its rpm or tpm.
        """
        limiter, shared = self.limiter, self.shared_spend
        name = policy.name
        if shared is None or policy.budget_nano is None:
            await limiter.admit(name)
            return
        await shared.read_with(policy, lambda ride: limiter.admit(name, ride=ride))

    async def budget_refusal(self, policy: KeyPolicy) -> Refusal | None:
        """None while `policy`'s key may spend (call only for a key with a budget). A key
        with rpm/tpm had its spend read at admission (`admit`): no round trip here."""
        shared = self.shared_spend
        if shared is not None and not self.limiter.limited(policy.name):
            return await shared.refusal(policy)
        return self.spend.refusal(policy)

    async def charge_key(self, policy: KeyPolicy, tokens: int, usd: float) -> None:
        """An answer's tokens against its key's tpm and its cost against its budget window
        (and `llm_edge_key_spend_usd`); one Redis round trip for both when both are on."""
        limiter, shared = self.limiter, self.shared_spend
        name = policy.name
        if policy.budget_nano is None:
            await limiter.charge(name, tokens)
            return
        if shared is not None and limiter.charges(name, tokens):
            nano = await shared.charge(
                policy, usd, carry=lambda ride: limiter.charge(name, tokens, ride=ride))
        else:
            await limiter.charge(name, tokens)
            nano = (self.spend.charge(policy, usd) if shared is None
                    else await shared.charge(policy, usd))
        m = self.metrics
        label = m.key_label(name)
        if label == name:
            m.child(m.key_spend, label).set(from_nano(nano))
        else:
            m.child(m.key_spend, label).inc(usd)  # keys past the cap: their sum

    def _store_down(self, reason: str) -> None:
        log.warning("store unavailable; requests are still served", reason=reason)

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            for provider in self.providers.values():
                await provider.aclose()
            await self.cache.aclose()
            # Flushes the ledger rows still queued; what cannot be written is counted.
            dropped = self.store.rows_dropped
            await self.store.aclose()
            self.metrics.usage_rows_dropped.inc(self.store.rows_dropped - dropped)


@asynccontextmanager
async def open_edge(config: Config, metrics: Metrics | None = None,
                    tracing: Tracing | None = None) -> AsyncIterator[Edge]:
    """Run the service for the duration of the block; background tasks stop on exit."""
    edge = Edge(config, metrics, tracing)
    try:
        async with trio.open_nursery() as nursery:
            # the store and the spend seeded from it first: they wait on threads, and a
            # cache task failing meanwhile must not use up its restarts before ready
            await nursery.start(supervise, "store", edge.store.run)
            await edge.seed_spend()
            await nursery.start(supervise, "cache", edge.cache.run)
            await edge.seed_shared_spend()
            edge.ready = True
            try:
                yield edge
            finally:
                edge.ready = False
                nursery.cancel_scope.cancel()
    finally:
        await edge.aclose()
