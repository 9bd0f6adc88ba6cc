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
from edge.codecs._checks import JSON, bad, is_int, nonempty, number

__all__ = ["decode_request", "encode_answer"]

_ROLES = {"user", "assistant", "system", "developer"}
_MODES: dict[str, hub.ToolChoiceMode] = {"auto": "auto", "none": "none", "required": "required"}


def decode_request(body: Mapping[str, Any]) -> hub.Request:
    """The client's Responses body as a hub request; `BadRequest` names the bad field."""
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
    choice, name = _tool_choice(body.get("tool_choice"))
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad("stream", "expected a boolean")
    return hub.Request(
        model=model,
        turns=turns,
        system=tuple(system),
        tools=_tools(body.get("tools")),
        tool_choice=choice,
        tool_name=name,
        temperature=number(body, "temperature"),
        top_p=number(body, "top_p"),
        max_tokens=max_tokens,
        response_format=_format(body.get("text")),
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


def _tools(value: object) -> tuple[hub.Tool, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise bad("tools", "expected a list")
    tools = []
    for i, tool in enumerate(value):
        where = f"tools[{i}]"
        if not isinstance(tool, Mapping) or tool.get("type") != "function":
            raise bad(f"{where}.type", "only function tools are supported")
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


def _tool_choice(value: object) -> tuple[hub.ToolChoiceMode | None, str | None]:
    if value is None:
        return None, None
    if isinstance(value, str) and value in _MODES:
        return _MODES[value], None
    if isinstance(value, Mapping) and value.get("type") == "function":
        return "tool", nonempty(value.get("name"), "tool_choice.name")
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
    answer: hub.Answer, model: str, *, response_id: str, item_ids: list[str], created: int
) -> JSON:
    """The ``response`` object for `answer`; `item_ids` gives one id per output item."""
    output: list[JSON] = []
    text: list[str] = []
    ids = iter(item_ids)

    def flush() -> None:
        if text:
            output.append(_message("".join(text), next(ids)))
            text.clear()

    for part in answer.parts:
        if isinstance(part, hub.Text):
            text.append(part.text)
        else:
            flush()
            output.append(_function_call(part, next(ids)))
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
