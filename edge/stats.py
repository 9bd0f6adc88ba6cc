"""What the dashboard shows: `/admin/stats` and `/admin/providers`, computed, never guessed.

Traffic, cache tiers, latency percentiles, error statuses and money come from the usage
ledger (`usage_summary`), so they hold across restarts with a durable store and cover
exactly the requests the ledger records (those that reached routing or the cache).
Errors by type come from this process's `llm_edge_request_errors_total`: a counter
counts since the process started, so for a window the report subtracts the newest value
it saw at or before the window's start (it remembers one reading per `_SPACING_S` at each
report, and zero at start-up) and says in `since` from when its count really runs.

Providers come from the live router: circuit state, key pool availability and the
latency EWMA of each deployment, with upstream errors by kind. Nothing here reads a
secret: a key pool is reported by counts only.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from .admin import rfc3339
from .errors import BadRequest
from .fastpath import BREAKER_CLOSED, BREAKER_OPEN
from .metrics import Metrics
from .providers import Provider
from .routing import Router
from .store import StoreService

__all__ = ["WINDOWS", "Stats"]

#: window name -> (length, chart bucket), seconds: 30 points on each chart, 48 for a day
WINDOWS: dict[str, tuple[float, float]] = {"5m": (300.0, 10.0), "1h": (3600.0, 120.0),
                                           "24h": (86400.0, 1800.0)}
_SPACING_S = 5.0
_KEEP_S = max(length for length, _ in WINDOWS.values()) + 60.0
_STATES = {BREAKER_CLOSED: "closed", BREAKER_OPEN: "open"}


def _counts(metric: Any, label: str) -> dict[str, float]:
    """A labelled counter's current values by one label (prometheus-client's samples)."""
    out: dict[str, float] = {}
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = sample.labels[label]
                out[key] = out.get(key, 0.0) + sample.value
    return out


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


class Stats:
    """The two dashboard reports over the running service's parts.

    Args:
        store: the ledger.
        metrics: this process's counters.
        router: deployments and their breakers.
        providers: the configured providers by name (their key pools).
        clock: wall-clock seconds (the ledger's time).
    """

    def __init__(self, store: StoreService, metrics: Metrics, router: Router,
                 providers: Mapping[str, Provider],
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.metrics = metrics
        self.router = router
        self.providers = providers
        self.clock = clock
        self.started = clock()
        self._readings: deque[tuple[float, dict[str, float]]] = deque([(self.started, {})])

    async def report(self, query_string: bytes) -> dict[str, Any]:
        """GET /admin/stats?window=5m|1h|24h (default 5m)."""
        query = dict(parse_qsl(query_string.decode("latin-1"), keep_blank_values=True))
        name = query.get("window") or "5m"
        if name not in WINDOWS:
            raise BadRequest(f"Invalid window: {name[:32]!r}; choose from "
                             f"{', '.join(WINDOWS)}.", param="window")
        length, bucket_s = WINDOWS[name]
        now = self.clock()
        # Buckets end at a multiple of bucket_s, so a chart does not shift every poll.
        until = (math.floor(now / bucket_s) + 1) * bucket_s
        since = until - length
        summary = await self.store.usage_summary(since, until, bucket_s)
        by_bucket = {b["bucket"]: b for b in summary.buckets}
        zero = {"requests": 0, "hits_l1": 0, "hits_l2": 0, "errors": 0,
                "cost_usd": 0.0, "saved_usd": 0.0}
        series = []
        for n in range(round(length / bucket_s)):
            found = dict(by_bucket.get(n, zero))
            found.pop("bucket", None)
            series.append({"t": rfc3339(since + n * bucket_s), **found})
        requests = sum(b["requests"] for b in summary.buckets)
        l1 = sum(b["hits_l1"] for b in summary.buckets)
        l2 = sum(b["hits_l2"] for b in summary.buckets)
        by_type, counted_since = self._errors_since(now, now - length)
        return {
            "window": name,
            "since": rfc3339(since),
            "until": rfc3339(until),
            "bucket_s": bucket_s,
            "requests": requests,
            # per second of the window that has passed (the last bucket is still running)
            "requests_per_s": requests / (now - since),
            "cache": {"hits_l1": l1, "hits_l2": l2, "misses": requests - l1 - l2,
                      "hit_rate_l1": _ratio(l1, requests), "hit_rate_l2": _ratio(l2, requests),
                      "hit_rate": _ratio(l1 + l2, requests)},
            "latency_ms": {"p50": summary.p50_ms, "p99": summary.p99_ms},
            "errors": {
                "total": sum(b["errors"] for b in summary.buckets),
                "by_status": {str(s): n for s, n in sorted(summary.errors_by_status.items())},
                "by_type": by_type,
                "by_type_since": rfc3339(counted_since),
            },
            "cost_usd": sum(b["cost_usd"] for b in summary.buckets),
            "saved_usd": sum(b["saved_usd"] for b in summary.buckets),
            "series": series,
            "uptime_s": now - self.started,
        }

    def _errors_since(self, now: float, start: float) -> tuple[dict[str, int], float]:
        """Errors by type counted after `start` (or after the newest reading before it)."""
        current = _counts(self.metrics.errors, "type")
        readings = self._readings
        if now - readings[-1][0] >= _SPACING_S:
            readings.append((now, current))
        while len(readings) > 1 and readings[1][0] <= now - _KEEP_S:
            readings.popleft()
        base_time, base = readings[0]
        for at, values in readings:
            if at > start:
                break
            base_time, base = at, values
        delta = {k: round(v - base.get(k, 0.0)) for k, v in sorted(current.items())}
        return {k: n for k, n in delta.items() if n}, base_time

    def providers_report(self) -> dict[str, Any]:
        """GET /admin/providers: each provider, then each deployment the router knows."""
        now = time.monotonic()
        errors: dict[str, dict[str, int]] = {}
        for family in self.metrics.provider_errors.collect():
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.value:
                    kinds = errors.setdefault(sample.labels["provider"], {})
                    kinds[sample.labels["type"]] = round(sample.value)
        providers = []
        for name, provider in self.providers.items():
            breaker = self.router.breakers[name]
            state = breaker.state(now)
            last = breaker.last_failure_at
            providers.append({
                "name": name,
                "kind": provider.config.kind,
                "models": list(provider.config.models),
                "healthy": self.router.healthy(name),
                "circuit": {
                    "state": _STATES.get(state, "half_open"),
                    "consecutive_failures": breaker.consecutive,
                    "retry_after_s": breaker.retry_after(now) if state != BREAKER_CLOSED
                    else None,
                },
                "keys": {"total": len(provider.keys.keys),
                         "available": provider.keys.available()},
                "errors": errors.get(name, {}),
                "last_error_s_ago": None if math.isinf(last) else now - last,
            })
        deployments = []
        for dep in self.router.known_deployments():
            ewma = dep.stats.ewma
            deployments.append({
                "provider": dep.provider.name,
                "model": dep.model,
                "latency_ewma_ms": None if math.isnan(ewma) else ewma * 1000.0,
                "samples": dep.stats.samples,
                "inflight": dep.stats.inflight,
            })
        return {"data": providers, "deployments": deployments}
