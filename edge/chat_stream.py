"""OpenAI chat streams, sans-IO: assemble chunks into one answer, replay an answer as chunks.

A streamed miss is assembled so it can be cached and priced like a JSON answer; a cache
hit for a client that asked for a stream is replayed from that stored answer.
"""

from __future__ import annotations

from typing import Any


class ChatAssembler:
    """Feed `chat.completion.chunk` dicts in order; `result()` is the same `chat.completion`."""

    __slots__ = ("_head", "_choices", "usage", "finished")

    def __init__(self) -> None:
        self._head: dict[str, Any] = {}
        self._choices: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, Any] | None = None
        self.finished = False  # every choice that appeared got a finish_reason

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
            delta = part.get("delta")
            if isinstance(delta, dict):
                if isinstance(delta.get("role"), str):
                    state["role"] = delta["role"]
                if isinstance(delta.get("content"), str):
                    state["content"].append(delta["content"])
                if isinstance(delta.get("refusal"), str):
                    state["refusal"].append(delta["refusal"])
                for call in delta.get("tool_calls") or ():
                    if isinstance(call, dict):
                        _merge_tool_call(state["tools"], call)
            if part.get("finish_reason") is not None:
                state["finish"] = part["finish_reason"]
        self.finished = bool(self._choices) and all(
            s["finish"] is not None for s in self._choices.values()
        )

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


def _merge_tool_call(tools: dict[int, dict[str, Any]], call: dict[str, Any]) -> None:
    index = call.get("index", len(tools))
    tool = tools.get(index)
    if tool is None:
        tool = {"id": "", "type": "function", "name": "", "arguments": []}
        tools[index] = tool
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
