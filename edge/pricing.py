"""What an answer cost: the built-in price table, `[models.*]` overrides, and usage → USD.

Prices are USD per million tokens (input, output), as providers publish them. A model is
priced by its exact name, else by the longest table name it starts with, so dated
snapshots such as "gpt-4o-2024-08-06" are priced like "gpt-4o".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# (input, output) USD per million tokens, the models of the original README.
BUILTIN_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4": (30.00, 60.00),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-3.5-turbo": (0.50, 1.50),
    "claude-3-opus-20240229": (15.00, 75.00),
    "claude-3-sonnet-20240229": (3.00, 15.00),
    "claude-3-haiku-20240307": (0.25, 1.25),
    "claude-3-5-sonnet-20241022": (3.00, 15.00),
    "claude-3-5-sonnet-20240620": (3.00, 15.00),
    "claude-3-5-haiku-20241022": (0.80, 4.00),
    "claude-2.1": (8.00, 24.00),
    "claude-2.0": (8.00, 24.00),
    "text-embedding-3-small": (0.02, 0.0),
    "text-embedding-3-large": (0.13, 0.0),
    "text-embedding-ada-002": (0.10, 0.0),
}


class PriceTable:
    """Built-in prices overlaid with the config's `[models.*]` prices; lookups are memoised."""

    def __init__(self, overrides: Mapping[str, Any] = ()) -> None:  # type: ignore[assignment]
        prices = dict(BUILTIN_PRICES)
        for name, model in dict(overrides).items():
            inp = getattr(model, "input_per_mtok", None)
            out = getattr(model, "output_per_mtok", None)
            if inp is None and out is None:
                continue
            base = prices.get(name, (0.0, 0.0))
            prices[name] = (
                base[0] if inp is None else float(inp),
                base[1] if out is None else float(out),
            )
        self._prices = prices
        # Longest names first so "gpt-4o-mini-x" is priced as gpt-4o-mini, not gpt-4o.
        self._prefixes = sorted(prices, key=len, reverse=True)
        self._memo: dict[str, tuple[float, float] | None] = {}

    def names(self) -> list[str]:
        return list(self._prices)

    def price(self, model: str) -> tuple[float, float] | None:
        """(input, output) per million tokens, or None when the model is not priced."""
        if model in self._memo:
            return self._memo[model]
        found = self._prices.get(model)
        if found is None:
            for name in self._prefixes:
                if model.startswith(name):
                    found = self._prices[name]
                    break
        if len(self._memo) < 4096:  # model names come from clients: keep the memo bounded
            self._memo[model] = found
        return found

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for one answer; 0.0 when the model has no price."""
        price = self.price(model)
        if price is None:
            return 0.0
        # rounded so clients see 2.55e-06, not 2.5499999999999997e-06
        return round((prompt_tokens * price[0] + completion_tokens * price[1]) / 1_000_000, 10)

