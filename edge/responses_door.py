"""The Responses front door, POST /v1/responses: a `Dialect` with conversation state.

Everything a completion goes through (limits, cache, coalescing, attempts, failover,
metering, the log line) is `edge.completion`'s, as for chat; what this door adds is
that a request belongs to a conversation that edge keeps (`edge.responses_store`):

* `bind` runs once per request, before the cache key and routing: it expands
  `previous_response_id` into the stored conversation and makes the upstream body
  (`input` the whole conversation, `store: false`, no `previous_response_id` or
  `metadata`: edge's fields, not the upstream's), and returns a dialect of this request
  alone, which holds the response's id, its item ids, the client's fields to echo and
  what to store.
* Every answer is *dressed* before the client sees it: edge's own ids (a response id,
  items named `msg_<token>_<n>`, `fc_<token>_<n>` by `codecs.responses.item_id`, so a
  stream's events and its final object agree) and the client's own fields echoed
  (`store`, `metadata`, `previous_response_id`, `tools`, ...). So a native upstream's
  answer, a translated one and a cache hit look alike, and a hit is a new response.
* The response is stored before the end of the answer leaves: a JSON body after the
  write, a stream's final event (`response.completed`) only once it is written.

Native or translated is decided per deployment in `native`: a provider with
`responses_api = true` gets the Responses body at `{base_url}/responses`; any other kind
is reached through the hub, where built-in tools (web_search, ...) and a JSON mode the
kind lacks are refused with a 400 naming them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from . import hub
from .codecs import responses
from .codecs._checks import bad
from .dialects import Dialect, EventSource, input_output_usage
from .errors import BadRequest, EdgeError, PayloadTooLarge
from .exchange import Request
from .providers import Provider
from .responses_store import input_items, load_conversation, save, sendable
from .responses_stream import ResponsesAssembler, replay_frames
from .routing import Deployment
from .service import Edge
from .sse import frame_event

__all__ = ["ResponsesDialect"]

JSON = dict[str, Any]

# Edge's fields, never an upstream's: it keeps the state and the client's metadata itself.
_EDGE_FIELDS = frozenset({"previous_response_id", "store", "metadata", "input"})
# The client's fields a response echoes as sent, when sent.
_ECHOED = ("instructions", "tools", "tool_choice", "temperature", "top_p",
           "parallel_tool_calls", "text", "max_output_tokens", "user", "reasoning",
           "truncation")
# What a translated answer says for the fields the client left out (OpenAI's defaults).
_DEFAULTS: JSON = {"instructions": None, "tools": [], "tool_choice": "auto", "temperature": 1.0,
                   "top_p": 1.0, "parallel_tool_calls": True, "max_output_tokens": None,
                   "text": {"format": {"type": "text"}}}
# The JSON modes a provider kind has no form for (SPEC §8: 400 naming the kind).
_NO_JSON_MODE = {"anthropic": ("json_object", "json_schema"), "bedrock": ("json_object",)}
_MAX_METADATA = 16


class _Turn:
    """One request's part of its conversation: ids, what to echo, what to store."""

    __slots__ = ("edge", "owner", "id", "prefix", "created", "echo", "store", "own",
                 "history", "seq", "types", "shell")

    def __init__(self, edge: Edge, owner: str, body: Mapping[str, Any],
                 own: list[JSON], history: list[JSON], token: str) -> None:
        self.edge = edge
        self.owner = owner
        self.id = "resp_" + token
        self.prefix = token
        self.created = int(time.time())
        self.store = body.get("store") is not False
        echo = {k: body[k] for k in _ECHOED if k in body}
        # always set: not in the cache key, so a hit must not show an earlier client's
        echo.update(store=self.store, metadata=body.get("metadata") or {},
                    previous_response_id=body.get("previous_response_id"),
                    user=body.get("user"))
        self.echo = echo
        self.own = own
        self.history = history
        self.seq = 0  # the next event's sequence_number, once a stream is sent
        self.types: dict[int, object] = {}  # a stream's output_index -> its item's type
        self.shell: JSON = {}  # the stream's latest response object, for response.failed

    def dress(self, response: JSON) -> JSON:
        """`response` (changed in place) with this request's ids and the client's fields."""
        response["id"] = self.id
        response["object"] = "response"
        response["created_at"] = self.created
        output = response.get("output")
        for index, item in enumerate(output if isinstance(output, list) else ()):
            if isinstance(item, dict):
                item["id"] = responses.item_id(item.get("type"), self.prefix, index)
        response.update(self.echo)
        for field, value in _DEFAULTS.items():
            response.setdefault(field, value)
        return response

    def dress_event(self, data: JSON) -> bool:
        """One stream event dressed in place; True when it is the stream's final one."""
        data["sequence_number"] = self.seq
        self.seq += 1
        index = data.get("output_index")
        item = data.get("item")
        if isinstance(item, dict) and isinstance(index, int):
            self.types[index] = item.get("type")
            item["id"] = responses.item_id(item.get("type"), self.prefix, index)
        if "item_id" in data and isinstance(index, int):
            data["item_id"] = responses.item_id(self.types.get(index), self.prefix, index)
        response = data.get("response")
        if isinstance(response, dict):
            self.shell = self.dress(response)
        return data.get("type") in responses.FINAL_EVENTS

    async def keep(self, response: JSON) -> None:
        if self.store:
            await save(self.edge, self.owner, response, self.own, self.history)


class ResponsesDialect(Dialect):
    """POST /v1/responses. The route's instance is stateless; `bind` makes each request's."""

    endpoint = "responses"
    operation = "responses"  # what a native provider is asked for: {base_url}/responses
    codec = responses
    stateful = True

    def __init__(self, turn: _Turn | None = None) -> None:
        self._turn = turn

    @property
    def turn(self) -> _Turn:
        assert self._turn is not None, "a request's dialect comes from bind()"
        return self._turn

    def validate(self, body: dict[str, Any]) -> str:
        request = responses.decode_request(body, native_tools=True)
        for field, kind, noun in (("store", bool, "a boolean"), ("reasoning", dict, "an object"),
                                  ("previous_response_id", str, "a string")):
            value = body.get(field)
            if value is not None and not isinstance(value, kind):
                raise bad(field, f"expected {noun}")
        metadata = body.get("metadata")
        if metadata is not None:
            if not isinstance(metadata, dict) or len(metadata) > _MAX_METADATA:
                raise bad("metadata", f"expected an object of at most {_MAX_METADATA} pairs")
            for key, value in metadata.items():
                if len(key) > 64:
                    raise bad("metadata", "keys are at most 64 characters")
                if not isinstance(value, str) or len(value) > 512:
                    raise bad(f"metadata.{key}", "expected a string of at most 512 characters")
        return request.model

    async def bind(self, req: Request, edge: Edge, body: dict[str, Any],
                   raw: bytes) -> tuple[ResponsesDialect, dict[str, Any]]:
        """This request's dialect and the upstream body, its conversation expanded."""
        history: list[JSON] = []
        previous = body.get("previous_response_id")
        if previous is not None:
            history, stored_size = await load_conversation(edge, previous, req.tenant)
            limit = edge.config.server.max_request_bytes
            if stored_size + len(raw) > limit:
                raise PayloadTooLarge(
                    f"The conversation of previous_response_id and this request together "
                    f"exceed the limit of {limit} bytes; start a new conversation.")
        token = os.urandom(16).hex()
        own = input_items(body["input"], token + "_in")
        upstream = {k: v for k, v in body.items() if k not in _EDGE_FIELDS}
        upstream["input"] = [sendable(item) for item in (*history, *own)]
        upstream["store"] = False
        return ResponsesDialect(_Turn(edge, req.tenant, body, own, history, token)), upstream

    def native(self, provider: Provider) -> bool:
        return provider.config.responses_api

    def _translatable(self, provider: Provider, body: dict[str, Any]) -> None:
        """Refuse what `provider`'s kind cannot express (built-in tools fail in decoding)."""
        text = body.get("text")
        fmt = text.get("format") if isinstance(text, dict) else None
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind in _NO_JSON_MODE.get(provider.kind, ()):
            raise BadRequest(f"text.format: {kind} is not supported by provider "
                             f"'{provider.name}' (kind {provider.kind})", param="text.format")

    async def fetch(self, dep: Deployment, body: dict[str, Any],
                    raw: bytes | None) -> dict[str, Any]:
        if not self.native(dep.provider):
            self._translatable(dep.provider, body)
        return await super().fetch(dep, body, None)  # never the client's bytes: body changed

    async def open(self, dep: Deployment, body: dict[str, Any],
                   raw: bytes | None) -> EventSource:
        if not self.native(dep.provider):
            self._translatable(dep.provider, body)
        source = await super().open(dep, body, None)
        kept = _Kept(source.items, self.turn)
        return EventSource(kept, await kept.take(source.first))

    async def keep(self, answer: JSON) -> JSON:
        """A complete answer (a JSON miss or a hit) dressed, and stored when it should be."""
        turn = self.turn
        turn.dress(answer)
        await turn.keep(answer)
        return answer

    def encode_answer(self, answer: hub.Answer, model: str) -> dict[str, Any]:
        turn = self.turn
        return responses.encode_answer(answer, model, response_id=turn.id,
                                       item_prefix=turn.prefix, created=turn.created)

    def stream_encoder(self, model: str) -> responses.StreamEncoder:
        turn = self.turn
        return responses.StreamEncoder(model, response_id=turn.id, item_prefix=turn.prefix,
                                       created=turn.created)

    def usage(self, answer: dict[str, Any]) -> tuple[int, int]:
        return input_output_usage(answer)

    def assembler(self, max_bytes: int) -> ResponsesAssembler:
        return ResponsesAssembler(max_bytes)

    def json_body(self, body: bytes, **meta: Any) -> bytes:
        return body  # SPEC §8: `metadata` is the client's; edge's facts are in its headers

    def frame(self, item: Any) -> bytes:
        name, data = item
        return frame_event(name or data["type"], data)

    def error_frame(self, error: EdgeError) -> bytes:
        turn = self.turn
        failed = {**turn.shell, "status": "failed",
                  "error": {"code": "server_error", "message": error.message}}
        data = {"type": "response.failed", "sequence_number": turn.seq, "response": failed}
        turn.seq += 1
        return frame_event("response.failed", data)

    def replay(self, answer: dict[str, Any], wants_usage: bool) -> bytes:
        return replay_frames(answer)


class _Kept:
    """A stream's items dressed as this request's, its final event held back until the
    response is stored (SPEC §8: a follow-up may name it as soon as the client has it)."""

    def __init__(self, items: Any, turn: _Turn) -> None:
        self.items = items
        self.turn = turn

    def __aiter__(self) -> _Kept:
        return self

    async def __anext__(self) -> Any:
        return await self.take(await anext(self.items))

    async def take(self, item: Any) -> Any:
        name, data = item
        if self.turn.dress_event(data):
            await self.turn.keep(data["response"])
        return name, data

    def ready(self) -> bool:
        ready: bool = self.items.ready()
        return ready

    async def aclose(self) -> None:
        await self.items.aclose()
