"""The `anthropic` kind: Anthropic's Messages API, for OpenAI-format and native callers.

Two doors share one connection pool:

* `complete` / `open_stream` serve OpenAI-format chat: the request is translated to a
  Messages request and the answer (JSON or SSE) back to OpenAI format, with the pure
  functions of `anthropic_translate`;
* `messages` / `open_messages_stream` serve the `/v1/messages` front door: Anthropic
  format in and out, forwarded as sent (only the model may be rewritten).

Anthropic's error body is ``{"type": "error", "error": {"type", "message"}}``, which the
base `status_error` already reads; this kind only adds that 529 ("overloaded") means what
503 means elsewhere, so it is retried whenever 503 is.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import httpx
import orjson

from ..config import ProviderConfig
from ..errors import UpstreamError, UpstreamStatus
from ..sse import SSEError
from .anthropic_translate import (
    AnthropicStreamToOpenAI,
    anthropic_response_to_openai,
    openai_request_to_anthropic,
)
from .base import ChunkStream, Decoder, Provider

__all__ = ["AnthropicProvider", "NativeEventStream"]

OVERLOADED = 529  # Anthropic's own status for "try again shortly"


class AnthropicProvider(Provider):
    """Anthropic's Messages API behind both doors; see the module docstring."""

    kind = "anthropic"

    def __init__(
        self,
        config: ProviderConfig,
        transport: httpx.AsyncBaseTransport,
        retry_on: frozenset[int],
    ) -> None:
        super().__init__(config, transport, retry_on)
        self._url = httpx.URL(config.base_url + "/v1/messages")
        headers = [
            ("content-type", "application/json"),
            ("accept", "application/json"),
            ("anthropic-version", config.anthropic_version),
        ]
        if config.api_key:
            headers.append(("x-api-key", config.api_key))
        self._headers = headers
        self._stream_headers = [headers[0], ("accept", "text/event-stream"), *headers[2:]]

    # -- OpenAI-format chat ------------------------------------------------------------

    async def complete(
        self, endpoint: str, body: dict[str, Any], model: str, raw: bytes | None
    ) -> dict[str, Any]:
        self._check_endpoint(endpoint)
        payload = openai_request_to_anthropic(body, model)
        payload.pop("stream", None)
        message = await self.answer_json(self._request(orjson.dumps(payload), stream=False))
        return anthropic_response_to_openai(message, model, created=int(time.time()))

    async def open_stream(
        self, endpoint: str, body: dict[str, Any], model: str, raw: bytes | None
    ) -> ChunkStream:
        self._check_endpoint(endpoint)
        payload = openai_request_to_anthropic(body, model)
        payload["stream"] = True
        response = await self._open_event_stream(orjson.dumps(payload))
        # Usage is always asked for (cost, token metrics, tpm); the app drops the usage
        # chunk again for a client that did not ask for it.
        translator = AnthropicStreamToOpenAI(model, include_usage=True, created=int(time.time()))

        def decode(name: str | None, data: bytes) -> tuple[list[dict[str, Any]], bool]:
            event = _event_object(data)
            if event is None:
                return [], False
            kind = name or event.get("type")
            if kind == "error":
                return [_error_mark(self, event)], True
            return translator.feed(kind if isinstance(kind, str) else "", event), translator.done

        return _OrderedErrorStream(response, self, decode)

    def _check_endpoint(self, endpoint: str) -> None:
        if endpoint != "chat":
            raise UpstreamStatus(
                400, f"provider {self.name} (anthropic) does not serve {endpoint}", retryable=False
            )

    # -- native Messages (the /v1/messages front door) --------------------------------

    async def messages(self, body: dict[str, Any], model: str, raw: bytes | None) -> dict[str, Any]:
        """The upstream's message JSON for an Anthropic-format request, untranslated."""
        if body.get("stream"):
            body, raw = {k: v for k, v in body.items() if k != "stream"}, None
        return await self.answer_json(self._request(_content(body, model, raw), stream=False))

    async def open_messages_stream(
        self, body: dict[str, Any], model: str, raw: bytes | None
    ) -> NativeEventStream:
        """Send a streaming Anthropic-format request; returns once the upstream accepted it."""
        if body.get("stream") is not True:
            body, raw = {**body, "stream": True}, None
        response = await self._open_event_stream(_content(body, model, raw))
        return NativeEventStream(response, self)

    # -- plumbing ----------------------------------------------------------------------

    def _request(self, content: bytes, *, stream: bool) -> httpx.Request:
        headers = self._stream_headers if stream else self._headers
        return httpx.Request("POST", self._url, headers=headers, content=content)

    async def _open_event_stream(self, content: bytes) -> httpx.Response:
        response = await self.send(self._request(content, stream=True))
        ctype = response.headers.get("content-type", "")
        if not ctype.startswith("text/event-stream"):
            await response.aclose()
            raise UpstreamError(f"provider {self.name} did not answer with an event stream")
        return response

    def status_error(self, response: httpx.Response, body: bytes) -> UpstreamStatus:
        error = super().status_error(response, body)
        if error.status == OVERLOADED and 503 in self.retry_on:
            error.retryable = True
        return error


class _OrderedErrorStream(ChunkStream):
    """A `ChunkStream` whose upstream ``error`` event is raised in its place in the stream.

    One network read often carries several events. Raising from the decoder would drop
    the chunks decoded before the error in that read, so the client would lose text the
    upstream did send; instead the decoder queues a mark that ends the stream, and the
    error is raised when iteration reaches it.
    """

    async def __anext__(self) -> dict[str, Any]:
        item = await super().__anext__()
        error = item.get("error")
        if isinstance(error, UpstreamError):
            raise error
        return item


class NativeEventStream:
    """An upstream Messages stream as ``(event_name, data)`` pairs, exactly as sent.

    Built on `ChunkStream`, so reading, SSE parsing and the mapping of every httpx error
    (timeouts, resets, a stream cut before ``message_stop``) are the same code for both
    doors. Pings are passed on (they keep a client's connection alive); iteration ends
    after ``message_stop``; an ``error`` event raises `UpstreamError` with its message.
    """

    def __init__(self, response: httpx.Response, provider: Provider) -> None:
        self._events = _OrderedErrorStream(response, provider, _native_decoder(provider))

    def __aiter__(self) -> NativeEventStream:
        return self

    async def __anext__(self) -> tuple[str, dict[str, Any]]:
        try:
            envelope = await self._events.__anext__()
        except UpstreamError:
            await self.aclose()
            raise
        return envelope["event"], envelope["data"]

    def ready(self) -> bool:
        return self._events.ready()

    async def aclose(self) -> None:
        await self._events.aclose()


def _native_decoder(provider: Provider) -> Decoder:
    def decode(name: str | None, data: bytes) -> tuple[list[dict[str, Any]], bool]:
        event = _event_object(data)
        if event is None:
            return [], False
        kind = name or event.get("type")
        if not isinstance(kind, str) or not kind:
            raise SSEError("an event has neither a name nor a type")
        if kind == "error":
            return [_error_mark(provider, event)], True
        # ChunkStream queues dicts; the envelope keeps the SSE name with its data.
        return [{"event": kind, "data": event}], kind == "message_stop"

    return decode


def _event_object(data: bytes) -> dict[str, Any] | None:
    """One event's JSON object; None for an event without data (nothing to act on)."""
    if not data.strip():
        return None
    event = orjson.loads(data)
    if not isinstance(event, dict):
        raise SSEError("event data is not a JSON object")
    return event


def _error_mark(provider: Provider, event: Mapping[str, Any]) -> dict[str, Any]:
    """The queue item `_OrderedErrorStream` raises: the upstream's error, key redacted."""
    error = event.get("error")
    message = error.get("message") if isinstance(error, Mapping) else None
    kind = error.get("type") if isinstance(error, Mapping) else None
    text = message if isinstance(message, str) and message else "upstream stream error"
    code = kind if isinstance(kind, str) else None
    return {"error": provider.scrub(UpstreamError(text, code=code))}


def _content(body: dict[str, Any], model: str, raw: bytes | None) -> bytes:
    """The client's bytes when nothing changed (unknown fields and all), else re-encoded."""
    if raw is not None and body.get("model") == model:
        return raw
    return orjson.dumps({**body, "model": model})
