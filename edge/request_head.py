"""What edge reads from a request's head before the request reaches a handler.

h11 parses the head; these are the rules it leaves to the server (RFC 9112, SECURITY.md):

- Size. h11 bounds only a head still incomplete in its buffer (Hypercorn's
  `h11_max_incomplete_size`), and Hypercorn reads up to 64 KiB at a time, so a complete
  head of almost twice the bound would get through. `MAX_HEAD_BYTES` is the one limit
  for both.
- Framing. A request with both `Content-Length` and `Transfer-Encoding` is the classic
  request-smuggling shape (RFC 9112 §6.3): a proxy in front may have framed it by the
  other header. It is refused, and the connection closed, so nothing after it is read
  as a request.
- Absolute-form targets (`POST http://host/v1/chat/completions`, RFC 9112 §3.2.2), which a
  server must accept, are routed by their path.

`refusal` runs in edge's HTTP/1.1 protocol (`edge.http1`), the rest in the app.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from .errors import ClosingError, HeadersTooLarge
from .fastpath import HEAD_OK, HEAD_TOO_LARGE, head_check

__all__ = ["MAX_HEAD_BYTES", "anthropic_path", "origin_path", "refusal", "request_id"]

MAX_HEAD_BYTES = 64 * 1024  # request line + headers, as SECURITY.md documents

# Echo a client's id only if it is short and plain: it goes into headers and logs.
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")


def refusal(target: bytes, items: Iterable[tuple[bytes, ...]]) -> ClosingError | None:
    """Why a head must not be served, or None. `items` are h11's (raw name, name, value)
    triples or (name, value) pairs, names lower-case; the walk is `fastpath.head_check`."""
    verdict = head_check(target, items, MAX_HEAD_BYTES)
    if verdict == HEAD_OK:
        return None
    if verdict == HEAD_TOO_LARGE:
        return HeadersTooLarge(
            f"Request line and headers exceed the limit of {MAX_HEAD_BYTES} bytes.")
    return ClosingError("A request must not have both Content-Length and Transfer-Encoding.",
                        code="ambiguous_framing")


def origin_path(path: str) -> str:
    """The path of an absolute-form target (`http://host/p` -> `/p`); others unchanged."""
    scheme, sep, rest = path.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return path  # authority- or asterisk-form, or nonsense: the router says 404
    slash = rest.find("/")
    return rest[slash:] if slash >= 0 else "/"


def anthropic_path(path: str) -> bool:
    """Anthropic clients also call /v1/messages/* (count_tokens, batches): their errors
    too come in Anthropic's format."""
    return path == "/v1/messages" or path.startswith("/v1/messages/")


def request_id(sent: bytes | None) -> bytes:
    """The client's `x-request-id` if it is plain enough to echo, else a new one."""
    if sent is None or _REQUEST_ID.fullmatch(sent) is None:
        return os.urandom(12).hex().encode()
    return sent
