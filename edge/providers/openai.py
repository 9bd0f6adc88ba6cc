"""The `openai` kind: OpenAI itself and any server that speaks its API (vLLM, Ollama, ...).

The request body is forwarded as the client sent it (unknown fields included); only the
model is rewritten when routing chose a different upstream name.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from ..codecs import chat, responses
from ..config import ProviderConfig
from ..errors import UpstreamError
from ..sse import SSEError
from .base import ChunkStream, Decoder, Provider

# "responses": a provider with `responses_api = true`, asked by the Responses door natively
_PATHS = {"chat": "/chat/completions", "embeddings": "/embeddings", "responses": "/responses"}


class OpenAIProvider(Provider):
    kind = "openai"
    codec = chat
    key_header = ("authorization", "Bearer {}")

    def __init__(
        self,
        config: ProviderConfig,
        transport: httpx.AsyncBaseTransport,
        retry_on: frozenset[int],
    ) -> None:
        super().__init__(config, transport, retry_on)
        self._urls = {ep: httpx.URL(config.base_url + path) for ep, path in _PATHS.items()}
        self._headers = [("content-type", "application/json"), ("accept", "application/json")]
        self._stream_headers = [("content-type", "application/json"),
                                ("accept", "text/event-stream")]

    def _content(self, body: dict[str, Any], model: str, raw: bytes | None) -> bytes:
        if raw is not None and body.get("model") == model:
            return raw
        return orjson.dumps({**body, "model": model})

    async def complete(
        self, endpoint: str, body: dict[str, Any], model: str, raw: bytes | None
    ) -> dict[str, Any]:
        content = self._content(body, model, raw)
        request = httpx.Request("POST", self._urls[endpoint], headers=self._headers,
                                content=content)
        return await self.answer_json(request)

    async def open_stream(
        self, endpoint: str, body: dict[str, Any], model: str, raw: bytes | None
    ) -> ChunkStream:
        decode: Decoder = _decode_responses_event  # its last event carries the usage
        options = body.get("stream_options")
        if endpoint != "responses":
            decode = _decode_openai_event
            if not (isinstance(options, dict) and options.get("include_usage") is True):
                # Ask for usage anyway (cost, token metrics, tpm); the app drops that chunk
                # again for a client that did not ask for it.
                body = {**body, "stream_options": {**(options or {}), "include_usage": True}}
                raw = None
        request = httpx.Request(
            "POST",
            self._urls[endpoint],
            headers=self._stream_headers,
            content=self._content(body, model, raw),
        )
        response = await self.send(request)
        ctype = response.headers.get("content-type", "")
        if not ctype.startswith("text/event-stream"):
            await response.aclose()
            raise UpstreamError(f"provider {self.name} did not answer with an event stream")
        return ChunkStream(response, self, decode)


def _decode_openai_event(name: str | None, data: bytes) -> tuple[list[dict[str, Any]], bool]:
    if data == b"[DONE]":
        return [], True
    if not data:
        return [], False
    chunk = _object(data)
    error = chat.error_in(chunk)
    if error is not None:
        raise error  # ChunkStream scrubs it and raises it after the chunks before it
    return [chunk], False


def _decode_responses_event(name: str | None, data: bytes) -> tuple[list[Any], bool]:
    """A Responses event as an ``(event, data)`` item; the stream ends with its last event."""
    if not data:
        return [], False
    event = _object(data)
    error = responses.error_in(event)
    if error is not None:
        raise error
    return [(name, event)], event.get("type") in responses.FINAL_EVENTS


def _object(data: bytes) -> dict[str, Any]:
    value = orjson.loads(data)
    if not isinstance(value, dict):
        raise SSEError("event data is not a JSON object")
    return value
