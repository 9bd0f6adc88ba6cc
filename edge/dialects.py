"""The two front doors' formats: OpenAI chat/embeddings and Anthropic messages.

The request lifecycle (cache, coalescing, attempts, disconnects) is the same for every
front door; what differs is how a request is validated, how one deployment is asked for
an answer (natively, or translated for a provider of the other kind), what a stream's
items are and how they are framed, and how a stored answer is replayed. A `Dialect`
holds exactly those differences, so `app.py` is written once.

Cache keys: each front door has its own key space (the endpoint is part of the key's
scope), because the stored answers are in that front door's format. The same question
asked through /v1/chat/completions and through /v1/messages is two entries.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import trio

from . import schema
from .anthropic_stream import MessageAssembler, replay_events
from .chat_stream import ChatAssembler, replay_chunks
from .errors import EdgeError, UpstreamError, render
from .providers import ChunkStream
from .providers.anthropic import AnthropicProvider
from .providers.anthropic_translate import (
    OpenAIStreamToAnthropic,
    anthropic_request_to_openai,
    openai_response_to_anthropic,
)
from .routing import Deployment
from .sse import DONE, frame, frame_event

Item = Any  # a stream item: an OpenAI chunk dict, or an Anthropic (event, data) pair


class EventSource:
    """An open upstream stream, in the dialect's items; `first` was read before committing."""

    def __init__(self, items: Any, first: Item) -> None:
        self.items = items
        self.first = first

    async def next(self) -> Item | None:
        return await anext(self.items, None)

    def ready(self) -> bool:
        """True when `next` will answer without waiting for the upstream."""
        ready: bool = self.items.ready()
        return ready

    async def aclose(self) -> None:
        await self.items.aclose()


class Dialect(ABC):
    """What differs between front doors; see the module docstring."""

    endpoint = ""
    anthropic = False  # errors in Anthropic's format
    stream_end = b""

    @abstractmethod
    def validate(self, body: dict[str, Any]) -> str:
        """Check the request (400 naming the field); returns the requested model."""

    @abstractmethod
    async def fetch(self, dep: Deployment, body: dict[str, Any], raw: bytes) -> dict[str, Any]:
        """One complete answer from `dep`, in this dialect's format."""

    @abstractmethod
    async def open(self, dep: Deployment, body: dict[str, Any], raw: bytes) -> EventSource:
        """Open a stream from `dep` and read its first item."""

    @abstractmethod
    def usage(self, answer: dict[str, Any]) -> tuple[int, int]:
        """(prompt, completion) tokens of a complete answer."""

    @abstractmethod
    def assembler(self, max_bytes: int) -> Any:
        """A fresh object that assembles stream items into a complete answer, keeping at
        most `max_bytes` (past that it only counts; see `edge.chat_stream`)."""

    @abstractmethod
    def frame(self, item: Item) -> bytes:
        """One stream item as SSE bytes."""

    @abstractmethod
    def error_frame(self, error: EdgeError) -> bytes:
        """The event that ends a stream which failed after its first byte."""

    @abstractmethod
    def replay(self, answer: dict[str, Any], wants_usage: bool) -> bytes:
        """A stored answer as the whole SSE body a streaming client expects."""


class OpenAIDialect(Dialect):
    """POST /v1/chat/completions and /v1/embeddings."""

    stream_end = DONE

    def __init__(self, endpoint: str, validate: Callable[[dict[str, Any]], str]) -> None:
        self.endpoint = endpoint
        self._validate = validate

    def validate(self, body: dict[str, Any]) -> str:
        return self._validate(body)

    async def fetch(self, dep: Deployment, body: dict[str, Any], raw: bytes) -> dict[str, Any]:
        return await dep.provider.complete(self.endpoint, body, dep.model, raw)

    async def open(self, dep: Deployment, body: dict[str, Any], raw: bytes) -> EventSource:
        stream = await dep.provider.open_stream(self.endpoint, body, dep.model, raw)
        return await _first(stream, dep)

    def usage(self, answer: dict[str, Any]) -> tuple[int, int]:
        usage = answer.get("usage")
        if not isinstance(usage, dict):
            return 0, 0
        return _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))

    def assembler(self, max_bytes: int) -> ChatAssembler:
        return ChatAssembler(max_bytes)

    def frame(self, item: Item) -> bytes:
        return frame(item)

    def error_frame(self, error: EdgeError) -> bytes:
        return b"data: " + render(error)[1] + b"\n\n"

    def replay(self, answer: dict[str, Any], wants_usage: bool) -> bytes:
        return b"".join(frame(c) for c in replay_chunks(answer, wants_usage)) + DONE


class AnthropicDialect(Dialect):
    """POST /v1/messages: native to Anthropic providers, translated for OpenAI-kind ones."""

    endpoint = "messages"
    anthropic = True

    def validate(self, body: dict[str, Any]) -> str:
        return schema.validate_messages(body)

    async def fetch(self, dep: Deployment, body: dict[str, Any], raw: bytes) -> dict[str, Any]:
        provider = dep.provider
        if isinstance(provider, AnthropicProvider):
            return await provider.messages(body, dep.model, raw)
        request = anthropic_request_to_openai(body, dep.model)
        request.pop("stream", None)
        request.pop("stream_options", None)
        answer = await provider.complete("chat", request, dep.model, None)
        return openai_response_to_anthropic(answer, dep.model)

    async def open(self, dep: Deployment, body: dict[str, Any], raw: bytes) -> EventSource:
        provider = dep.provider
        if isinstance(provider, AnthropicProvider):
            native = await provider.open_messages_stream(body, dep.model, raw)
            return await _first(native, dep)
        request = anthropic_request_to_openai({**body, "stream": True}, dep.model)
        chunks = await provider.open_stream("chat", request, dep.model, None)
        # Random, as Anthropic's own ids look: a time stamp plus id() repeats whenever a
        # freed stream's address is reused within the same second.
        message_id = "msg_" + os.urandom(12).hex()
        return await _first(_TranslatedEvents(chunks, OpenAIStreamToAnthropic(
            dep.model, message_id=message_id)), dep)

    def usage(self, answer: dict[str, Any]) -> tuple[int, int]:
        usage = answer.get("usage")
        if not isinstance(usage, dict):
            return 0, 0
        return _int(usage.get("input_tokens")), _int(usage.get("output_tokens"))

    def assembler(self, max_bytes: int) -> MessageAssembler:
        return MessageAssembler(max_bytes)

    def frame(self, item: Item) -> bytes:
        name, data = item
        return frame_event(name, data)

    def error_frame(self, error: EdgeError) -> bytes:
        _, body = render(error, anthropic=True)
        return b"event: error\ndata: " + body + b"\n\n"

    def replay(self, answer: dict[str, Any], wants_usage: bool) -> bytes:
        return b"".join(frame_event(name, data) for name, data in replay_events(answer))


class _TranslatedEvents:
    """An OpenAI chunk stream seen as Anthropic (event, data) pairs."""

    def __init__(self, chunks: ChunkStream, translate: OpenAIStreamToAnthropic) -> None:
        self.chunks = chunks
        self.translate = translate
        self.pending: list[tuple[str, dict[str, Any]]] = []
        self.ended = False

    def __aiter__(self) -> _TranslatedEvents:
        return self

    async def __anext__(self) -> tuple[str, dict[str, Any]]:
        while not self.pending:
            if self.ended:
                raise StopAsyncIteration
            chunk = await anext(self.chunks, None)
            if chunk is None:
                self.ended = True
                self.pending.extend(self.translate.finish())
            else:
                self.pending.extend(self.translate.feed(chunk))
        return self.pending.pop(0)

    def ready(self) -> bool:
        # Not `chunks.ready()`: a chunk in hand may translate to no event, and the next
        # one may then need a read; a relay holding frames across that read would delay them.
        return bool(self.pending) or self.ended

    async def aclose(self) -> None:
        await self.chunks.aclose()


async def _first(items: Any, dep: Deployment) -> EventSource:
    """Read the first item before anything reaches the client, so failover is still possible."""
    try:
        first = await anext(items)
    except StopAsyncIteration:
        await items.aclose()
        raise UpstreamError(f"provider {dep.provider.name} sent an empty stream") from None
    except BaseException:
        await _close_shielded(items)
        raise
    return EventSource(items, first)


async def _close_shielded(items: Any) -> None:
    with trio.CancelScope(shield=True):
        await items.aclose()


def _int(value: Any) -> int:
    return value if type(value) is int else 0
