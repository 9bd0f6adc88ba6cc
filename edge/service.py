"""The long-lived service: providers, router, metrics and the nursery for background work.

`open_edge(config)` is entered once per worker, in the ASGI lifespan; everything that must
outlive a single request (connection pools, the L2 writer, health probes) lives here and
is closed when it exits. Requests never spawn tasks into this nursery.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import trio

from .cache import Cache
from .config import Config
from .logs import log
from .metrics import Metrics
from .pricing import PriceTable
from .providers import Provider, make_provider
from .ratelimit import RateLimiter
from .routing import Router
from .tracing import Tracing
from .transport import LeanTransport


def make_transport(max_connections: int) -> httpx.AsyncBaseTransport:
    """The upstream transport: edge's lean HTTP/1.1 client (measured 2-5x httpx's own;
    benchmarks/RESULTS.md), behind httpx's transport interface."""
    return LeanTransport(max_connections=max_connections)


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
        self.ready = False
        self.draining = False
        self.started_at = time.time()
        self.nursery: trio.Nursery | None = None
        log.add_secrets(p.api_key for p in config.providers)
        log.add_secrets(k.secret for k in config.auth.keys)

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            for provider in self.providers.values():
                await provider.aclose()
            await self.cache.aclose()


@asynccontextmanager
async def open_edge(config: Config, metrics: Metrics | None = None,
                    tracing: Tracing | None = None) -> AsyncIterator[Edge]:
    """Run the service for the duration of the block; background tasks stop on exit."""
    edge = Edge(config, metrics, tracing)
    try:
        async with trio.open_nursery() as nursery:
            edge.nursery = nursery
            await nursery.start(edge.cache.run)
            edge.ready = True
            try:
                yield edge
            finally:
                edge.ready = False
                nursery.cancel_scope.cancel()
    finally:
        await edge.aclose()
