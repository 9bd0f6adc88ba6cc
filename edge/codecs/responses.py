"""OpenAI Responses (``/v1/responses``) to and from the hub: the door half.

A Responses request carries its conversation as ``input`` (a string, or a list of
message, ``function_call`` and ``function_call_output`` items) and its system text as
``instructions``. Decoding maps those onto hub turns; `encode_answer` builds the
``response`` object the official SDK parses, with ids and the clock passed in (this
module is sans-IO, see `edge.codecs`). Fields that only the Responses API knows
(``metadata``, ``store``, ``previous_response_id``) change no upstream answer, so they
are left to the caller, which reads them from the body itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edge import hub
from edge.codecs._checks import (
    JSON,
    bad,
    count,
    flag,
    is_int,
    nonempty,
    number,
    stream_error,
    upstream,
)
from edge.errors import UpstreamError

__all__ = [
    "FINAL_EVENTS",
    "StreamDecoder",
    "StreamEncoder",
    "decode_answer",
    "decode_request",
    "encode_answer",
    "encode_request",
    "error_in",
    "item_id",
]

#: The events that end a Responses stream normally (``response.failed`` ends it as an error).
FINAL_EVENTS = frozenset({"response.completed", "response.incomplete"})
#: The id prefix of each output item type edge names itself (OpenAI's own prefixes).
ID_PREFIXES = {
    "message": "msg",
    "function_call": "fc",
    "reasoning": "rs",
    "web_search_call": "ws",
    "file_search_call": "fs",
    "computer_call": "cu",
    "code_interpreter_call": "ci",
    "image_generation_call": "ig",
}


def item_id(item_type: object, prefix: str, index: int) -> str:
    """The id of output item `index` of a response whose items are named by `prefix`:
    ``msg_<prefix>_0``, ``fc_<prefix>_1``, ... (stable, so a stream and its final
    response, or two renamings of one response, always agree)."""
    kind = ID_PREFIXES.get(item_type, "item") if isinstance(item_type, str) else "item"
    return f"{kind}_{prefix}_{index}"

_ROLES = {"user", "assistant", "system", "developer"}
_MODES: dict[str, hub.ToolChoiceMode] = {"auto": "auto", "none": "none", "required": "required"}


def decode_request(body: Mapping[str, Any], *, native_tools: bool = False) -> hub.Request:
    """The client's Responses body as a hub request; `BadRequest` names the bad field.

    Tools other than functions (web_search, file_search, ...) have no hub form: they are
    refused naming their type, unless `native_tools` (the request may yet go to a native
    Responses upstream, which serves them; they are left out of the hub request then).
    """
    model = nonempty(body.get("model"), "model")
    system: list[str] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise bad("instructions", "expected a string")
        system.append(instructions)
    turns = _turns(body.get("input"), system)
    max_tokens = body.get("max_output_tokens")
    if max_tokens is not None and (not is_int(max_tokens) or max_tokens < 1):
        raise bad("max_output_tokens", "expected a positive integer")
    choice, name = _tool_choice(body.get("tool_choice"), native_tools)
    stream = body.get("stream")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise bad("user", "expected a string")
    if stream is not None and not isinstance(stream, bool):
        raise bad("stream", "expected a boolean")
    return hub.Request(
        model=model,
        turns=turns,
        system=tuple(system),
        tools=_tools(body.get("tools"), native_tools),
        tool_choice=choice,
        tool_name=name,
        parallel_tool_calls=flag(body, "parallel_tool_calls"),
        temperature=number(body, "temperature"),
        top_p=number(body, "top_p"),
        max_tokens=max_tokens,
        response_format=_format(body.get("text")),
        user=user,
        stream=stream,
        where="input",
    )


def _turns(value: object, system: list[str]) -> tuple[hub.Turn, ...]:
    if isinstance(value, str):
        return (hub.Turn("user", (hub.Text(value),), where="input"),)
    if not isinstance(value, list) or not value:
        raise bad("input", "expected a string or a non-empty list of items")
    turns: list[hub.Turn] = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, Mapping):
            raise bad(where, "expected an object")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in _ROLES:
                raise bad(f"{where}.role", "expected user, assistant, system or developer")
            parts = _message_parts(item.get("content"), f"{where}.content")
            if role in ("system", "developer"):
                system.extend(p.text for p in parts if isinstance(p, hub.Text))
                continue
            _append(turns, "user" if role == "user" else "assistant", parts, where)
        elif kind == "function_call":
            call = hub.ToolCall(
                id=nonempty(item.get("call_id"), f"{where}.call_id"),
                name=nonempty(item.get("name"), f"{where}.name"),
                arguments=_string(item.get("arguments"), f"{where}.arguments"),
                where=f"{where}.arguments",
            )
            _append(turns, "assistant", (call,), where)
        elif kind == "function_call_output":
            result = hub.ToolResult(
                call_id=nonempty(item.get("call_id"), f"{where}.call_id"),
                content=_string(item.get("output"), f"{where}.output"),
                where=f"{where}.output",
            )
            _append(turns, "user", (result,), where)
        else:
            raise bad(f"{where}.type", f"unsupported item type {kind!r}")
    return tuple(turns)


def _append(turns: list[hub.Turn], role: str, parts: tuple[hub.Part, ...], where: str) -> None:
    """Adjacent items of one role are one turn (a call and its siblings, say)."""
    if turns and turns[-1].role == role:
        last = turns[-1]
        turns[-1] = hub.Turn(last.role, last.parts + parts, where=last.where)
    else:
        turns.append(hub.Turn("user" if role == "user" else "assistant", parts, where=where))


def _message_parts(content: object, where: str) -> tuple[hub.Text | hub.Image, ...]:
    if isinstance(content, str):
        return (hub.Text(content),)
    if not isinstance(content, list):
        raise bad(where, "expected a string or a list of content parts")
    parts: list[hub.Text | hub.Image] = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        if not isinstance(part, Mapping):
            raise bad(at, "expected an object")
        kind = part.get("type")
        if kind in ("input_text", "output_text"):
            parts.append(hub.Text(_string(part.get("text"), f"{at}.text")))
        elif kind == "input_image":
            parts.append(
                hub.Image(nonempty(part.get("image_url"), f"{at}.image_url"), f"{at}.image_url")
            )
        else:
            raise bad(f"{at}.type", f"unsupported content type {kind!r}")
    return tuple(parts)


def _string(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise bad(where, "expected a string")
    return value


def _tools(value: object, native_tools: bool) -> tuple[hub.Tool, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise bad("tools", "expected a list")
    tools = []
    for i, tool in enumerate(value):
        where = f"tools[{i}]"
        if not isinstance(tool, Mapping):
            raise bad(where, "expected an object")
        kind = tool.get("type")
        if kind != "function":
            if not isinstance(kind, str) or not kind:
                raise bad(f"{where}.type", "expected a tool type")
            if native_tools:
                continue
            raise bad(f"{where}.type", f"tool type {kind!r} is served only by a provider "
                      "with responses_api = true; this model's provider takes function tools only")
        parameters = tool.get("parameters")
        if parameters is not None and not isinstance(parameters, Mapping):
            raise bad(f"{where}.parameters", "expected an object")
        description = tool.get("description")
        if description is not None and not isinstance(description, str):
            raise bad(f"{where}.description", "expected a string")
        strict = tool.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise bad(f"{where}.strict", "expected a boolean")
        tools.append(
            hub.Tool(nonempty(tool.get("name"), f"{where}.name"), description, parameters, strict)
        )
    return tuple(tools)


def _tool_choice(
    value: object, native_tools: bool
) -> tuple[hub.ToolChoiceMode | None, str | None]:
    if value is None:
        return None, None
    if isinstance(value, str) and value in _MODES:
        return _MODES[value], None
    if isinstance(value, Mapping) and value.get("type") == "function":
        return "tool", nonempty(value.get("name"), "tool_choice.name")
    if native_tools and isinstance(value, Mapping) and isinstance(value.get("type"), str):
        return None, None  # a built-in tool's choice: a native upstream's to judge
    raise bad("tool_choice", "expected auto, none, required or a function choice")


def _format(value: object) -> hub.ResponseFormat | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise bad("text", "expected an object")
    fmt = value.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, Mapping):
        raise bad("text.format", "expected an object")
    kind = fmt.get("type")
    if kind == "text":
        return hub.ResponseFormat("text")
    if kind == "json_object":
        return hub.ResponseFormat("json_object")
    if kind == "json_schema":
        schema = fmt.get("schema")
        if not isinstance(schema, Mapping):
            raise bad("text.format.schema", "expected an object")
        strict = fmt.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise bad("text.format.strict", "expected a boolean")
        return hub.ResponseFormat(
            "json_schema", nonempty(fmt.get("name"), "text.format.name"), schema, strict
        )
    raise bad("text.format.type", "expected text, json_object or json_schema")


def encode_answer(
    answer: hub.Answer, model: str, *, response_id: str, item_prefix: str, created: int
) -> JSON:
    """The ``response`` object for `answer`; its items are named by `item_prefix` (`item_id`)."""
    output: list[JSON] = []
    text: list[str] = []

    def flush() -> None:
        if text:
            output.append(_message("".join(text), item_id("message", item_prefix, len(output))))
            text.clear()

    for part in answer.parts:
        if isinstance(part, hub.Text):
            text.append(part.text)
        else:
            flush()
            output.append(
                _function_call(part, item_id("function_call", item_prefix, len(output)))
            )
    flush()
    incomplete = answer.finish == "length"
    prompt = answer.usage.prompt or 0
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": "incomplete" if incomplete else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "error": None,
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": answer.usage.completion,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": answer.usage.total,
        },
    }


def _message(text: str, item_id: str) -> JSON:
    return {
        "type": "message",
        "id": item_id,
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def _function_call(call: hub.ToolCall, item_id: str) -> JSON:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments,
        "status": "completed",
    }


class StreamEncoder:
    """Hub events -> Responses SSE events, as ``(event name, data)`` pairs.

    Every event carries a rising ``sequence_number``; items get ids ``<prefix>_<n>`` so
    that each delta names the item it belongs to, as the SDK's accumulator requires.
    The stream ends with ``response.completed`` (``response.incomplete`` on a length
    stop), or ``response.failed`` via `fail` when the upstream broke after the first byte.
    """

    def __init__(self, model: str, *, response_id: str, item_prefix: str, created: int) -> None:
        self._model = model
        self._id = response_id
        self._prefix = item_prefix
        self._created = created
        self._seq = 0
        self._parts: list[hub.Text | hub.ToolCall] = []
        self._item_ids: list[str] = []
        self._open: JSON | None = None  # the item being streamed, as output_item.added said
        self._text: list[str] = []
        self._finish: hub.FinishReason = "stop"
        self._calls: dict[int, int] = {}  # hub tool call index -> index into _parts

    def feed(self, event: hub.Event) -> list[tuple[str, JSON]]:
        out: list[tuple[str, JSON]] = []
        if isinstance(event, hub.Start):
            shell = self._response("in_progress", [])
            out.append(self._event("response.created", response=shell))
            out.append(self._event("response.in_progress", response=shell))
        elif isinstance(event, hub.TextDelta):
            if self._open is None or self._open["type"] != "message":
                out += self._close()
                out += self._open_item(
                    {"type": "message", "status": "in_progress", "role": "assistant", "content": []}
                )
                part = {"type": "output_text", "text": "", "annotations": []}
                out.append(self._event("response.content_part.added", **self._at(), part=part))
            self._text.append(event.text)
            out.append(
                self._event(
                    "response.output_text.delta", **self._at(), delta=event.text, logprobs=[]
                )
            )
        elif isinstance(event, hub.ToolCallStart):
            out += self._close()
            call_id = event.id or f"call_{self._prefix}_{event.index}"
            self._calls[event.index] = len(self._parts)
            self._parts.append(hub.ToolCall(call_id, event.name, ""))
            out += self._open_item(
                {
                    "type": "function_call",
                    "call_id": call_id,
                    "name": event.name,
                    "arguments": "",
                    "status": "in_progress",
                }
            )
        elif isinstance(event, hub.ToolCallDelta):
            at = self._calls.get(event.index)
            call = self._parts[at] if at is not None else None
            if not event.arguments:
                return out  # an empty delta says nothing (chat upstreams send them)
            streaming = self._open is not None and self._open["type"] == "function_call"
            if not (streaming and at == len(self._parts) - 1 and isinstance(call, hub.ToolCall)):
                raise upstream("tool call deltas interleave; an item here is closed once the "
                               "next begins")
            self._parts[at] = hub.ToolCall(call.id, call.name, call.arguments + event.arguments)
            out.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=self._item_ids[-1],
                    output_index=len(self._item_ids) - 1,
                    delta=event.arguments,
                )
            )
        elif isinstance(event, hub.Finish):
            self._finish = event.reason
        elif isinstance(event, hub.End):
            out += self._close()
            answer = hub.Answer(
                self._id, self._model, tuple(self._parts), self._finish, event.usage or hub.Usage()
            )
            final = encode_answer(
                answer,
                self._model,
                response_id=self._id,
                item_prefix=self._prefix,
                created=self._created,
            )
            name = (
                "response.incomplete" if final["status"] == "incomplete" else "response.completed"
            )
            out.append(self._event(name, response=final))
        return out

    def fail(self, message: str) -> list[tuple[str, JSON]]:
        """``response.failed``: the upstream broke after the client got the first byte."""
        failed = self._response("failed", [])
        failed["error"] = {"code": "server_error", "message": message}
        return [self._event("response.failed", response=failed)]

    def _response(self, status: str, output: list[JSON]) -> JSON:
        return {
            "id": self._id,
            "object": "response",
            "created_at": self._created,
            "status": status,
            "error": None,
            "incomplete_details": None,
            "model": self._model,
            "output": output,
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
        }

    def _event(self, kind: str, /, **data: Any) -> tuple[str, JSON]:
        body: JSON = {"type": kind, "sequence_number": self._seq, **data}
        self._seq += 1
        return kind, body

    def _at(self) -> JSON:
        return {
            "item_id": self._item_ids[-1],
            "output_index": len(self._item_ids) - 1,
            "content_index": 0,
        }

    def _open_item(self, item: JSON) -> list[tuple[str, JSON]]:
        new_id = item_id(item["type"], self._prefix, len(self._item_ids))
        self._item_ids.append(new_id)
        self._open = {"id": new_id, **item}
        return [
            self._event(
                "response.output_item.added", output_index=len(self._item_ids) - 1, item=self._open
            )
        ]

    def _close(self) -> list[tuple[str, JSON]]:
        item, self._open = self._open, None
        if item is None:
            return []
        index = len(self._item_ids) - 1
        out = []
        if item["type"] == "message":
            text = "".join(self._text)
            self._text.clear()
            self._parts.append(hub.Text(text))
            done = _message(text, item["id"])
            part = done["content"][0]
            out.append(
                self._event("response.output_text.done", **self._at(), text=text, logprobs=[])
            )
            out.append(self._event("response.content_part.done", **self._at(), part=part))
        else:
            call = self._parts[-1]
            assert isinstance(call, hub.ToolCall)
            done = _function_call(call, item["id"])
            out.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    name=call.name,
                    arguments=call.arguments,
                )
            )
        out.append(self._event("response.output_item.done", output_index=index, item=done))
        return out


# --------------------------------------------------------------------------- kind


def encode_request(req: hub.Request, model: str) -> JSON:
    """The Responses body for an upstream with ``responses_api = true`` serving `model`."""
    items: list[JSON] = []
    for turn in req.turns:
        content: list[JSON] = []
        for part in turn.parts:
            if isinstance(part, hub.Text):
                kind = "input_text" if turn.role == "user" else "output_text"
                content.append({"type": kind, "text": part.text})
            elif isinstance(part, hub.Image):
                content.append({"type": "input_image", "image_url": part.url})
            else:
                if content:
                    items.append({"role": turn.role, "content": content})
                    content = []
                items.append(_call_item(part))
        if content:
            items.append({"role": turn.role, "content": content})
    out: JSON = {"model": model, "input": items}
    if req.system:
        out["instructions"] = "\n\n".join(req.system)
    if req.tools:
        out["tools"] = [
            {
                "type": "function",
                "name": tool.name,
                "parameters": dict(tool.parameters or {"type": "object", "properties": {}}),
                **({"description": tool.description} if tool.description is not None else {}),
                **({"strict": tool.strict} if tool.strict is not None else {}),
            }
            for tool in req.tools
        ]
        if req.tool_choice == "tool":
            out["tool_choice"] = {"type": "function", "name": req.tool_name}
        elif req.tool_choice is not None:
            out["tool_choice"] = req.tool_choice
    if req.response_format is not None:
        fmt = req.response_format
        spec: JSON = {"type": fmt.type}
        if fmt.type == "json_schema":
            spec.update(name=fmt.name or "response", schema=dict(fmt.schema or {}))
            if fmt.strict is not None:
                spec["strict"] = fmt.strict
        out["text"] = {"format": spec}
    for key, value in (
        ("max_output_tokens", req.max_tokens),
        ("temperature", req.temperature),
        ("top_p", req.top_p),
        ("stream", req.stream),
    ):
        if value is not None:
            out[key] = value
    return out


def _call_item(part: hub.ToolCall | hub.ToolResult) -> JSON:
    if isinstance(part, hub.ToolCall):
        return {
            "type": "function_call",
            "call_id": part.id,
            "name": part.name,
            "arguments": part.arguments,
        }
    output = part.content
    if not isinstance(output, str):
        output = "".join(p.text for p in output if isinstance(p, hub.Text))
    return {"type": "function_call_output", "call_id": part.call_id, "output": output}


def decode_answer(body: Mapping[str, Any]) -> hub.Answer:
    """Read an upstream's ``response`` object; `UpstreamError` on a bad shape."""
    if not isinstance(body, Mapping) or not isinstance(body.get("output"), list):
        raise upstream("the response has no output list")
    parts: list[hub.Text | hub.ToolCall] = []
    for item in body["output"]:
        if not isinstance(item, Mapping):
            raise upstream("an output item is not an object")
        if item.get("type") == "message":
            for part in item.get("content") or []:
                if isinstance(part, Mapping) and part.get("type") in ("output_text", "refusal"):
                    text = part.get("text", part.get("refusal"))
                    if isinstance(text, str):
                        parts.append(hub.Text(text))
        elif item.get("type") == "function_call":
            call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments")
            if not isinstance(call_id, str) or not isinstance(name, str):
                raise upstream("a function call lacks its call_id or name")
            parts.append(
                hub.ToolCall(call_id, name, arguments if isinstance(arguments, str) else "")
            )
    usage = body.get("usage")
    usage = usage if isinstance(usage, Mapping) else {}
    prompt, model, created = usage.get("input_tokens"), body.get("model"), body.get("created_at")
    finish: hub.FinishReason = "stop"
    if body.get("status") == "incomplete":
        details = body.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, Mapping) else None
        finish = "content_filter" if reason == "content_filter" else "length"
    elif any(isinstance(p, hub.ToolCall) for p in parts):
        finish = "tool_calls"
    response_id = body.get("id")
    return hub.Answer(
        id=response_id if isinstance(response_id, str) else "",
        model=model if isinstance(model, str) else "",
        parts=tuple(parts),
        finish=finish,
        usage=hub.Usage(prompt if is_int(prompt) else None, count(usage.get("output_tokens"))),
        created=created if is_int(created) else None,
    )


def error_in(data: Mapping[str, Any]) -> UpstreamError | None:
    """The error an upstream reported as a Responses event (``response.failed`` or
    ``error``), or None. Read here only, for the native relay and the hub alike."""
    kind = data.get("type")
    if kind != "response.failed" and kind != "error":
        return None
    response = data.get("response")
    error = response.get("error") if isinstance(response, Mapping) else data
    error = error if isinstance(error, Mapping) else {}
    return stream_error(error.get("message"), error.get("code"))


class StreamDecoder:
    """An upstream's Responses SSE events (their data objects) -> hub events."""

    def __init__(self) -> None:
        self._calls: dict[str, int] = {}  # function_call item id -> hub tool call index
        self._tools = False
        self._ended = False

    def feed(self, data: Mapping[str, Any]) -> list[hub.Event]:
        kind = data.get("type") if isinstance(data, Mapping) else None
        if kind == "response.created":
            response = data.get("response")
            rid = response.get("id") if isinstance(response, Mapping) else None
            return [hub.Start(rid if isinstance(rid, str) else "")]
        if kind == "response.output_text.delta":
            delta = data.get("delta")
            return [hub.TextDelta(delta)] if isinstance(delta, str) and delta else []
        if kind == "response.output_item.added":
            item = data.get("item")
            if isinstance(item, Mapping) and item.get("type") == "function_call":
                name, call_id = item.get("name"), item.get("call_id")
                if not isinstance(name, str):
                    raise upstream("a function call item lacks its name")
                index = self._calls[str(item.get("id"))] = len(self._calls)
                self._tools = True
                return [
                    hub.ToolCallStart(index, call_id if isinstance(call_id, str) else None, name)
                ]
            return []
        if kind == "response.function_call_arguments.delta":
            at = self._calls.get(str(data.get("item_id")))
            delta = data.get("delta")
            if at is None:
                raise upstream("arguments for a function call that never began")
            return [hub.ToolCallDelta(at, delta)] if isinstance(delta, str) and delta else []
        if kind in FINAL_EVENTS:
            self._ended = True
            response = data.get("response")
            answer = decode_answer(response if isinstance(response, Mapping) else {})
            finish: hub.FinishReason = answer.finish
            if finish == "stop" and self._tools:
                finish = "tool_calls"
            return [hub.Finish(finish), hub.End(answer.usage)]
        error = error_in(data)
        if error is not None:
            raise error
        return []

    @property
    def done(self) -> bool:
        """True once the upstream's final event arrived."""
        return self._ended

    def feed_item(self, item: tuple[str | None, Mapping[str, Any]]) -> list[hub.Event]:
        """`feed` for one ``(event, data)`` stream item as an adapter yields it."""
        return self.feed(item[1])

    def finish(self) -> list[hub.Event]:
        """The upstream closed its stream; without response.completed that is a failure."""
        if not self._ended:
            raise upstream("the stream ended before response.completed")
        return []
