"""Anthropic Messages as a hub codec: the /v1/messages door, the anthropic kind.

Door side, `decode_request` validates a client's Messages request into a `hub.Request`
and `encode_answer` / `StreamEncoder` write a ``message`` / its ``(event, data)`` pairs.
Kind side, `encode_request` writes the upstream body and `decode_answer` /
`StreamDecoder` read what Anthropic sends back.

Anthropic's rules are applied on the way out: turns alternate (consecutive turns of
one role merge), blocks are non-empty, a user turn's ``tool_result`` blocks lead it,
``max_tokens`` is required (`DEFAULT_MAX_TOKENS` when the client did not say), the
temperature range is 0..1, images are base64 of four media types or an http(s) URL,
and content blocks stream strictly one after another. What a request needs and
Anthropic cannot express (``n`` > 1, other images) raises `BadRequest` naming the
client's field. Server tools, documents and other blocks with no counterpart in the
hub are refused on the way in; thinking blocks are dropped (another model cannot use
them), as are ``top_k``, ``thinking`` and ``cache_control``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from edge import hub
from edge.errors import UpstreamError

from ._checks import (
    JSON,
    bad,
    count,
    flag,
    is_int,
    nonempty,
    number,
    stop_list,
    stream_error,
    system_text,
    texts,
    upstream,
)

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "StreamDecoder",
    "StreamEncoder",
    "decode_answer",
    "decode_request",
    "encode_answer",
    "encode_request",
    "error_in",
]

DEFAULT_MAX_TOKENS = 4096
"""Anthropic requires max_tokens; clients of other formats often omit it."""

# Anthropic accepts only these media types for base64 image sources.
_IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})

_FINISH_FROM_STOP: dict[str, hub.FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

_STOP_FROM_FINISH: dict[hub.FinishReason, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}

_TOOL_CHOICES: dict[str, hub.ToolChoiceMode] = {
    "auto": "auto",
    "any": "required",
    "none": "none",
    "tool": "tool",
}


def _finish(stop_reason: object) -> hub.FinishReason:
    return _FINISH_FROM_STOP.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def _usage(usage: Mapping[str, Any]) -> hub.Usage:
    """Cached input is still prompt input: the hub's prompt count includes it."""
    prompt = (
        count(usage.get("input_tokens"))
        + count(usage.get("cache_creation_input_tokens"))
        + count(usage.get("cache_read_input_tokens"))
    )
    return hub.Usage(prompt, count(usage.get("output_tokens")))


def _dump_arguments(value: Any) -> str:
    """Tool input as the hub carries it: compact JSON text."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _parse_input(arguments: str) -> JSON:
    """Tool arguments as Anthropic's ``input``, which must be an object ("" reads as {}).

    Raises:
        ValueError: the text is not JSON.
        TypeError: it is JSON but not an object.
    """
    if not arguments:
        return {}
    parsed = json.loads(arguments)
    if not isinstance(parsed, dict):
        raise TypeError("not an object")
    return parsed


# --------------------------------------------------------------------------- door: request


def decode_request(body: Mapping[str, Any]) -> hub.Request:
    """Validate a client's Messages request into the hub form.

    Raises:
        BadRequest: a required field is missing or a field is malformed or cannot be
            carried; message and param name it.
    """
    if not isinstance(body, Mapping):
        raise bad("body", "expected a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("model", "required, a non-empty string")
    max_tokens = body.get("max_tokens")
    if not is_int(max_tokens) or max_tokens < 1:
        raise bad("max_tokens", "required, a positive integer")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages", "required, a non-empty list of messages")

    system = body.get("system")
    turns: list[hub.Turn] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise bad(where, "expected an object")
        role = message.get("role")
        content = message.get("content")
        if role == "user":
            turns.append(hub.Turn("user", _parts(content, f"{where}.content", _USER_BLOCKS), where))
        elif role == "assistant":
            parts = _parts(content, f"{where}.content", _ASSISTANT_BLOCKS)
            turns.append(hub.Turn("assistant", parts, where))
        else:
            raise bad(f"{where}.role", f"unsupported role {role!r}; expected user or assistant")

    tools, choice, tool_name, parallel = _decode_tools(body)
    stop = body.get("stop_sequences")
    temperature, top_p = number(body, "temperature"), number(body, "top_p")
    return hub.Request(
        model=model,
        turns=tuple(turns),
        system=() if system is None else tuple(texts(system, "system", "block")),
        tools=tools,
        tool_choice=choice,
        tool_name=tool_name,
        parallel_tool_calls=parallel,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        stop=() if stop is None else stop_list(stop, "stop_sequences"),
        user=_user_id(body.get("metadata")),
        stream=flag(body, "stream"),
    )


def _user_id(metadata: object) -> str | None:
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise bad("metadata", "expected an object")
    user_id = metadata.get("user_id")
    if user_id is not None and not isinstance(user_id, str):
        raise bad("metadata.user_id", "expected a string")
    return user_id


def _text(block: Mapping[str, Any], where: str) -> hub.Text:
    text = block.get("text")
    if not isinstance(text, str):
        raise bad(f"{where}.text", "expected a string")
    return hub.Text(text)


def _image(block: Mapping[str, Any], where: str) -> hub.Image:
    source = block.get("source")
    where = f"{where}.source"
    if not isinstance(source, Mapping):
        raise bad(where, "expected an object")
    kind = source.get("type")
    if kind == "base64":
        media_type, data = source.get("media_type"), source.get("data")
        if not isinstance(media_type, str) or not media_type:
            raise bad(f"{where}.media_type", "expected a string")
        if not isinstance(data, str) or not data:
            raise bad(f"{where}.data", "expected a base64 string")
        return hub.Image(f"data:{media_type};base64,{data}", where)
    if kind == "url":
        url = source.get("url")
        if not isinstance(url, str) or not url:
            raise bad(f"{where}.url", "expected a string")
        return hub.Image(url, where)
    raise bad(f"{where}.type", "expected 'base64' or 'url'")


def _tool_result(block: Mapping[str, Any], where: str) -> hub.ToolResult:
    call_id = nonempty(block.get("tool_use_id"), f"{where}.tool_use_id")
    is_error = block.get("is_error") is True
    content = block.get("content")
    if content is None or isinstance(content, str):
        return hub.ToolResult(call_id, content or "", is_error, where)
    if not isinstance(content, list):
        raise bad(f"{where}.content", "expected a string or a list of content blocks")
    items: list[hub.Text | hub.Image] = []
    for k, item in enumerate(content):
        at = f"{where}.content[{k}]"
        kind = item.get("type") if isinstance(item, Mapping) else None
        if kind == "text" and isinstance(item, Mapping):
            items.append(_text(item, at))
        elif kind == "image" and isinstance(item, Mapping):
            items.append(_image(item, at))
        else:
            raise bad(at, "expected a text or image block")
    return hub.ToolResult(call_id, tuple(items), is_error, where)


def _tool_use(block: Mapping[str, Any], where: str) -> hub.ToolCall:
    call_id = nonempty(block.get("id"), f"{where}.id")
    name = nonempty(block.get("name"), f"{where}.name")
    arguments = block.get("input")
    if not isinstance(arguments, Mapping):
        raise bad(f"{where}.input", "expected an object")
    return hub.ToolCall(call_id, name, _dump_arguments(arguments), f"{where}.input")


_BlockDecoder = Callable[[Mapping[str, Any], str], hub.Part]

# The blocks each role may send; None: dropped (thinking is the model's own scratch
# work, which another model cannot use).
_USER_BLOCKS: dict[str, _BlockDecoder | None] = {
    "text": _text,
    "image": _image,
    "tool_result": _tool_result,
}
_ASSISTANT_BLOCKS: dict[str, _BlockDecoder | None] = {
    "text": _text,
    "tool_use": _tool_use,
    "thinking": None,
    "redacted_thinking": None,
}


def _parts(
    content: object, where: str, blocks: Mapping[str, _BlockDecoder | None]
) -> tuple[hub.Part, ...]:
    if isinstance(content, str):
        return (hub.Text(content),)
    if not isinstance(content, list):
        raise bad(where, "expected a string or a list of content blocks")
    parts: list[hub.Part] = []
    for j, block in enumerate(content):
        at = f"{where}[{j}]"
        if not isinstance(block, Mapping):
            raise bad(at, "expected an object")
        kind = block.get("type")
        if not isinstance(kind, str) or kind not in blocks:
            raise bad(f"{at}.type", f"content block type {kind!r} is not supported for this model")
        decode = blocks[kind]
        if decode is not None:
            parts.append(decode(block, at))
    return tuple(parts)


def _decode_tools(
    body: Mapping[str, Any],
) -> tuple[tuple[hub.Tool, ...], hub.ToolChoiceMode | None, str | None, bool | None]:
    tools = body.get("tools")
    decoded = []
    if tools is not None:
        if not isinstance(tools, list):
            raise bad("tools", "expected a list")
        for i, tool in enumerate(tools):
            at = f"tools[{i}]"
            if not isinstance(tool, Mapping):
                raise bad(at, "expected an object")
            if tool.get("type", "custom") != "custom":
                raise bad(
                    f"{at}.type", f"server tool {tool.get('type')!r} needs an Anthropic model"
                )
            name = nonempty(tool.get("name"), f"{at}.name")
            schema = tool.get("input_schema")
            if not isinstance(schema, Mapping):
                raise bad(f"{at}.input_schema", "required, a JSON Schema object")
            description = tool.get("description")
            if description is not None and not isinstance(description, str):
                raise bad(f"{at}.description", "expected a string")
            decoded.append(hub.Tool(name, description, schema))

    choice = body.get("tool_choice")
    if choice is None:
        return tuple(decoded), None, None, None
    if not isinstance(choice, Mapping):
        raise bad("tool_choice", "expected an object")
    kind = choice.get("type")
    mode = _TOOL_CHOICES.get(kind) if isinstance(kind, str) else None
    if mode is None:
        raise bad("tool_choice.type", "expected 'auto', 'any', 'tool' or 'none'")
    tool_name = nonempty(choice.get("name"), "tool_choice.name") if mode == "tool" else None
    disable = flag(choice, "disable_parallel_tool_use", "tool_choice.disable_parallel_tool_use")
    # Only a refusal of parallel calls is news: allowing them is every format's default.
    return tuple(decoded), mode, tool_name, False if disable else None


# --------------------------------------------------------------------------- kind: request


def encode_request(req: hub.Request, model: str) -> JSON:
    """The Messages request for an Anthropic upstream serving `model`.

    Raises:
        BadRequest: the request needs what Anthropic cannot express; names the field.
    """
    if req.n is not None and req.n != 1:
        raise bad("n", "only n=1 is supported for Anthropic models")
    turns: list[tuple[str, list[JSON]]] = []
    for turn in req.turns:
        blocks = [block for part in turn.parts if (block := _block(part)) is not None]
        if not blocks:
            continue  # empty text: Anthropic rejects empty blocks, and nothing is lost
        if turns and turns[-1][0] == turn.role:
            turns[-1][1].extend(blocks)
        else:
            turns.append((turn.role, blocks))
    if not turns:
        raise bad(req.where, "at least one non-empty user or assistant message is required")

    out: JSON = {
        "model": model,
        "max_tokens": DEFAULT_MAX_TOKENS if req.max_tokens is None else req.max_tokens,
        "messages": [_turn(role, blocks) for role, blocks in turns],
    }
    system = system_text(req)
    if system:
        out["system"] = system
    # tool_choice "none", "never call a tool": the simplest faithful form is offering none.
    if req.tools and req.tool_choice != "none":
        out["tools"] = [_encode_tool(tool) for tool in req.tools]
        choice: JSON | None = None
        if req.tool_choice == "tool":
            choice = {"type": "tool", "name": req.tool_name}
        elif req.tool_choice is not None:
            choice = {"type": "any" if req.tool_choice == "required" else "auto"}
        if req.parallel_tool_calls is False:
            choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
        if choice is not None:
            out["tool_choice"] = choice
    if req.stop:
        out["stop_sequences"] = list(req.stop)
    if req.temperature is not None:
        out["temperature"] = min(max(req.temperature, 0), 1)  # Anthropic's range is 0..1
    if req.top_p is not None:
        out["top_p"] = req.top_p
    if req.user is not None:
        out["metadata"] = {"user_id": req.user}
    if req.stream is not None:
        out["stream"] = req.stream
    return out


def _turn(role: str, blocks: list[JSON]) -> JSON:
    if role == "user":
        # Anthropic wants a turn's tool_result blocks ahead of any other content.
        blocks = sorted(blocks, key=lambda block: block["type"] != "tool_result")
    if len(blocks) == 1 and blocks[0]["type"] == "text":
        return {"role": role, "content": blocks[0]["text"]}
    return {"role": role, "content": blocks}


def _block(part: hub.Part) -> JSON | None:
    """The content block of one part; None for an empty text, which Anthropic rejects."""
    if isinstance(part, hub.Text):
        return {"type": "text", "text": part.text} if part.text else None
    if isinstance(part, hub.Image):
        return _image_block(part)
    if isinstance(part, hub.ToolCall):
        try:
            arguments = _parse_input(part.arguments)
        except TypeError:
            raise bad(part.where, "expected a JSON object") from None
        except ValueError:
            raise bad(part.where, "is not valid JSON") from None
        return {"type": "tool_use", "id": part.id, "name": part.name, "input": arguments}
    block: JSON = {"type": "tool_result", "tool_use_id": part.call_id}
    if isinstance(part.content, str):
        if part.content:
            block["content"] = part.content
    else:
        inner = [b for item in part.content if (b := _block(item)) is not None]
        if inner:
            block["content"] = inner
    if part.is_error:
        block["is_error"] = True
    return block


def _image_block(image: hub.Image) -> JSON:
    url, where = image.url, image.where
    if url[:5].lower() == "data:":
        header, comma, data = url[5:].partition(",")
        media_type, *params = header.split(";")
        media_type = media_type.strip().lower()
        if not comma or "base64" not in (p.strip().lower() for p in params):
            raise bad(where, "only base64 data: URLs are supported")
        if media_type not in _IMAGE_MEDIA_TYPES:
            raise bad(where, f"unsupported image media type {media_type!r}")
        if not data:
            raise bad(where, "the data: URL carries no data")
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    if url.split(":", 1)[0].lower() in ("http", "https"):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise bad(where, "expected a data: URL or an http(s) URL")


def _encode_tool(tool: hub.Tool) -> JSON:
    entry: JSON = {"name": tool.name}
    if tool.description is not None:
        entry["description"] = tool.description
    schema = tool.parameters
    entry["input_schema"] = {"type": "object", "properties": {}} if schema is None else dict(schema)
    return entry


# --------------------------------------------------------------------------- kind: answer


def decode_answer(msg: Mapping[str, Any]) -> hub.Answer:
    """Read an upstream's ``message``; thinking and server-tool blocks have no hub form.

    Raises:
        UpstreamError: the message does not have the documented shape.
    """
    if not isinstance(msg, Mapping):
        raise upstream("the message is not an object")
    msg_id = msg.get("id")
    content = msg.get("content")
    if not isinstance(msg_id, str) or not isinstance(content, list):
        raise upstream("the message lacks an id or a content list")
    parts: list[hub.Text | hub.ToolCall] = []
    for block in content:
        if not isinstance(block, Mapping):
            raise upstream("a content block is not an object")
        kind = block.get("type")
        if kind == "text":
            text = block.get("text")
            if not isinstance(text, str):
                raise upstream("a text block has no text")
            parts.append(hub.Text(text))
        elif kind == "tool_use":
            call_id, name, arguments = block.get("id"), block.get("name"), block.get("input")
            if not isinstance(call_id, str) or not isinstance(name, str):
                raise upstream("a tool_use block lacks its id or name")
            parts.append(hub.ToolCall(call_id, name, _dump_arguments(arguments or {})))
    usage, model = msg.get("usage"), msg.get("model")
    return hub.Answer(
        id=msg_id,
        model=model if isinstance(model, str) else "",
        parts=tuple(parts),
        finish=_finish(msg.get("stop_reason")),
        usage=_usage(usage if isinstance(usage, Mapping) else {}),
    )


# --------------------------------------------------------------------------- door: answer


def _message_id(answer_id: str) -> str:
    if not answer_id:
        return "msg_edge"
    return answer_id if answer_id.startswith("msg_") else "msg_" + answer_id


def encode_answer(answer: hub.Answer, model: str) -> JSON:
    """An Anthropic ``message`` for the client.

    Raises:
        UpstreamError: a tool call's arguments are not a JSON object (Anthropic's
            ``input`` must be one): the upstream's answer cannot be delivered.
    """
    content: list[JSON] = []
    for part in answer.parts:
        if isinstance(part, hub.Text):
            if part.text:
                content.append({"type": "text", "text": part.text})
            continue
        try:
            arguments = _parse_input(part.arguments)
        except (TypeError, ValueError):
            raise upstream("tool call arguments are not a JSON object") from None
        content.append({"type": "tool_use", "id": part.id, "name": part.name, "input": arguments})
    return {
        "id": _message_id(answer.id),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _STOP_FROM_FINISH[answer.finish],
        "stop_sequence": None,
        "usage": {
            "input_tokens": answer.usage.prompt or 0,
            "output_tokens": answer.usage.completion,
        },
    }


# --------------------------------------------------------------------------- kind: stream


def error_in(data: Mapping[str, Any]) -> UpstreamError:
    """The error of an upstream ``error`` event, in its own words. Read here only, for
    the native relay and the hub alike."""
    error = data.get("error")
    if not isinstance(error, Mapping):
        return stream_error(None)
    return stream_error(error.get("message"), error.get("type"))


class StreamDecoder:
    """Anthropic ``(event, data)`` pairs in, hub events out.

    Anthropic numbers content blocks across text and tool use; the hub numbers tool
    calls only, so `_tool_index` maps a block's index to its call's. Usage arrives in
    two halves (input in message_start, output in message_delta), cumulative, and is
    sent once, in `End` at message_stop. The first stop reason wins; a message_stop
    without one finishes with ``stop``. `done` turns true at message_stop; later
    events are ignored, except an ``error``, which is always raised.
    """

    def __init__(self) -> None:
        self.done = False
        self._started = False
        self._tool_index: dict[int, int] = {}
        self._usage: dict[str, int] = {}
        self._finished = False

    def feed_item(self, item: tuple[str, Mapping[str, Any]]) -> list[hub.Event]:
        """`feed` for one stream item as the anthropic adapter yields it."""
        return self.feed(*item)

    def finish(self) -> list[hub.Event]:
        """Nothing more at the upstream's normal end: message_stop already ended it.

        Raises:
            UpstreamError: the stream ended before message_stop.
        """
        if not self.done:
            raise upstream("the stream ended before message_stop")
        return []

    def feed(self, event: str, data: Mapping[str, Any]) -> list[hub.Event]:
        """Return the hub events of one upstream event (maybe none).

        Raises:
            UpstreamError: on an ``error`` event (with the upstream's message and type)
                or an event that breaks the documented order.
        """
        kind = event or data.get("type")
        if kind == "error":
            raise error_in(data)
        if self.done or kind == "ping":
            return []
        if kind == "message_start":
            message = data.get("message")
            if not isinstance(message, Mapping) or not isinstance(message.get("id"), str):
                raise upstream("message_start without a message id")
            self._started = True
            self._remember_usage(message.get("usage"))
            return [hub.Start(message["id"])]
        if not self._started:
            if kind in (
                "content_block_start",
                "content_block_delta",
                "message_delta",
                "message_stop",
            ):
                raise upstream(f"{kind} before message_start")
            return []  # an event type added after this code was written
        if kind == "content_block_start":
            return self._block_start(data)
        if kind == "content_block_delta":
            return self._block_delta(data)
        if kind == "message_delta":
            self._remember_usage(data.get("usage"))
            delta = data.get("delta")
            stop_reason = delta.get("stop_reason") if isinstance(delta, Mapping) else None
            if stop_reason is None or self._finished:
                return []
            self._finished = True
            return [hub.Finish(_finish(stop_reason))]
        if kind == "message_stop":
            self.done = True
            events: list[hub.Event] = []
            if not self._finished:
                self._finished = True
                events.append(hub.Finish("stop"))
            events.append(hub.End(_usage(self._usage)))
            return events
        return []  # content_block_stop, and event types added later

    def _block_start(self, data: Mapping[str, Any]) -> list[hub.Event]:
        block = data.get("content_block")
        index = data.get("index")
        if not isinstance(block, Mapping) or not is_int(index):
            raise upstream("content_block_start without a block or an index")
        if block.get("type") == "tool_use":
            call_id, name = block.get("id"), block.get("name")
            if not isinstance(call_id, str) or not isinstance(name, str):
                raise upstream("a tool_use block lacks its id or name")
            tool_index = self._tool_index[index] = len(self._tool_index)
            return [hub.ToolCallStart(tool_index, call_id, name)]
        if block.get("type") == "text" and block.get("text"):
            return [hub.TextDelta(block["text"])]
        return []

    def _block_delta(self, data: Mapping[str, Any]) -> list[hub.Event]:
        delta = data.get("delta")
        if not isinstance(delta, Mapping):
            raise upstream("content_block_delta without a delta")
        kind = delta.get("type")
        if kind == "text_delta":
            text = delta.get("text")
            if not isinstance(text, str):
                raise upstream("text_delta without text")
            return [hub.TextDelta(text)] if text else []
        if kind == "input_json_delta":
            partial = delta.get("partial_json")
            index = data.get("index")
            if not isinstance(partial, str):
                raise upstream("input_json_delta without partial_json")
            if index not in self._tool_index:
                raise upstream("input_json_delta for a block that is not a tool_use")
            return [hub.ToolCallDelta(self._tool_index[index], partial)] if partial else []
        return []  # thinking, signature and citation deltas have no hub form

    def _remember_usage(self, usage: object) -> None:
        # Anthropic's counts are cumulative: a later value replaces an earlier one.
        if isinstance(usage, Mapping):
            self._usage.update({k: v for k, v in usage.items() if is_int(v)})


# --------------------------------------------------------------------------- door: stream


class StreamEncoder:
    """Hub events in, Anthropic ``(event, data)`` pairs out, in the official order.

    Anthropic content blocks are strictly sequential (start, deltas, stop, next block),
    while hub deltas only say "more text" or "more of tool call k". At most one block
    is open; text after a tool call, or a new tool call, closes it and opens the next,
    with `_next_index` counting blocks. A delta of a call whose block was closed cannot
    be expressed and raises `UpstreamError`. message_delta (stop reason and usage) is
    built only at `End`; a call without an id gets one made from `message_id`.
    """

    def __init__(self, model: str, *, message_id: str) -> None:
        self._model = model
        self._message_id = message_id
        self._started = False
        self._open: int | None = None  # -1: text; k >= 0: tool call k
        self._next_index = 0
        self._stop_reason = "end_turn"

    def feed(self, event: hub.Event) -> list[tuple[str, JSON]]:
        """Return the pairs for one hub event.

        Raises:
            UpstreamError: tool call deltas interleave.
        """
        if isinstance(event, hub.TextDelta):
            events = [] if self._open == -1 else self._open_block(-1, {"type": "text", "text": ""})
            events.append(self._delta({"type": "text_delta", "text": event.text}))
            return events
        if isinstance(event, hub.ToolCallDelta):
            if self._open != event.index:
                raise upstream("tool call deltas interleave; Anthropic blocks cannot")
            if not event.arguments:
                return []
            return [self._delta({"type": "input_json_delta", "partial_json": event.arguments})]
        if isinstance(event, hub.ToolCallStart):
            call_id = event.id or f"toolu_{self._message_id}_{event.index}"  # often omitted
            block = {"type": "tool_use", "id": call_id, "name": event.name, "input": {}}
            return self._open_block(event.index, block)
        if isinstance(event, hub.Start):
            return self._start()
        if isinstance(event, hub.Finish):
            self._stop_reason = _STOP_FROM_FINISH[event.reason]
            return []
        return self._end(event)

    def _end(self, end: hub.End) -> list[tuple[str, JSON]]:
        events = self._start() + self._close()
        usage = end.usage or hub.Usage()
        counts: JSON = {"output_tokens": usage.completion}
        if usage.prompt is not None:
            counts = {"input_tokens": usage.prompt, **counts}
        delta = {"stop_reason": self._stop_reason, "stop_sequence": None}
        events.append(("message_delta", {"type": "message_delta", "delta": delta, "usage": counts}))
        events.append(("message_stop", {"type": "message_stop"}))
        return events

    def _start(self) -> list[tuple[str, JSON]]:
        if self._started:
            return []
        self._started = True
        message: JSON = {
            "id": self._message_id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return [("message_start", {"type": "message_start", "message": message})]

    def _close(self) -> list[tuple[str, JSON]]:
        if self._open is None:
            return []
        self._open = None
        index = self._next_index
        self._next_index += 1
        return [("content_block_stop", {"type": "content_block_stop", "index": index})]

    def _open_block(self, key: int, block: JSON) -> list[tuple[str, JSON]]:
        events = self._close()
        self._open = key
        start = {"type": "content_block_start", "index": self._next_index, "content_block": block}
        events.append(("content_block_start", start))
        return events

    def _delta(self, delta: JSON) -> tuple[str, JSON]:
        data = {"type": "content_block_delta", "index": self._next_index, "delta": delta}
        return ("content_block_delta", data)
