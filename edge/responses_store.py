"""Conversation state of the Responses API, owned by edge (SPEC §8), and its endpoints.

Every response served with `store` not false is kept in the store (`edge.store`, §7)
with three JSON documents: the response object, that request's own input items (what
GET .../input_items lists) and the whole conversation so far (every earlier turn's
items, this request's input, this response's output). A follow-up naming it as
`previous_response_id` is expanded into that conversation before routing, so any
provider kind, and any replica sharing the store, can continue it.

Items are kept in one normal form, the form the API lists them in: every item has an
`id` and a `status`, and a message's `content` is a list of parts. What is sent on to
an upstream (`sendable`) is that form without `id` and `status`, since no upstream
stores anything (`store: false`): the whole conversation travels in each request.
Only the item types a request may carry (messages, function calls and their outputs)
enter a conversation; a native upstream's own output items (reasoning, web search
calls) stay in the stored response but cannot be replayed to another upstream.

Ownership: a response is visible only to the key that made it, by key name
(`Request.tenant`). Without client keys every caller is the tenant `anonymous`
(loopback only, see `edge.auth`), so they share one owner, as they share everything else.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson

from .answer_meta import SSE_HEADERS
from .codecs.responses import item_id
from .errors import BadRequest, MethodNotAllowed, NotFound, ServiceUnavailable, clip
from .exchange import Request, send_json
from .responses_stream import replay_frames
from .store.base import StoredResponse, StoreUnavailable

if TYPE_CHECKING:
    from .service import Edge

__all__ = ["RETENTION_S", "StoredResponses", "input_items", "load_conversation",
           "output_items", "save", "sendable"]

JSON = dict[str, Any]

RETENTION_S = 30 * 86400.0  # SPEC §8: kept for 30 days; the store's cleanup task drops them
PREFIX = "/v1/responses/"
_CONVERSATION_TYPES = frozenset({"message", "function_call", "function_call_output"})
_MAX_LISTED = 100  # OpenAI's own cap on `limit`


def input_items(value: object, prefix: str) -> list[JSON]:
    """A request's `input` (already validated) as listed items with ids of `prefix`."""
    if isinstance(value, str):
        value = [{"type": "message", "role": "user",
                  "content": [{"type": "input_text", "text": value}]}]
    items = []
    for index, item in enumerate(value if isinstance(value, list) else ()):
        kind = item.get("type", "message")
        out: JSON = {k: v for k, v in item.items() if k != "id"}
        out["type"] = kind
        if kind == "message":
            content = item.get("content")
            if isinstance(content, str):
                part = "output_text" if item.get("role") == "assistant" else "input_text"
                out["content"] = [{"type": part, "text": content}]
        out["id"] = item_id(kind, prefix, index)  # edge's own: unique, so pages can name them
        out.setdefault("status", "completed")
        items.append(out)
    return items


def output_items(response: Mapping[str, Any]) -> list[JSON]:
    """The output items of `response` that a conversation carries on."""
    output = response.get("output")
    return [item for item in (output if isinstance(output, list) else ())
            if isinstance(item, dict) and item.get("type") in _CONVERSATION_TYPES]


def sendable(item: Mapping[str, Any]) -> JSON:
    """A stored item as an upstream that stores nothing takes it: without id and status."""
    return {k: v for k, v in item.items() if k != "id" and k != "status"}


async def load_conversation(edge: Edge, response_id: object,
                            owner: str) -> tuple[list[JSON], int]:
    """The conversation `previous_response_id` names, for `owner`, and its size in bytes;
    400 naming the field for an id that is unknown, expired, stored with `store: false`
    or another key's."""
    if not isinstance(response_id, str) or not response_id:
        raise BadRequest("previous_response_id: expected a non-empty string",
                         param="previous_response_id")
    try:
        stored = await edge.store.get_response(response_id, owner)
    except StoreUnavailable:
        raise _store_down() from None
    if stored is None:
        raise BadRequest(f"Previous response with id '{clip(response_id, 64)}' not found.",
                         param="previous_response_id", code="previous_response_not_found")
    conversation: list[JSON] = orjson.loads(stored.conversation)
    return conversation, len(stored.conversation)


async def save(edge: Edge, owner: str, response: JSON, own: list[JSON],
               history: list[JSON]) -> None:
    """Keep `response` for follow-ups; returns once it is written (a follow-up to any
    replica may name it at once). A store that is down loses it, not the answer."""
    now = time.time()
    conversation = [*history, *own, *output_items(response)]
    record = StoredResponse(
        id=response["id"], key_name=owner, created_at=now, expires_at=now + RETENTION_S,
        response=orjson.dumps(response), input_items=orjson.dumps(own),
        conversation=orjson.dumps(conversation))
    try:
        await edge.store.put_response(record)
    except StoreUnavailable:
        pass  # counted and logged by the store service; the client still gets its answer


class StoredResponses:
    """GET /v1/responses/{id}, GET /v1/responses/{id}/input_items, DELETE /v1/responses/{id}."""

    def __init__(self, service: Callable[[], Edge]) -> None:
        self.service = service

    async def handle(self, req: Request) -> None:
        rest = req.scope["path"][len(PREFIX):]
        response_id, _, tail = rest.partition("/")
        if not response_id or tail not in ("", "input_items"):
            raise NotFound(f"Unknown path: {clip(req.scope['path'])}", code="unknown_url")
        method = req.scope["method"]
        allowed = ("GET",) if tail else ("GET", "DELETE")
        if method not in allowed:
            raise MethodNotAllowed(f"Method {clip(method, 16)} is not allowed on "
                                   f"{clip(req.scope['path'])}; use {' or '.join(allowed)}.")
        store = self.service().store
        owner = req.tenant
        try:
            if method == "DELETE":
                if not await store.delete_response(response_id, owner):
                    raise _not_found(response_id)
                await send_json(req, 200, orjson.dumps(
                    {"id": response_id, "object": "response", "deleted": True}))
                return
            stored = await store.get_response(response_id, owner)
        except StoreUnavailable:
            raise _store_down() from None
        if stored is None:
            raise _not_found(response_id)
        query = parse_qs(req.scope.get("query_string", b"").decode("latin-1"))
        if tail:
            items = orjson.loads(stored.input_items)
            await send_json(req, 200, orjson.dumps(_page(items, query)))
        elif query.get("stream", ["false"])[-1] == "true":
            await _replay(req, orjson.loads(stored.response), query)
        else:
            await send_json(req, 200, stored.response)


async def _replay(req: Request, response: JSON, query: dict[str, list[str]]) -> None:
    """GET ...?stream=true: the stored response as its event stream, from the event
    after `starting_after` (a sequence number) when given, as the SDK resumes one."""
    after = query.get("starting_after", ["-1"])[-1]
    if not after.lstrip("-").isdigit():
        raise BadRequest("starting_after: expected a sequence number", param="starting_after")
    req.status = 200
    await req.send({"type": "http.response.start", "status": 200,
                    "headers": [*SSE_HEADERS, (b"x-request-id", req.request_id)]})
    req.finished = True
    await req.send({"type": "http.response.body", "body": replay_frames(response, int(after))})


def _page(items: list[JSON], args: dict[str, list[str]]) -> JSON:
    """One page of input items, as the SDK's cursor pages read it (`after`, `limit`,
    `order`; all of them by default, in the order sent)."""
    order = args.get("order", ["asc"])[-1]
    if order not in ("asc", "desc"):
        raise BadRequest("order: expected asc or desc", param="order")
    if order == "desc":
        items = items[::-1]
    after = args.get("after", [None])[-1]
    if after is not None:
        ids = [item.get("id") for item in items]
        if after not in ids:
            raise BadRequest(f"after: no input item with id '{clip(after, 64)}'", param="after")
        items = items[ids.index(after) + 1:]
    limit = len(items)
    raw_limit = args.get("limit", [None])[-1]
    if raw_limit is not None:
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= _MAX_LISTED:
            raise BadRequest(f"limit: expected a whole number from 1 to {_MAX_LISTED}",
                             param="limit")
        limit = int(raw_limit)
    page = items[:limit]
    return {"object": "list", "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit}


def _not_found(response_id: str) -> NotFound:
    return NotFound(f"Response with id '{clip(response_id, 64)}' not found.",
                    code="response_not_found")


def _store_down() -> ServiceUnavailable:
    return ServiceUnavailable("The response store is unavailable; retry shortly.",
                              retry_after=1)
