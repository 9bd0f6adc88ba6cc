"""The small checks every codec makes of decoded JSON, and the errors they raise.

A client's field that fails a check raises `BadRequest` whose message starts with the
field's name and whose `param` is that name, so clients that show only the text still
see which field it was. An upstream answer that fails one raises `UpstreamError` (the
caller answers 502) with one fixed prefix, so operators can grep for them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeGuard

from edge import hub
from edge.errors import BadRequest, UpstreamError

JSON = dict[str, Any]


def bad(field: str, problem: str) -> BadRequest:
    return BadRequest(f"{field}: {problem}", param=field)


def upstream(problem: str) -> UpstreamError:
    return UpstreamError(f"upstream answered an unexpected shape: {problem}")


def stream_error(message: object, code: object = None) -> UpstreamError:
    """An error the upstream reported inside its stream, in its own words if it gave any."""
    return UpstreamError(
        message if isinstance(message, str) and message else "upstream stream error",
        code=code if isinstance(code, str) else None,
    )


def is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def count(value: object) -> int:
    """A token count, or 0 where the upstream gave none (or nonsense)."""
    return value if is_int(value) else 0


def number(body: Mapping[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is not None and not is_number(value):
        raise bad(key, "expected a number")
    return value


def flag(body: Mapping[str, Any], key: str, where: str | None = None) -> bool | None:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise bad(where or key, "expected a boolean")
    return value


def nonempty(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise bad(where, "expected a non-empty string")
    return value


def texts(content: object, where: str, noun: str) -> list[str]:
    """Every text of a string or a list of text parts/blocks (`noun` names which)."""
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise bad(where, f"expected a string or a list of text {noun}s")
    found = []
    for j, part in enumerate(content):
        if not isinstance(part, Mapping) or part.get("type") != "text":
            raise bad(f"{where}[{j}]", f"expected a text {noun}")
        text = part.get("text")
        if not isinstance(text, str):
            raise bad(f"{where}[{j}].text", "expected a string")
        found.append(text)
    return found


def stop_list(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise bad(where, "expected a list of strings")
    return tuple(value)


def system_text(req: hub.Request) -> str:
    """The system texts as one, for formats with a single system field; "" if none."""
    return "\n\n".join(text for text in req.system if text)


def arguments_object(call: hub.ToolCall) -> JSON:
    """A call's JSON-text arguments as the object formats with structured arguments
    need ("" reads as no arguments); `BadRequest` names the client's field otherwise."""
    if not call.arguments.strip():
        return {}
    try:
        value = json.loads(call.arguments)
    except ValueError:
        raise bad(call.where or "messages", "is not valid JSON") from None
    if not isinstance(value, dict):
        raise bad(call.where or "messages", "expected a JSON object")
    return value
