"""The `azure` kind: Azure OpenAI, which speaks OpenAI's Chat Completions at its own URLs.

Its format is the chat codec's, so the chat door passes requests through untranslated
(as to the `openai` kind) and every other door translates through the hub. What differs
from OpenAI is only the IO:

* the URL: ``{base_url}/openai/deployments/{deployment}/{chat/completions,embeddings}
  ?api-version=...`` for a dated ``api_version``, or ``{base_url}/openai/v1/...`` for
  ``api_version = "v1"``; the deployment is ``deployments[model]``, else the model's own
  name, and it is also the body's ``model`` (which the v1 API reads, the dated one ignores);
* the key, in the ``api-key`` header;
* a stream chunk with no choices and no usage (the first, carrying only
  ``prompt_filter_results``) is Azure's own bookkeeping: read, never relayed.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from ..codecs import chat
from ..errors import UpstreamError
from .base import ChunkStream, Provider
from .openai import _decode_openai_event

__all__ = ["AzureProvider"]

_PATHS = {"chat": "chat/completions", "embeddings": "embeddings"}
_MAX_URLS = 1024  # models named by clients (`provider/model`) must not grow the memo
_HEADERS = [("content-type", "application/json"), ("accept", "application/json")]
_STREAM_HEADERS = [("content-type", "application/json"), ("accept", "text/event-stream")]


class AzureProvider(Provider):
    """Azure OpenAI; see the module docstring."""

    kind = "azure"
    codec = chat
    key_header = ("api-key", "{}")

    @cached_property
    def _template(self) -> str:
        """The URL of an operation, to be filled with the deployment and the path."""
        config = self.config
        root = config.base_url.rstrip("/") + "/openai/"
        if config.api_version == "v1":
            return root + "v1/{path}"
        return (root + "deployments/{deployment}/{path}?api-version="
                + quote(config.api_version, safe=""))

    @cached_property
    def _deployments(self) -> dict[str, str]:
        return dict(self.config.deployments)

    @cached_property
    def _urls(self) -> dict[tuple[str, str], tuple[httpx.URL, str]]:
        """(URL, deployment) by (endpoint, model), built once per model."""
        return {}

    async def complete(
        self, endpoint: str, body: dict[str, Any], model: str, raw: bytes | None
    ) -> dict[str, Any]:
        url, deployment = self._target(endpoint, model)
        request = httpx.Request("POST", url, headers=_HEADERS,
                                content=_content(body, deployment, raw))
        return await self.answer_json(request)

    async def open_stream(
        self, endpoint: str, body: dict[str, Any], model: str, raw: bytes | None
    ) -> ChunkStream:
        options = body.get("stream_options")
        if not (isinstance(options, dict) and options.get("include_usage") is True):
            # usage for cost, token metrics and tpm; the door drops it again for a client
            # that did not ask for it
            body = {**body, "stream_options": {**(options or {}), "include_usage": True}}
            raw = None
        url, deployment = self._target(endpoint, model)
        request = httpx.Request("POST", url, headers=_STREAM_HEADERS,
                                content=_content(body, deployment, raw))
        response = await self.send(request)
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            await response.aclose()
            raise UpstreamError(f"provider {self.name} did not answer with an event stream")
        return ChunkStream(response, self, _decode_event)

    def _target(self, endpoint: str, model: str) -> tuple[httpx.URL, str]:
        """The URL for `endpoint` and `model`, and the deployment name the body carries."""
        found = self._urls.get((endpoint, model))
        if found is None:
            deployment = self._deployments.get(model, model)
            url = httpx.URL(self._template.format(
                deployment=quote(deployment, safe=""), path=_PATHS[endpoint]))
            found = (url, deployment)
            if len(self._urls) < _MAX_URLS:
                self._urls[(endpoint, model)] = found
        return found


def _content(body: dict[str, Any], deployment: str, raw: bytes | None) -> bytes:
    """The client's bytes when nothing changed (unknown fields and all), else re-encoded."""
    if raw is not None and body.get("model") == deployment:
        return raw
    return orjson.dumps({**body, "model": deployment})


def _decode_event(name: str | None, data: bytes) -> tuple[list[dict[str, Any]], bool]:
    chunks, done = _decode_openai_event(name, data)
    # Azure's content-filter report on the prompt comes as a chunk with no choices and no
    # usage; the usage chunk (no choices either) carries usage and is kept.
    return [c for c in chunks if c.get("choices") or c.get("usage") is not None], done
