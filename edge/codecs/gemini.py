"""The Google Gemini API (``generateContent``) as a hub codec: the ``gemini`` kind.

Kind side only: `encode_request` writes a ``generateContent`` body, `decode_answer`
reads its answer and `StreamDecoder` the chunks of ``streamGenerateContent?alt=sse``
(each chunk is a whole ``GenerateContentResponse`` holding the next piece). Embeddings
have no hub form: `encode_embeddings` / `decode_embeddings` translate an OpenAI
embeddings body to ``batchEmbedContents`` and back.

Gemini has no tool call ids: a ``functionResponse`` names the function it answers. So
edge makes the ids when it reads calls (``call_<n>_<answer id>``) and maps a tool result
back to its call's name by finding that id among the conversation's earlier calls. A
Gemini 3 call carries a ``thoughtSignature`` that must come back with it on the next
turn; clients of other formats keep only the call id, so the signature travels inside
it (``..__sig_<signature>``, in the URL-safe base64 alphabet, which every door's id
syntax accepts) and is put back on the ``functionCall`` part when the call returns.

JSON Schemas go to ``parametersJsonSchema`` / ``responseJsonSchema``, the fields that take
standard JSON Schema, rather than the OpenAPI subset of ``parameters``/``responseSchema``.
"""

from __future__ import annotations

import json
import mimetypes
import re
from collections.abc import Mapping
from typing import Any

from edge import hub
from edge.errors import UpstreamError

from ._checks import JSON, arguments_object, bad, count, is_int, stream_error, system_text, upstream

__all__ = [
    "StreamDecoder",
    "decode_answer",
    "decode_embeddings",
    "encode_embeddings",
    "encode_request",
    "error_in",
]

_FINISH_REASONS: dict[str, hub.FinishReason] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
}
_TOOL_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY", "tool": "ANY"}
_SIGNATURE = "__sig_"
_UNSAFE_ID = re.compile(r"[^A-Za-z0-9-]")
_TO_URLSAFE = str.maketrans("+/", "-_")
_FROM_URLSAFE = str.maketrans("-_", "+/")


def _finish(raw: object, *, has_tool_calls: bool) -> hub.FinishReason:
    reason = _FINISH_REASONS.get(raw, "stop") if isinstance(raw, str) else "stop"
    return "tool_calls" if has_tool_calls and reason == "stop" else reason


def call_id(index: int, answer_id: str, signature: object) -> str:
    """The id edge gives Gemini's call number `index` of answer `answer_id`."""
    made = f"call_{index}_{_UNSAFE_ID.sub('', answer_id)}"
    if isinstance(signature, str) and signature:
        made += _SIGNATURE + signature.translate(_TO_URLSAFE).rstrip("=")
    return made


def _signature_of(made_id: str) -> str | None:
    """The ``thoughtSignature`` carried in an id `call_id` made, or None."""
    _, found, signature = made_id.partition(_SIGNATURE)
    if not found or not signature:
        return None
    return signature.translate(_FROM_URLSAFE) + "=" * (-len(signature) % 4)


# --------------------------------------------------------------------------- kind: request


def encode_request(req: hub.Request, model: str) -> JSON:
    """The ``generateContent`` body for `req` (the model is in the URL, not the body).

    Turns of one role in a row merge into one content, empty texts are dropped, tool
    results become ``functionResponse`` parts named after their call.

    Raises:
        BadRequest: a tool result answers no earlier call, an image is not a URL Gemini
            can take, or arguments are not a JSON object; naming the client's field.
    """
    names: dict[str, str] = {}
    contents: list[JSON] = []
    for turn in req.turns:
        parts: list[JSON] = []
        for part in turn.parts:
            parts += _parts(part, names)
        if not parts:
            continue
        role = "user" if turn.role == "user" else "model"
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"] += parts
        else:
            contents.append({"role": role, "parts": parts})
    if not contents:
        raise bad(req.where, "nothing to send: every message is empty")
    out: JSON = {"contents": contents}
    system = system_text(req)
    if system:
        out["systemInstruction"] = {"parts": [{"text": system}]}
    if req.tools:
        out["tools"] = [{"functionDeclarations": [_declaration(tool) for tool in req.tools]}]
        if req.tool_choice is not None:
            config: JSON = {"mode": _TOOL_MODES[req.tool_choice]}
            if req.tool_choice == "tool" and req.tool_name:
                config["allowedFunctionNames"] = [req.tool_name]
            out["toolConfig"] = {"functionCallingConfig": config}
    generation = _generation_config(req)
    if generation:
        out["generationConfig"] = generation
    return out


def _parts(part: hub.Part, names: dict[str, str]) -> list[JSON]:
    if isinstance(part, hub.Text):
        return [{"text": part.text}] if part.text else []
    if isinstance(part, hub.Image):
        return [_image(part)]
    if isinstance(part, hub.ToolCall):
        names[part.id] = part.name
        encoded: JSON = {"functionCall": {"name": part.name, "args": arguments_object(part)}}
        signature = _signature_of(part.id)
        if signature is not None:
            encoded["thoughtSignature"] = signature
        return [encoded]
    name = names.get(part.call_id)
    if name is None:
        raise bad(part.where or "messages", f"tool result for unknown call {part.call_id!r}")
    return _tool_result(part, name)


def _tool_result(result: hub.ToolResult, name: str) -> list[JSON]:
    """A ``functionResponse`` (whose ``response`` must be an object: JSON object text
    is sent as itself, any other text under ``content``, or ``error`` for a failure),
    followed by the result's images as parts of the same turn."""
    content = result.content
    images: list[JSON] = []
    if isinstance(content, str):
        text = content
    else:
        text = "".join(part.text for part in content if isinstance(part, hub.Text))
        images = [_image(part) for part in content if isinstance(part, hub.Image)]
    response: Any = None
    if not result.is_error and text.lstrip().startswith("{"):
        try:
            response = json.loads(text)
        except ValueError:
            response = None
    if not isinstance(response, dict):
        response = {"error" if result.is_error else "content": text}
    return [{"functionResponse": {"name": name, "response": response}}, *images]


def _image(image: hub.Image) -> JSON:
    url, where = image.url, image.where or "messages"
    if url[:5].lower() == "data:":
        header, comma, data = url[5:].partition(",")
        media_type, *params = header.split(";")
        if not comma or "base64" not in (p.strip().lower() for p in params):
            raise bad(where, "only base64 data: URLs are supported")
        if not data:
            raise bad(where, "the data: URL carries no data")
        return {"inlineData": {"mimeType": media_type.strip().lower(), "data": data}}
    if url.split(":", 1)[0].lower() in ("http", "https"):
        guessed, _ = mimetypes.guess_type(url.split("?", 1)[0])
        return {"fileData": {"mimeType": guessed or "image/jpeg", "fileUri": url}}
    raise bad(where, "expected a data: URL or an http(s) URL")


def _declaration(tool: hub.Tool) -> JSON:
    declaration: JSON = {"name": tool.name}
    if tool.description is not None:
        declaration["description"] = tool.description
    if tool.parameters is not None:
        declaration["parametersJsonSchema"] = dict(tool.parameters)
    return declaration


def _generation_config(req: hub.Request) -> JSON:
    config: JSON = {}
    for key, value in (
        ("temperature", req.temperature),
        ("topP", req.top_p),
        ("maxOutputTokens", req.max_tokens),
        ("candidateCount", req.n),
        ("seed", req.seed),
    ):
        if value is not None:
            config[key] = value
    if req.stop:
        config["stopSequences"] = list(req.stop)
    fmt = req.response_format
    if fmt is not None and fmt.type != "text":
        config["responseMimeType"] = "application/json"
        if fmt.type == "json_schema" and fmt.schema is not None:
            config["responseJsonSchema"] = dict(fmt.schema)
    return config


# --------------------------------------------------------------------------- kind: answer


def _usage(metadata: object) -> hub.Usage:
    """Thinking tokens are billed as output, so they count as completion tokens."""
    if not isinstance(metadata, Mapping):
        return hub.Usage()
    prompt = metadata.get("promptTokenCount")
    completion = count(metadata.get("candidatesTokenCount")) + count(
        metadata.get("thoughtsTokenCount")
    )
    return hub.Usage(prompt if is_int(prompt) else None, completion)


def _candidate(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    candidates = body.get("candidates")
    if candidates is None:
        return None
    if not isinstance(candidates, list):
        raise upstream("candidates is not a list")
    if not candidates:
        return None
    if not isinstance(candidates[0], Mapping):
        raise upstream("a candidate is not an object")
    return candidates[0]


def _answer_parts(candidate: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The candidate's parts, without thought summaries (the hub has no thinking)."""
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, Mapping) else None
    if parts is None:
        return []
    if not isinstance(parts, list) or not all(isinstance(p, Mapping) for p in parts):
        raise upstream("content.parts is not a list of objects")
    return [part for part in parts if not part.get("thought")]


def _function_call(part: Mapping[str, Any], index: int, answer_id: str) -> hub.ToolCall:
    function = part["functionCall"]
    name = function.get("name") if isinstance(function, Mapping) else None
    if not isinstance(name, str) or not name:
        raise upstream("a functionCall has no name")
    args = function.get("args")
    if args is not None and not isinstance(args, Mapping):
        raise upstream("functionCall.args is not an object")
    arguments = json.dumps(args or {}, ensure_ascii=False, separators=(",", ":"))
    return hub.ToolCall(call_id(index, answer_id, part.get("thoughtSignature")), name, arguments)


def decode_answer(body: Mapping[str, Any]) -> hub.Answer:
    """Read a ``GenerateContentResponse`` (its first candidate).

    A prompt blocked before any candidate (``promptFeedback.blockReason``) reads as an
    empty answer with finish ``content_filter``.

    Raises:
        UpstreamError: the answer does not have the documented shape.
    """
    if not isinstance(body, Mapping):
        raise upstream("the answer is not an object")
    answer_id = body.get("responseId")
    answer_id = answer_id if isinstance(answer_id, str) else ""
    candidate = _candidate(body)
    parts: list[hub.Text | hub.ToolCall] = []
    if candidate is None:
        if not isinstance(body.get("promptFeedback"), Mapping):
            raise upstream("the answer has no candidates")
        finish: hub.FinishReason = "content_filter"
    else:
        calls = 0
        for part in _answer_parts(candidate):
            text = part.get("text")
            if isinstance(text, str) and text:
                if parts and isinstance(parts[-1], hub.Text):
                    parts[-1] = hub.Text(parts[-1].text + text)
                else:
                    parts.append(hub.Text(text))
            elif "functionCall" in part:
                parts.append(_function_call(part, calls, answer_id))
                calls += 1
        finish = _finish(candidate.get("finishReason"), has_tool_calls=calls > 0)
    model = body.get("modelVersion")
    return hub.Answer(
        id=answer_id,
        model=model if isinstance(model, str) else "",
        parts=tuple(parts),
        finish=finish,
        usage=_usage(body.get("usageMetadata")),
    )


# --------------------------------------------------------------------------- kind: stream


def error_in(chunk: Mapping[str, Any]) -> UpstreamError | None:
    """The error Gemini reported as a stream chunk (``{"error": {...}}``), or None."""
    error = chunk.get("error")
    if error is None:
        return None
    if isinstance(error, Mapping):
        return stream_error(error.get("message"), error.get("status"))
    return stream_error(error if isinstance(error, str) else None)


class StreamDecoder:
    """``streamGenerateContent?alt=sse`` chunks in, hub events out.

    Each chunk is a whole response holding the next text and whole function calls (Gemini
    never splits a call's arguments), so a call is a `ToolCallStart` and one
    `ToolCallDelta`. The finish reason and usage ride on late chunks; `Finish` and `End`
    are sent by `finish`, once the upstream's stream ended normally.
    """

    def __init__(self) -> None:
        self.done = False
        self._id: str | None = None
        self._calls = 0
        self._finish: object = None
        self._blocked = False
        self._usage = hub.Usage()

    def feed(self, chunk: Mapping[str, Any]) -> list[hub.Event]:
        """Return the events of one chunk.

        Raises:
            UpstreamError: the chunk is an error object or is malformed.
        """
        if self.done:
            return []
        if not isinstance(chunk, Mapping):
            raise upstream("a stream chunk is not an object")
        error = error_in(chunk)
        if error is not None:
            raise error
        events = self._start(chunk.get("responseId"))
        if "usageMetadata" in chunk:
            self._usage = _usage(chunk["usageMetadata"])
        candidate = _candidate(chunk)
        if candidate is None:
            self._blocked = self._blocked or isinstance(chunk.get("promptFeedback"), Mapping)
            return events
        for part in _answer_parts(candidate):
            text = part.get("text")
            if isinstance(text, str) and text:
                events.append(hub.TextDelta(text))
            elif "functionCall" in part:
                call = _function_call(part, self._calls, self._id or "")
                events.append(hub.ToolCallStart(self._calls, call.id, call.name))
                events.append(hub.ToolCallDelta(self._calls, call.arguments))
                self._calls += 1
        reason = candidate.get("finishReason")
        if isinstance(reason, str):
            self._finish = reason
        return events

    feed_item = feed

    def finish(self) -> list[hub.Event]:
        """The closing events; call once the upstream's stream ended normally."""
        if self.done:
            return []
        self.done = True
        events = self._start(None)
        if self._blocked and self._finish is None:
            reason: hub.FinishReason = "content_filter"
        else:
            reason = _finish(self._finish, has_tool_calls=self._calls > 0)
        return [*events, hub.Finish(reason), hub.End(self._usage)]

    def _start(self, answer_id: object) -> list[hub.Event]:
        if self._id is not None:
            return []
        self._id = answer_id if isinstance(answer_id, str) else ""
        return [hub.Start(self._id)]


# --------------------------------------------------------------------------- embeddings


def encode_embeddings(body: Mapping[str, Any], model: str) -> JSON:
    """A ``batchEmbedContents`` body for an OpenAI embeddings body (one request per input).

    Raises:
        BadRequest: ``input`` is not a string or a list of strings (Gemini takes text,
            not token arrays).
    """
    given = body.get("input")
    inputs = [given] if isinstance(given, str) else given
    if not isinstance(inputs, list) or not inputs or not all(isinstance(t, str) for t in inputs):
        raise bad("input", "expected a string or a non-empty list of strings for this model")
    dimensions = body.get("dimensions")
    if dimensions is not None and not (is_int(dimensions) and dimensions > 0):
        raise bad("dimensions", "expected a positive integer")
    requests = []
    for text in inputs:
        request: JSON = {"model": f"models/{model}", "content": {"parts": [{"text": text}]}}
        if dimensions is not None:
            request["outputDimensionality"] = dimensions
        requests.append(request)
    return {"requests": requests}


def decode_embeddings(body: Mapping[str, Any], model: str) -> JSON:
    """The OpenAI embeddings answer for a ``batchEmbedContents`` answer.

    Gemini reports no token counts here, so usage is zero.

    Raises:
        UpstreamError: the answer does not have the documented shape.
    """
    embeddings = body.get("embeddings") if isinstance(body, Mapping) else None
    if not isinstance(embeddings, list):
        raise upstream("the answer has no embeddings")
    data = []
    for index, item in enumerate(embeddings):
        values = item.get("values") if isinstance(item, Mapping) else None
        if not isinstance(values, list):
            raise upstream("an embedding has no values")
        data.append({"object": "embedding", "index": index, "embedding": values})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": 0, "total_tokens": 0},
    }
