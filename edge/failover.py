"""Attempts: walk the plan, retry what `retry_on` allows, hedge, give up with one clear error.

This is the one place where "try this candidate" happens.

Theory of operation
-------------------
The plan is the ranked candidate list (`Router.plan`). Attempts walk it in order and wrap
round to the first after a backoff that honours Retry-After (capped), up to
`max_attempts`; the backoff is slept only before an attempt that will happen. Each
attempt first asks the provider's breaker (`acquire`): a provider whose circuit opened
meanwhile is skipped without counting, and a half-open one admits a single probe. The
outcome feeds the breaker and the deployment's latency EWMA, which measures time to first
byte: the provider reports the answer's headers through `ATTEMPT`, the watch each attempt
installs for its own task, which also learns the key of the provider's pool that was sent.
Each attempt is in flight on its deployment (`DeploymentStats.begin`/`end`, what
`least_busy` ranks by) until it fails or its answer is in, a stream's until `settle`.

A candidate whose every key rests or is at its own limit (`edge.keypool`) is skipped like
one whose circuit is open, and so is one whose pool turns out exhausted at the attempt
(`KeysResting`): no call, no verdict on the provider, no backoff.

edge's own connection limit being reached (`PoolExhausted`) is no verdict on the provider:
it is released like a cancellation and answered as 503 at once.

Only retryable failures move on (statuses in `retry_on`, connection errors, timeouts); an
upstream answer such as a 400 for a bad parameter is returned to the client at once and
counts as the provider being up.

Hedging (`hedge_after_ms > 0`): if no running attempt has had its answer's headers in that
time (SPEC §10: headers at once and a slow body is an answer), the next candidate starts
beside it in the same nursery (each candidate at most once: a hedge never wraps round to
one that may still be running); the first good answer wins and cancelling the nursery
cancels the others, which closes their upstream connections. A successful answer that
lost the race is handed to `discard` (a stream must be closed).
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import trio

from .config import RoutingConfig
from .errors import EdgeError, UpstreamError, UpstreamStatus
from .fastpath import BREAKER_CLOSED
from .keypool import Key, KeysResting
from .metrics import Metrics
from .providers.base import ATTEMPT, AttemptWatch
from .routing import Deployment, unavailable
from .tracing import Tracing

_NO_TRACING = Tracing()

T = TypeVar("T")

BACKOFF_BASE_S = 0.1
BACKOFF_CAP_S = 5.0


class Attempts(Generic[T]):
    """One request's attempts over a plan; `run()` returns (answer, deployment)."""

    def __init__(
        self,
        plan: Sequence[Deployment],
        attempt: Callable[[Deployment], Awaitable[T]],
        routing: RoutingConfig,
        metrics: Metrics,
        discard: Callable[[T], Awaitable[None]] | None = None,
        tracing: Tracing | None = None,
        deferred: bool = False,
    ) -> None:
        self.plan = plan
        # A stream's verdict waits for its end (`settle`): a provider that fails after the
        # first byte must count as failing, not as the success its first byte looked like.
        self.deferred = deferred
        self.attempt = attempt
        self.routing = routing
        self.metrics = metrics
        self.discard = discard
        self.tracing = tracing if tracing is not None else _NO_TRACING
        self.last: UpstreamError | None = None
        self.started = 0  # turns used, a candidate skipped by its breaker included
        self.tried = 0  # upstream calls actually made
        self.key: Key | None = None  # the key of the pool the winning attempt sent

    async def run(self) -> tuple[T, Deployment]:
        if self.routing.hedge_after_ms > 0 and len(self.plan) > 1:
            return await self._race()
        return await self._sequential()

    # -- one attempt, with the breaker and stats bookkeeping -------------------------

    async def _try(self, dep: Deployment,
                   on_headers: Callable[[], None] | None = None) -> tuple[T, Key | None]:
        with self.tracing.span("upstream.attempt", provider=dep.provider.name, model=dep.model,
                               attempt=self.started) as span:
            try:
                answer = await self._try_untraced(dep, on_headers)
            except UpstreamError as error:
                span.set("status", error.status)
                span.error(error.message)
                raise
            except BaseException:
                span.set("status", "cancelled")
                raise
            span.set("status", 200)
            return answer

    async def _try_untraced(self, dep: Deployment,
                            on_headers: Callable[[], None] | None) -> tuple[T, Key | None]:
        """One attempt; it is in flight on `dep` (least_busy) from here until it fails, or
        until its answer is in (a deferred one's: until `settle`)."""
        self.tried += 1
        began = time.monotonic()
        watch = AttemptWatch(on_headers)
        token = ATTEMPT.set(watch)
        dep.stats.begin()
        try:
            answer = await self.attempt(dep)
        except UpstreamError as error:
            dep.stats.end()
            self._failed(dep, error)
            raise
        except BaseException:
            # cancelled, edge's own pool was full, or every key rests: no verdict on the
            # provider
            dep.stats.end()
            dep.breaker.release(time.monotonic())
            raise
        finally:
            ATTEMPT.reset(token)
        now = time.monotonic()
        dep.stats.observe((watch.headers_at or now) - began)
        if not self.deferred:
            dep.stats.end()
            dep.breaker.success(now)
            self._circuit_gauge(dep, now)
        return answer, watch.key

    def settle(self, dep: Deployment, error: UpstreamError | None) -> None:
        """The verdict on a deferred answer once it ended: a failure then counts like a
        failed attempt (breaker, provider_errors); otherwise, cut by the client included,
        the provider answered. Either way the attempt is no longer in flight."""
        dep.stats.end()
        if error is not None:
            self._failed(dep, error)
            return
        now = time.monotonic()
        dep.breaker.success(now)
        self._circuit_gauge(dep, now)

    def _failed(self, dep: Deployment, error: UpstreamError) -> None:
        now = time.monotonic()
        m = self.metrics
        m.child(m.provider_errors, dep.provider.name, error.kind).inc()
        if error.retryable:
            dep.breaker.failure(now)
        else:
            dep.breaker.success(now)  # it answered; the request was at fault
        self._circuit_gauge(dep, now)

    def _circuit_gauge(self, dep: Deployment, now: float) -> None:
        m = self.metrics
        opened = dep.breaker.state(now) != BREAKER_CLOSED
        m.child(m.circuit_open, dep.provider.name).set(1 if opened else 0)

    def _turns_left(self) -> bool:
        return self.started < max(1, self.routing.max_attempts)

    def _next(self) -> Deployment | None:
        """The next candidate whose breaker admits an attempt, or None when none is left."""
        skipped = 0
        while self._turns_left() and skipped < len(self.plan):
            dep = self.plan[self.started % len(self.plan)]
            # keys first: a half-open breaker's probe is not taken for a call never made
            if dep.provider.keys.usable() and dep.breaker.acquire(time.monotonic()):
                return dep
            skipped += 1
            self.started += 1  # a blocked candidate uses up its turn
        return None

    def _wraps(self) -> bool:
        return self.started > 0 and self.started % len(self.plan) == 0

    def _backoff(self) -> float:
        round_number = self.started // len(self.plan)
        delay = min(BACKOFF_CAP_S, BACKOFF_BASE_S * (2.0 ** (round_number - 1)))
        if self.last is not None and self.last.retry_after is not None:
            delay = max(delay, min(BACKOFF_CAP_S, self.last.retry_after))
        return delay

    def _moved_on(self, dep: Deployment) -> None:
        m = self.metrics
        m.child(m.failovers, dep.provider.name).inc()

    # -- strategies ------------------------------------------------------------------

    async def _sequential(self) -> tuple[T, Deployment]:
        while True:
            if self._wraps() and self.last is not None and self._turns_left():
                await trio.sleep(self._backoff())
            dep = self._next()
            if dep is None:
                raise self._exhausted()
            self.started += 1
            try:
                answer, self.key = await self._try(dep)
                return answer, dep
            except KeysResting:
                continue  # skipped like an open circuit; `_next` now sees its pool resting
            except UpstreamError as error:
                if not error.retryable:
                    raise
                self.last = error
                self._moved_on(dep)

    async def _race(self) -> tuple[T, Deployment]:
        hedge_after = self.routing.hedge_after_ms / 1000.0
        send, receive = trio.open_memory_channel[
            tuple[Deployment, int, tuple[T, Key | None] | None, BaseException | None]](math.inf)
        winner: tuple[T, Deployment] | None = None
        fatal: EdgeError | None = None
        running = 0
        heard: set[int] = set()  # running attempts (by turn) whose answer's headers arrived

        async def attempt_task(dep: Deployment, turn: int) -> None:
            try:
                answer = await self._try(dep, lambda: heard.add(turn))
            except Exception as exc:  # every outcome goes back to the race as a message
                send.send_nowait((dep, turn, None, exc))
            else:
                send.send_nowait((dep, turn, answer, None))

        async with trio.open_nursery() as nursery:
            def launch() -> bool:
                nonlocal running
                dep = self._next()
                if dep is None:
                    return False
                self.started += 1
                running += 1
                nursery.start_soon(attempt_task, dep, self.started)
                return True

            if not launch():
                raise self._exhausted()
            while winner is None and fatal is None:
                outcome = None
                # Hedges race the plan's other candidates, once each: a hedge never wraps
                # round to a candidate whose first call may still be running.
                can_hedge = running > 0 and self.started < len(self.plan) and not heard
                with trio.move_on_after(hedge_after if can_hedge else math.inf):
                    outcome = await receive.receive()
                if outcome is None:  # no outcome yet: hedge, unless an answer is on its way
                    if not heard and launch():
                        m = self.metrics
                        m.child(m.hedges, self.plan[(self.started - 1) % len(self.plan)]
                                .provider.name).inc()
                    continue
                running -= 1
                dep, turn, answer, error = outcome
                heard.discard(turn)
                if answer is not None:
                    winner = (answer[0], dep)
                    self.key = answer[1]
                    break
                if isinstance(error, KeysResting):  # skipped like an open circuit
                    if running == 0 and not launch():
                        break
                    continue
                if not isinstance(error, UpstreamError) or not error.retryable:
                    fatal = error if isinstance(error, EdgeError) else UpstreamError(
                        f"provider {dep.provider.name} failed: {type(error).__name__}")
                    break
                self.last = error
                self._moved_on(dep)
                if running == 0:
                    if self._wraps() and self._turns_left():
                        await trio.sleep(self._backoff())
                    if not launch():
                        break
            nursery.cancel_scope.cancel()  # the winner (or the end) cancels the others
        # Answers that finished while we were deciding lost the race: release them.
        send.close()
        async for dep, _, answer, _ in receive:
            if answer is not None and self.discard is not None:
                with trio.CancelScope(shield=True):
                    await self.discard(answer[0])
            if answer is not None and self.deferred:
                self.settle(dep, None)
        if winner is not None:
            return winner
        if fatal is not None:
            raise fatal
        raise self._exhausted()

    def _exhausted(self) -> EdgeError:
        """The error once attempts ran out: 429 stays 429 (Retry-After), 5xx become 502."""
        last = self.last
        if last is None:  # every candidate's breaker or key pool refused: nothing was tried
            return unavailable(self.plan, "this model")
        if isinstance(last, UpstreamStatus) and last.status >= 500:
            return UpstreamError(
                f"upstream failed after {self.tried} attempt(s): {last.message}",
                code="upstream_failed",
            )
        return last
