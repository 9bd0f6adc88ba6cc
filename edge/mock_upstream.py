"""The bundled fake provider: OpenAI and Anthropic wire formats, deterministic and fast.

Benchmarks put edge in front of this server, so it must never be the bottleneck: it is
written straight on trio socket streams with h11 (keep-alive, no ASGI layer), and every
reply is a pure function of the request bytes, so identical requests get byte-identical
answers (the `created` stamp is fixed when the server starts).

Theory of operation
-------------------
One task per connection runs the h11 cycle: read a whole request, turn it into a
`_Plan` with pure code (`_Responder`), then carry the plan out on the socket. A plan
is the complete answer plus the faults to inject on the way (delay before the first
byte, a delay between stream frames, a cut after N content frames, a close without
any answer). Keeping the decisions out of the IO code is what lets the fault scripting
be exact.

Tests script faults per request with a directive at the start of the last user message,
`!mock status=429 retry_after=2`, and count what edge did through `GET /mock/stats`.
`disconnects` there counts requests whose client went away before the answer was fully
sent: while the server waits (a delay, a paced stream) a watcher task reads the socket,
so a client that closes is seen at once, not at the next write.
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
import re
import signal
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h11
import orjson
import trio

from edge import hub
from edge.codecs import responses
from edge.errors import BadRequest

__all__ = ["MockOptions", "run", "serve_mock"]

_RECV_BYTES = 65536
_MAX_BODY_BYTES = 16 * 1024 * 1024
_ECHO_CHARS = 200
_DEFAULT_DIMENSIONS = 8
_MAX_DIMENSIONS = 8192
_MAX_CHOICES = 128
_MAX_WORDS = 100_000

_JSON_TYPE = (b"content-type", b"application/json")
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]
_DONE = b"data: [DONE]\n\n"
_WORD = re.compile(r"\S+\s*")

_MODELS = (
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4-turbo",
    "gpt-3.5-turbo",
    "text-embedding-3-small",
    "text-embedding-3-large",
    "claude-3-5-sonnet-latest",
    "claude-3-5-haiku-latest",
    "claude-3-opus-latest",
)

# OpenAI and Anthropic name error types differently; these are the names each API uses.
_OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "requests",
}
_OPENAI_ERROR_CODES = {
    401: "invalid_api_key",
    404: "unknown_url",
    405: "method_not_allowed",
    429: "rate_limit_exceeded",
}
_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


@dataclass(frozen=True)
class MockOptions:
    """How the mock listens and which faults it injects into every request.

    Args:
        host: address to bind.
        port: port to bind; 0 picks a free one (reported through `task_status`).
        delay_ms: wait this long before the first byte of every API response.
        fail_rate: fraction (0..1) of API requests answered 500.
        seed: seed of the `fail_rate` draw, so a run is reproducible.
        tokens: content events per text answer (None: the echo's own words), so a
            benchmark knows exactly how many events each stream carries.
        token_ms: the pace of a streamed answer, ms between two content events (0: all
            at once); a non-streamed answer waits the whole stream's time instead.
    """

    host: str = "127.0.0.1"
    port: int = 0
    delay_ms: float = 0.0
    fail_rate: float = 0.0
    seed: int = 0
    tokens: int | None = None
    token_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.tokens is not None and not 1 <= self.tokens <= _MAX_WORDS:
            raise ValueError(f"tokens must be between 1 and {_MAX_WORDS}, got {self.tokens}")
        if not 0 <= self.token_ms < math.inf:
            raise ValueError(f"token_ms must be a finite number >= 0, got {self.token_ms}")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ValueError(f"fail_rate must be between 0 and 1, got {self.fail_rate}")
        if self.delay_ms < 0:
            raise ValueError(f"delay_ms must not be negative, got {self.delay_ms}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, got {self.port}")


# --------------------------------------------------------------------------- plans


@dataclass(slots=True)
class _Plan:
    """A complete answer plus the faults to inject while sending it."""

    status: int
    body: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    events: list[bytes] | None = None  # SSE frames; None for a plain body
    lead: int = 0  # frames before the first content frame (what cut_after skips)
    delay: float = 0.0  # seconds before the first byte
    chunk_delay: float = 0.0  # seconds between SSE frames
    beats: tuple[int, ...] = ()  # indexes of the frames that start a content event
    beat_delay: float = 0.0  # seconds between two content events (the model's pace)
    cut_after: int | None = None  # content frames (stream) or half the body, then close
    close: bool = False  # close without answering

    def __post_init__(self) -> None:
        if self.events is None:
            self.headers = [_JSON_TYPE, *self.headers]
        else:
            self.headers = [*_SSE_HEADERS, *self.headers]


class _Fail(Exception):
    """A request the mock rejects, rendered in the dialect of the endpoint."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


def _error_body(
    status: int, message: str, *, anthropic: bool, param: str | None = None, code: str | None = None
) -> bytes:
    """The error body each API really sends for `status`."""
    if anthropic:
        kind = _ANTHROPIC_ERROR_TYPES.get(
            status, "api_error" if status >= 500 else "invalid_request_error"
        )
        return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})
    kind = _OPENAI_ERROR_TYPES.get(
        status, "server_error" if status >= 500 else "invalid_request_error"
    )
    return orjson.dumps(
        {
            "error": {
                "message": message,
                "type": kind,
                "param": param,
                "code": code if code is not None else _OPENAI_ERROR_CODES.get(status),
            }
        }
    )


# --------------------------------------------------------------------------- directives


_INT_DIRECTIVES = frozenset({"status", "cut_after", "close", "invalid", "words"})
_FLOAT_DIRECTIVES = frozenset({"delay_ms", "chunk_delay_ms", "retry_after"})


@dataclass(slots=True)
class _Directives:
    """Faults scripted by a `!mock key=value ...` prefix of the last user message."""

    source: str  # the directive words themselves; the reply echoes these
    status: int | None = None
    retry_after: str | None = None
    delay_ms: float = 0.0
    chunk_delay_ms: float = 0.0
    cut_after: int | None = None
    close: bool = False
    invalid: bool = False
    words: int | None = None


def _parse_directives(text: str) -> _Directives | None:
    """Read the `key=value` tokens after `!mock`; the first other token ends them.

    Unknown keys and bad values are a 400, so a typo in a test fails loudly.
    """
    if not text.startswith("!mock"):
        return None
    tokens = text.split()
    if tokens[0] != "!mock":
        return None
    used = ["!mock"]
    found = _Directives(source="")
    for token in tokens[1:]:
        key, sep, raw = token.partition("=")
        if not sep:
            break
        if key in _INT_DIRECTIVES:
            try:
                value: float = int(raw)
            except ValueError:
                raise _Fail(400, f"mock directive {key} needs an integer, got {raw!r}") from None
        elif key in _FLOAT_DIRECTIVES:
            try:
                value = float(raw)
            except ValueError:
                raise _Fail(400, f"mock directive {key} needs a number, got {raw!r}") from None
            if not math.isfinite(value):
                raise _Fail(400, f"mock directive {key} needs a finite number, got {raw!r}")
        else:
            raise _Fail(400, f"unknown mock directive {key!r}")
        if value < 0:
            raise _Fail(400, f"mock directive {key} must not be negative")
        used.append(token)
        if key == "status":
            if not 400 <= value <= 599:
                raise _Fail(400, f"mock directive status must be 400..599, got {raw}")
            found.status = int(value)
        elif key == "retry_after":
            found.retry_after = raw
        elif key == "delay_ms":
            found.delay_ms = value
        elif key == "chunk_delay_ms":
            found.chunk_delay_ms = value
        elif key == "cut_after":
            found.cut_after = int(value)
        elif key == "close":
            found.close = bool(value)
        elif key == "invalid":
            found.invalid = bool(value)
        else:
            if value > _MAX_WORDS:
                raise _Fail(400, f"mock directive words must be at most {_MAX_WORDS}")
            found.words = int(value)
    found.source = " ".join(used)
    return found


# --------------------------------------------------------------------------- request helpers


def _text(content: Any, *, tool_results: bool = True) -> str:
    """The text of a message's content: a string, or its text parts joined by spaces."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    parts: list[str] = []
    for part in content:
        if isinstance(part, str):
            parts.append(part)
        elif isinstance(part, dict):
            kind = part.get("type")
            if kind == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif kind == "tool_result" and tool_results:
                parts.append(_text(part.get("content")))
    return " ".join(parts)


def _model(request: dict[str, Any]) -> str:
    model = request.get("model")
    if not isinstance(model, str) or not model:
        raise _Fail(400, "'model' is required and must be a non-empty string", param="model")
    return model


def _message_list(request: dict[str, Any]) -> list[dict[str, Any]]:
    messages = request.get("messages")
    if (
        not isinstance(messages, list)
        or not messages
        or not all(isinstance(m, dict) for m in messages)
    ):
        raise _Fail(
            400, "'messages' must be a non-empty array of message objects", param="messages"
        )
    return messages


def _flag(request: dict[str, Any], name: str) -> bool:
    value = request.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _Fail(400, f"'{name}' must be a boolean", param=name)
    return value


def _count(request: dict[str, Any], name: str, *, low: int, high: int | None = None) -> int | None:
    value = request.get(name)
    if value is None:
        return None
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or value < low
        or (high is not None and value > high)
    ):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise _Fail(400, f"'{name}' must be an integer {bound}", param=name)
    return value


def _sample(schema: Any, text: str) -> Any:
    """A value that satisfies a property schema, for a tool call's arguments."""
    if not isinstance(schema, dict):
        return None
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind == "string":
        return text
    if kind in ("integer", "number"):
        return 1
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    if kind == "object":
        return {}
    return None


def _arguments(schema: Any, text: str) -> dict[str, Any]:
    """Arguments for every required property of a tool's JSON schema."""
    if not isinstance(schema, dict):
        return {}
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        properties = {}
    required = schema.get("required")
    if not isinstance(required, list):
        return {}
    return {name: _sample(properties.get(name), text) for name in required if isinstance(name, str)}


def _split(text: str, pieces: int = 2, size: int = 16) -> list[str]:
    """Split `text` into at least `pieces` parts (when it has that many characters)."""
    step = max(1, min(size, len(text) // pieces))
    return [text[i : i + step] for i in range(0, len(text), step)] or [text]


def _words(text: str) -> list[str]:
    """Stream chunks: each word with the whitespace after it, so they join back to `text`."""
    return _WORD.findall(text)


@dataclass(slots=True)
class _Turn:
    """What the fake model answers, before it is dressed in one API's format."""

    chunks: list[str]  # the reply text as stream chunks (empty for a tool call)
    finish: str  # "stop", "length", "stop_sequence" or "tool"
    prompt_tokens: int
    completion_tokens: int
    tool_name: str = ""
    tool_arguments: str = ""  # JSON text
    stop_sequence: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.chunks)


def _text_turn(
    text: str, prompt_tokens: int, limit: int | None, stops: list[str] | None = None
) -> _Turn:
    finish = "stop"
    hit: str | None = None
    if stops:
        found = [(text.find(s), s) for s in stops if s and s in text]
        if found:
            cut, hit = min(found)
            text = text[:cut]
            finish = "stop_sequence"
    chunks = _words(text)
    if limit is not None and limit < len(chunks):
        chunks = chunks[:limit]
        chunks[-1] = chunks[-1].rstrip()
        finish = "length"
        hit = None
    return _Turn(chunks, finish, prompt_tokens, len(chunks), stop_sequence=hit)


def _tool_turn(name: str, schema: Any, text: str, prompt_tokens: int) -> _Turn:
    arguments = orjson.dumps(_arguments(schema, text)).decode()
    return _Turn([], "tool", prompt_tokens, max(1, len(arguments) // 4), name, arguments)


def _echo(directives: _Directives | None, user_text: str, tokens: int | None = None) -> str:
    """The reply text; `tokens` (the --tokens option) fixes its word count, so a stream
    carries exactly that many content events: the echo's words, then `w<i>` fillers."""
    if directives is not None and directives.words is not None:
        return " ".join(f"w{i}" for i in range(directives.words))
    echoed = user_text if directives is None else directives.source
    text = "Mock reply to: " + echoed[:_ECHO_CHARS]
    if tokens is None:
        return text
    words = text.split()[:tokens]
    words += [f"w{i}" for i in range(len(words), tokens)]
    return " ".join(words)


def _pieces(turn: _Turn) -> list[str]:
    """The content events a turn streams: its words, or its tool call's argument pieces."""
    return _split(turn.tool_arguments) if turn.finish == "tool" else turn.chunks


def _digest(raw: bytes) -> str:
    return hashlib.blake2b(raw, digest_size=12).hexdigest()


def _embedding(key: bytes, dimensions: int) -> list[float]:
    """A unit vector derived from a hash of the input, rounded to float32 like the real API."""
    digest = hashlib.shake_256(key).digest(2 * dimensions)
    values = [v / 32767.5 - 1.0 for v in struct.unpack(f"<{dimensions}H", digest)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    packed = struct.pack(f"<{dimensions}f", *(v / norm for v in values))
    return list(struct.unpack(f"<{dimensions}f", packed))


# --------------------------------------------------------------------------- statistics


class _Stats:
    """Counters behind `/mock/stats`; `in_flight` is live and survives a reset."""

    __slots__ = ("by_path", "connections", "disconnects", "in_flight", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.by_path: dict[str, int] = {}
        self.disconnects = 0
        self.in_flight = 0
        self.connections = 0  # accepted: how well a client reuses its keep-alive connections

    def reset(self) -> None:
        self.requests = 0
        self.by_path = {}
        self.disconnects = 0
        self.connections = 0

    def snapshot(self) -> bytes:
        return orjson.dumps(
            {
                "requests": self.requests,
                "by_path": self.by_path,
                "disconnects": self.disconnects,
                "in_flight": self.in_flight,
                "connections": self.connections,
            }
        )


# --------------------------------------------------------------------------- responder


class _Responder:
    """Turns one parsed request into a `_Plan`; no IO, so the decisions are testable."""

    def __init__(self, options: MockOptions, stats: _Stats) -> None:
        self.options = options
        self.stats = stats
        self.rng = random.Random(options.seed)
        self.delay = options.delay_ms / 1000.0
        self.created = int(time.time())
        self.routes: dict[str, tuple[bytes, Callable[[dict[str, Any], bytes], _Plan], bool]] = {
            "/v1/chat/completions": (b"POST", self._chat, False),
            "/v1/embeddings": (b"POST", self._embeddings, False),
            "/v1/responses": (b"POST", self._responses, False),
            "/v1/messages": (b"POST", self._anthropic_messages, True),
        }

    # -- entry points

    def control(self, method: bytes, path: str) -> _Plan:
        """`/mock/stats` and `/mock/reset`: never delayed, failed or counted."""
        wanted = {"/mock/stats": b"GET", "/mock/reset": b"POST"}.get(path)
        if wanted is None:
            return _Plan(404, _error_body(404, f"Unknown path {path}", anthropic=False))
        if method != wanted:
            return self._method_not_allowed(wanted, anthropic=False, delay=0.0)
        if path == "/mock/reset":
            self.stats.reset()
        return _Plan(200, self.stats.snapshot())

    def answer(
        self, method: bytes, path: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> _Plan:
        """The plan for an API request; every rejection is rendered in the API's dialect."""
        anthropic = path == "/v1/messages" or any(k == b"anthropic-version" for k, _ in headers)
        try:
            if path == "/v1/models":
                if method != b"GET":
                    return self._method_not_allowed(b"GET", anthropic=anthropic, delay=self.delay)
                return self._models(headers, anthropic=anthropic)
            route = self.routes.get(path)
            if route is None:
                raise _Fail(404, f"Unknown request URL: {path}")
            wanted, handler, anthropic = route
            if method != wanted:
                return self._method_not_allowed(wanted, anthropic=anthropic, delay=self.delay)
            self._authorize(headers, anthropic=anthropic)
            if self.options.fail_rate > 0 and self.rng.random() < self.options.fail_rate:
                raise _Fail(
                    500,
                    "The server had an error while processing your request. "
                    "Sorry about that! (mock fail_rate)",
                )
            try:
                request = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise _Fail(400, f"The request body is not valid JSON: {exc}") from None
            if not isinstance(request, dict):
                raise _Fail(400, "The request body must be a JSON object")
            return handler(request, body)
        except _Fail as fail:
            return self._error(fail, anthropic=anthropic)

    # -- shared pieces

    def _error(
        self,
        fail: _Fail,
        *,
        anthropic: bool,
        delay: float | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> _Plan:
        body = _error_body(
            fail.status, fail.message, anthropic=anthropic, param=fail.param, code=fail.code
        )
        return _Plan(fail.status, body, headers or [], delay=self.delay if delay is None else delay)

    def _method_not_allowed(self, allowed: bytes, *, anthropic: bool, delay: float) -> _Plan:
        return self._error(
            _Fail(405, f"Method not allowed; use {allowed.decode()}"),
            anthropic=anthropic,
            delay=delay,
            headers=[(b"allow", allowed)],
        )

    @staticmethod
    def _authorize(headers: list[tuple[bytes, bytes]], *, anthropic: bool) -> None:
        """OpenAI wants `Authorization: Bearer`; Anthropic `x-api-key` (recent SDKs send
        their key as a Bearer token instead, so that is accepted too) and a version."""
        key = version = b""
        for name, value in headers:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer" and token.strip():
                    key = key or token.strip()
            elif name == b"x-api-key" and anthropic:
                key = value.strip() or key
            elif name == b"anthropic-version":
                version = value.strip()
        if anthropic:
            if not key:
                raise _Fail(401, "x-api-key header is required")
            if not version:
                raise _Fail(400, "anthropic-version: header is required")
            return
        if key:
            return
        raise _Fail(
            401,
            "You didn't provide an API key. You need to provide your API key "
            "in an Authorization header using Bearer auth "
            "(Authorization: Bearer YOUR_KEY).",
        )

    def _fault(
        self, directives: _Directives | None, *, anthropic: bool, stream: bool
    ) -> _Plan | None:
        """The plan a directive forces instead of a normal answer, if any."""
        if directives is None:
            return None
        delay = self.delay + directives.delay_ms / 1000.0
        if directives.close:
            return _Plan(200, close=True, delay=delay)
        if directives.status is not None:
            headers = []
            if directives.retry_after is not None:
                headers.append((b"retry-after", directives.retry_after.encode()))
            message = f"mock directive status={directives.status}"
            return self._error(
                _Fail(directives.status, message), anthropic=anthropic, delay=delay, headers=headers
            )
        if directives.invalid:
            if not stream:
                return _Plan(200, b"this is not JSON {", delay=delay)
            if anthropic:
                frames = [b"event: message_start\ndata: this is not JSON {\n\n"]
            else:
                frames = [b"data: this is not JSON {\n\n", _DONE]
            return _Plan(200, events=frames, delay=delay)
        return None

    def _reply(self, directives: _Directives | None, user_text: str) -> str:
        return _echo(directives, user_text, self.options.tokens)

    def _finish(self, plan: _Plan, directives: _Directives | None, pieces: int) -> _Plan:
        """Apply the model's pace (`token_ms`) and the pacing and cut directives to a
        normal answer of `pieces` content events; a directive's pace replaces the model's."""
        plan.delay = self.delay
        pace = self.options.token_ms / 1000.0
        if directives is not None:
            plan.delay += directives.delay_ms / 1000.0
            plan.chunk_delay = directives.chunk_delay_ms / 1000.0
            plan.cut_after = directives.cut_after
            if plan.chunk_delay > 0:
                pace = 0.0
        if pace > 0:
            if plan.events is None:
                plan.delay += pieces * pace
            else:
                plan.beat_delay = pace
        return plan

    # -- OpenAI

    def _chat(self, request: dict[str, Any], raw: bytes) -> _Plan:
        model = _model(request)
        messages = _message_list(request)
        stream = _flag(request, "stream")
        choices = _count(request, "n", low=1, high=_MAX_CHOICES) or 1
        limit = _count(request, "max_completion_tokens", low=1)
        if limit is None:
            limit = _count(request, "max_tokens", low=1)
        options = request.get("stream_options")
        usage_chunk = isinstance(options, dict) and options.get("include_usage") is True
        tool = self._openai_tool(request.get("tools"), request.get("tool_choice"))

        last = messages[-1]
        user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
        user_text = _text(user.get("content")) if user is not None else ""
        directives = _parse_directives(user_text)
        fault = self._fault(directives, anthropic=False, stream=stream)
        if fault is not None:
            return fault

        prompt = max(1, sum(len(_text(m.get("content"))) for m in messages) // 4)
        if last.get("role") == "tool":
            turn = _text_turn("Tool said: " + _text(last.get("content")), prompt, limit)
        elif tool is not None and last.get("role") == "user":
            turn = _tool_turn(tool[0], tool[1], user_text, prompt)
        else:
            turn = _text_turn(self._reply(directives, user_text), prompt, limit)

        digest = _digest(raw)
        head = {
            "id": "chatcmpl-" + digest,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": model,
        }
        completion = turn.completion_tokens * choices
        usage = {
            "prompt_tokens": turn.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": turn.prompt_tokens + completion,
        }
        finish = "tool_calls" if turn.finish == "tool" else turn.finish
        call_id = "call_" + digest
        if not stream:
            message: dict[str, Any]
            if turn.finish == "tool":
                message = {
                    "role": "assistant",
                    "content": None,
                    "refusal": None,
                    "tool_calls": [
                        {
                            "id": call_id,
                            "type": "function",
                            "function": {"name": turn.tool_name, "arguments": turn.tool_arguments},
                        }
                    ],
                }
            else:
                message = {"role": "assistant", "content": turn.text, "refusal": None}
            body = {
                "id": head["id"],
                "object": "chat.completion",
                "created": self.created,
                "model": model,
                "choices": [
                    {"index": i, "message": message, "logprobs": None, "finish_reason": finish}
                    for i in range(choices)
                ],
                "usage": usage,
            }
            return self._finish(_Plan(200, orjson.dumps(body)), directives, len(_pieces(turn)))

        def frame(index: int, delta: dict[str, Any], reason: str | None = None) -> bytes:
            chunk: dict[str, Any] = {
                **head,
                "choices": [
                    {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}
                ],
            }
            if usage_chunk:
                chunk["usage"] = None
            return b"data: " + orjson.dumps(chunk) + b"\n\n"

        frames: list[bytes] = []
        if turn.finish == "tool":
            for i in range(choices):
                frames.append(
                    frame(
                        i,
                        {
                            "role": "assistant",
                            "content": None,
                            "tool_calls": [
                                {
                                    "index": 0,
                                    "id": call_id,
                                    "type": "function",
                                    "function": {"name": turn.tool_name, "arguments": ""},
                                }
                            ],
                        },
                    )
                )
            for piece in _split(turn.tool_arguments):
                for i in range(choices):
                    frames.append(
                        frame(i, {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
                    )
        else:
            for i in range(choices):
                frames.append(frame(i, {"role": "assistant", "content": "", "refusal": None}))
            for piece in turn.chunks:
                for i in range(choices):
                    frames.append(frame(i, {"content": piece}))
        for i in range(choices):
            frames.append(frame(i, {}, finish))
        if usage_chunk:
            frames.append(
                b"data: " + orjson.dumps({**head, "choices": [], "usage": usage}) + b"\n\n"
            )
        frames.append(_DONE)
        pieces = len(_pieces(turn))
        beats = tuple(range(choices, choices * (pieces + 1), choices))
        plan = _Plan(200, events=frames, lead=choices, beats=beats)
        return self._finish(plan, directives, pieces)

    @staticmethod
    def _openai_tool(tools: Any, choice: Any) -> tuple[str, Any] | None:
        """The (name, parameters schema) the reply calls, or None for a text reply."""
        if tools is None or tools == []:
            return None
        if not isinstance(tools, list):
            raise _Fail(400, "'tools' must be an array", param="tools")
        defined: list[tuple[str, Any]] = []
        for tool in tools:
            function = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise _Fail(400, "each tool needs a function with a name", param="tools")
            defined.append((function["name"], function.get("parameters")))
        if choice == "none":
            return None
        if isinstance(choice, dict):
            function = choice.get("function")
            name = function.get("name") if isinstance(function, dict) else None
            for entry in defined:
                if entry[0] == name:
                    return entry
            raise _Fail(
                400, f"tool_choice names a tool that is not defined: {name!r}", param="tool_choice"
            )
        return defined[0]

    # -- OpenAI Responses

    def _responses(self, request: dict[str, Any], raw: bytes) -> _Plan:
        """``/v1/responses``: the same fake model, dressed by the Responses codec itself."""
        try:
            req = responses.decode_request(request)
        except BadRequest as exc:
            raise _Fail(400, str(exc), param=exc.param) from None
        user = next((t for t in reversed(req.turns) if t.role == "user"), None)
        texts = [p.text for p in user.parts if isinstance(p, hub.Text)] if user else []
        user_text = "".join(texts)
        directives = _parse_directives(user_text)
        fault = self._fault(directives, anthropic=False, stream=bool(req.stream))
        if fault is not None:
            return fault
        prompt = max(1, (len(user_text) + sum(map(len, req.system))) // 4)
        last = req.turns[-1].parts[-1] if req.turns[-1].parts else None
        tool = req.tools[0] if req.tools and req.tool_choice != "none" else None
        if req.tool_choice == "tool":
            tool = next((t for t in req.tools if t.name == req.tool_name), tool)
        if isinstance(last, hub.ToolResult):
            result = last.content if isinstance(last.content, str) else ""
            turn = _text_turn("Tool said: " + result, prompt, req.max_tokens)
        elif tool is not None:
            turn = _tool_turn(tool.name, tool.parameters, user_text, prompt)
        else:
            turn = _text_turn(self._reply(directives, user_text), prompt, req.max_tokens)
        digest = _digest(raw)
        finish: hub.FinishReason = "tool_calls" if turn.finish == "tool" else "stop"
        if turn.finish == "length":
            finish = "length"
        usage = hub.Usage(turn.prompt_tokens, turn.completion_tokens)
        call_id = "call_" + digest
        if not req.stream:
            parts: tuple[hub.Text | hub.ToolCall, ...] = (
                (hub.ToolCall(call_id, turn.tool_name, turn.tool_arguments),)
                if turn.finish == "tool"
                else (hub.Text(turn.text),)
            )
            answer = hub.Answer("resp_" + digest, req.model, parts, finish, usage)
            body = responses.encode_answer(
                answer,
                req.model,
                response_id="resp_" + digest,
                item_prefix=digest,
                created=self.created,
            )
            return self._finish(_Plan(200, orjson.dumps(body)), directives, len(_pieces(turn)))
        encoder = responses.StreamEncoder(
            req.model,
            response_id="resp_" + digest,
            item_prefix=digest,
            created=self.created,
        )
        events: list[hub.Event] = [hub.Start("resp_" + digest)]
        if turn.finish == "tool":
            events.append(hub.ToolCallStart(0, call_id, turn.tool_name))
            events += [hub.ToolCallDelta(0, piece) for piece in _split(turn.tool_arguments)]
        else:
            events += [hub.TextDelta(piece) for piece in turn.chunks]
        events += [hub.Finish(finish), hub.End(usage)]
        frames: list[bytes] = []
        beats: list[int] = []
        for event in events:
            if isinstance(event, (hub.TextDelta, hub.ToolCallDelta)):
                beats.append(len(frames))
            frames += [
                b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
                for name, data in encoder.feed(event)
            ]
        plan = _Plan(200, events=frames, lead=2, beats=tuple(beats))
        return self._finish(plan, directives, len(beats))

    def _embeddings(self, request: dict[str, Any], raw: bytes) -> _Plan:
        model = _model(request)
        given = request.get("input")
        inputs: list[Any]
        if isinstance(given, str):
            inputs = [given]
        elif (
            isinstance(given, list)
            and given
            and all(isinstance(x, int) and not isinstance(x, bool) for x in given)
        ):
            inputs = [given]
        elif (
            isinstance(given, list)
            and given
            and all(
                isinstance(x, str)
                or (
                    isinstance(x, list)
                    and x
                    and all(isinstance(t, int) and not isinstance(t, bool) for t in x)
                )
                for x in given
            )
        ):
            inputs = given
        else:
            raise _Fail(
                400,
                "'input' must be a string, an array of strings, an array of "
                "tokens or an array of token arrays, and not empty",
                param="input",
            )
        encoding = request.get("encoding_format", "float")
        if encoding not in ("float", "base64", None):
            raise _Fail(
                400, "'encoding_format' must be 'float' or 'base64'", param="encoding_format"
            )
        dimensions = _count(request, "dimensions", low=1, high=_MAX_DIMENSIONS)
        dimensions = dimensions or _DEFAULT_DIMENSIONS

        data = []
        tokens = 0
        for index, item in enumerate(inputs):
            if isinstance(item, str):
                key = b"s:" + item.encode()
                tokens += max(1, len(item) // 4)
            else:
                key = b"t:" + orjson.dumps(item)
                tokens += len(item)
            vector = _embedding(key, dimensions)
            embedding: Any = vector
            if encoding == "base64":
                embedding = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        body = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return _Plan(200, orjson.dumps(body), delay=self.delay)

    def _models(self, headers: list[tuple[bytes, bytes]], *, anthropic: bool) -> _Plan:
        """Both APIs serve `GET /v1/models`; an `anthropic-version` header picks the format."""
        if anthropic:
            self._authorize(headers, anthropic=True)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created))
            data: list[dict[str, Any]] = [
                {"type": "model", "id": m, "display_name": m, "created_at": stamp}
                for m in _MODELS
                if m.startswith("claude")
            ]
            listing: dict[str, Any] = {
                "data": data,
                "has_more": False,
                "first_id": data[0]["id"],
                "last_id": data[-1]["id"],
            }
        else:
            self._authorize(headers, anthropic=False)
            listing = {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": self.created, "owned_by": "edge-mock"}
                    for m in _MODELS
                ],
            }
        return _Plan(200, orjson.dumps(listing), delay=self.delay)

    # -- Anthropic

    def _anthropic_messages(self, request: dict[str, Any], raw: bytes) -> _Plan:
        model = _model(request)
        messages = _message_list(request)
        limit = request.get("max_tokens")
        if limit is None:
            raise _Fail(400, "max_tokens: Field required")
        limit = _count(request, "max_tokens", low=1)
        stream = _flag(request, "stream")
        system = request.get("system")
        if system is not None and not isinstance(system, (str, list)):
            raise _Fail(400, "system: must be a string or an array of text blocks")
        stops = request.get("stop_sequences")
        if stops is not None and not (
            isinstance(stops, list) and all(isinstance(s, str) for s in stops)
        ):
            raise _Fail(400, "stop_sequences: must be an array of strings")
        tool = self._anthropic_tool(request.get("tools"), request.get("tool_choice"))

        last = messages[-1]
        user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
        user_text = _text(user.get("content"), tool_results=False) if user is not None else ""
        content = last.get("content") if last.get("role") == "user" else None
        results = [
            block
            for block in (content if isinstance(content, list) else [])
            if isinstance(block, dict) and block.get("type") == "tool_result"
        ]
        directives = None if results else _parse_directives(user_text)
        fault = self._fault(directives, anthropic=True, stream=stream)
        if fault is not None:
            return fault

        chars = len(_text(system)) + sum(len(_text(m.get("content"))) for m in messages)
        prompt = max(1, chars // 4)
        if results:
            said = " ".join(_text(block.get("content")) for block in results)
            turn = _text_turn("Tool said: " + said, prompt, limit, stops)
        elif tool is not None and last.get("role") == "user":
            turn = _tool_turn(tool[0], tool[1], user_text, prompt)
        else:
            turn = _text_turn(self._reply(directives, user_text), prompt, limit, stops)

        digest = _digest(raw)
        stop_reason = {
            "stop": "end_turn",
            "length": "max_tokens",
            "tool": "tool_use",
            "stop_sequence": "stop_sequence",
        }[turn.finish]
        tool_id = "toolu_" + digest
        if not stream:
            block: dict[str, Any]
            if turn.finish == "tool":
                block = {
                    "type": "tool_use",
                    "id": tool_id,
                    "name": turn.tool_name,
                    "input": orjson.loads(turn.tool_arguments),
                }
            else:
                block = {"type": "text", "text": turn.text}
            body = {
                "id": "msg_" + digest,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [block],
                "stop_reason": stop_reason,
                "stop_sequence": turn.stop_sequence,
                "usage": {
                    "input_tokens": turn.prompt_tokens,
                    "output_tokens": turn.completion_tokens,
                },
            }
            return self._finish(_Plan(200, orjson.dumps(body)), directives, len(_pieces(turn)))

        def event(name: bytes, data: dict[str, Any]) -> bytes:
            return b"event: " + name + b"\ndata: " + orjson.dumps(data) + b"\n\n"

        start = {
            "type": "message_start",
            "message": {
                "id": "msg_" + digest,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": turn.prompt_tokens, "output_tokens": 1},
            },
        }
        if turn.finish == "tool":
            opening: dict[str, Any] = {
                "type": "tool_use",
                "id": tool_id,
                "name": turn.tool_name,
                "input": {},
            }
            deltas = [
                {"type": "input_json_delta", "partial_json": piece}
                for piece in _split(turn.tool_arguments)
            ]
        else:
            opening = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": piece} for piece in turn.chunks]
        frames = [
            event(b"message_start", start),
            event(
                b"content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": opening},
            ),
            event(b"ping", {"type": "ping"}),
        ]
        frames.extend(
            event(
                b"content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
            )
            for delta in deltas
        )
        frames.append(event(b"content_block_stop", {"type": "content_block_stop", "index": 0}))
        frames.append(
            event(
                b"message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": turn.stop_sequence},
                    "usage": {"output_tokens": turn.completion_tokens},
                },
            )
        )
        frames.append(event(b"message_stop", {"type": "message_stop"}))
        plan = _Plan(200, events=frames, lead=3, beats=tuple(range(3, 3 + len(deltas))))
        return self._finish(plan, directives, len(deltas))

    @staticmethod
    def _anthropic_tool(tools: Any, choice: Any) -> tuple[str, Any] | None:
        if tools is None or tools == []:
            return None
        if not isinstance(tools, list):
            raise _Fail(400, "tools: must be an array")
        defined: list[tuple[str, Any]] = []
        for tool in tools:
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                raise _Fail(400, "tools: each tool needs a name")
            defined.append((tool["name"], tool.get("input_schema")))
        if choice is not None and not isinstance(choice, dict):
            raise _Fail(400, "tool_choice: must be an object")
        kind = choice.get("type", "auto") if choice else "auto"
        if kind == "none":
            return None
        if kind == "tool":
            name = choice.get("name") if choice else None
            for entry in defined:
                if entry[0] == name:
                    return entry
            raise _Fail(400, f"tool_choice: tool {name!r} is not defined")
        return defined[0]


# --------------------------------------------------------------------------- connections


class _ClientGone(Exception):
    """The client closed the connection before the answer was fully sent."""


class _Connection:
    """One keep-alive HTTP/1.1 connection: read a request, carry out its plan, repeat."""

    __slots__ = ("http", "responder", "stats", "stream")

    def __init__(self, stream: trio.SocketStream, responder: _Responder) -> None:
        self.stream = stream
        self.responder = responder
        self.stats = responder.stats
        self.http = h11.Connection(h11.SERVER)

    async def run(self) -> None:
        while True:
            try:
                request = await self._read_request()
            except h11.RemoteProtocolError as exc:
                if self.http.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    status = exc.error_status_hint
                    error = _error_body(status, f"Malformed HTTP request: {exc}", anthropic=False)
                    await self._carry_out(_Plan(status, error, [(b"connection", b"close")]))
                return
            if request is None:
                return
            method, path, headers, body = request
            if body is None:
                body_error = _error_body(413, "Request body too large", anthropic=False)
                await self._carry_out(_Plan(413, body_error, [(b"connection", b"close")]))
                return
            if path.startswith("/mock/"):
                keep = await self._carry_out(self.responder.control(method, path))
            else:
                keep = await self._serve(method, path, headers, body)
            if not keep or self.http.our_state is not h11.DONE:
                return
            try:
                self.http.start_next_cycle()
            except h11.LocalProtocolError:
                return  # the client said Connection: close, or used HTTP/1.0

    async def _serve(
        self, method: bytes, path: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> bool:
        stats = self.stats
        stats.requests += 1
        stats.by_path[path] = stats.by_path.get(path, 0) + 1
        stats.in_flight += 1
        try:
            try:
                plan = self.responder.answer(method, path, headers, body)
            except Exception as exc:  # a bug in the mock must not kill the listener
                message = f"mock internal error: {type(exc).__name__}: {exc}"
                plan = _Plan(500, _error_body(500, message, anthropic=False))
            return await self._carry_out(plan)
        except _ClientGone:
            stats.disconnects += 1
            return False
        finally:
            stats.in_flight -= 1

    async def _next_event(self) -> Any:
        while True:
            event = self.http.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.http.receive_data(await self.stream.receive_some(_RECV_BYTES))

    async def _read_request(
        self,
    ) -> tuple[bytes, str, list[tuple[bytes, bytes]], bytes | None] | None:
        """The next request, None when the client closed; body None when it is too large."""
        event = await self._next_event()
        if isinstance(event, h11.ConnectionClosed):
            return None
        if not isinstance(event, h11.Request):
            raise h11.RemoteProtocolError("expected a request", error_status_hint=400)
        target = event.target
        cut = target.find(b"?")
        path = (target if cut < 0 else target[:cut]).decode("ascii", "replace")
        if self.http.they_are_waiting_for_100_continue:
            interim = h11.InformationalResponse(status_code=100, headers=[])
            await self.stream.send_all(self.http.send(interim))
        parts: list[bytes] = []
        size = 0
        while True:
            item = await self._next_event()
            if isinstance(item, h11.Data):
                size += len(item.data)
                if size > _MAX_BODY_BYTES:
                    return event.method, path, list(event.headers), None
                parts.append(item.data)
            elif isinstance(item, h11.EndOfMessage):
                break
            else:
                raise h11.RemoteProtocolError("unexpected event in body", error_status_hint=400)
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        return event.method, path, list(event.headers), body

    async def _carry_out(self, plan: _Plan) -> bool:
        """Send the plan's answer; True when the connection can serve another request."""
        paced = plan.chunk_delay > 0 or plan.beat_delay > 0
        if plan.delay > 0 or (plan.events is not None and paced):
            return await self._watched(plan)
        try:
            return await self._emit(plan)
        except trio.BrokenResourceError:
            raise _ClientGone from None

    async def _watched(self, plan: _Plan) -> bool:
        """Emit while a watcher reads the socket, so a client that leaves is noticed now.

        Bytes the watcher reads (a pipelined next request) go to h11's buffer. Only an
        emit that did not finish counts as a disconnect: the client may read the last
        bytes and close while `send_all` is still in its final (shielded) checkpoint,
        and that answer was fully sent.
        """
        done = False
        keep = False

        async def watch(scope: trio.CancelScope) -> None:
            try:
                while data := await self.stream.receive_some(_RECV_BYTES):
                    self.http.receive_data(data)
            except trio.BrokenResourceError:
                pass
            scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch, nursery.cancel_scope)
            try:
                keep = await self._emit(plan)
                done = True
            except trio.BrokenResourceError:
                pass
            nursery.cancel_scope.cancel()
        if not done:
            raise _ClientGone
        return keep

    async def _emit(self, plan: _Plan) -> bool:
        if plan.delay > 0:
            await trio.sleep(plan.delay)
        if plan.close:
            return False
        http = self.http
        stream = self.stream
        if plan.events is None:
            body = plan.body
            headers = [*plan.headers, (b"content-length", str(len(body)).encode())]
            head = http.send(h11.Response(status_code=plan.status, headers=headers))
            if plan.cut_after is not None:
                await stream.send_all(head + http.send(h11.Data(data=body[: len(body) // 2])))
                return False
            await stream.send_all(
                head + http.send(h11.Data(data=body)) + http.send(h11.EndOfMessage())
            )
            return True
        events = plan.events
        count = (
            len(events) if plan.cut_after is None else min(len(events), plan.lead + plan.cut_after)
        )
        complete = count == len(events)
        head = http.send(h11.Response(status_code=plan.status, headers=plan.headers))
        if plan.beat_delay > 0:
            return await self._emit_beats(plan, head, count, complete)
        if plan.chunk_delay <= 0:
            # Unpaced: the frames share one HTTP chunk and one write (SSE does not care
            # where chunks end, and h11's per-chunk cost would dominate a stream).
            out = head + http.send(h11.Data(data=b"".join(events[:count])))
            if complete:
                out += http.send(h11.EndOfMessage())
            await stream.send_all(out)
            return complete
        await stream.send_all(head)
        for index in range(count):
            if index:
                await trio.sleep(plan.chunk_delay)
            await stream.send_all(http.send(h11.Data(data=events[index])))
        if complete:
            await stream.send_all(http.send(h11.EndOfMessage()))
        return complete

    async def _emit_beats(self, plan: _Plan, head: bytes, count: int, complete: bool) -> bool:
        """A stream at the model's pace: `beat_delay` before each content event but the
        first; the frames between two beats (the lead, the tail) share one write. Each
        wake-up is set from the stream's start, so the pace does not drift with the writes.
        """
        http = self.http
        events = plan.events or []
        cuts = [0, *(i for i in plan.beats[1:] if i < count), count]
        start = trio.current_time()
        out = head
        for beat in range(len(cuts) - 1):
            if beat:
                await trio.sleep_until(start + beat * plan.beat_delay)
            out += http.send(h11.Data(data=b"".join(events[cuts[beat] : cuts[beat + 1]])))
            if beat == len(cuts) - 2 and complete:
                out += http.send(h11.EndOfMessage())
            await self.stream.send_all(out)
            out = b""
        return complete


# --------------------------------------------------------------------------- serving


async def serve_mock(
    options: MockOptions, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve the mock until cancelled.

    Args:
        options: bind address and injected faults.
        task_status: receives the bound port once the socket listens (port 0 works).
    Raises:
        OSError: the address cannot be bound.
    """
    listeners = await trio.open_tcp_listeners(options.port, host=options.host)
    port: int = listeners[0].socket.getsockname()[1]
    if options.port == 0:
        # With port 0 each address family got its own free port; keep one of them.
        for extra in listeners[1:]:
            await extra.aclose()
        listeners = listeners[:1]
    responder = _Responder(options, _Stats())

    async def handle(stream: trio.SocketStream) -> None:
        responder.stats.connections += 1
        try:
            await _Connection(stream, responder).run()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass  # the client went away or broke HTTP; nothing left to answer
        finally:
            await stream.aclose()

    task_status.started(port)
    await trio.serve_listeners(handle, listeners)


def run(options: MockOptions) -> int:
    """Serve in the foreground until SIGINT or SIGTERM; the exit status for the CLI."""
    from . import collector

    collector.tune()  # a server process, holding thousands of paced streams in benchmarks
    status = 0

    async def main() -> None:
        nonlocal status
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                try:
                    port = await nursery.start(serve_mock, options)
                    collector.freeze_startup()
                except OSError as exc:
                    print(
                        f"Error: cannot listen on {options.host}:{options.port}: {exc}",
                        file=sys.stderr,
                    )
                    status = 1
                    return
                host = f"[{options.host}]" if ":" in options.host else options.host
                print(f"mock upstream on http://{host}:{port}", file=sys.stderr, flush=True)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(main)
    return status
