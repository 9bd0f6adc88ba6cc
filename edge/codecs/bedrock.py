"""AWS Bedrock's Converse API as a hub codec: the ``bedrock`` kind.

Kind side only: `encode_request` writes a ``converse`` / ``converse-stream`` body,
`decode_answer` reads its answer and `StreamDecoder` its stream, whose items are
``(event type, payload)`` pairs as the adapter reads them out of the event-stream frames
(`edge.eventstream`); an exception frame is an item whose type ends in ``Exception``.

Converse takes images as bytes only (base64 in JSON), so an http(s) image is refused
naming the client's field; it has structured output for a JSON Schema
(``outputConfig.textFormat``) but no plain JSON mode, so ``json_object`` is refused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from edge import hub
from edge.errors import UpstreamError

from ._checks import JSON, arguments_object, bad, count, is_int, stream_error, upstream

__all__ = ["StreamDecoder", "decode_answer", "encode_request", "error_in"]

_FINISH_REASONS: dict[str, hub.FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
_IMAGE_FORMATS = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}


def _finish(raw: object) -> hub.FinishReason:
    return _FINISH_REASONS.get(raw, "stop") if isinstance(raw, str) else "stop"


def _usage(usage: object) -> hub.Usage:
    if not isinstance(usage, Mapping):
        return hub.Usage()
    prompt = usage.get("inputTokens")
    return hub.Usage(prompt if is_int(prompt) else None, count(usage.get("outputTokens")))


# --------------------------------------------------------------------------- kind: request


def encode_request(req: hub.Request, model: str) -> JSON:
    """The Converse body for `req` (the model id is in the URL).

    Raises:
        BadRequest: ``n`` > 1, ``json_object``, an http(s) image, or arguments that are
            not a JSON object; naming the client's field.
    """
    if req.n is not None and req.n > 1:
        raise bad("n", "the bedrock kind answers one choice only")
    messages: list[JSON] = []
    for turn in req.turns:
        blocks = [block for part in turn.parts for block in _blocks(part)]
        if not blocks:
            continue
        if messages and messages[-1]["role"] == turn.role:
            messages[-1]["content"] += blocks
        else:
            messages.append({"role": turn.role, "content": blocks})
    if not messages:
        raise bad(req.where, "nothing to send: every message is empty")
    out: JSON = {"messages": messages}
    system = [{"text": text} for text in req.system if text]
    if system:
        out["system"] = system
    inference: JSON = {}
    for key, value in (
        ("maxTokens", req.max_tokens),
        ("temperature", req.temperature),
        ("topP", req.top_p),
    ):
        if value is not None:
            inference[key] = value
    if req.stop:
        inference["stopSequences"] = list(req.stop)
    if inference:
        out["inferenceConfig"] = inference
    if req.tools:
        config: JSON = {"tools": [_tool(tool) for tool in req.tools]}
        if req.tool_choice == "auto":
            config["toolChoice"] = {"auto": {}}
        elif req.tool_choice == "required":
            config["toolChoice"] = {"any": {}}
        elif req.tool_choice == "tool":
            config["toolChoice"] = {"tool": {"name": req.tool_name}}
        out["toolConfig"] = config
    fmt = req.response_format
    if fmt is not None and fmt.type == "json_object":
        raise bad("response_format", "json_object has no form in the bedrock kind; use json_schema")
    if fmt is not None and fmt.type == "json_schema":
        structure: JSON = {"schema": json.dumps(dict(fmt.schema or {}))}
        if fmt.name is not None:
            structure["name"] = fmt.name
        out["outputConfig"] = {
            "textFormat": {"type": "json_schema", "structure": {"jsonSchema": structure}}
        }
    return out


def _blocks(part: hub.Part) -> list[JSON]:
    if isinstance(part, hub.Text):
        return [{"text": part.text}] if part.text else []
    if isinstance(part, hub.Image):
        return [_image(part)]
    if isinstance(part, hub.ToolCall):
        return [
            {"toolUse": {"toolUseId": part.id, "name": part.name, "input": arguments_object(part)}}
        ]
    if isinstance(part.content, str):
        content: list[JSON] = [{"text": part.content}]
    else:
        content = [
            {"text": item.text} if isinstance(item, hub.Text) else _image(item)
            for item in part.content
        ]
    result: JSON = {"toolUseId": part.call_id, "content": content}
    if part.is_error:
        result["status"] = "error"
    return [{"toolResult": result}]


def _image(image: hub.Image) -> JSON:
    where = image.where or "messages"
    if image.url[:5].lower() != "data:":
        raise bad(where, "the bedrock kind takes images as base64 data: URLs only")
    header, comma, data = image.url[5:].partition(",")
    media_type, *params = header.split(";")
    image_format = _IMAGE_FORMATS.get(media_type.strip().lower())
    if not comma or not data or "base64" not in (p.strip().lower() for p in params):
        raise bad(where, "expected a base64 data: URL")
    if image_format is None:
        raise bad(where, f"unsupported image media type {media_type!r}")
    return {"image": {"format": image_format, "source": {"bytes": data}}}


def _tool(tool: hub.Tool) -> JSON:
    spec: JSON = {
        "name": tool.name,
        "inputSchema": {"json": dict(tool.parameters or {"type": "object"})},
    }
    if tool.description is not None:
        spec["description"] = tool.description
    return {"toolSpec": spec}


# --------------------------------------------------------------------------- kind: answer


def decode_answer(body: Mapping[str, Any]) -> hub.Answer:
    """Read a Converse answer (Converse gives it no id).

    Raises:
        UpstreamError: the answer does not have the documented shape.
    """
    output = body.get("output") if isinstance(body, Mapping) else None
    message = output.get("message") if isinstance(output, Mapping) else None
    content = message.get("content") if isinstance(message, Mapping) else None
    if not isinstance(content, list):
        raise upstream("the answer has no output.message.content")
    parts: list[hub.Text | hub.ToolCall] = []
    for block in content:
        if not isinstance(block, Mapping):
            raise upstream("a content block is not an object")
        text, use = block.get("text"), block.get("toolUse")
        if isinstance(text, str) and text:
            parts.append(hub.Text(text))
        elif isinstance(use, Mapping):
            call_id, name = use.get("toolUseId"), use.get("name")
            if not isinstance(call_id, str) or not isinstance(name, str):
                raise upstream("a toolUse lacks its id or name")
            arguments = json.dumps(
                use.get("input") or {}, ensure_ascii=False, separators=(",", ":")
            )
            parts.append(hub.ToolCall(call_id, name, arguments))
    return hub.Answer(
        id="",
        model="",
        parts=tuple(parts),
        finish=_finish(body.get("stopReason")),
        usage=_usage(body.get("usage")),
    )


# --------------------------------------------------------------------------- kind: stream


def error_in(item: tuple[str, Mapping[str, Any]]) -> UpstreamError | None:
    """The error of an exception frame (``throttlingException``...), or None."""
    name, payload = item
    if not name.endswith("Exception"):
        return None
    message = (
        payload.get("message") or payload.get("Message") if isinstance(payload, Mapping) else None
    )
    return stream_error(message, name)


class StreamDecoder:
    """ConverseStream ``(event type, payload)`` pairs in, hub events out.

    ``messageStop`` brings the stop reason and ``metadata`` (after it) the usage, so
    `Finish` and `End` are sent by `finish` at the stream's normal end.
    """

    def __init__(self) -> None:
        self.done = False
        self._started = False
        self._calls: dict[int, int] = {}  # contentBlockIndex -> hub call index
        self._silent: set[int] = set()  # hub calls whose arguments have not come yet
        self._stop: object = None
        self._usage = hub.Usage()

    def feed_item(self, item: tuple[str, Mapping[str, Any]]) -> list[hub.Event]:
        """Return the events of one stream event.

        Raises:
            UpstreamError: an exception frame, or a malformed event.
        """
        if self.done:
            return []
        error = error_in(item)
        if error is not None:
            raise error
        name, data = item
        if not isinstance(data, Mapping):
            raise upstream("a stream event is not an object")
        events = self._start()
        if name == "contentBlockStart":
            start = data.get("start")
            use = start.get("toolUse") if isinstance(start, Mapping) else None
            if isinstance(use, Mapping):
                index = self._calls[self._block(data)] = len(self._calls)
                self._silent.add(index)
                call_id, call_name = use.get("toolUseId"), use.get("name")
                events.append(
                    hub.ToolCallStart(
                        index,
                        call_id if isinstance(call_id, str) else None,
                        call_name if isinstance(call_name, str) else "",
                    )
                )
        elif name == "contentBlockDelta":
            delta = data.get("delta")
            delta = delta if isinstance(delta, Mapping) else {}
            text, use = delta.get("text"), delta.get("toolUse")
            if isinstance(text, str) and text:
                events.append(hub.TextDelta(text))
            elif isinstance(use, Mapping):
                known = self._calls.get(self._block(data))
                if known is None:
                    raise upstream("a toolUse delta before its contentBlockStart")
                arguments = use.get("input")
                if isinstance(arguments, str) and arguments:
                    self._silent.discard(known)
                events.append(
                    hub.ToolCallDelta(known, arguments if isinstance(arguments, str) else "")
                )
        elif name == "contentBlockStop":
            # A call of a tool without parameters streams no input at all; its arguments
            # are the empty object, not the empty string no client can parse.
            known = self._calls.get(self._block(data))
            if known is not None and known in self._silent:
                self._silent.discard(known)
                events.append(hub.ToolCallDelta(known, "{}"))
        elif name == "messageStop":
            self._stop = data.get("stopReason")
        elif name == "metadata":
            self._usage = _usage(data.get("usage"))
        return events

    def finish(self) -> list[hub.Event]:
        """The closing events; call once the upstream's stream ended normally."""
        if self.done:
            return []
        self.done = True
        return [*self._start(), hub.Finish(_finish(self._stop)), hub.End(self._usage)]

    def _start(self) -> list[hub.Event]:
        if self._started:
            return []
        self._started = True
        return [hub.Start("")]

    @staticmethod
    def _block(data: Mapping[str, Any]) -> int:
        index = data.get("contentBlockIndex")
        if not is_int(index):
            raise upstream("a content block event has no contentBlockIndex")
        return index
