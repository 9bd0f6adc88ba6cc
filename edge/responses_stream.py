"""Responses streams, sans-IO: assemble events into one response, replay a response as events.

The Responses twin of `edge.chat_stream` and `edge.anthropic_stream`, for the
`/v1/responses` front door: a streamed miss is assembled so it can be cached and priced
like a JSON answer, and a cache hit for a client that asked for a stream is replayed
from that stored response.

Theory of operation
-------------------
Unlike the other formats, a Responses stream ends with the whole answer:
``response.completed`` (or ``response.incomplete``) carries the final response object,
output items and usage included. So the assembler keeps that object and counts the
deltas before it (for a stream cut before its end, whose tokens are then estimated),
and replaying is the reverse walk of SPEC §8's sequence over the stored output items.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .chat_stream import reported_count, utf8_len
from .codecs.responses import FINAL_EVENTS
from .sse import frame_event

__all__ = ["ResponsesAssembler", "replay_events", "replay_frames"]

JSON = dict[str, Any]

# the delta events whose "delta" is generated text (counted for estimates)
_DELTAS = frozenset({"response.output_text.delta", "response.function_call_arguments.delta",
                     "response.refusal.delta"})


class ResponsesAssembler:
    """Feed ``(event, data)`` pairs in order; `result()` is the final response object.

    `max_bytes` 0 keeps nothing but the counts (nothing will be stored); any other value
    keeps the final object, which the stream carried whole anyway (the cache refuses
    entries over its own size cap).
    """

    __slots__ = ("_keep", "_response", "_usage", "text_bytes")

    def __init__(self, max_bytes: int | None = None) -> None:
        self._keep = max_bytes != 0
        self._response: JSON | None = None
        self._usage: Mapping[str, Any] | None = None
        self.text_bytes = 0  # UTF-8 bytes of generated text seen

    @property
    def finished(self) -> bool:
        """True once the final event brought the response (and it was kept)."""
        return self._response is not None

    def reported_usage(self) -> tuple[int | None, int | None]:
        """(input, output) tokens as the final event reported them; None for each it did not."""
        usage = self._usage
        if usage is None:
            return None, None
        return reported_count(usage.get("input_tokens")), reported_count(usage.get("output_tokens"))

    def feed_item(self, item: tuple[str | None, Mapping[str, Any]]) -> None:
        data = item[1]
        kind = data.get("type")
        if kind in _DELTAS:
            delta = data.get("delta")
            if isinstance(delta, str):
                self.text_bytes += utf8_len(delta)
        elif kind in FINAL_EVENTS:
            response = data.get("response")
            if isinstance(response, dict) and isinstance(response.get("output"), list):
                usage = response.get("usage")
                self._usage = usage if isinstance(usage, Mapping) else None
                if self._keep:
                    self._response = response

    def result(self) -> JSON:
        assert self._response is not None, "result() of an unfinished stream"
        return self._response


def replay_events(response: Mapping[str, Any]) -> list[tuple[str, JSON]]:
    """The event sequence of SPEC §8 that the SDK's accumulator rebuilds into `response`."""
    events: list[tuple[str, JSON]] = []

    def emit(kind: str, **data: Any) -> None:
        events.append((kind, {"type": kind, "sequence_number": len(events), **data}))

    shell = {**response, "status": "in_progress", "output": [], "usage": None,
             "incomplete_details": None}
    emit("response.created", response=shell)
    emit("response.in_progress", response=shell)
    output = response.get("output")
    for index, item in enumerate(output if isinstance(output, list) else ()):
        if not isinstance(item, Mapping):
            continue
        at = {"item_id": item.get("id"), "output_index": index}
        kind = item.get("type")
        if kind == "message":
            content = item.get("content")
            parts = content if isinstance(content, list) else []
            emit("response.output_item.added", output_index=index,
                 item={**item, "status": "in_progress", "content": []})
            for c, part in enumerate(parts):
                _replay_part(emit, at, c, part)
        elif kind == "function_call":
            arguments = item.get("arguments")
            arguments = arguments if isinstance(arguments, str) else ""
            emit("response.output_item.added", output_index=index,
                 item={**item, "status": "in_progress", "arguments": ""})
            if arguments:
                emit("response.function_call_arguments.delta", **at, delta=arguments)
            emit("response.function_call_arguments.done", **at, name=item.get("name"),
                 arguments=arguments)
        else:  # a native upstream's own item (reasoning, web_search_call, ...): whole
            emit("response.output_item.added", output_index=index, item=dict(item))
        emit("response.output_item.done", output_index=index, item=dict(item))
    status = response.get("status")
    emit("response.incomplete" if status == "incomplete" else "response.completed",
         response=dict(response))
    return events


def replay_frames(response: Mapping[str, Any], after: int = -1) -> bytes:
    """`replay_events` as the SSE body, from the event after sequence number `after`."""
    return b"".join(frame_event(name, data) for name, data in replay_events(response)
                    if data["sequence_number"] > after)


def _replay_part(emit: Any, at: JSON, index: int, part: object) -> None:
    """One content part of a message item: added, its text as one delta, done."""
    if not isinstance(part, Mapping):
        return
    place = {**at, "content_index": index}
    kind = part.get("type")
    field, prefix = ("refusal", "response.refusal") if kind == "refusal" else (
        "text", "response.output_text")
    text = part.get(field)
    text = text if isinstance(text, str) else ""
    emit("response.content_part.added", **place, part={**part, field: ""})
    extra: JSON = {"logprobs": []} if field == "text" else {}
    if text:
        emit(f"{prefix}.delta", **place, delta=text, **extra)
    emit(f"{prefix}.done", **place, **{field: text}, **extra)
    emit("response.content_part.done", **place, part=dict(part))
