"""The `gemini` kind: the Google Gemini API (``generateContent``).

IO only, in Gemini's own format: ``POST /v1beta/models/{model}:generateContent``, streams
from ``:streamGenerateContent?alt=sse`` and embeddings from ``:batchEmbedContents``, the
key in ``x-goog-api-key``. Requests arrive already in Gemini's format (the front door
translated them through the hub with `edge.codecs.gemini`), except embeddings, which
every adapter takes in OpenAI's format: those are translated here, both ways.

Gemini's stream has no end marker: it is whole when the body ends after a chunk that
carries a finish reason (`EndsAtEOF`). Its errors are ``{"error": {"code", "message",
"status", "details"}}``: the status name decides the HTTP status edge reports (an invalid
key is a 400 there, a 401 here), and a 429's ``RetryInfo.retryDelay`` counts as its
Retry-After.
"""

from __future__ import annotations

import re
from functools import cached_property
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from ..codecs import gemini
from ..errors import UpstreamError, UpstreamStatus
from ..sse import SSEError
from .base import ChunkStream, Provider
from .endless import EndsAtEOF

__all__ = ["GeminiProvider"]

# google.rpc status names -> the HTTP status edge reports for them (SPEC §4).
_STATUSES = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
    "INTERNAL": 500,
    "UNKNOWN": 500,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
_BAD_KEY = "API_KEY_INVALID"  # ErrorInfo.reason of a wrong key, sent as INVALID_ARGUMENT
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)s")
_MAX_URLS = 1024  # models named by clients (`provider/model`) must not grow the memo
_HEADERS = [("content-type", "application/json"), ("accept", "application/json")]
_STREAM_HEADERS = [("content-type", "application/json"), ("accept", "text/event-stream")]


class GeminiProvider(Provider):
    """Google's Gemini API; see the module docstring."""

    kind = "gemini"
    codec = gemini
    key_header = ("x-goog-api-key", "{}")

    @cached_property
    def _root(self) -> str:
        """The API's root: base_url with the version (which a base_url may carry already)."""
        root = self.config.base_url.rstrip("/")
        return (root if root.endswith("/v1beta") else root + "/v1beta") + "/"

    @cached_property
    def _urls(self) -> dict[tuple[str, str], httpx.URL]:
        """Built URLs by (model, method): one string join and parse per model, not per call."""
        return {}

    async def complete(
        self, endpoint: str, body: dict[str, Any], model: str, raw: bytes | None
    ) -> dict[str, Any]:
        """A ``GenerateContentResponse``; for embeddings, an OpenAI embeddings answer."""
        if endpoint == "embeddings":
            content = orjson.dumps(gemini.encode_embeddings(body, model))
            answer = await self.answer_json(self._request(model, "batchEmbedContents", content))
            return gemini.decode_embeddings(answer, model)
        return await self.answer_json(
            self._request(model, "generateContent", orjson.dumps(body)))

    async def open_stream(
        self, endpoint: str, body: dict[str, Any], model: str, raw: bytes | None
    ) -> ChunkStream:
        """The stream's items are its chunks, each a whole ``GenerateContentResponse``."""
        request = self._request(model, "streamGenerateContent?alt=sse", orjson.dumps(body),
                                stream=True)
        response = await self.send(request)
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            await response.aclose()
            raise UpstreamError(f"provider {self.name} did not answer with an event stream")
        return EndsAtEOF(response, self, _Chunks())

    def _request(self, model: str, method: str, content: bytes, *,
                 stream: bool = False) -> httpx.Request:
        url = self._urls.get((model, method))
        if url is None:
            # "models/x" and "tunedModels/x" are already resource names
            name = model if model.startswith(("models/", "tunedModels/")) else "models/" + model
            url = httpx.URL(f"{self._root}{quote(name, safe='/')}:{method}")
            if len(self._urls) < _MAX_URLS:
                self._urls[(model, method)] = url
        return httpx.Request("POST", url, headers=_STREAM_HEADERS if stream else _HEADERS,
                             content=content)

    def status_error(self, response: httpx.Response, body: bytes) -> UpstreamStatus:
        error = super().status_error(response, body)
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return error
        detail = data.get("error") if isinstance(data, dict) else None
        if not isinstance(detail, dict):
            return error
        name = detail.get("status")
        details = detail.get("details")
        details = [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []
        if isinstance(name, str) and name in _STATUSES:
            error.status = _STATUSES[name]
            error.code = name
        if any(d.get("reason") == _BAD_KEY for d in details):
            error.status, error.code = 401, _BAD_KEY
        error.retryable = error.status in self.retry_on
        if error.retry_after is None:
            error.retry_after = _retry_delay(details)
        return error


def _retry_delay(details: list[dict[str, Any]]) -> float | None:
    """Seconds from a ``RetryInfo`` detail (its delay is a protobuf Duration: "37s")."""
    for detail in details:
        if detail.get("@type") == _RETRY_INFO:
            delay = detail.get("retryDelay")
            found = _DURATION.fullmatch(delay) if isinstance(delay, str) else None
            if found is not None:
                return float(found.group(1))
    return None


class _Chunks:
    """SSE events to chunks; the answer is whole once a chunk said how it finished."""

    def __init__(self) -> None:
        self.whole = False

    def __call__(self, name: str | None, data: bytes) -> tuple[list[dict[str, Any]], bool]:
        if not data.strip():
            return [], False
        chunk = orjson.loads(data)
        if not isinstance(chunk, dict):
            raise SSEError("event data is not a JSON object")
        error = gemini.error_in(chunk)
        if error is not None:
            raise error  # ChunkStream scrubs it and raises it after the chunks before it
        if not self.whole:
            self.whole = _finished(chunk)
        return [chunk], False


def _finished(chunk: dict[str, Any]) -> bool:
    """Whether this chunk says how the answer ended (a finish reason, or a blocked prompt)."""
    candidates = chunk.get("candidates")
    if isinstance(candidates, list):
        return any(isinstance(c, dict) and isinstance(c.get("finishReason"), str)
                   for c in candidates)
    feedback = chunk.get("promptFeedback")
    return isinstance(feedback, dict) and "blockReason" in feedback
