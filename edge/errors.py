"""Every error edge can answer with, and the one place that renders them.

    EdgeError                      500 api_error (never shown as a traceback)
    ├── BadRequest                 400 invalid_request_error
    ├── Unauthorized               401 authentication_error (code key_expired: an expired key)
    ├── Forbidden                  403 permission_error (model_not_allowed)
    ├── NotFound                   404 not_found_error
    ├── MethodNotAllowed           405 invalid_request_error
    ├── Conflict                   409 invalid_request_error (admin API: name taken, file key)
    ├── PayloadTooLarge            413 invalid_request_error
    ├── RateLimited                429 rate_limit_error (Retry-After)
    ├── BudgetExceeded             429 insufficient_quota (Retry-After unless it never resets)
    ├── ServiceUnavailable         503 service_unavailable (Retry-After when known)
    │   └── PoolExhausted          503 edge's own connection limit for a provider is reached
    └── UpstreamError              502 upstream_error
        ├── UpstreamStatus         the upstream's own status (a 4xx passed through, or a
        │                          retryable 5xx/429 that ran out of attempts)
        ├── UpstreamTimeout        504 timeout
        └── UpstreamConnectError   502 the connection failed or was cut
    ClosingError                   400 invalid_request_error, and the connection is closed
    ├── RequestTimeout             408 the request body took too long
    └── HeadersTooLarge            431 the request line and headers are too big

Each error carries the HTTP status it maps to, so `render` is the only code that turns
an error into a response body, in the caller's dialect (OpenAI or Anthropic).

Whatever a message (or a log field) repeats of the client's input goes through `clip`
first: a request may carry megabytes where a model name or a path belongs, and an error
must not echo them back, nor a log line grow with them.
"""

from __future__ import annotations

import orjson

__all__ = [
    "BadRequest",
    "BudgetExceeded",
    "ClosingError",
    "Conflict",
    "EdgeError",
    "Forbidden",
    "HeadersTooLarge",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "PoolExhausted",
    "RateLimited",
    "RequestTimeout",
    "ServiceUnavailable",
    "Unauthorized",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamStatus",
    "UpstreamTimeout",
    "clip",
    "render",
    "utf8_len",
]

# How much of a client's string a message or a log field repeats.
ECHO_CHARS = 256


def clip(text: str, limit: int = ECHO_CHARS) -> str:
    """`text` as far as a message may repeat it: its first `limit` characters, and when
    it was longer, how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def utf8_len(text: str) -> int:
    """The size of `text` in UTF-8 bytes; free for ASCII (`str.isascii` reads a flag)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


class EdgeError(Exception):
    """Base of every error edge answers with; `status` is the HTTP status it maps to."""

    status = 500
    type = "api_error"
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.retry_after = retry_after

    @property
    def kind(self) -> str:
        """The error's type as edge defines it, for metric labels: an upstream's own type
        string (passed on to the client) is not a bounded label value."""
        return type(self).type

    def headers(self) -> list[tuple[bytes, bytes]]:
        if self.retry_after is None:
            return []
        seconds = max(1, int(-(-self.retry_after // 1)))  # ceil, at least 1
        return [(b"retry-after", str(seconds).encode())]


class BadRequest(EdgeError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(EdgeError):
    status = 401
    type = "authentication_error"
    default_code = "invalid_api_key"


class NotFound(EdgeError):
    status = 404
    type = "not_found_error"


class MethodNotAllowed(EdgeError):
    status = 405
    type = "invalid_request_error"
    default_code = "method_not_allowed"


class PayloadTooLarge(EdgeError):
    status = 413
    type = "invalid_request_error"
    default_code = "request_too_large"


class RateLimited(EdgeError):
    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class ServiceUnavailable(EdgeError):
    status = 503
    type = "service_unavailable"


class PoolExhausted(ServiceUnavailable):
    """Every connection edge may open to a provider (`max_connections`) stayed busy.

    This is edge's own limit, not the provider failing: it never feeds the provider's
    circuit breaker nor its error count, and the client is told to come back shortly.
    """

    default_code = "upstream_pool_exhausted"

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after=1.0)


class UpstreamError(EdgeError):
    """The upstream could not give a usable answer. `retryable` drives failover."""

    status = 502
    type = "upstream_error"
    retryable = True


class UpstreamStatus(UpstreamError):
    """The upstream answered with an error status; its message is passed on."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        retryable: bool,
        upstream_type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        provider: str | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code, retry_after=retry_after)
        self.status = status
        self.retryable = retryable
        if upstream_type:
            self.type = upstream_type
        self.provider = provider  # who answered: the client sees it in x-edge-provider

    def headers(self) -> list[tuple[bytes, bytes]]:
        headers = super().headers()
        if self.provider is not None:
            headers.append((b"x-edge-provider", self.provider.encode()))
        return headers


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "timeout"
    default_code = "upstream_timeout"


class UpstreamConnectError(UpstreamError):
    default_code = "upstream_unavailable"


class ClosingError(EdgeError):
    """A request edge cannot safely read past: after the answer the connection is closed,
    so whatever the client sent after it (a pipelined request, the rest of a body) is
    never taken for a request of its own."""

    status = 400
    type = "invalid_request_error"

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [*super().headers(), (b"connection", b"close")]


class RequestTimeout(ClosingError):
    status = 408
    default_code = "request_timeout"


class HeadersTooLarge(ClosingError):
    status = 431
    default_code = "request_header_fields_too_large"


# Anthropic names its error types by meaning rather than by our classes.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    431: "invalid_request_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def render(error: EdgeError, *, anthropic: bool = False) -> tuple[int, bytes]:
    """Return (status, JSON body) for `error` in the OpenAI or the Anthropic dialect."""
    if anthropic:
        body = {
            "type": "error",
            "error": {
                "type": _ANTHROPIC_TYPES.get(error.status, "api_error"),
                "message": error.message,
            },
        }
    else:
        body = {
            "error": {
                "message": error.message,
                "type": error.type,
                "param": error.param,
                "code": error.code,
            }
        }
    return error.status, orjson.dumps(body)


class Forbidden(EdgeError):
    """The key is valid but may not do this (a model outside its allowlist, SPEC §7)."""

    status = 403
    type = "permission_error"
    default_code = "model_not_allowed"


class Conflict(EdgeError):
    """The admin API cannot do this to that key: the name is taken, or it is a file key."""

    status = 409
    type = "invalid_request_error"
    default_code = "conflict"


class BudgetExceeded(EdgeError):
    """The key spent its budget for the current window (SPEC §7); Anthropic: rate_limit_error."""

    status = 429
    type = "insufficient_quota"
    default_code = "budget_exceeded"
