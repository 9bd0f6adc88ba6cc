"""The `anthropic` kind: Anthropic's Messages API.

The adapter speaks Messages only: a request body is forwarded as the client (or the hub's
`edge.codecs.messages` encoder) wrote it, only the model rewritten when routing chose
another upstream name; answers and stream events come back as Anthropic sent them. An
OpenAI-format caller is translated by its front door (`edge.dialects`).

Anthropic's error body is ``{"type": "error", "error": {"type", "message"}}``, which the
base `status_error` already reads; this kind only adds that 529 ("overloaded") means what
503 means elsewhere, so it is retried whenever 503 is.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from ..codecs import messages
from ..config import ProviderConfig
from ..errors import UpstreamError, UpstreamStatus
from ..sse import SSEError
from .base import ChunkStream, Provider

__all__ = ["AnthropicProvider"]

OVERLOADED = 529  # Anthropic's own status for "try again shortly"


class AnthropicProvider(Provider):
    """Anthropic's Messages API; see the module docstring."""

    kind = "anthropic"
    codec = messages
    key_header = ("x-api-key", "{}")

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
        self._headers = headers
        self._stream_headers = [headers[0], ("accept", "text/event-stream"), *headers[2:]]

    async def complete(
        self, endpoint: str, body: dict[str, Any], model: str, raw: bytes | None
    ) -> dict[str, Any]:
        """The upstream's message for a Messages request, untranslated."""
        self._check_endpoint(endpoint)
        if body.get("stream"):
            body, raw = {k: v for k, v in body.items() if k != "stream"}, None
        return await self.answer_json(self._request(_content(body, model, raw), stream=False))

    async def open_stream(
        self, endpoint: str, body: dict[str, Any], model: str, raw: bytes | None
    ) -> ChunkStream:
        """Send a streaming Messages request; the items are ``(event, data)`` pairs, pings
        included (they keep a client's connection alive); it ends after message_stop."""
        self._check_endpoint(endpoint)
        if body.get("stream") is not True:
            body, raw = {**body, "stream": True}, None
        response = await self._open_event_stream(_content(body, model, raw))
        return ChunkStream(response, self, _decode_event)

    def _check_endpoint(self, endpoint: str) -> None:
        if endpoint != "chat":
            raise UpstreamStatus(
                400, f"provider {self.name} (anthropic) does not serve {endpoint}", retryable=False
            )

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


def _decode_event(name: str | None, data: bytes) -> tuple[list[tuple[str, Any]], bool]:
    event = _event_object(data)
    if event is None:
        return [], False
    kind = name or event.get("type")
    if not isinstance(kind, str) or not kind:
        raise SSEError("an event has neither a name nor a type")
    if kind == "error":
        raise messages.error_in(event)  # ChunkStream scrubs it and raises it in its place
    return [(kind, event)], kind == "message_stop"


def _event_object(data: bytes) -> dict[str, Any] | None:
    """One event's JSON object; None for an event without data (nothing to act on)."""
    if not data.strip():
        return None
    event = orjson.loads(data)
    if not isinstance(event, dict):
        raise SSEError("event data is not a JSON object")
    return event


def _content(body: dict[str, Any], model: str, raw: bytes | None) -> bytes:
    """The client's bytes when nothing changed (unknown fields and all), else re-encoded."""
    if raw is not None and body.get("model") == model:
        return raw
    return orjson.dumps({**body, "model": model})
