"""Provider adapters by kind. Adding a provider: one module and one line in `KINDS`."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from ..config import ProviderConfig
from .anthropic import AnthropicProvider
from .azure import AzureProvider
from .base import ChunkStream, Provider
from .bedrock import BedrockProvider
from .gemini import GeminiProvider
from .openai import OpenAIProvider

KINDS: dict[str, type[Provider]] = {
    "openai": OpenAIProvider,
    "anthropic": AnthropicProvider,
    "gemini": GeminiProvider,
    "azure": AzureProvider,
    "bedrock": BedrockProvider,
}

__all__ = ["KINDS", "ChunkStream", "Provider", "make_provider"]


def make_provider(
    config: ProviderConfig,
    transport: httpx.AsyncBaseTransport,
    retry_on: frozenset[int],
    inject: Callable[[list[tuple[str, str]]], None] | None = None,
) -> Provider:
    """The adapter for `config.kind`; `inject` adds trace headers to every upstream request."""
    provider = KINDS[config.kind](config, transport, retry_on)
    provider.inject = inject
    return provider
