"""OpenAI chat streams, sans-IO: assemble chunks into one answer, replay an answer as chunks.

A streamed miss is assembled so it can be cached and priced like a JSON answer; a cache
hit for a client that asked for a stream is replayed from that stored answer.

Memory: an upstream stream can be endless. The assembler counts what it keeps (UTF-8
bytes of text, plus a fixed charge per choice and tool call) and, past `max_bytes`, drops
all of it and from then on forgets each chunk once it is counted: the relay goes on, the
answer is not cached (`overflowed`, never `finished`), and `text_bytes` and the usage
still say what the client was sent, for tokens and cost.
"""

from __future__ import annotations

import sys
from typing import Any

# What one choice's or tool call's bookkeeping costs, counted against `max_bytes`, so that
# a stream of many tiny choices is bounded too.
SLOT_BYTES = 256


def utf8_len(text: str) -> int:
    """Bytes of `text` in UTF-8; ASCII (the usual case) without encoding it."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def reported_count(value: Any) -> int | None:
    """A token count as an upstream reports it, or None when it is not a count."""
    return value if type(value) is int and value >= 0 else None


class ChatAssembler:
    """Feed `chat.completion.chunk` dicts in order; `result()` is the same `chat.completion`."""

    __slots__ = ("_head", "_choices", "usage", "finished", "overflowed", "kept", "text_bytes",
                 "_max_bytes")

    def __init__(self, max_bytes: int | None = None) -> None:
        self._head: dict[str, Any] = {}
        self._choices: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, Any] | None = None
        self.finished = False  # every choice that appeared got a finish_reason
        self.overflowed = False  # passed max_bytes: nothing kept, never finished
        self.kept = 0  # bytes counted against max_bytes
        self.text_bytes = 0  # UTF-8 bytes of generated text seen, kept or not
        self._max_bytes = sys.maxsize if max_bytes is None else max_bytes

    def feed(self, chunk: dict[str, Any]) -> None:
        if not self._head:
            for field in ("id", "created", "model", "system_fingerprint", "service_tier"):
                if field in chunk:
                    self._head[field] = chunk[field]
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            return
        for part in choices:
            if not isinstance(part, dict):
                continue
            index = part.get("index", 0)
            state = self._choices.get(index)
            if state is None:
                state = {"role": "assistant", "content": [], "tools": {}, "finish": None,
                         "refusal": []}
                self._choices[index] = state
                self.kept += SLOT_BYTES
            delta = part.get("delta")
            if isinstance(delta, dict):
                if isinstance(delta.get("role"), str):
                    state["role"] = delta["role"]
                for field in ("content", "refusal"):
                    piece = delta.get(field)
                    if isinstance(piece, str):
                        state[field].append(piece)
                        self._count(piece)
                for call in delta.get("tool_calls") or ():
                    if isinstance(call, dict):
                        self.kept += _merge_tool_call(state["tools"], call)
                        function = call.get("function")
                        if isinstance(function, dict):
                            for field in ("name", "arguments"):
                                if isinstance(function.get(field), str):
                                    self._count(function[field])
            if part.get("finish_reason") is not None:
                state["finish"] = part["finish_reason"]
        if self.kept > self._max_bytes:
            # Past the cap: drop everything; each later chunk is counted, then forgotten.
            self._choices.clear()
            self.overflowed = True
            self.finished = False
            return
        self.finished = bool(self._choices) and all(
            s["finish"] is not None for s in self._choices.values()
        )

    def _count(self, piece: str) -> None:
        size = utf8_len(piece)
        self.text_bytes += size
        self.kept += size

    def reported_usage(self) -> tuple[int | None, int | None]:
        """(prompt, completion) tokens as the upstream reported them; None for each it did not."""
        usage = self.usage
        if usage is None:
            return None, None
        return reported_count(usage.get("prompt_tokens")), reported_count(
            usage.get("completion_tokens"))

    feed_item = feed  # one relayed stream item, as every door's assembler takes it

    def result(self) -> dict[str, Any]:
        choices = []
        for index in sorted(self._choices):
            state = self._choices[index]
            message: dict[str, Any] = {
                "role": state["role"],
                "content": "".join(state["content"]) if state["content"] or not state["tools"]
                else None,
            }
            if state["refusal"]:
                message["refusal"] = "".join(state["refusal"])
            if state["tools"]:
                message["tool_calls"] = [
                    {
                        "id": t["id"],
                        "type": t["type"],
                        "function": {"name": t["name"], "arguments": "".join(t["arguments"])},
                    }
                    for _, t in sorted(state["tools"].items())
                ]
            choices.append(
                {"index": index, "message": message, "finish_reason": state["finish"],
                 "logprobs": None}
            )
        answer: dict[str, Any] = {"id": self._head.get("id", ""), "object": "chat.completion"}
        answer.update({k: v for k, v in self._head.items() if k != "id"})
        answer["choices"] = choices
        if self.usage is not None:
            answer["usage"] = self.usage
        return answer


def _merge_tool_call(tools: dict[int, dict[str, Any]], call: dict[str, Any]) -> int:
    """Merge one tool-call delta; returns the bookkeeping bytes it added (a new call's)."""
    added = 0
    index = call.get("index", len(tools))
    tool = tools.get(index)
    if tool is None:
        tool = {"id": "", "type": "function", "name": "", "arguments": []}
        tools[index] = tool
        added = SLOT_BYTES
    if isinstance(call.get("id"), str):
        tool["id"] = call["id"]
    if isinstance(call.get("type"), str):
        tool["type"] = call["type"]
    function = call.get("function")
    if isinstance(function, dict):
        if isinstance(function.get("name"), str):
            tool["name"] += function["name"]
        if isinstance(function.get("arguments"), str):
            tool["arguments"].append(function["arguments"])
    return added


def replay_chunks(answer: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """The chunks a client would have seen for `answer`, whole messages in one delta each."""
    head = {
        "id": answer.get("id", ""),
        "object": "chat.completion.chunk",
        "created": answer.get("created", 0),
        "model": answer.get("model", ""),
    }
    if "system_fingerprint" in answer:
        head["system_fingerprint"] = answer["system_fingerprint"]
    chunks = []
    for choice in answer.get("choices") or ():
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        delta: dict[str, Any] = {"role": message.get("role", "assistant"), "content": ""}
        chunks.append(
            {**head, "choices": [{"index": index, "delta": delta, "finish_reason": None}]})
        if message.get("content"):
            chunks.append(
                {**head, "choices": [{"index": index, "delta": {"content": message["content"]},
                                      "finish_reason": None}]}
            )
        if message.get("tool_calls"):
            calls = [
                {"index": i, "id": c.get("id"), "type": c.get("type", "function"),
                 "function": c.get("function", {})}
                for i, c in enumerate(message["tool_calls"])
            ]
            chunks.append(
                {**head, "choices": [{"index": index, "delta": {"tool_calls": calls},
                                      "finish_reason": None}]}
            )
        chunks.append(
            {**head, "choices": [{"index": index, "delta": {},
                                  "finish_reason": choice.get("finish_reason") or "stop"}]}
        )
    if include_usage and isinstance(answer.get("usage"), dict):
        chunks.append({**head, "choices": [], "usage": answer["usage"]})
    return chunks
