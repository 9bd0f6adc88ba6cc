"""Which deployments may answer a model name, in which order (SPEC §3 "Candidates").

Candidates for a name: the deployments of a model group, else a `provider/model` pin,
else every provider whose `models` globs match (name unchanged); then the candidates of
each name in `fallbacks`, in order. Resolution is pure config logic, memoised per name.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from .config import Config
from .pricing import PriceTable
from .providers import Provider

_MEMO_LIMIT = 4096  # model names come from clients: bound the memo


@dataclass(frozen=True, slots=True)
class Deployment:
    """One provider serving one upstream model name."""

    provider: Provider
    model: str

    @property
    def key(self) -> str:
        return f"{self.provider.name}/{self.model}"


class Router:
    def __init__(self, config: Config, providers: dict[str, Provider], prices: PriceTable) -> None:
        self._config = config
        self._providers = providers
        self._prices = prices
        self._memo: dict[str, tuple[Deployment, ...]] = {}

    def candidates(self, name: str) -> tuple[Deployment, ...]:
        """Every deployment that may answer `name`, primary ones first, then fallbacks."""
        found = self._memo.get(name)
        if found is not None:
            return found
        ordered: list[Deployment] = []
        seen: set[tuple[str, str]] = set()
        names = [name]
        model_cfg = self._config.models.get(name)
        if model_cfg is not None:
            names.extend(model_cfg.fallbacks)
        for each in names:
            for dep in self._deployments(each):
                ident = (dep.provider.name, dep.model)
                if ident not in seen:
                    seen.add(ident)
                    ordered.append(dep)
        result = tuple(ordered)
        if len(self._memo) < _MEMO_LIMIT:
            self._memo[name] = result
        return result

    def _deployments(self, name: str) -> list[Deployment]:
        group = self._config.models.get(name)
        if group is not None and group.deployments:
            out = []
            for item in group.deployments:
                provider_name, _, model = item.partition("/")
                provider = self._providers.get(provider_name)
                if provider is not None:
                    out.append(Deployment(provider, model))
            return out
        provider_name, sep, model = name.partition("/")
        if sep and provider_name in self._providers and model:
            return [Deployment(self._providers[provider_name], model)]
        return [
            Deployment(p, name)
            for p in self._providers.values()
            if any(fnmatchcase(name, pattern) for pattern in p.config.models)
        ]

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
