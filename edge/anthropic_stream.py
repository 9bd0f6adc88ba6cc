"""Anthropic message streams, sans-IO: assemble events into one message, replay a message as events.

The Anthropic twin of `edge.chat_stream`, for the `/v1/messages` front door: a streamed
miss is assembled so it can be cached and priced like a JSON answer, and a cache hit for
a client that asked for a stream is replayed from that stored message.

Theory of operation
-------------------
A message stream is ``message_start`` (the message with empty content), then for each
content block ``content_block_start`` / any number of ``content_block_delta`` /
``content_block_stop``, then ``message_delta`` (stop reason, cumulative usage) and
``message_stop``; ``ping`` may come at any point. Deltas only ever append to one field of
one block (``text``, ``thinking``, tool ``input`` as JSON text in pieces, ``citations``)
or replace one (``signature``), so the assembler keeps the start block and the pieces per
field, and joins them when asked for the result. Everything else in the start block, and
every message field it does not know, passes through untouched; that is what makes
``assemble(replay(m)) == m`` hold for any message.

Memory is bounded as in `edge.chat_stream`: past `max_bytes` of kept pieces and blocks,
the assembler drops them and only counts from then on (`overflowed`, never `finished`);
`text_bytes` and `reported_usage()` still describe what was relayed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any, TypeGuard

import orjson

from .chat_stream import SLOT_BYTES, reported_count, utf8_len

__all__ = ["MessageAssembler", "replay_events"]

JSON = dict[str, Any]

# content_block_delta type -> the block field its pieces are appended to
_APPENDED = {"text_delta": "text", "thinking_delta": "thinking"}


class _Block:
    """One content block being streamed: the start block plus the pieces of each field."""

    __slots__ = ("start", "pieces", "json_parts", "citations", "signature")

    def __init__(self, start: Mapping[str, Any]) -> None:
        self.start = dict(start)
        self.pieces: dict[str, list[str]] = {}
        self.json_parts: list[str] | None = None  # set once an input_json_delta arrived
        self.citations: list[Any] = []
        self.signature: str | None = None

    def tool_input(self) -> tuple[JSON | None, bool]:
        """The input assembled from input_json_delta pieces (None: keep the start block's),
        and whether those pieces formed a JSON object."""
        if self.json_parts is None:
            return None, True
        text = "".join(self.json_parts)
        if not text.strip():
            return None, True  # a tool called with no arguments streams "" (or nothing)
        try:
            parsed = json.loads(text)
        except ValueError:
            return None, False
        return (parsed, True) if isinstance(parsed, dict) else (None, False)

    def result(self) -> JSON:
        block = dict(self.start)
        for field, pieces in self.pieces.items():
            started = block.get(field)
            block[field] = (started if isinstance(started, str) else "") + "".join(pieces)
        if self.citations:
            started = block.get("citations")
            block["citations"] = [*(started if isinstance(started, list) else []), *self.citations]
        if self.signature is not None:
            block["signature"] = self.signature
        arguments, _ = self.tool_input()
        if arguments is not None:
            block["input"] = arguments
        return block


class MessageAssembler:
    """Feed ``(event, data)`` pairs in order; `result()` is the equivalent non-stream message.

    Tolerant by design: it runs beside a relay that must not break, so events it does not
    understand are skipped rather than raised. `finished` says whether the result is a
    faithful, complete message (the only kind worth caching).
    """

    __slots__ = ("_message", "_blocks", "_usage", "_delta_seen", "_stopped", "overflowed",
                 "kept", "text_bytes", "_max_bytes")

    def __init__(self, max_bytes: int | None = None) -> None:
        self._message: JSON | None = None
        self._blocks: dict[int, _Block] = {}
        self._usage: JSON = {}
        self._delta_seen = False
        self._stopped = False
        self.overflowed = False  # passed max_bytes: nothing kept, never finished
        self.kept = 0  # bytes counted against max_bytes
        self.text_bytes = 0  # UTF-8 bytes of generated text seen, kept or not
        self._max_bytes = sys.maxsize if max_bytes is None else max_bytes

    @property
    def finished(self) -> bool:
        """True once message_stop arrived after a message_delta, with every tool input parsed."""
        if (self._message is None or not self._delta_seen or not self._stopped
                or self.overflowed):
            return False
        return all(block.tool_input()[1] for block in self._blocks.values())

    def reported_usage(self) -> tuple[int | None, int | None]:
        """(input, output) tokens as the upstream reported them; None for each it did not.

        Output counts only once message_delta brought the total; a positive input count
        from message_start is already the real one.
        """
        prompt = reported_count(self._usage.get("input_tokens"))
        completion = reported_count(self._usage.get("output_tokens")) if self._delta_seen else None
        return (prompt or None), completion

    def feed_item(self, item: tuple[str | None, Mapping[str, Any]]) -> None:
        """`feed` for one relayed stream item, an ``(event, data)`` pair."""
        self.feed(*item)

    def feed(self, event: str | None, data: Mapping[str, Any]) -> None:
        kind = event or data.get("type")
        if kind == "message_start":
            message = data.get("message")
            if isinstance(message, Mapping):
                self._message = dict(message)
                usage = message.get("usage")
                self._usage = dict(usage) if isinstance(usage, Mapping) else {}
                self._blocks.clear()
                self._delta_seen = self._stopped = False
        elif kind == "content_block_start":
            index, block = data.get("index"), data.get("content_block")
            if _is_index(index) and isinstance(block, Mapping):
                self._blocks[index] = _Block(block)
                self.kept += SLOT_BYTES + _json_size(block)
        elif kind == "content_block_delta":
            self._delta(data)
        elif kind == "message_delta":
            self._message_delta(data)
        elif kind == "message_stop":
            self._stopped = True
        # ping, content_block_stop and event types added later change nothing here
        if self.kept > self._max_bytes:
            # Past the cap: drop the content; each later event is counted, then forgotten.
            self._blocks.clear()
            self.overflowed = True

    def _count(self, piece: str) -> None:
        size = utf8_len(piece)
        self.text_bytes += size
        self.kept += size

    def _delta(self, data: Mapping[str, Any]) -> None:
        index, delta = data.get("index"), data.get("delta")
        if not isinstance(delta, Mapping):
            return
        # Text is counted even for a block not kept (past the cap): it was relayed.
        block = self._blocks.get(index) if _is_index(index) else None
        kind = delta.get("type")
        field = _APPENDED.get(kind) if isinstance(kind, str) else None
        if field is not None:
            piece = delta.get(field)
            if isinstance(piece, str):
                self._count(piece)
                if block is not None:
                    block.pieces.setdefault(field, []).append(piece)
        elif kind == "input_json_delta":
            partial = delta.get("partial_json")
            if isinstance(partial, str):
                self._count(partial)
                if block is not None:
                    if block.json_parts is None:
                        block.json_parts = []
                    block.json_parts.append(partial)
        elif block is None:
            return
        elif kind == "signature_delta":
            signature = delta.get("signature")
            if isinstance(signature, str):
                block.signature = signature  # sent whole, once; a repeat replaces it
        elif kind == "citations_delta" and "citation" in delta:
            block.citations.append(delta["citation"])
            self.kept += _json_size(delta["citation"])

    def _message_delta(self, data: Mapping[str, Any]) -> None:
        if self._message is None:
            return
        self._delta_seen = True
        delta = data.get("delta")
        if isinstance(delta, Mapping):
            for key, value in delta.items():
                if key in ("stop_reason", "stop_sequence") or value is not None:
                    self._message[key] = value
        usage = data.get("usage")
        if isinstance(usage, Mapping):
            # Counts here are cumulative totals: they replace, and an absent or null
            # one leaves the message_start value standing.
            self._usage.update({k: v for k, v in usage.items() if v is not None})

    def result(self) -> JSON:
        """The message so far; faithful when `finished` is true."""
        message: JSON = dict(self._message) if self._message is not None else {
            "id": "", "type": "message", "role": "assistant", "model": "",
            "stop_reason": None, "stop_sequence": None,
        }
        message["content"] = [self._blocks[i].result() for i in sorted(self._blocks)]
        message["usage"] = dict(self._usage)
        return message


def _json_size(value: Any) -> int:
    """Bytes of `value` as JSON, for the cap; what orjson cannot write is charged a slot."""
    try:
        return len(orjson.dumps(value))
    except TypeError:
        return SLOT_BYTES


def _is_index(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _start_and_deltas(block: Mapping[str, Any]) -> tuple[JSON, list[JSON]]:
    """How the API streams one finished block: its empty start and the deltas that fill it."""
    kind = block.get("type")
    text = block.get("text")
    if kind == "text" and isinstance(text, str):
        start = {**block, "text": ""}
        deltas: list[JSON] = []
        citations = block.get("citations")
        if isinstance(citations, list) and citations:
            start["citations"] = []
            deltas = [{"type": "citations_delta", "citation": c} for c in citations]
        return start, [{"type": "text_delta", "text": text}, *deltas]
    arguments = block.get("input")
    if isinstance(kind, str) and kind.endswith("tool_use") and isinstance(arguments, Mapping):
        partial = json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))
        return {**block, "input": {}}, [{"type": "input_json_delta", "partial_json": partial}]
    thinking, signature = block.get("thinking"), block.get("signature")
    if kind == "thinking" and isinstance(thinking, str) and isinstance(signature, str):
        return {**block, "thinking": "", "signature": ""}, [
            {"type": "thinking_delta", "thinking": thinking},
            {"type": "signature_delta", "signature": signature},
        ]
    return dict(block), []  # redacted thinking, server tool results: sent whole in the start


def replay_events(message: Mapping[str, Any]) -> list[tuple[str, JSON]]:
    """The event sequence the API sends for `message`, each block's content in one delta.

    Args:
        message: a non-stream Anthropic message (as stored in the cache).

    Returns:
        ``(event name, data)`` pairs: message_start, per block content_block_start /
        delta(s) / content_block_stop, message_delta, message_stop.
    """
    usage = message.get("usage")
    usage = dict(usage) if isinstance(usage, Mapping) else {}
    output_tokens = usage.get("output_tokens", 0)
    head = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": 0},  # output is counted in message_delta
    }
    events: list[tuple[str, JSON]] = [("message_start", {"type": "message_start", "message": head})]
    content = message.get("content")
    for index, block in enumerate(content if isinstance(content, list) else []):
        start, deltas = _start_and_deltas(block if isinstance(block, Mapping) else {})
        events.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": start},
            )
        )
        events.extend(
            ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
            for d in deltas
        )
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    delta = {
        "stop_reason": message.get("stop_reason"),
        "stop_sequence": message.get("stop_sequence"),
    }
    events.append(
        (
            "message_delta",
            {"type": "message_delta", "delta": delta, "usage": {"output_tokens": output_tokens}},
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return events
