"""OpenAI Chat Completions as a hub codec: the /v1/chat/completions door, the openai kind.

Door side, `decode_request` validates a client's chat request into a `hub.Request` and
`encode_answer` / `StreamEncoder` write a ``chat.completion`` / its chunks. Kind side,
`encode_request` writes the upstream body and `decode_answer` / `StreamDecoder` read
what an OpenAI-compatible upstream sends back.

What the hub cannot carry is refused on the way in when losing it would change the
answer's shape (legacy ``functions``, audio and file parts), and dropped otherwise
(``logprobs``, a part's image ``detail``). Quirks of OpenAI-compatible upstreams are
absorbed on the way back: a ``stop`` after tool calls means the calls are to be run,
an unknown finish reason reads as ``stop``, a missing tool call id stays None for the
door to fill in.
"""

from __future__ import annotations

from collections.abc import Mapping
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
    "StreamDecoder",
    "StreamEncoder",
    "decode_answer",
    "decode_request",
    "encode_answer",
    "encode_request",
    "error_in",
]

_ID_PREFIX = "chatcmpl-"

_FINISH_REASONS: dict[str, hub.FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}

_TOOL_CHOICES: dict[str, hub.ToolChoiceMode] = {
    "auto": "auto",
    "required": "required",
    "none": "none",
}


def _finish(raw: object, *, has_tool_calls: bool) -> hub.FinishReason:
    # Some OpenAI-compatible servers say "stop" after a tool call; clients of other
    # formats decide whether to run tools from the finish reason, so the calls win.
    reason = _FINISH_REASONS.get(raw, "stop") if isinstance(raw, str) else "stop"
    return "tool_calls" if has_tool_calls and reason == "stop" else reason


def _bare_id(value: object) -> str:
    return value.removeprefix(_ID_PREFIX) if isinstance(value, str) else ""


# --------------------------------------------------------------------------- door: request


def decode_request(body: Mapping[str, Any]) -> hub.Request:
    """Validate a client's chat request into the hub form.

    Raises:
        BadRequest: a field is malformed or cannot be carried; message and param name it.
    """
    if not isinstance(body, Mapping):
        raise bad("body", "expected a JSON object")
    for legacy in ("functions", "function_call"):
        if body.get(legacy) is not None:
            raise bad(legacy, "legacy function calling is not supported here; use tools")
    n = body.get("n")
    if n is not None and n != 1 and not (is_int(n) and n > 1):
        raise bad("n", "expected a positive integer")

    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages", "expected a non-empty list of messages")
    system: list[str] = []
    turns: list[hub.Turn] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise bad(where, "expected an object")
        role = message.get("role")
        if role in ("system", "developer"):
            system += texts(message.get("content"), f"{where}.content", "part")
        elif role == "user":
            turns.append(hub.Turn("user", _user_parts(message.get("content"), where), where))
        elif role == "assistant":
            turns.append(hub.Turn("assistant", _assistant_parts(message, where), where))
        elif role == "tool":
            turns.append(hub.Turn("user", (_tool_result(message, where),), where))
        else:
            raise bad(
                f"{where}.role",
                f"unsupported role {role!r}; expected system, developer, user, assistant or tool",
            )

    max_tokens = _max_tokens(body)
    tools, choice, tool_name, parallel = _decode_tools(body)
    stop = _stop(body.get("stop"))
    temperature, top_p = number(body, "temperature"), number(body, "top_p")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise bad("user", "expected a string")
    model, seed = body.get("model"), body.get("seed")
    return hub.Request(
        model=model if isinstance(model, str) else "",
        turns=tuple(turns),
        system=tuple(system),
        tools=tools,
        tool_choice=choice,
        tool_name=tool_name,
        parallel_tool_calls=parallel,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        stop=stop,
        n=None if n is None else int(n),
        seed=seed if is_int(seed) else None,
        response_format=_response_format(body.get("response_format")),
        user=user,
        stream=flag(body, "stream"),
    )


def _max_tokens(body: Mapping[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if not is_int(value) or value < 1:
            raise bad(key, "expected a positive integer")
        return value
    return None


def _stop(stop: object) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,)
    return stop_list(stop, "stop")


def _response_format(value: object) -> hub.ResponseFormat | None:
    """The response format if well formed; no format edge serves today reads it, so a
    malformed one is left for the upstream to judge rather than refused here."""
    if not isinstance(value, Mapping):
        return None
    kind = value.get("type")
    if kind in ("text", "json_object"):
        return hub.ResponseFormat(kind)
    spec = value.get("json_schema")
    if kind != "json_schema" or not isinstance(spec, Mapping):
        return None
    name, schema, strict = spec.get("name"), spec.get("schema"), spec.get("strict")
    return hub.ResponseFormat(
        "json_schema",
        name=name if isinstance(name, str) else None,
        schema=schema if isinstance(schema, Mapping) else None,
        strict=strict if isinstance(strict, bool) else None,
    )


def _user_parts(content: object, where: str) -> tuple[hub.Text | hub.Image, ...]:
    where = f"{where}.content"
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
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise bad(f"{at}.text", "expected a string")
            parts.append(hub.Text(text))
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, Mapping) else image
            if not isinstance(url, str):
                raise bad(f"{at}.image_url.url", "expected a string")
            parts.append(hub.Image(url, f"{at}.image_url.url"))
        else:
            raise bad(f"{at}.type", f"content part type {kind!r} is not supported for this model")
    return tuple(parts)


def _assistant_parts(message: Mapping[str, Any], where: str) -> tuple[hub.Part, ...]:
    if message.get("function_call") is not None:
        raise bad(f"{where}.function_call", "legacy function_call is not supported; use tool_calls")
    content = message.get("content")
    parts: list[hub.Part] = []
    if isinstance(content, str):
        parts.append(hub.Text(content))
    elif isinstance(content, list):
        for j, part in enumerate(content):
            at = f"{where}.content[{j}]"
            key = part.get("type") if isinstance(part, Mapping) else None
            if key not in ("text", "refusal") or not isinstance(part, Mapping):
                raise bad(at, "expected a text or refusal part")
            text = part.get(key)
            if not isinstance(text, str):
                raise bad(f"{at}.{key}", "expected a string")
            parts.append(hub.Text(text))
    elif content is not None:
        raise bad(f"{where}.content", "expected a string, a list of text parts or null")

    tool_calls = message.get("tool_calls")
    if tool_calls is None:
        return tuple(parts)
    if not isinstance(tool_calls, list):
        raise bad(f"{where}.tool_calls", "expected a list")
    for j, call in enumerate(tool_calls):
        at = f"{where}.tool_calls[{j}]"
        if not isinstance(call, Mapping):
            raise bad(at, "expected an object")
        if call.get("type", "function") != "function":
            raise bad(f"{at}.type", "only function tool calls are supported")
        call_id = nonempty(call.get("id"), f"{at}.id")
        function = call.get("function")
        if not isinstance(function, Mapping):
            raise bad(f"{at}.function", "expected an object")
        name = nonempty(function.get("name"), f"{at}.function.name")
        arguments = function.get("arguments")
        if arguments is None:
            arguments = ""
        elif not isinstance(arguments, str):
            raise bad(f"{at}.function.arguments", "expected a JSON string")
        parts.append(hub.ToolCall(call_id, name, arguments, f"{at}.function.arguments"))
    return tuple(parts)


def _tool_result(message: Mapping[str, Any], where: str) -> hub.ToolResult:
    call_id = nonempty(message.get("tool_call_id"), f"{where}.tool_call_id")
    content = message.get("content")
    if content is None or isinstance(content, str):
        return hub.ToolResult(call_id, content or "", where=where)
    found = texts(content, f"{where}.content", "part")
    return hub.ToolResult(call_id, tuple(hub.Text(text) for text in found), where=where)


def _decode_tools(
    body: Mapping[str, Any],
) -> tuple[tuple[hub.Tool, ...], hub.ToolChoiceMode | None, str | None, bool | None]:
    parallel = flag(body, "parallel_tool_calls")
    choice = body.get("tool_choice")
    mode: hub.ToolChoiceMode | None = None
    name: str | None = None
    if isinstance(choice, str) and choice in _TOOL_CHOICES:
        mode = _TOOL_CHOICES[choice]
    elif isinstance(choice, Mapping) and choice.get("type") == "function":
        function = choice.get("function")
        given = function.get("name") if isinstance(function, Mapping) else None
        mode, name = "tool", nonempty(given, "tool_choice.function.name")
    elif choice is not None:
        raise bad("tool_choice", "expected 'auto', 'required', 'none' or a function choice")

    tools = body.get("tools")
    if tools is None:
        return (), mode, name, parallel
    if not isinstance(tools, list):
        raise bad("tools", "expected a list")
    decoded = []
    for i, tool in enumerate(tools):
        at = f"tools[{i}]"
        if not isinstance(tool, Mapping):
            raise bad(at, "expected an object")
        if tool.get("type") != "function":
            raise bad(f"{at}.type", "only function tools are supported")
        function = tool.get("function")
        if not isinstance(function, Mapping):
            raise bad(f"{at}.function", "expected an object")
        tool_name = nonempty(function.get("name"), f"{at}.function.name")
        description = function.get("description")
        if description is not None and not isinstance(description, str):
            raise bad(f"{at}.function.description", "expected a string")
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, Mapping):
            raise bad(f"{at}.function.parameters", "expected a JSON Schema object")
        strict = function.get("strict")
        decoded.append(
            hub.Tool(
                tool_name, description, parameters, strict if isinstance(strict, bool) else None
            )
        )
    return tuple(decoded), mode, name, parallel


# --------------------------------------------------------------------------- kind: request


def encode_request(req: hub.Request, model: str) -> JSON:
    """The chat request for an OpenAI-compatible upstream serving `model`.

    System texts become one leading system message; a user turn's tool results become
    ``tool`` messages ahead of the rest of it (their images join the user message,
    since tool messages carry text only). A stream asks for usage, which is otherwise
    never reported.
    """
    messages: list[JSON] = []
    system = system_text(req)
    if system:
        messages.append({"role": "system", "content": system})
    for turn in req.turns:
        if turn.role == "user":
            messages += _user_messages(turn)
        else:
            messages.append(_assistant_message(turn.parts))
    out: JSON = {"model": model, "messages": messages}
    if req.max_tokens is not None:
        out["max_tokens"] = req.max_tokens
    if req.tools:  # OpenAI rejects tool_choice and parallel_tool_calls without tools
        out["tools"] = [_encode_tool(tool) for tool in req.tools]
        if req.tool_choice == "tool":
            out["tool_choice"] = {"type": "function", "function": {"name": req.tool_name}}
        elif req.tool_choice is not None:
            out["tool_choice"] = req.tool_choice
        if req.parallel_tool_calls is not None and req.tool_choice != "none":
            out["parallel_tool_calls"] = req.parallel_tool_calls
    if req.stop:
        out["stop"] = list(req.stop)
    for key, value in (
        ("temperature", req.temperature),
        ("top_p", req.top_p),
        ("n", req.n),
        ("seed", req.seed),
        ("user", req.user),
    ):
        if value is not None:
            out[key] = value
    if req.response_format is not None:
        out["response_format"] = _encode_response_format(req.response_format)
    if req.stream is not None:
        out["stream"] = req.stream
        if req.stream:
            out["stream_options"] = {"include_usage": True}
    return out


def _content_part(part: hub.Text | hub.Image) -> JSON:
    if isinstance(part, hub.Text):
        return {"type": "text", "text": part.text}
    return {"type": "image_url", "image_url": {"url": part.url}}


def _text_content(parts: list[JSON]) -> str | list[JSON]:
    """One text part reads best as a plain string; anything else stays a part list."""
    if len(parts) == 1 and parts[0]["type"] == "text":
        text: str = parts[0]["text"]
        return text
    return parts


def _user_messages(turn: hub.Turn) -> list[JSON]:
    out: list[JSON] = []
    parts: list[JSON] = []
    for part in turn.parts:
        if isinstance(part, hub.ToolResult):
            out.append(_tool_message(part, parts))
        elif isinstance(part, hub.ToolCall):
            raise bad(part.where or turn.where, "a tool call cannot be part of a user turn")
        else:
            parts.append(_content_part(part))
    if parts:
        out.append({"role": "user", "content": _text_content(parts)})
    return out


def _tool_message(result: hub.ToolResult, images: list[JSON]) -> JSON:
    content: str | list[JSON]
    if isinstance(result.content, str):
        content = result.content
    else:
        found: list[JSON] = []
        for item in result.content:
            (found if isinstance(item, hub.Text) else images).append(_content_part(item))
        content = _text_content(found) if found else ""
    return {"role": "tool", "tool_call_id": result.call_id, "content": content}


def _tool_call(call: hub.ToolCall) -> JSON:
    function = {"name": call.name, "arguments": call.arguments}
    return {"id": call.id, "type": "function", "function": function}


def _assistant_message(parts: tuple[hub.Part, ...]) -> JSON:
    """Texts joined, tool calls after them; content is null only beside tool calls."""
    text = "".join(part.text for part in parts if isinstance(part, hub.Text))
    calls = [_tool_call(part) for part in parts if isinstance(part, hub.ToolCall)]
    message: JSON = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _encode_tool(tool: hub.Tool) -> JSON:
    function: JSON = {"name": tool.name}
    if tool.description is not None:
        function["description"] = tool.description
    if tool.parameters is not None:
        function["parameters"] = dict(tool.parameters)
    if tool.strict is not None:
        function["strict"] = tool.strict
    return {"type": "function", "function": function}


def _encode_response_format(fmt: hub.ResponseFormat) -> JSON:
    if fmt.type != "json_schema":
        return {"type": fmt.type}
    spec: JSON = {} if fmt.name is None else {"name": fmt.name}
    if fmt.schema is not None:
        spec["schema"] = dict(fmt.schema)
    if fmt.strict is not None:
        spec["strict"] = fmt.strict
    return {"type": "json_schema", "json_schema": spec}


# --------------------------------------------------------------------------- kind: answer


def decode_answer(body: Mapping[str, Any]) -> hub.Answer:
    """Read an upstream's ``chat.completion`` (its first choice).

    A refusal with no text reads as text with finish ``content_filter``.

    Raises:
        UpstreamError: the completion does not have the documented shape.
    """
    if not isinstance(body, Mapping):
        raise upstream("the completion is not an object")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        raise upstream("the completion has no choices")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, Mapping):
        raise upstream("the choice has no message")
    parts: list[hub.Text | hub.ToolCall] = []
    text, refusal = message.get("content"), message.get("refusal")
    finish = choice.get("finish_reason")
    if isinstance(text, str) and text:
        parts.append(hub.Text(text))
    elif isinstance(refusal, str) and refusal:
        parts.append(hub.Text(refusal))
        if finish in (None, "stop"):
            finish = "content_filter"
    tool_calls = message.get("tool_calls") or []
    if not isinstance(tool_calls, list):
        raise upstream("tool_calls is not a list")
    for call in tool_calls:
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(call, Mapping) or not isinstance(function, Mapping):
            raise upstream("a tool call has no function")
        call_id, name = call.get("id"), function.get("name")
        if not isinstance(call_id, str) or not isinstance(name, str):
            raise upstream("a tool call lacks its id or name")
        arguments = function.get("arguments")
        if arguments is None:
            arguments = ""
        elif not isinstance(arguments, str):
            raise upstream("tool call arguments are not a JSON object")
        parts.append(hub.ToolCall(call_id, name, arguments))
    usage = body.get("usage")
    usage = usage if isinstance(usage, Mapping) else {}
    prompt, model, created = usage.get("prompt_tokens"), body.get("model"), body.get("created")
    return hub.Answer(
        id=_bare_id(body.get("id")),
        model=model if isinstance(model, str) else "",
        parts=tuple(parts),
        finish=_finish(finish, has_tool_calls=bool(tool_calls)),
        usage=hub.Usage(prompt if is_int(prompt) else None, count(usage.get("completion_tokens"))),
        created=created if is_int(created) else None,
    )


# --------------------------------------------------------------------------- door: answer


def _usage(usage: hub.Usage) -> JSON:
    return {
        "prompt_tokens": usage.prompt or 0,
        "completion_tokens": usage.completion,
        "total_tokens": usage.total,
    }


def encode_answer(answer: hub.Answer, model: str, *, created: int) -> JSON:
    """A ``chat.completion`` for the client; `created` is passed in to keep this pure."""
    message = _assistant_message(answer.parts)
    return {
        "id": _ID_PREFIX + answer.id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": answer.finish}
        ],
        "usage": _usage(answer.usage),
    }


# --------------------------------------------------------------------------- kind: stream


def error_in(chunk: Mapping[str, Any]) -> UpstreamError | None:
    """The error an upstream reported as a stream chunk (``{"error": ...}`` without
    choices), or None. Read here only, for the native relay and the hub alike."""
    if "error" not in chunk or chunk.get("choices"):
        return None
    error = chunk["error"]
    if isinstance(error, Mapping):
        return stream_error(error.get("message"), error.get("code") or error.get("type"))
    return stream_error(error if isinstance(error, str) else None)


class StreamDecoder:
    """Upstream ``chat.completion.chunk`` dicts in, hub events out.

    OpenAI reports the finish reason and usage in separate, late chunks (and some
    compatible servers repeat or reorder them), so `Finish` and `End` are only sent by
    `finish`, once the upstream's stream has ended normally; the last reason seen wins.
    Tool calls are numbered 0, 1, ... in order of appearance, whatever indices the
    upstream used; a later delta of a known call is sent even when empty, so a door
    that cannot interleave calls can see the interleaving.
    """

    def __init__(self) -> None:
        self.done = False
        self._started = False
        self._calls: dict[int, int] = {}  # upstream index -> hub index
        self._finish: object = None
        self._prompt: int | None = None
        self._completion = 0

    def feed(self, chunk: Mapping[str, Any]) -> list[hub.Event]:
        """Return the events of one upstream chunk.

        Raises:
            UpstreamError: the chunk is an error object or is malformed.
        """
        if self.done:
            return []
        error = error_in(chunk)
        if error is not None:
            raise error
        events = self._start(chunk.get("id"))
        usage = chunk.get("usage")
        if isinstance(usage, Mapping):
            prompt = usage.get("prompt_tokens")
            if is_int(prompt):
                self._prompt = prompt
            self._completion = count(usage.get("completion_tokens"))
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices:
            return events
        choice = choices[0]
        if not isinstance(choice, Mapping):
            raise upstream("a chunk choice is not an object")
        delta = choice.get("delta")
        if isinstance(delta, Mapping):
            for key in ("content", "refusal"):
                text = delta.get(key)
                if isinstance(text, str) and text:
                    events.append(hub.TextDelta(text))
            tool_calls = delta.get("tool_calls")
            if isinstance(tool_calls, list):
                for call in tool_calls:
                    events += self._tool_call(call)
        finish = choice.get("finish_reason")
        if isinstance(finish, str):
            self._finish = finish
        return events

    feed_item = feed  # every kind's decoder takes its stream items by this name

    def finish(self) -> list[hub.Event]:
        """The closing events; call once the upstream's stream ended normally."""
        if self.done:
            return []
        self.done = True
        events = self._start(None)
        reason = _finish(self._finish, has_tool_calls=bool(self._calls))
        events.append(hub.Finish(reason))
        events.append(hub.End(hub.Usage(self._prompt, self._completion)))
        return events

    def _start(self, chunk_id: object) -> list[hub.Event]:
        if self._started:
            return []
        self._started = True
        return [hub.Start(_bare_id(chunk_id))]

    def _tool_call(self, call: object) -> list[hub.Event]:
        if not isinstance(call, Mapping):
            raise upstream("a tool call delta is not an object")
        k = call.get("index", 0)
        if not is_int(k):
            raise upstream("a tool call delta has no index")
        function = call.get("function")
        function = function if isinstance(function, Mapping) else {}
        arguments = function.get("arguments")
        arguments = arguments if isinstance(arguments, str) else ""
        index = self._calls.get(k)
        if index is not None:
            return [hub.ToolCallDelta(index, arguments)]
        index = self._calls[k] = len(self._calls)
        call_id, name = call.get("id"), function.get("name")
        events: list[hub.Event] = [
            hub.ToolCallStart(
                index,
                call_id if isinstance(call_id, str) and call_id else None,
                name if isinstance(name, str) else "",
            )
        ]
        if arguments:
            events.append(hub.ToolCallDelta(index, arguments))
        return events


# --------------------------------------------------------------------------- door: stream


class StreamEncoder:
    """Hub events in, ``chat.completion.chunk`` dicts out.

    Usage is reported once, in a final ``choices: []`` chunk, and only when the client
    asked for it (``stream_options.include_usage``); every other chunk then carries
    ``usage: null``, as OpenAI's do.
    """

    def __init__(self, model: str, *, include_usage: bool, created: int) -> None:
        self._model = model
        self._include_usage = include_usage
        self._created = created
        self._id = _ID_PREFIX

    def feed(self, event: hub.Event) -> list[JSON]:
        if isinstance(event, hub.TextDelta):
            return [self._chunk({"content": event.text})] if event.text else []
        if isinstance(event, hub.ToolCallDelta):
            if not event.arguments:
                return []
            call: JSON = {"index": event.index, "function": {"arguments": event.arguments}}
            return [self._chunk({"tool_calls": [call]})]
        if isinstance(event, hub.ToolCallStart):
            call = {"index": event.index}
            if event.id is not None:
                call["id"] = event.id
            call["type"] = "function"
            call["function"] = {"name": event.name, "arguments": ""}
            return [self._chunk({"tool_calls": [call]})]
        if isinstance(event, hub.Start):
            self._id = _ID_PREFIX + event.id
            return [self._chunk({"role": "assistant", "content": ""})]
        if isinstance(event, hub.Finish):
            return [self._chunk({}, finish_reason=event.reason)]
        if not self._include_usage:
            return []
        return [self._frame([], usage=_usage(event.usage or hub.Usage()))]

    def _chunk(self, delta: JSON, *, finish_reason: str | None = None) -> JSON:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return self._frame([choice], usage=None)

    def _frame(self, choices: list[JSON], *, usage: JSON | None) -> JSON:
        chunk: JSON = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": choices,
        }
        if self._include_usage:
            chunk["usage"] = usage  # OpenAI sends usage: null on every other chunk
        return chunk
