"""Which deployments may answer a model name, and in which order (SPEC §3).

Candidates for a name: the deployments of a model group, else a `provider/model` pin,
else every provider whose `models` globs match (name unchanged); then the candidates of
each name in `fallbacks`, in order. Resolution is pure config logic, memoised per name;
ordering is per request, by the strategy, through `fastpath.rank` (compiled), which also
skips deployments whose circuit breaker is open; a deployment whose provider has every
API key resting or at its limit (`edge.keypool`) is skipped the same way.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from .config import Config
from .errors import NotFound, ServiceUnavailable, clip
from .fastpath import (
    STRATEGY_COST,
    STRATEGY_FAILOVER,
    STRATEGY_LATENCY,
    STRATEGY_LEAST_BUSY,
    STRATEGY_MODEL,
    Breaker,
    DeploymentStats,
    rank,
    retry_after_all,
)
from .pricing import PriceTable
from .providers import Provider
from .schema import prompt_chars as prompt_size

_MEMO_LIMIT = 4096  # model names come from clients: bound the memo
_STRATEGIES = {"model": STRATEGY_MODEL, "failover": STRATEGY_FAILOVER, "cost": STRATEGY_COST,
               "latency": STRATEGY_LATENCY, "least_busy": STRATEGY_LEAST_BUSY}
_NAN = math.nan


@dataclass(frozen=True, slots=True)
class Deployment:
    """One provider serving one upstream model name, with its live statistics."""

    provider: Provider
    model: str
    stats: DeploymentStats
    breaker: Breaker


Group = tuple[Deployment, ...]


class Router:
    def __init__(self, config: Config, providers: dict[str, Provider], prices: PriceTable) -> None:
        self._config = config
        self._providers = providers
        self._prices = prices
        self.strategy = _STRATEGIES[config.routing.strategy]
        self.cooldown_s = config.routing.breaker_cooldown_s
        self.breakers = {
            name: Breaker(config.routing.breaker_failures, config.routing.breaker_cooldown_s)
            for name in providers
        }
        self._stats: dict[tuple[str, str], DeploymentStats] = {}
        self._memo: dict[str, tuple[Group, ...]] = {}

    # -- resolution (config logic, memoised) ------------------------------------------

    def groups(self, name: str) -> tuple[Group, ...]:
        """The deployments for `name`, then for each of its fallbacks: one group per name."""
        found = self._memo.get(name)
        if found is not None:
            return found
        names = [name]
        model_cfg = self._config.models.get(name)
        if model_cfg is not None:
            names.extend(model_cfg.fallbacks)
        seen: set[tuple[str, str]] = set()
        groups = []
        for each in names:
            group = []
            for provider, model in self._deployments(each):
                if (provider.name, model) not in seen:
                    seen.add((provider.name, model))
                    group.append(self._deployment(provider, model))
            if group:
                groups.append(tuple(group))
        result = tuple(groups)
        if len(self._memo) < _MEMO_LIMIT:
            self._memo[name] = result
        return result

    def _deployment(self, provider: Provider, model: str) -> Deployment:
        stats = self._stats.get((provider.name, model))
        if stats is None:
            price = self._prices.price(model)
            stats = DeploymentStats(*(price if price is not None else (_NAN, _NAN)))
            if len(self._stats) < _MEMO_LIMIT:
                self._stats[(provider.name, model)] = stats
        return Deployment(provider, model, stats, self.breakers[provider.name])

    def _deployments(self, name: str) -> list[tuple[Provider, str]]:
        group = self._config.models.get(name)
        if group is not None and group.deployments:
            out = []
            for item in group.deployments:
                provider_name, _, model = item.partition("/")
                provider = self._providers.get(provider_name)
                if provider is not None:
                    out.append((provider, model))
            return out
        provider_name, sep, model = name.partition("/")
        if sep and provider_name in self._providers and model:
            return [(self._providers[provider_name], model)]
        return [
            (p, name)
            for p in self._providers.values()
            if any(fnmatchcase(name, pattern) for pattern in p.config.models)
        ]

    # -- ordering (per request) -------------------------------------------------------

    def plan(self, name: str, body: dict[str, Any]) -> list[Deployment]:
        """The deployments to try for this request, in order.

        Raises NotFound when no provider serves `name`, and ServiceUnavailable (with
        Retry-After) when every candidate's circuit is open or key pool exhausted.
        """
        groups = self.groups(name)
        if not groups:
            raise NotFound(f"No configured provider serves the model '{clip(name)}'.",
                           param="model", code="model_not_found")
        now = time.monotonic()
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or 1024
        if type(max_tokens) is not int:
            max_tokens = 1024
        max_tokens = min(max(max_tokens, 1), 100_000_000)  # rank takes a C integer
        prompt_chars = prompt_size(body) if self.strategy == STRATEGY_COST else 0
        ordered: list[Deployment] = []
        for group in groups:
            if len(group) == 1 and self.strategy != STRATEGY_FAILOVER:
                only = group[0]
                if not only.breaker.blocked(now) and only.provider.keys.usable():
                    ordered.append(only)
                continue
            order = rank(self.strategy, [d.stats for d in group], [d.breaker for d in group],
                         now, prompt_chars, max_tokens, self.cooldown_s)
            ordered.extend(group[i] for i in order if group[i].provider.keys.usable())
        if not ordered:
            raise unavailable([d for g in groups for d in g], f"'{clip(name)}'")
        return ordered

    def healthy(self, provider: str) -> bool:
        """False while the provider's circuit is open or every key of it rests (it is
        skipped by every strategy)."""
        return (not self.breakers[provider].blocked(time.monotonic())
                and self._providers[provider].keys.usable())

    def known_deployments(self) -> list[Deployment]:
        """Every deployment of a listed model, and every other one a request has used: what
        the dashboard shows (read off the request path; ordered by provider, model)."""
        for name, _ in self.model_list():
            self.groups(name)
        return [self._deployment(self._providers[provider], model)
                for provider, model in sorted(self._stats)]

    def model_list(self) -> list[tuple[str, str]]:
        """(model id, owner) pairs for GET /v1/models, in a stable order without repeats."""
        out: dict[str, str] = {}
        for name, model in self._config.models.items():
            owner = "edge"
            if model.deployments:
                owner = model.deployments[0].partition("/")[0]
            out.setdefault(name, owner)
        for provider in self._providers.values():
            for pattern in provider.config.models:
                if not any(ch in pattern for ch in "*?["):
                    out.setdefault(pattern, provider.name)
            for priced in self._prices.names():
                if any(fnmatchcase(priced, pattern) for pattern in provider.config.models):
                    out.setdefault(priced, provider.name)
        return list(out.items())


def unavailable(deployments: Sequence[Deployment], what: str) -> ServiceUnavailable:
    """The 503 when none of `deployments` may be tried now: each waits for its circuit to
    half-open and for a key of its pool to be free; Retry-After is the soonest of those."""
    now = time.monotonic()
    waits = [max(retry_after_all([d.breaker], now), d.provider.keys.retry_after())
             for d in deployments]
    wait = min(waits, default=1.0)
    if all(d.breaker.blocked(now) for d in deployments):
        return ServiceUnavailable(
            f"Every provider for {what} is failing (circuit open); retry later.",
            code="circuit_open", retry_after=max(wait, 1.0))
    return ServiceUnavailable(
        f"Every provider for {what} is failing or has every API key resting after a 429 "
        "or at its own limit; retry later.", code="upstream_keys_resting",
        retry_after=max(wait, 1.0))
