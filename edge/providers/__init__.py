"""Provider adapters by kind. Adding a provider: one module and one line in `KINDS`."""

from __future__ import annotations

import httpx

from ..config import ProviderConfig
from .anthropic import AnthropicProvider
from .base import ChunkStream, Provider
from .openai import OpenAIProvider

KINDS: dict[str, type[Provider]] = {"openai": OpenAIProvider, "anthropic": AnthropicProvider}

__all__ = ["KINDS", "ChunkStream", "Provider", "make_provider"]


def make_provider(
    config: ProviderConfig, transport: httpx.AsyncBaseTransport, retry_on: frozenset[int]
) -> Provider:
    return KINDS[config.kind](config, transport, retry_on)
