"""Request validation: one JSON parse, then cheap type checks that name the bad field.

Only what edge itself relies on, plus the common sampling fields whose wrong type an
upstream would reject anyway, is checked here; every other field passes through
untouched so new upstream features keep working.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from .errors import BadRequest, clip, utf8_len
from .fastpath import MAX_DEPTH

# No provider's model name comes near this; a longer one is refused before it reaches the
# router's globs, its memo, the metrics or the log.
MAX_MODEL_BYTES = 256

# field -> (accepted types, description for the message)
_NUMBER = ((int, float), "a number")
_INT = ((int,), "an integer")
_OPTIONAL_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "temperature": _NUMBER,
    "top_p": _NUMBER,
    "presence_penalty": _NUMBER,
    "frequency_penalty": _NUMBER,
    "max_tokens": _INT,
    "max_completion_tokens": _INT,
    "n": _INT,
    "seed": _INT,
    "stream": ((bool,), "a boolean"),
    "tools": ((list,), "an array"),
    "stop": ((str, list), "a string or an array of strings"),
    "response_format": ((dict,), "an object"),
    "stream_options": ((dict,), "an object"),
    "user": ((str,), "a string"),
}


def parse_object(raw: bytes) -> dict[str, Any]:
    """Parse the body; anything but a JSON object is a 400 that says why.

    An object that repeats a key is refused (400 naming the key and where it is), not
    resolved: orjson keeps the last duplicate, but on native pass-through edge forwards
    the client's bytes as they are, and an upstream that keeps the *first* would answer
    a different request from the one edge keyed, routed and cached. Under
    `scope = "global"` that lets one tenant store an answer under another's key. Sending
    the parsed body instead would hide the ambiguity rather than end it (the client meant
    one of the two and edge cannot know which) and cost a re-serialisation per request.
    """
    if not raw:
        raise BadRequest("The request body is empty; expected a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    # Only a body with that many brackets can be that deep: count in C, walk rarely.
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _too_deep(body, MAX_DEPTH):
        raise BadRequest(f"The request body is nested deeper than {MAX_DEPTH} levels.")
    if _may_repeat_keys(raw, body):
        _refuse_repeated_keys(raw)
    return body


def _may_repeat_keys(raw: bytes, body: dict[str, Any]) -> bool:
    """False when the parse provably kept every member of every object in the text.

    Outside strings a colon ends a key, so `raw` holds one colon per member plus those
    written inside strings; orjson's re-serialisation of the parse holds one per member
    it *kept* plus the same string colons. A repeated key drops a member and at least
    its colon, so the re-serialisation has fewer. An escaped colon (`\\u003a`) becomes
    one only in the parse, so it is counted for `raw` too (a `\\\\u003a`, which is no
    colon, then counts high: that costs the exact check, never a missed repeat).
    A serialisation and two counts in C; the exact check in Python only when they differ.
    """
    kept = orjson.dumps(body).count(b":")  # it writes whatever it reads (a huge int is a float)
    written = raw.count(b":")
    if b"\\u" in raw:
        written += raw.count(b"\\u003a") + raw.count(b"\\u003A")
    return written > kept


class _Repeated(dict[str, Any]):
    """An object parsed by the exact check that repeated `key`."""

    key = ""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            repeated = _Repeated(obj)
            repeated.key = key
            return repeated
        seen.add(key)
    raise AssertionError("unreachable: fewer keys than pairs means a repeat")


def _refuse_repeated_keys(raw: bytes) -> None:
    """The exact check (rare: only when `_may_repeat_keys` could not rule a repeat out)."""
    found = _first_repeat(json.loads(raw, object_pairs_hook=_pairs), "")
    if found is None:
        return  # a colon inside a string made the bound loose; nothing was repeated
    where, key = found
    shown = key if len(key) <= 100 else key[:100] + "..."
    place = f"'{where}'" if where else "the top-level object"
    raise BadRequest(
        f"The request body repeats the key '{shown}' in {place}; a key may appear only "
        "once in an object.",
        param=f"{where}.{shown}" if where else shown,
    )


def _first_repeat(value: Any, path: str) -> tuple[str, str] | None:
    """(path of the object, repeated key) of the first repeat in document order."""
    if isinstance(value, dict):
        if isinstance(value, _Repeated):
            return path, value.key
        for key, child in value.items():
            if isinstance(child, dict | list):
                found = _first_repeat(child, f"{path}.{key}" if path else key)
                if found is not None:
                    return found
    elif isinstance(value, list):
        for i, child in enumerate(value):
            if isinstance(child, dict | list):
                found = _first_repeat(child, f"{path}[{i}]")
                if found is not None:
                    return found
    return None


def _too_deep(value: Any, budget: int) -> bool:
    if budget == 0:
        return True
    if isinstance(value, dict):
        return any(_too_deep(v, budget - 1) for v in value.values() if isinstance(v, dict | list))
    if isinstance(value, list):
        return any(_too_deep(v, budget - 1) for v in value if isinstance(v, dict | list))
    return False


def _require_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required and must be a non-empty string.", param="model")
    size = utf8_len(model)
    if size > MAX_MODEL_BYTES:
        raise BadRequest(f"'model' must be at most {MAX_MODEL_BYTES} bytes, not {size}: "
                         f"'{clip(model, 32)}'.", param="model")
    return model


def _check_optional(body: dict[str, Any]) -> None:
    for field, value in body.items():
        spec = _OPTIONAL_FIELDS.get(field)
        if spec is None or value is None:
            continue
        types, what = spec
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise BadRequest(f"'{field}' must be {what}.", param=field)
    n = body.get("n")
    if isinstance(n, int) and n < 1:
        raise BadRequest("'n' must be at least 1.", param="n")
    for field in ("max_tokens", "max_completion_tokens"):
        value = body.get(field)
        if isinstance(value, int) and value < 1:
            raise BadRequest(f"'{field}' must be at least 1.", param=field)


def _require_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """`messages`, a non-empty array of objects (both doors); roles are each door's check."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' is required and must be a non-empty array.",
                         param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"'messages[{i}]' must be an object.", param=f"messages[{i}]")
    return messages


def validate_chat(body: dict[str, Any]) -> str:
    """Check a Chat Completions request; returns the requested model."""
    model = _require_model(body)
    for i, message in enumerate(_require_messages(body)):
        if not isinstance(message.get("role"), str):
            raise BadRequest(f"'messages[{i}].role' is required and must be a string.",
                             param=f"messages[{i}].role")
    _check_optional(body)
    return model


def validate_embeddings(body: dict[str, Any]) -> str:
    """Check an embeddings request; returns the requested model."""
    model = _require_model(body)
    data = body.get("input")
    if isinstance(data, str):
        valid = True
    elif isinstance(data, list) and data:
        valid = all(isinstance(x, str | int | list) and not isinstance(x, bool) for x in data)
    else:
        valid = False
    if not valid:
        raise BadRequest(
            "'input' is required: a string, an array of strings or an array of token arrays.",
            param="input",
        )
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in ("float", "base64"):
        raise BadRequest("'encoding_format' must be 'float' or 'base64'.", param="encoding_format")
    return model


def validate_messages(body: dict[str, Any]) -> str:
    """Check an Anthropic Messages request; returns the requested model."""
    model = _require_model(body)
    max_tokens = body.get("max_tokens")
    if type(max_tokens) is not int or max_tokens < 1:
        raise BadRequest("'max_tokens' is required and must be a positive integer.",
                         param="max_tokens")
    for i, message in enumerate(_require_messages(body)):
        if message.get("role") not in ("user", "assistant"):
            raise BadRequest(f"'messages[{i}].role' must be 'user' or 'assistant'.",
                             param=f"messages[{i}].role")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean.", param="stream")
    for field in ("temperature", "top_p"):
        value = body.get(field)
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise BadRequest(f"'{field}' must be a number.", param=field)
    return model


def prompt_chars(body: dict[str, Any]) -> int:
    """Rough prompt size in characters, for cost estimates before a request runs."""
    total = 0
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += len(part["text"])
    return total
