"""Attempts: walk the candidates, retry what `retry_on` allows, give up with one clear error.

This is the one place where "try this candidate" happens. Attempts walk the candidate list
in order and wrap round to the first after a backoff that honours Retry-After (capped).
A non-retryable upstream answer (a 400 for a bad parameter, say) is returned at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import trio

from .config import RoutingConfig
from .errors import UpstreamError, UpstreamStatus
from .routing import Deployment

T = TypeVar("T")

BACKOFF_BASE_S = 0.1
BACKOFF_CAP_S = 5.0


async def run_attempts(
    candidates: Sequence[Deployment],
    attempt: Callable[[Deployment], Awaitable[T]],
    routing: RoutingConfig,
    on_failure: Callable[[Deployment, UpstreamError], None] | None = None,
) -> tuple[T, Deployment]:
    """Return the first good answer and who gave it, or raise the error the client should see."""
    last: UpstreamError | None = None
    total = max(1, routing.max_attempts)
    for number in range(total):
        deployment = candidates[number % len(candidates)]
        if number and number % len(candidates) == 0:
            await trio.sleep(_backoff(number // len(candidates), last))
        try:
            return await attempt(deployment), deployment
        except UpstreamError as error:
            if on_failure is not None:
                on_failure(deployment, error)
            if not error.retryable:
                raise
            last = error
    assert last is not None
    raise _exhausted(last, total)


def _backoff(round_number: int, last: UpstreamError | None) -> float:
    delay = min(BACKOFF_CAP_S, BACKOFF_BASE_S * (2 ** (round_number - 1)))
    if last is not None and last.retry_after is not None:
        delay = max(delay, min(BACKOFF_CAP_S, last.retry_after))
    return delay


def _exhausted(last: UpstreamError, attempts: int) -> UpstreamError:
    """The error after the last attempt: 429 stays 429 (with Retry-After), 5xx become 502."""
    if isinstance(last, UpstreamStatus) and last.status >= 500:
        return UpstreamError(
            f"upstream failed after {attempts} attempt(s): {last.message}",
            code="upstream_failed",
        )
    return last
