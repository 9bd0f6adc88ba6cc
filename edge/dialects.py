"""The front doors: what differs between /v1/chat/completions, /v1/embeddings and /v1/messages.

The request lifecycle (cache, coalescing, attempts, disconnects) is the same for every
front door; what differs is how a request is validated, what a stream's items are and
how they are framed, and how a stored answer is replayed. A `Dialect` holds exactly
those differences, so the completion path is written once.

Asking one deployment for an answer is the same walk for every door and every provider
kind, decided in one place, `Dialect.native`: when the door's format is the provider's
(`Provider.codec`), the client's request is passed through untranslated (its raw bytes
when nothing changed) and the answer comes back as the upstream sent it; otherwise the
door's codec decodes the request into the hub, the provider's codec encodes it for the
upstream and decodes its answer (or its stream items) back into the hub, and the door's
codec encodes that for the client. N doors and M kinds are N + M codecs, never N x M
translators (docs/ARCHITECTURE.md).

Cache keys: each front door has its own key space (the endpoint is part of the key's
scope), because the stored answers are in that front door's format. The same question
asked through /v1/chat/completions and through /v1/messages is two entries.
"""

from __future__ import annotations

import dataclasses
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from . import hub, schema
from .answer_meta import with_metadata
from .anthropic_stream import MessageAssembler, replay_events
from .chat_stream import ChatAssembler, replay_chunks
from .codecs import chat, messages
from .errors import EdgeError, UpstreamError, render
from .providers import Provider
from .routing import Deployment
from .sse import DONE, frame, frame_event

if TYPE_CHECKING:
    from .exchange import Request
    from .service import Edge

Item = Any  # a stream item in the door's format (an OpenAI chunk, an Anthropic pair)


class EventSource:
    """An open upstream stream, in the door's items; `first` was read before committing."""

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
    operation = "chat"  # what the provider is asked for: "chat" (a completion), "embeddings"
    codec: Any = None  # the `edge.codecs` module of the door's format
    anthropic = False  # errors in Anthropic's format
    stream_end = b""
    # The door keeps conversation state (Responses): `bind` makes each request's own
    # dialect, and its `keep` dresses and stores every answer before it is sent.
    stateful = False

    @abstractmethod
    def validate(self, body: dict[str, Any]) -> str:
        """Check the request (400 naming the field); returns the requested model."""

    async def bind(self, req: Request, edge: Edge, body: dict[str, Any],
                   raw: bytes) -> tuple[Dialect, dict[str, Any]]:
        """A `stateful` door's dialect of this one request, and the body sent on."""
        return self, body

    async def keep(self, answer: dict[str, Any]) -> dict[str, Any]:
        """A `stateful` door's complete answer as sent, stored before it is sent."""
        return answer

    def native(self, provider: Provider) -> bool:
        """Pass the request through untranslated: the one place this is decided."""
        return provider.codec is self.codec

    async def fetch(self, dep: Deployment, body: dict[str, Any],
                    raw: bytes | None) -> dict[str, Any]:
        """One complete answer from `dep`, in this door's format."""
        provider = dep.provider
        if self.native(provider):
            return await provider.complete(self.operation, body, dep.model, raw)
        kind = provider.codec
        request = dataclasses.replace(self.codec.decode_request(body), stream=None)
        answer = await provider.complete(
            "chat", kind.encode_request(request, dep.model), dep.model, None)
        return self.encode_answer(kind.decode_answer(answer), dep.model)

    async def open(self, dep: Deployment, body: dict[str, Any],
                   raw: bytes | None) -> EventSource:
        """Open a stream from `dep` and read its first item (failover is possible until then)."""
        provider = dep.provider
        if self.native(provider):
            return await _first(
                await provider.open_stream(self.operation, body, dep.model, raw), dep)
        kind = provider.codec
        request = dataclasses.replace(self.codec.decode_request(body), stream=True)
        items = await provider.open_stream(
            "chat", kind.encode_request(request, dep.model), dep.model, None)
        return await _first(_Translated(items, kind.StreamDecoder(),
                                        self.stream_encoder(dep.model)), dep)

    @abstractmethod
    def encode_answer(self, answer: hub.Answer, model: str) -> dict[str, Any]:
        """A translated answer in this door's format."""

    @abstractmethod
    def stream_encoder(self, model: str) -> Any:
        """A fresh `codec.StreamEncoder` for one translated stream."""

    @abstractmethod
    def usage(self, answer: dict[str, Any]) -> tuple[int, int]:
        """(prompt, completion) tokens of a complete answer."""

    @abstractmethod
    def assembler(self, max_bytes: int) -> Any:
        """A fresh object that assembles stream items (`feed_item`) into a complete answer,
        keeping at most `max_bytes` (past that it only counts; see `edge.chat_stream`)."""

    def for_client(self, item: Item, wants_usage: bool) -> Item | None:
        """The item as this client gets it (None: not at all)."""
        return item

    def json_body(self, body: bytes, *, provider: str, tier: str | None, latency_ms: float,
                  cost: float) -> bytes:
        """A stored answer's body as this client gets it: with edge's "metadata" field."""
        return with_metadata(body, provider=provider, tier=tier, latency_ms=latency_ms,
                             cost=cost)

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

    codec = chat
    stream_end = DONE

    def __init__(self, endpoint: str, validate: Callable[[dict[str, Any]], str]) -> None:
        self.endpoint = self.operation = endpoint
        self._validate = validate

    def validate(self, body: dict[str, Any]) -> str:
        return self._validate(body)

    def native(self, provider: Provider) -> bool:
        # embeddings have no hub form: every adapter takes them in OpenAI's format
        return self.endpoint == "embeddings" or provider.codec is self.codec

    def encode_answer(self, answer: hub.Answer, model: str) -> dict[str, Any]:
        return chat.encode_answer(answer, model, created=int(time.time()))

    def stream_encoder(self, model: str) -> chat.StreamEncoder:
        # Usage is always asked for (cost, token metrics, tpm); `for_client` drops it
        # again for a client that did not ask for it.
        return chat.StreamEncoder(model, include_usage=True, created=int(time.time()))

    def usage(self, answer: dict[str, Any]) -> tuple[int, int]:
        usage = answer.get("usage")
        if not isinstance(usage, dict):
            return 0, 0
        return _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))

    def assembler(self, max_bytes: int) -> ChatAssembler:
        return ChatAssembler(max_bytes)

    def for_client(self, item: Item, wants_usage: bool) -> Item | None:
        if wants_usage or "usage" not in item:
            return item
        # edge asked upstream for usage (cost, tokens); this client did not, so it sees
        # neither the usage-only chunk nor the "usage" field
        if item["usage"] is not None and not item.get("choices"):
            return None
        return {k: v for k, v in item.items() if k != "usage"}

    def frame(self, item: Item) -> bytes:
        return frame(item)

    def error_frame(self, error: EdgeError) -> bytes:
        return b"data: " + render(error)[1] + b"\n\n"

    def replay(self, answer: dict[str, Any], wants_usage: bool) -> bytes:
        return b"".join(frame(c) for c in replay_chunks(answer, wants_usage)) + DONE


class AnthropicDialect(Dialect):
    """POST /v1/messages."""

    endpoint = "messages"
    codec = messages
    anthropic = True

    def validate(self, body: dict[str, Any]) -> str:
        return schema.validate_messages(body)

    def encode_answer(self, answer: hub.Answer, model: str) -> dict[str, Any]:
        return messages.encode_answer(answer, model)

    def stream_encoder(self, model: str) -> messages.StreamEncoder:
        # Random, as Anthropic's own ids look: a time stamp plus id() repeats whenever a
        # freed stream's address is reused within the same second.
        return messages.StreamEncoder(model, message_id="msg_" + os.urandom(12).hex())

    def usage(self, answer: dict[str, Any]) -> tuple[int, int]:
        return input_output_usage(answer)

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


class _Translated:
    """A provider's stream items seen as a door's: kind decoder into the hub, door encoder out."""

    def __init__(self, items: Any, decoder: Any, encoder: Any) -> None:
        self.items = items
        self.decoder = decoder
        self.encoder = encoder
        self.pending: list[Item] = []
        self.ended = False

    def __aiter__(self) -> _Translated:
        return self

    async def __anext__(self) -> Item:
        while not self.pending:
            if self.ended:
                raise StopAsyncIteration
            item = await anext(self.items, None)
            if item is None:
                self.ended = True
                events = self.decoder.finish()
            else:
                events = self.decoder.feed_item(item)
            encode = self.encoder.feed
            self.pending.extend(out for event in events for out in encode(event))
        return self.pending.pop(0)

    def ready(self) -> bool:
        # Not `items.ready()`: an item in hand may translate to nothing, and the next
        # one may then need a read; a relay holding frames across that read would delay them.
        return bool(self.pending) or self.ended

    async def aclose(self) -> None:
        await self.items.aclose()


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


def input_output_usage(answer: dict[str, Any]) -> tuple[int, int]:
    """(prompt, completion) tokens of an answer whose usage says `input_tokens` and
    `output_tokens` (Anthropic messages, OpenAI responses)."""
    usage = answer.get("usage")
    if not isinstance(usage, dict):
        return 0, 0
    return _int(usage.get("input_tokens")), _int(usage.get("output_tokens"))


def _int(value: Any) -> int:
    return value if type(value) is int else 0
