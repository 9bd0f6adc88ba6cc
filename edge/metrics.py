"""Prometheus metrics with the names SPEC §5 fixes, in one registry.

Label values are bounded in number and in size: provider names and model names come from
the config (a client's model string is reported only when it resolved to a configured
deployment, and a glob such as "gpt-*" lets at most MAX_MODEL_LABELS of them through),
error types from our own error classes, and any value over MAX_LABEL_BYTES is reported
as "other". Nothing per request (ids, prompts) is a label.

Several workers (`server.workers > 1`) each count in their own process; prometheus-client's
multiprocess mode keeps every worker's values in mmap files in one directory, and a scrape
of any worker merges them (`MultiProcessCollector`). The mode is chosen when
prometheus_client is imported, from PROMETHEUS_MULTIPROC_DIR, so `edge.server` puts that
variable in the workers' environment before they start; `Metrics(multiprocess_dir=...)`
then only checks that it really is in effect and renders the merged view.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

from . import fastpath
from ._version import __version__
from .errors import utf8_len

# 5 ms .. 120 s: LLM answers range from cached (ms) to long generations (minutes).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0,
                   60.0, 120.0)
CACHE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Model names can come from clients (a glob such as "gpt-*" admits any suffix): past this
# many distinct values, further ones are reported as "other".
MAX_MODEL_LABELS = 200
# Key names come from the config and the admin API (SPEC §7): past this many, "other".
MAX_KEY_LABELS = 1000
# Every scrape repeats each label value once per series (a histogram: once per bucket).
MAX_LABEL_BYTES = 128
# Read by prometheus_client at import time; edge.server sets it for worker processes.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class Metrics:
    """Every metric edge exports; `render()` is the /metrics body.

    Args:
        registry: where the metrics register; a fresh one by default, so that several
            apps in one process (tests) do not collide.
        multiprocess_dir: the directory all workers of one edge instance write to; /metrics
            then shows the sum over the workers. It must be the PROMETHEUS_MULTIPROC_DIR this
            process had when prometheus_client was imported.

    Raises:
        RuntimeError: `multiprocess_dir` is given but prometheus-client is not writing there.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *,
                 multiprocess_dir: str | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.multiprocess_dir = multiprocess_dir
        self._scraped = self.registry
        if multiprocess_dir is not None:
            _check_multiprocess(multiprocess_dir)
            self._scraped = CollectorRegistry(auto_describe=False)
            MultiProcessCollector(  # type: ignore[no-untyped-call]
                self._scraped, path=multiprocess_dir)
        r = self.registry
        self.requests = Counter(
            "llm_edge_requests", "Requests answered, by endpoint and status class",
            ["endpoint", "status"], registry=r)
        self.duration = Histogram(
            "llm_edge_request_duration_seconds", "Time from request to last byte",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.errors = Counter(
            "llm_edge_request_errors", "Requests that ended in an error, by error type",
            ["type"], registry=r)
        self.cache_hits = Counter(
            "llm_edge_cache_hits", "Answers served from the cache, by tier", ["tier"], registry=r)
        self.cache_misses = Counter("llm_edge_cache_misses", "Cache lookups that missed",
                                    registry=r)
        self.cache_latency = Histogram(
            "llm_edge_cache_latency_seconds", "Time spent looking up the cache, by tier",
            ["tier"], buckets=CACHE_BUCKETS, registry=r)
        self.provider_latency = Histogram(
            "llm_edge_provider_latency_seconds", "Upstream time to response headers",
            ["provider", "model"], buckets=LATENCY_BUCKETS, registry=r)
        self.provider_errors = Counter(
            "llm_edge_provider_errors", "Failed upstream attempts", ["provider", "type"],
            registry=r)
        self.cost = Counter("llm_edge_cost_usd", "USD spent upstream", ["provider", "model"],
                            registry=r)
        self.cost_saved = Counter("llm_edge_cost_saved_usd", "USD the cache saved",
                                  ["provider", "model"], registry=r)
        self.tokens = Counter("llm_edge_tokens_used", "Tokens used (prompt + completion)",
                              ["provider", "model"], registry=r)
        self.tokens_prompt = Counter("llm_edge_tokens_prompt", "Prompt tokens",
                                     ["provider", "model"], registry=r)
        self.tokens_completion = Counter("llm_edge_tokens_completion", "Completion tokens",
                                         ["provider", "model"], registry=r)
        self.tokens_estimated = Counter(
            "llm_edge_tokens_estimated", "Of the tokens used, those edge estimated (~4 bytes "
            "of text each) because a stream ended before the upstream reported its usage",
            ["provider", "model"], registry=r)
        self.inflight = Gauge("llm_edge_inflight_requests", "Requests being answered",
                              registry=r, multiprocess_mode="livesum")
        self.failovers = Counter("llm_edge_failovers", "Attempts moved to another candidate",
                                 ["provider"], registry=r)
        self.hedges = Counter("llm_edge_hedges", "Hedged attempts started", ["provider"],
                              registry=r)
        self.upstream_key_rests = Counter(
            "llm_edge_upstream_key_rests", "API keys of a provider's pool sent to rest by a 429",
            ["provider"], registry=r)
        # livemax: open if open in any live worker; a dead worker's last value must not stick.
        self.circuit_open = Gauge("llm_edge_circuit_open", "1 while a provider's circuit is open",
                                  ["provider"], registry=r, multiprocess_mode="livemax")
        self.build_info = Gauge("llm_edge_build_info",
                                "1, labelled with the version and which hot path is loaded",
                                ["version", "fastpath"], registry=r, multiprocess_mode="livemax")
        self.build_info.labels(__version__, fastpath.KIND).set(1)
        self.l2_dropped_writes = Counter("llm_edge_cache_l2_dropped_writes",
                                         "L2 writes dropped because the queue was full or L2 down",
                                         registry=r)
        # Governance (SPEC §7).
        self.budget_refusals = Counter("llm_edge_budget_refusals",
                                       "Requests refused because the key's budget is spent",
                                       registry=r)
        self.usage_rows_dropped = Counter("llm_edge_usage_rows_dropped",
                                          "Ledger rows lost: the store queue was full or the "
                                          "store stayed down past shutdown", registry=r)
        self.key_spend = Gauge("llm_edge_key_spend_usd",
                               "USD a key spent in its current budget window", ["key"],
                               registry=r, multiprocess_mode="livemax")

        self._children: dict[tuple[Any, ...], Any] = {}
        self._models: set[str] = set()
        self._keys: set[str] = set()

    def child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, memoised: the request path calls this many times."""
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*map(bounded, labels))
        return found

    def prime(self, providers: Iterable[str]) -> None:
        """Zero-valued series for each configured provider.

        A labelled series appears only once something touched it, so without this a healthy
        fleet shows "no data" for circuits, failovers and hedges (and multiprocess mode leaves
        the names out of /metrics altogether) until the first incident.
        """
        for provider in providers:
            self.child(self.circuit_open, provider).set(0)
            self.child(self.failovers, provider)
            self.child(self.hedges, provider)
            self.child(self.upstream_key_rests, provider)

    def model_label(self, model: str) -> str:
        """`model`, or "other" once MAX_MODEL_LABELS names are taken or when it is too long."""
        return _admit(self._models, MAX_MODEL_LABELS, model)

    def key_label(self, key: str) -> str:
        """`key`, or "other" once MAX_KEY_LABELS names are taken or when it is too long."""
        return _admit(self._keys, MAX_KEY_LABELS, key)

    def key_spend_window(self, spend: Mapping[str, float]) -> None:
        """Set `llm_edge_key_spend_usd` from each key's spend in its current window; keys
        past the label cap are summed into `other`."""
        totals: dict[str, float] = {}
        for name, usd in spend.items():
            label = self.key_label(name)
            totals[label] = totals.get(label, 0.0) + usd
        for label, usd in totals.items():
            self.child(self.key_spend, label).set(usd)

    def usage(self, provider: str, model: str, prompt: int, completion: int, cost: float) -> None:
        model = self.model_label(model)
        if prompt or completion:
            self.child(self.tokens, provider, model).inc(prompt + completion)
            self.child(self.tokens_prompt, provider, model).inc(prompt)
            self.child(self.tokens_completion, provider, model).inc(completion)
        if cost:
            self.child(self.cost, provider, model).inc(cost)

    def render(self) -> bytes:
        """The Prometheus text exposition: this process's values, or every worker's summed."""
        return generate_latest(self._scraped)


def _admit(seen: set[str], cap: int, value: str) -> str:
    """`value` if it is (or can join) the `cap` label values already in use, else "other"."""
    if value in seen:
        return value
    if len(seen) < cap and utf8_len(value) <= MAX_LABEL_BYTES:
        seen.add(value)
        return value
    return "other"


def bounded(value: str) -> str:
    """A label value as exported: "other" in place of one over MAX_LABEL_BYTES."""
    return value if utf8_len(value) <= MAX_LABEL_BYTES else "other"


def _check_multiprocess(directory: str) -> None:
    """Fail loudly if values would go to memory (or elsewhere) while /metrics reads `directory`."""
    if not getattr(values.ValueClass, "_multiprocess", False):
        raise RuntimeError(
            f"{MULTIPROC_ENV} was not set when prometheus_client was imported in this process; "
            "start workers with it in their environment (see edge.server)")
    current = os.environ.get(MULTIPROC_ENV)
    if current is None or os.path.realpath(current) != os.path.realpath(directory):
        raise RuntimeError(f"{MULTIPROC_ENV} is {current!r}, not the metrics directory "
                           f"{directory!r} this worker was given")
    if not os.path.isdir(directory):
        raise RuntimeError(f"the metrics directory {directory!r} does not exist")
