"""Anthropic Messages ⇄ OpenAI Chat Completions, as IO-free translation.

edge speaks OpenAI format inside. Two doors need translating:

* an OpenAI-format request routed to an Anthropic upstream: `openai_request_to_anthropic`
  out, `anthropic_response_to_openai` / `AnthropicStreamToOpenAI` back;
* an Anthropic-format request (the `/v1/messages` front door) routed to an OpenAI-kind
  upstream: `anthropic_request_to_openai` out, `openai_response_to_anthropic` /
  `OpenAIStreamToAnthropic` back.

Everything here takes plain dicts (decoded JSON, or one decoded SSE event) and returns
plain JSON-serialisable dicts; no sockets, no clocks, no randomness. Timestamps and
message ids are passed in so the output is deterministic and golden-file testable.

Errors: a client request edge cannot translate raises `BadRequest` whose message and
`param` name the offending field (``messages[2].content[0].image_url.url``). An upstream
answer of an unexpected shape raises `UpstreamError` (the caller answers 502), and an
``error`` event inside an Anthropic stream raises `UpstreamError` with the upstream's
own message.

Fields with no counterpart on the other side (OpenAI ``seed``, ``logprobs``,
``response_format``; Anthropic ``top_k``, ``thinking``, ``cache_control``) are dropped:
the answer is still meaningful without them, whereas refusing would break clients that
send them by habit. Fields whose loss would change the answer's shape (``n`` > 1, legacy
``functions``, audio/file parts, Anthropic server tools) are refused instead.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeGuard

from edge.errors import BadRequest, UpstreamError

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "AnthropicStreamToOpenAI",
    "OpenAIStreamToAnthropic",
    "anthropic_request_to_openai",
    "anthropic_response_to_openai",
    "openai_request_to_anthropic",
    "openai_response_to_anthropic",
]

DEFAULT_MAX_TOKENS = 4096
"""Anthropic requires max_tokens; OpenAI clients often omit it."""

JSON = dict[str, Any]

# Anthropic accepts only these media types for base64 image sources.
_IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})

_FINISH_FROM_STOP = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

_STOP_FROM_FINISH = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


# --------------------------------------------------------------------------- helpers


def _bad(field: str, problem: str) -> BadRequest:
    return BadRequest(f"{field}: {problem}", param=field)


def _upstream(problem: str) -> UpstreamError:
    return UpstreamError(f"upstream answered an unexpected shape: {problem}")


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _dump_arguments(value: Any) -> str:
    """Tool arguments as OpenAI carries them: a compact JSON string."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _finish_reason(stop_reason: object) -> str:
    return _FINISH_FROM_STOP.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def _stop_reason(finish_reason: object, *, has_tool_calls: bool) -> str:
    # Some OpenAI-compatible servers say "stop" after a tool call; Anthropic clients
    # decide whether to run tools from stop_reason, so the tool calls win.
    if has_tool_calls and finish_reason in (None, "stop"):
        return "tool_use"
    if isinstance(finish_reason, str):
        return _STOP_FROM_FINISH.get(finish_reason, "end_turn")
    return "end_turn"


def _count(value: object) -> int:
    return value if _is_int(value) else 0


def _openai_usage(usage: Mapping[str, Any]) -> JSON:
    """Anthropic usage -> OpenAI usage; cached input is still prompt input to OpenAI."""
    prompt = (
        _count(usage.get("input_tokens"))
        + _count(usage.get("cache_creation_input_tokens"))
        + _count(usage.get("cache_read_input_tokens"))
    )
    completion = _count(usage.get("output_tokens"))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


# ------------------------------------------------- OpenAI request -> Anthropic request


def openai_request_to_anthropic(body: Mapping[str, Any], model: str) -> JSON:
    """Translate an OpenAI chat request into an Anthropic Messages request.

    Args:
        body: the client's decoded OpenAI-format request.
        model: the upstream model name to put in the request.

    Returns:
        The Anthropic request body. System and developer messages become ``system``;
        tool messages become ``tool_result`` blocks in a user turn; consecutive turns
        of one role are merged because Anthropic requires alternation.

    Raises:
        BadRequest: a field cannot be translated; the message names it.
    """
    if not isinstance(body, Mapping):
        raise _bad("body", "expected a JSON object")
    for legacy in ("functions", "function_call"):
        if body.get(legacy) is not None:
            raise _bad(legacy, "legacy function calling is not supported here; use tools")
    n = body.get("n")
    if n is not None and n != 1:
        raise _bad("n", "only n=1 is supported for Anthropic models")

    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "expected a non-empty list of messages")
    system: list[str] = []
    turns: list[JSON] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise _bad(where, "expected an object")
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(_openai_texts(message.get("content"), f"{where}.content"))
            continue
        if role == "user":
            blocks = _openai_user_blocks(message.get("content"), f"{where}.content")
        elif role == "assistant":
            blocks = _openai_assistant_blocks(message, where)
        elif role == "tool":
            role, blocks = "user", [_openai_tool_result(message, where)]
        else:
            raise _bad(
                f"{where}.role",
                f"unsupported role {role!r}; expected system, developer, user, assistant or tool",
            )
        if not blocks:
            continue  # empty text: Anthropic rejects empty blocks, and nothing is lost
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    if not turns:
        raise _bad("messages", "at least one non-empty user or assistant message is required")

    out: JSON = {
        "model": model,
        "max_tokens": _openai_max_tokens(body),
        "messages": [_anthropic_turn(turn) for turn in turns],
    }
    if system:
        out["system"] = "\n\n".join(system)
    _openai_tools_into(body, out)

    stop = body.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        if stop:
            out["stop_sequences"] = list(stop)
    elif stop is not None:
        raise _bad("stop", "expected a string or a list of strings")

    temperature = body.get("temperature")
    if temperature is not None:
        if not _is_number(temperature):
            raise _bad("temperature", "expected a number")
        out["temperature"] = min(max(temperature, 0), 1)  # Anthropic's range is 0..1
    top_p = body.get("top_p")
    if top_p is not None:
        if not _is_number(top_p):
            raise _bad("top_p", "expected a number")
        out["top_p"] = top_p
    user = body.get("user")
    if user is not None:
        if not isinstance(user, str):
            raise _bad("user", "expected a string")
        out["metadata"] = {"user_id": user}
    stream = body.get("stream")
    if stream is not None:
        if not isinstance(stream, bool):
            raise _bad("stream", "expected a boolean")
        out["stream"] = stream
    return out


def _openai_max_tokens(body: Mapping[str, Any]) -> int:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if not _is_int(value) or value < 1:
            raise _bad(key, "expected a positive integer")
        return int(value)
    return DEFAULT_MAX_TOKENS


def _texts(content: object, where: str, noun: str) -> list[str]:
    """Non-empty texts of a string or a list of text parts/blocks (`noun` names which)."""
    if isinstance(content, str):
        return [content] if content else []
    if not isinstance(content, list):
        raise _bad(where, f"expected a string or a list of text {noun}s")
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, Mapping) or part.get("type") != "text":
            raise _bad(f"{where}[{j}]", f"expected a text {noun}")
        text = part.get("text")
        if not isinstance(text, str):
            raise _bad(f"{where}[{j}].text", "expected a string")
        if text:
            texts.append(text)
    return texts


def _openai_texts(content: object, where: str) -> list[str]:
    """Texts of OpenAI content: a string or text parts (system, tool content)."""
    return _texts(content, where, "part")


def _openai_user_blocks(content: object, where: str) -> list[JSON]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise _bad(where, "expected a string or a list of content parts")
    blocks: list[JSON] = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        if not isinstance(part, Mapping):
            raise _bad(at, "expected an object")
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise _bad(f"{at}.text", "expected a string")
            if text:
                blocks.append({"type": "text", "text": text})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, Mapping) else image
            if not isinstance(url, str):
                raise _bad(f"{at}.image_url.url", "expected a string")
            blocks.append(_anthropic_image(url, f"{at}.image_url.url"))
        else:
            raise _bad(f"{at}.type", f"content part type {kind!r} is not supported for this model")
    return blocks


def _anthropic_image(url: str, where: str) -> JSON:
    if url[:5].lower() == "data:":
        header, comma, data = url[5:].partition(",")
        media_type, *params = header.split(";")
        media_type = media_type.strip().lower()
        if not comma or "base64" not in (p.strip().lower() for p in params):
            raise _bad(where, "only base64 data: URLs are supported")
        if media_type not in _IMAGE_MEDIA_TYPES:
            raise _bad(where, f"unsupported image media type {media_type!r}")
        if not data:
            raise _bad(where, "the data: URL carries no data")
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    if url.split(":", 1)[0].lower() in ("http", "https"):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise _bad(where, "expected a data: URL or an http(s) URL")


def _openai_assistant_blocks(message: Mapping[str, Any], where: str) -> list[JSON]:
    if message.get("function_call") is not None:
        raise _bad(
            f"{where}.function_call", "legacy function_call is not supported; use tool_calls"
        )
    content = message.get("content")
    blocks: list[JSON] = []
    if isinstance(content, str):
        if content:
            blocks.append({"type": "text", "text": content})
    elif isinstance(content, list):
        for j, part in enumerate(content):
            at = f"{where}.content[{j}]"
            key = part.get("type") if isinstance(part, Mapping) else None
            if key not in ("text", "refusal") or not isinstance(part, Mapping):
                raise _bad(at, "expected a text or refusal part")
            text = part.get(key)
            if not isinstance(text, str):
                raise _bad(f"{at}.{key}", "expected a string")
            if text:
                blocks.append({"type": "text", "text": text})
    elif content is not None:
        raise _bad(f"{where}.content", "expected a string, a list of text parts or null")

    tool_calls = message.get("tool_calls")
    if tool_calls is None:
        return blocks
    if not isinstance(tool_calls, list):
        raise _bad(f"{where}.tool_calls", "expected a list")
    for j, call in enumerate(tool_calls):
        at = f"{where}.tool_calls[{j}]"
        if not isinstance(call, Mapping):
            raise _bad(at, "expected an object")
        if call.get("type", "function") != "function":
            raise _bad(f"{at}.type", "only function tool calls are supported")
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            raise _bad(f"{at}.id", "expected a non-empty string")
        function = call.get("function")
        if not isinstance(function, Mapping):
            raise _bad(f"{at}.function", "expected an object")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise _bad(f"{at}.function.name", "expected a non-empty string")
        blocks.append(
            {
                "type": "tool_use",
                "id": call_id,
                "name": name,
                "input": _parse_arguments(function.get("arguments"), f"{at}.function.arguments"),
            }
        )
    return blocks


def _parse_arguments(arguments: object, where: str) -> JSON:
    if arguments is None or arguments == "":
        return {}
    if not isinstance(arguments, str):
        raise _bad(where, "expected a JSON string")
    try:
        parsed = json.loads(arguments)
    except ValueError:
        raise _bad(where, "is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise _bad(where, "expected a JSON object")
    return parsed


def _openai_tool_result(message: Mapping[str, Any], where: str) -> JSON:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise _bad(f"{where}.tool_call_id", "expected a non-empty string")
    block: JSON = {"type": "tool_result", "tool_use_id": call_id}
    content = message.get("content")
    if isinstance(content, str):
        if content:
            block["content"] = content
    elif content is not None:
        texts = _openai_texts(content, f"{where}.content")
        if texts:
            block["content"] = [{"type": "text", "text": text} for text in texts]
    return block


def _anthropic_turn(turn: JSON) -> JSON:
    blocks: list[JSON] = turn["content"]
    if turn["role"] == "user":
        # Anthropic wants a turn's tool_result blocks ahead of any other content.
        blocks = sorted(blocks, key=lambda block: block["type"] != "tool_result")
    if len(blocks) == 1 and blocks[0]["type"] == "text":
        return {"role": turn["role"], "content": blocks[0]["text"]}
    return {"role": turn["role"], "content": blocks}


def _openai_tools_into(body: Mapping[str, Any], out: JSON) -> None:
    tools = body.get("tools")
    choice = body.get("tool_choice")
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise _bad("parallel_tool_calls", "expected a boolean")

    anthropic_choice: JSON | None
    if choice is None or choice == "auto":
        anthropic_choice = None if choice is None else {"type": "auto"}
    elif choice == "required":
        anthropic_choice = {"type": "any"}
    elif choice == "none":
        return  # "never call a tool": the simplest faithful form is offering none
    elif isinstance(choice, Mapping) and choice.get("type") == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, Mapping) else None
        if not isinstance(name, str) or not name:
            raise _bad("tool_choice.function.name", "expected a non-empty string")
        anthropic_choice = {"type": "tool", "name": name}
    else:
        raise _bad("tool_choice", "expected 'auto', 'required', 'none' or a function choice")

    if tools is None:
        return
    if not isinstance(tools, list):
        raise _bad("tools", "expected a list")
    converted = []
    for i, tool in enumerate(tools):
        at = f"tools[{i}]"
        if not isinstance(tool, Mapping):
            raise _bad(at, "expected an object")
        if tool.get("type") != "function":
            raise _bad(f"{at}.type", "only function tools are supported")
        function = tool.get("function")
        if not isinstance(function, Mapping):
            raise _bad(f"{at}.function", "expected an object")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise _bad(f"{at}.function.name", "expected a non-empty string")
        entry: JSON = {"name": name}
        description = function.get("description")
        if description is not None:
            if not isinstance(description, str):
                raise _bad(f"{at}.function.description", "expected a string")
            entry["description"] = description
        parameters = function.get("parameters")
        if parameters is None:
            parameters = {"type": "object", "properties": {}}
        elif not isinstance(parameters, Mapping):
            raise _bad(f"{at}.function.parameters", "expected a JSON Schema object")
        entry["input_schema"] = dict(parameters)
        converted.append(entry)
    if not converted:
        return
    out["tools"] = converted
    if parallel is False:
        anthropic_choice = dict(anthropic_choice or {"type": "auto"})
        anthropic_choice["disable_parallel_tool_use"] = True
    if anthropic_choice is not None:
        out["tool_choice"] = anthropic_choice


# --------------------------------------------- Anthropic response -> OpenAI response


def anthropic_response_to_openai(msg: Mapping[str, Any], model: str, *, created: int) -> JSON:
    """Translate an Anthropic message into an OpenAI ``chat.completion``.

    Args:
        msg: the upstream's decoded Messages response.
        model: the model name the client should see.
        created: Unix time for ``created``, passed in to keep this function pure.

    Raises:
        UpstreamError: the message does not have the documented shape.
    """
    if not isinstance(msg, Mapping):
        raise _upstream("the message is not an object")
    msg_id = msg.get("id")
    content = msg.get("content")
    if not isinstance(msg_id, str) or not isinstance(content, list):
        raise _upstream("the message lacks an id or a content list")
    texts: list[str] = []
    tool_calls: list[JSON] = []
    for block in content:
        if not isinstance(block, Mapping):
            raise _upstream("a content block is not an object")
        kind = block.get("type")
        if kind == "text":
            text = block.get("text")
            if not isinstance(text, str):
                raise _upstream("a text block has no text")
            texts.append(text)
        elif kind == "tool_use":
            call_id, name, arguments = block.get("id"), block.get("name"), block.get("input")
            if not isinstance(call_id, str) or not isinstance(name, str):
                raise _upstream("a tool_use block lacks its id or name")
            tool_calls.append(
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": _dump_arguments(arguments or {})},
                }
            )
        # thinking, redacted_thinking and server-tool blocks have no OpenAI form.
    text = "".join(texts)
    message: JSON = {"role": "assistant", "content": text if text or not tool_calls else None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    usage = msg.get("usage")
    return {
        "id": "chatcmpl-" + msg_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": _finish_reason(msg.get("stop_reason")),
            }
        ],
        "usage": _openai_usage(usage if isinstance(usage, Mapping) else {}),
    }


class AnthropicStreamToOpenAI:
    """Anthropic SSE events in, OpenAI ``chat.completion.chunk`` dicts out.

    Anthropic numbers content blocks across text and tool use; OpenAI numbers tool
    calls only. `_tool_index` maps a block index to its tool-call index. Usage arrives
    in two halves (input in message_start, output in message_delta) and is reported
    once, in the final ``choices: []`` chunk, when the client asked for it.
    """

    def __init__(self, model: str, *, include_usage: bool, created: int) -> None:
        self.done = False
        self._model = model
        self._include_usage = include_usage
        self._created = created
        self._id: str | None = None
        self._tool_index: dict[int, int] = {}
        self._usage: dict[str, Any] = {}
        self._finished = False

    def feed(self, event: str, data: Mapping[str, Any]) -> list[JSON]:
        """Return the chunks to emit for one upstream event (maybe none).

        Raises:
            UpstreamError: on an ``error`` event (with the upstream's message) or an
                event that breaks the documented order.
        """
        kind = event or data.get("type")
        if kind == "error":
            error = data.get("error")
            message = error.get("message") if isinstance(error, Mapping) else None
            code = error.get("type") if isinstance(error, Mapping) else None
            raise UpstreamError(
                message if isinstance(message, str) and message else "upstream stream error",
                code=code if isinstance(code, str) else None,
            )
        if self.done or kind == "ping":
            return []
        if kind == "message_start":
            message = data.get("message")
            if not isinstance(message, Mapping) or not isinstance(message.get("id"), str):
                raise _upstream("message_start without a message id")
            self._id = "chatcmpl-" + message["id"]
            self._remember_usage(message.get("usage"))
            return [self._chunk({"role": "assistant", "content": ""})]
        if self._id is None:
            if kind in (
                "content_block_start",
                "content_block_delta",
                "message_delta",
                "message_stop",
            ):
                raise _upstream(f"{kind} before message_start")
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
            return [self._chunk({}, finish_reason=_finish_reason(stop_reason))]
        if kind == "message_stop":
            self.done = True
            chunks = []
            if not self._finished:
                self._finished = True
                chunks.append(self._chunk({}, finish_reason="stop"))
            if self._include_usage:
                chunks.append(self._frame([], usage=_openai_usage(self._usage)))
            return chunks
        return []  # content_block_stop, and event types added later

    def _block_start(self, data: Mapping[str, Any]) -> list[JSON]:
        block = data.get("content_block")
        index = data.get("index")
        if not isinstance(block, Mapping) or not _is_int(index):
            raise _upstream("content_block_start without a block or an index")
        if block.get("type") == "tool_use":
            call_id, name = block.get("id"), block.get("name")
            if not isinstance(call_id, str) or not isinstance(name, str):
                raise _upstream("a tool_use block lacks its id or name")
            tool_index = self._tool_index[index] = len(self._tool_index)
            call = {
                "index": tool_index,
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": ""},
            }
            return [self._chunk({"tool_calls": [call]})]
        if block.get("type") == "text" and block.get("text"):
            return [self._chunk({"content": block["text"]})]
        return []

    def _block_delta(self, data: Mapping[str, Any]) -> list[JSON]:
        delta = data.get("delta")
        if not isinstance(delta, Mapping):
            raise _upstream("content_block_delta without a delta")
        kind = delta.get("type")
        if kind == "text_delta":
            text = delta.get("text")
            if not isinstance(text, str):
                raise _upstream("text_delta without text")
            return [self._chunk({"content": text})] if text else []
        if kind == "input_json_delta":
            partial = delta.get("partial_json")
            index = data.get("index")
            if not isinstance(partial, str):
                raise _upstream("input_json_delta without partial_json")
            if index not in self._tool_index:
                raise _upstream("input_json_delta for a block that is not a tool_use")
            if not partial:
                return []
            call = {"index": self._tool_index[index], "function": {"arguments": partial}}
            return [self._chunk({"tool_calls": [call]})]
        return []  # thinking, signature and citation deltas have no OpenAI form

    def _remember_usage(self, usage: object) -> None:
        # Anthropic's counts are cumulative: a later value replaces an earlier one.
        if isinstance(usage, Mapping):
            self._usage.update({k: v for k, v in usage.items() if _is_int(v)})

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


# ------------------------------------------------- Anthropic request -> OpenAI request


def anthropic_request_to_openai(body: Mapping[str, Any], model: str) -> JSON:
    """Translate an Anthropic Messages request into an OpenAI chat request.

    Args:
        body: the client's decoded Anthropic-format request.
        model: the upstream model name to put in the request.

    Returns:
        The OpenAI request body. ``system`` becomes the first message; a user turn's
        ``tool_result`` blocks become ``tool`` messages placed before the rest of it.

    Raises:
        BadRequest: a required field is missing or a field cannot be translated.
    """
    if not isinstance(body, Mapping):
        raise _bad("body", "expected a JSON object")
    requested = body.get("model")
    if not isinstance(requested, str) or not requested:
        raise _bad("model", "required, a non-empty string")
    max_tokens = body.get("max_tokens")
    if not _is_int(max_tokens) or max_tokens < 1:
        raise _bad("max_tokens", "required, a positive integer")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "required, a non-empty list of messages")

    out_messages: list[JSON] = []
    system = body.get("system")
    if system is not None:
        texts = _anthropic_texts(system, "system")
        if texts:
            out_messages.append({"role": "system", "content": "\n\n".join(texts)})
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise _bad(where, "expected an object")
        role = message.get("role")
        if role == "user":
            out_messages.extend(_anthropic_user(message.get("content"), f"{where}.content"))
        elif role == "assistant":
            out_messages.append(_anthropic_assistant(message.get("content"), f"{where}.content"))
        else:
            raise _bad(f"{where}.role", f"unsupported role {role!r}; expected user or assistant")

    out: JSON = {"model": model, "messages": out_messages, "max_tokens": max_tokens}
    _anthropic_tools_into(body, out)
    stop = body.get("stop_sequences")
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise _bad("stop_sequences", "expected a list of strings")
        if stop:
            out["stop"] = list(stop)
    for key in ("temperature", "top_p"):
        value = body.get(key)
        if value is not None:
            if not _is_number(value):
                raise _bad(key, "expected a number")
            out[key] = value
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            raise _bad("metadata", "expected an object")
        user_id = metadata.get("user_id")
        if user_id is not None:
            if not isinstance(user_id, str):
                raise _bad("metadata.user_id", "expected a string")
            out["user"] = user_id
    stream = body.get("stream")
    if stream is not None:
        if not isinstance(stream, bool):
            raise _bad("stream", "expected a boolean")
        out["stream"] = stream
        if stream:
            out["stream_options"] = {"include_usage": True}  # else usage is never reported
    return out


def _anthropic_texts(content: object, where: str) -> list[str]:
    """Texts of Anthropic content: a string or text blocks."""
    return _texts(content, where, "block")


def _openai_image(block: Mapping[str, Any], where: str) -> JSON:
    source = block.get("source")
    if not isinstance(source, Mapping):
        raise _bad(f"{where}.source", "expected an object")
    kind = source.get("type")
    if kind == "base64":
        media_type, data = source.get("media_type"), source.get("data")
        if not isinstance(media_type, str) or not media_type:
            raise _bad(f"{where}.source.media_type", "expected a string")
        if not isinstance(data, str) or not data:
            raise _bad(f"{where}.source.data", "expected a base64 string")
        url = f"data:{media_type};base64,{data}"
    elif kind == "url":
        given = source.get("url")
        if not isinstance(given, str) or not given:
            raise _bad(f"{where}.source.url", "expected a string")
        url = given
    else:
        raise _bad(f"{where}.source.type", "expected 'base64' or 'url'")
    return {"type": "image_url", "image_url": {"url": url}}


def _text_content(parts: list[JSON]) -> str | list[JSON]:
    """One text part reads best as a plain string; anything else stays a part list."""
    if len(parts) == 1 and parts[0]["type"] == "text":
        text: str = parts[0]["text"]
        return text
    return parts


def _anthropic_user(content: object, where: str) -> list[JSON]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    if not isinstance(content, list):
        raise _bad(where, "expected a string or a list of content blocks")
    tool_messages: list[JSON] = []
    parts: list[JSON] = []
    for j, block in enumerate(content):
        at = f"{where}[{j}]"
        if not isinstance(block, Mapping):
            raise _bad(at, "expected an object")
        kind = block.get("type")
        if kind == "text":
            text = block.get("text")
            if not isinstance(text, str):
                raise _bad(f"{at}.text", "expected a string")
            parts.append({"type": "text", "text": text})
        elif kind == "image":
            parts.append(_openai_image(block, at))
        elif kind == "tool_result":
            tool_messages.append(_openai_tool_message(block, at, parts))
        else:
            raise _bad(f"{at}.type", f"content block type {kind!r} is not supported for this model")
    out = tool_messages
    if parts:
        out.append({"role": "user", "content": _text_content(parts)})
    return out


def _openai_tool_message(block: Mapping[str, Any], where: str, images: list[JSON]) -> JSON:
    """A tool_result as an OpenAI tool message; its images join the user turn's parts,
    since OpenAI tool messages carry text only."""
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise _bad(f"{where}.tool_use_id", "expected a non-empty string")
    content = block.get("content")
    result: str | list[JSON]
    if content is None or isinstance(content, str):
        result = content or ""
    elif isinstance(content, list):
        texts: list[JSON] = []
        for k, item in enumerate(content):
            at = f"{where}.content[{k}]"
            kind = item.get("type") if isinstance(item, Mapping) else None
            if kind == "text" and isinstance(item, Mapping):
                text = item.get("text")
                if not isinstance(text, str):
                    raise _bad(f"{at}.text", "expected a string")
                texts.append({"type": "text", "text": text})
            elif kind == "image" and isinstance(item, Mapping):
                images.append(_openai_image(item, at))
            else:
                raise _bad(at, "expected a text or image block")
        result = _text_content(texts) if texts else ""
    else:
        raise _bad(f"{where}.content", "expected a string or a list of content blocks")
    return {"role": "tool", "tool_call_id": call_id, "content": result}


def _anthropic_assistant(content: object, where: str) -> JSON:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    if not isinstance(content, list):
        raise _bad(where, "expected a string or a list of content blocks")
    texts: list[str] = []
    tool_calls: list[JSON] = []
    for j, block in enumerate(content):
        at = f"{where}[{j}]"
        if not isinstance(block, Mapping):
            raise _bad(at, "expected an object")
        kind = block.get("type")
        if kind == "text":
            text = block.get("text")
            if not isinstance(text, str):
                raise _bad(f"{at}.text", "expected a string")
            texts.append(text)
        elif kind == "tool_use":
            call_id, name, arguments = block.get("id"), block.get("name"), block.get("input")
            if not isinstance(call_id, str) or not call_id:
                raise _bad(f"{at}.id", "expected a non-empty string")
            if not isinstance(name, str) or not name:
                raise _bad(f"{at}.name", "expected a non-empty string")
            if not isinstance(arguments, Mapping):
                raise _bad(f"{at}.input", "expected an object")
            tool_calls.append(
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": _dump_arguments(arguments)},
                }
            )
        elif kind in ("thinking", "redacted_thinking"):
            continue  # the model's own scratch work; another model cannot use it
        else:
            raise _bad(f"{at}.type", f"content block type {kind!r} is not supported for this model")
    text = "".join(texts)
    message: JSON = {"role": "assistant", "content": text if text or not tool_calls else None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


def _anthropic_tools_into(body: Mapping[str, Any], out: JSON) -> None:
    tools = body.get("tools")
    choice = body.get("tool_choice")
    converted: list[JSON] = []
    if tools is not None:
        if not isinstance(tools, list):
            raise _bad("tools", "expected a list")
        for i, tool in enumerate(tools):
            at = f"tools[{i}]"
            if not isinstance(tool, Mapping):
                raise _bad(at, "expected an object")
            if tool.get("type", "custom") != "custom":
                raise _bad(
                    f"{at}.type", f"server tool {tool.get('type')!r} needs an Anthropic model"
                )
            name = tool.get("name")
            if not isinstance(name, str) or not name:
                raise _bad(f"{at}.name", "expected a non-empty string")
            schema = tool.get("input_schema")
            if not isinstance(schema, Mapping):
                raise _bad(f"{at}.input_schema", "required, a JSON Schema object")
            function: JSON = {"name": name}
            description = tool.get("description")
            if description is not None:
                if not isinstance(description, str):
                    raise _bad(f"{at}.description", "expected a string")
                function["description"] = description
            function["parameters"] = dict(schema)
            converted.append({"type": "function", "function": function})

    openai_choice: str | JSON | None = None
    parallel: bool | None = None
    if choice is not None:
        if not isinstance(choice, Mapping):
            raise _bad("tool_choice", "expected an object")
        kind = choice.get("type")
        if kind == "auto":
            openai_choice = "auto"
        elif kind == "any":
            openai_choice = "required"
        elif kind == "none":
            openai_choice = "none"
        elif kind == "tool":
            name = choice.get("name")
            if not isinstance(name, str) or not name:
                raise _bad("tool_choice.name", "expected a non-empty string")
            openai_choice = {"type": "function", "function": {"name": name}}
        else:
            raise _bad("tool_choice.type", "expected 'auto', 'any', 'tool' or 'none'")
        disable = choice.get("disable_parallel_tool_use")
        if disable is not None and not isinstance(disable, bool):
            raise _bad("tool_choice.disable_parallel_tool_use", "expected a boolean")
        if disable:
            parallel = False

    if not converted:
        return  # OpenAI rejects tool_choice and parallel_tool_calls without tools
    out["tools"] = converted
    if openai_choice is not None:
        out["tool_choice"] = openai_choice
    if parallel is not None and openai_choice != "none":
        out["parallel_tool_calls"] = parallel


# ------------------------------------------------ OpenAI response -> Anthropic message


def openai_response_to_anthropic(body: Mapping[str, Any], model: str) -> JSON:
    """Translate an OpenAI ``chat.completion`` into an Anthropic message.

    Args:
        body: the upstream's decoded chat completion.
        model: the model name the client should see.

    Raises:
        UpstreamError: the completion does not have the documented shape, or a tool
            call's arguments are not a JSON object (Anthropic's ``input`` must be one).
    """
    if not isinstance(body, Mapping):
        raise _upstream("the completion is not an object")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        raise _upstream("the completion has no choices")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, Mapping):
        raise _upstream("the choice has no message")
    content: list[JSON] = []
    text = message.get("content")
    refusal = message.get("refusal")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    elif isinstance(refusal, str) and refusal:
        content.append({"type": "text", "text": refusal})
    tool_calls = message.get("tool_calls") or []
    if not isinstance(tool_calls, list):
        raise _upstream("tool_calls is not a list")
    for call in tool_calls:
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(call, Mapping) or not isinstance(function, Mapping):
            raise _upstream("a tool call has no function")
        call_id, name = call.get("id"), function.get("name")
        if not isinstance(call_id, str) or not isinstance(name, str):
            raise _upstream("a tool call lacks its id or name")
        content.append(
            {
                "type": "tool_use",
                "id": call_id,
                "name": name,
                "input": _upstream_arguments(function.get("arguments")),
            }
        )
    finish = choice.get("finish_reason")
    if isinstance(refusal, str) and refusal and not text and finish in (None, "stop"):
        finish = "content_filter"
    usage = body.get("usage")
    usage = usage if isinstance(usage, Mapping) else {}
    return {
        "id": _message_id(body.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _stop_reason(finish, has_tool_calls=bool(tool_calls)),
        "stop_sequence": None,
        "usage": {
            "input_tokens": _count(usage.get("prompt_tokens")),
            "output_tokens": _count(usage.get("completion_tokens")),
        },
    }


def _message_id(completion_id: object) -> str:
    if not isinstance(completion_id, str) or not completion_id:
        return "msg_edge"
    return "msg_" + completion_id.removeprefix("chatcmpl-")


def _upstream_arguments(arguments: object) -> JSON:
    if arguments is None or arguments == "":
        return {}
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else None
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise _upstream("tool call arguments are not a JSON object")
    return parsed


class OpenAIStreamToAnthropic:
    """OpenAI chunks in, Anthropic ``(event, data)`` pairs out, in the official order.

    Theory of operation: Anthropic content blocks are strictly sequential (start,
    deltas, stop, next block), while OpenAI deltas only say "more text" or "more of
    tool call k". At most one block is open; text after a tool call, or a new tool
    call, closes it and opens the next, with `_next_index` counting blocks. OpenAI
    reports the finish reason and usage in separate, late chunks, so message_delta is
    built only in `finish`, once the upstream stream has ended normally.
    """

    def __init__(self, model: str, *, message_id: str) -> None:
        self.done = False
        self._model = model
        self._message_id = message_id
        self._started = False
        self._open: tuple[str, int | None] | None = None  # ("text", None) | ("tool", k)
        self._next_index = 0
        self._tools_seen: set[int] = set()
        self._finish_reason: str | None = None
        self._input_tokens: int | None = None
        self._output_tokens = 0

    def feed(self, chunk: Mapping[str, Any]) -> list[tuple[str, JSON]]:
        """Return the events for one upstream chunk.

        Raises:
            UpstreamError: the chunk is an error object, or its deltas cannot be
                expressed as sequential Anthropic blocks.
        """
        if self.done:
            return []
        error = chunk.get("error")
        if isinstance(error, Mapping):
            message = error.get("message")
            raise UpstreamError(
                message if isinstance(message, str) and message else "upstream stream error"
            )
        events = self._start()
        usage = chunk.get("usage")
        if isinstance(usage, Mapping):
            if _is_int(usage.get("prompt_tokens")):
                self._input_tokens = usage["prompt_tokens"]
            self._output_tokens = _count(usage.get("completion_tokens"))
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices:
            return events
        choice = choices[0]
        if not isinstance(choice, Mapping):
            raise _upstream("a chunk choice is not an object")
        delta = choice.get("delta")
        if isinstance(delta, Mapping):
            for key in ("content", "refusal"):
                text = delta.get(key)
                if isinstance(text, str) and text:
                    events += self._text(text)
            tool_calls = delta.get("tool_calls")
            if isinstance(tool_calls, list):
                for call in tool_calls:
                    events += self._tool_call(call)
        finish = choice.get("finish_reason")
        if isinstance(finish, str):
            self._finish_reason = finish
        return events

    def finish(self) -> list[tuple[str, JSON]]:
        """Close any open block and end the message; call once the upstream ended normally."""
        if self.done:
            return []
        events = self._start() + self._close()
        self.done = True
        usage: JSON = {"output_tokens": self._output_tokens}
        if self._input_tokens is not None:
            usage = {"input_tokens": self._input_tokens, **usage}
        stop_reason = _stop_reason(self._finish_reason, has_tool_calls=bool(self._tools_seen))
        events.append(
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                    "usage": usage,
                },
            )
        )
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

    def _open_block(self, key: tuple[str, int | None], block: JSON) -> list[tuple[str, JSON]]:
        events = self._close()
        self._open = key
        start = {"type": "content_block_start", "index": self._next_index, "content_block": block}
        events.append(("content_block_start", start))
        return events

    def _delta(self, delta: JSON) -> tuple[str, JSON]:
        data = {"type": "content_block_delta", "index": self._next_index, "delta": delta}
        return ("content_block_delta", data)

    def _text(self, text: str) -> list[tuple[str, JSON]]:
        events = []
        if self._open != ("text", None):
            events = self._open_block(("text", None), {"type": "text", "text": ""})
        events.append(self._delta({"type": "text_delta", "text": text}))
        return events

    def _tool_call(self, call: object) -> list[tuple[str, JSON]]:
        if not isinstance(call, Mapping):
            raise _upstream("a tool call delta is not an object")
        k = call.get("index", 0)
        if not _is_int(k):
            raise _upstream("a tool call delta has no index")
        function = call.get("function")
        function = function if isinstance(function, Mapping) else {}
        events: list[tuple[str, JSON]] = []
        if self._open != ("tool", k):
            if k in self._tools_seen:
                raise _upstream("tool call deltas interleave; Anthropic blocks cannot")
            self._tools_seen.add(k)
            call_id = call.get("id")
            if not isinstance(call_id, str) or not call_id:
                call_id = f"toolu_{self._message_id}_{k}"  # some compatible servers omit it
            name = function.get("name")
            block = {
                "type": "tool_use",
                "id": call_id,
                "name": name if isinstance(name, str) else "",
                "input": {},
            }
            events = self._open_block(("tool", k), block)
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            events.append(self._delta({"type": "input_json_delta", "partial_json": arguments}))
        return events
