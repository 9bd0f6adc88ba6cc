"""The completion path, the same for every front door: cache policy, coalescing, the
upstream attempts, and the answer sent as JSON, relayed as a stream or replayed from cache.

    validate → cache lookup → (follow a leader | lead) → attempts → answer / relay → store

What differs between doors is the `Dialect` (`edge.dialects`); what a request cost and
used is reported to `Books` (`edge.bookkeeping`); the x-edge-* headers and metadata come
from `edge.answer_meta`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
import trio

from . import schema
from .answer_meta import SSE_HEADERS, cost_header, edge_headers
from .auth import check_model
from .bookkeeping import Books
from .budgets import budget_error
from .cache import NO_KEY, Cache, Flight, exact
from .config import Config
from .dialects import Dialect, EventSource
from .errors import BadRequest, EdgeError, NotFound, UpstreamError, clip
from .exchange import ClientGone, Request, read_body, run_watched, send_json
from .failover import Attempts
from .fastpath import Entry
from .routing import Deployment
from .service import Edge
from .tracing import Tracing

# The field without which a 200 from upstream is not an answer for that endpoint.
_ANSWER_FIELDS = {"chat": "choices", "embeddings": "data", "messages": "content",
                  "responses": "output"}


class CachePolicy:
    """What one request may do with the cache, and the x-edge-cache value of a miss."""

    __slots__ = ("header", "lookup", "store", "ttl")

    def __init__(self, header: bytes, *, lookup: bool, store: bool, ttl: int | None) -> None:
        self.header = header
        self.lookup = lookup
        self.store = store
        self.ttl = ttl


_NORMAL = CachePolicy(b"miss", lookup=True, store=True, ttl=None)
_BYPASS = CachePolicy(b"bypass", lookup=False, store=False, ttl=None)


class Call:
    """One validated completion request on its way through cache and upstream."""

    __slots__ = ("req", "edge", "dialect", "body", "raw", "model", "policy", "stream",
                 "wants_usage", "upstream_model", "tokens", "cost", "saved")

    def __init__(self, req: Request, edge: Edge, dialect: Dialect, body: dict[str, Any],
                 raw: bytes, model: str, policy: CachePolicy, stream: bool) -> None:
        self.req = req
        self.edge = edge
        self.dialect = dialect
        self.body = body
        self.raw = raw
        self.model = model
        self.policy = policy
        self.stream = stream
        options = body.get("stream_options")
        self.wants_usage = isinstance(options, dict) and options.get("include_usage") is True
        # What the ledger row says of it (`Books.ledger`): who answered, what it used and
        # cost, and what a hit saved.
        self.upstream_model: str | None = None
        self.tokens = (0, 0)
        self.cost = 0.0
        self.saved = 0.0


class Completions:
    """Serves POST /v1/chat/completions, /v1/embeddings and /v1/messages (by `Dialect`)."""

    def __init__(self, config: Config, service: Callable[[], Edge], books: Books,
                 tracing: Tracing) -> None:
        self.service = service
        self.books = books
        self.metrics = books.metrics
        self.tracing = tracing
        self.max_body = config.server.max_request_bytes
        self.body_timeout = config.server.request_body_timeout_s

    async def handle(self, req: Request, dialect: Dialect) -> None:
        req.endpoint = dialect.endpoint
        edge = self.service()
        if edge.limiter.limited(req.tenant):
            await edge.admit(req.key)  # with a budget, its spend is read in the same trip
        raw = await read_body(req, self.max_body, self.body_timeout)
        body = schema.parse_object(raw)
        model = dialect.validate(body)
        req.model = model
        if not edge.router.groups(model):
            raise NotFound(f"No configured provider serves the model '{clip(model)}'.",
                           param="model", code="model_not_found")
        key = req.key
        if key.models is not None:
            check_model(key, model, edge.config.models)  # 403 before any upstream call
        if dialect.stateful:  # Responses: previous_response_id expanded before the cache key
            dialect, body = await dialect.bind(req, edge, body, raw)
        policy = cache_policy(req, edge.cache)
        stream = body.get("stream") is True and dialect.operation != "embeddings"
        call = Call(req, edge, dialect, body, raw, model, policy, stream)
        metrics = self.metrics
        metrics.inflight.inc()
        status = 500
        try:
            await self._serve(call)
            status = req.status
        except EdgeError as error:
            status = error.status
            raise
        except ClientGone:
            status = 499
            raise
        finally:
            metrics.inflight.dec()
            metrics.child(metrics.duration, req.endpoint).observe(time.perf_counter() - req.start)
            self.books.ledger(call, status)

    async def _serve(self, call: Call) -> None:
        """Cache lookup, coalescing, then the upstream: the whole life of a completion."""
        cache = call.edge.cache
        policy = call.policy
        key = NO_KEY
        if policy.store:
            key = cache.key(call.dialect.endpoint, call.body, call.req.tenant)
        flight: Flight | None = None
        if policy.lookup:
            while True:
                with self.tracing.span("cache.lookup") as span:
                    hit = await cache.lookup(key)
                    span.set("edge.cache", hit[1] if hit is not None else "miss")
                if hit is not None:
                    await self._send_hit(call, *hit)
                    return
                if call.req.key.budget_nano is not None:
                    await self._within_budget(call)  # hits are free, even over budget
                leader, flight = cache.lead_or_follow(key)
                if leader:
                    break
                entry = await _follow(call.req, flight)
                flight = None
                if entry is not None:
                    # SPEC §4: followers "are served as hits"; the answer is in this
                    # process's memory, so an L1 hit in the header, body and metrics.
                    cache.served_follower()
                    await self._send_hit(call, entry, "l1")
                    return
                # the leader was abandoned: look again, and lead if nobody else does
        elif call.req.key.budget_nano is not None:
            await self._within_budget(call)
        try:
            if call.stream:
                entry = await run_watched(call.req, lambda: self._relay_stream(call), flight)
            else:
                entry = await run_watched(call.req, lambda: self._answer_json(call), flight)
            if entry is not None and policy.store:
                cache.store(key, entry, policy.ttl)
            if flight is not None:
                cache.finish(key, flight, entry=entry)
        except EdgeError as error:
            if flight is not None:
                cache.finish(key, flight, error=error)
            raise
        finally:
            if flight is not None and not flight.done.is_set():
                cache.finish(key, flight)  # abandoned: followers look again on their own

    async def _within_budget(self, call: Call) -> None:
        """Refuse a request that would reach an upstream once its key spent its budget."""
        refusal = await call.edge.budget_refusal(call.req.key)
        if refusal is not None:
            self.metrics.budget_refusals.inc()
            raise budget_error(call.req.key.name, refusal, time.time())

    async def _send_hit(self, call: Call, entry: Entry, tier: str) -> None:
        req = call.req
        if call.dialect.stateful:  # a hit is a new response, kept for follow-ups (SPEC §8)
            kept = orjson.dumps(await call.dialect.keep(entry.answer()))
            entry = Entry(kept, entry.provider, entry.model, entry.cost_usd)
        self.books.served_hit(call, entry)
        latency = round(req.elapsed_ms(), 3)
        cache_header = b"hit-l1" if tier == "l1" else b"hit-l2"
        req.provider, req.cache = entry.provider, cache_header
        if call.stream:
            headers = [*SSE_HEADERS, (b"x-request-id", req.request_id),
                       *edge_headers(cache_header, entry.provider, latency)]
            payload = call.dialect.replay(entry.answer(), call.wants_usage)
            req.status = 200
            await req.send({"type": "http.response.start", "status": 200, "headers": headers})
            req.finished = True
            await req.send({"type": "http.response.body", "body": payload})
            return
        body = call.dialect.json_body(entry.body, provider=entry.provider, tier=tier,
                                      latency_ms=latency, cost=0.0)
        await send_json(req, 200, body, edge_headers(cache_header, entry.provider, latency, b"0"))

    async def _answer_json(self, call: Call) -> Entry:
        dialect, body, raw = call.dialect, call.body, call.raw
        books = self.books

        async def attempt(dep: Deployment) -> dict[str, Any]:
            began = time.perf_counter()
            answer = await dialect.fetch(dep, body, raw)
            books.upstream_latency(dep, began)
            _check_answer(dialect.endpoint, answer, dep)
            return answer

        plan = call.edge.router.plan(call.model, body)
        attempts = Attempts(plan, attempt, call.edge.config.routing, self.metrics,
                            tracing=self.tracing)
        answer, dep = await attempts.run()
        answer.pop("metadata", None)  # an upstream's own field would collide with ours
        if dialect.stateful:
            answer = await dialect.keep(answer)
        usage = dialect.usage(answer)
        cost = books.answered(call, dep, usage)
        entry = exact(orjson.dumps(answer), dep.provider.name, dep.model, cost)
        req = call.req
        req.provider, req.cache = dep.provider.name, call.policy.header
        latency = round(req.elapsed_ms(), 3)
        books.ended(req.endpoint, 200)
        try:
            await send_json(req, 200, dialect.json_body(
                entry.body, provider=dep.provider.name, tier=None, latency_ms=latency, cost=cost),
                edge_headers(call.policy.header, dep.provider.name, latency, cost_header(cost)))
        finally:
            await books.charge(call, usage, cost, dep, attempts.key)  # paid for, sent or not
        return entry

    async def _relay_stream(self, call: Call) -> Entry | None:
        """Relay the upstream's items as they come; the assembled answer if it completed."""
        dialect, body, raw = call.dialect, call.body, call.raw
        books = self.books

        async def attempt(dep: Deployment) -> EventSource:
            began = time.perf_counter()
            source = await dialect.open(dep, body, raw)  # fails over until the first item
            books.upstream_latency(dep, began)
            return source

        async def discard(source: EventSource) -> None:
            await source.aclose()

        plan = call.edge.router.plan(call.model, body)
        attempts = Attempts(plan, attempt, call.edge.config.routing, self.metrics, discard,
                            tracing=self.tracing, deferred=True)
        source, dep = await attempts.run()
        try:
            return await self._pump(call, dep, source, attempts)
        finally:
            with trio.CancelScope(shield=True):
                await source.aclose()

    async def _pump(self, call: Call, dep: Deployment, source: EventSource,
                    attempts: Attempts[EventSource]) -> Entry | None:
        """Send the stream; whatever ends it, the breaker hears the verdict and the tokens
        are counted and charged, once."""
        req = call.req
        send = req.send
        dialect = call.dialect
        wants_usage = call.wants_usage
        req.provider, req.cache = dep.provider.name, call.policy.header
        latency = round(req.elapsed_ms(), 3)
        headers = [*SSE_HEADERS, (b"x-request-id", req.request_id),
                   *edge_headers(call.policy.header, dep.provider.name, latency)]
        # Assembled only to be stored, and never past the entry size cap; the assembler
        # counts the relayed text either way, for tokens and cost.
        cap = call.edge.config.cache.max_entry_bytes if call.policy.store else 0
        assembler = dialect.assembler(cap)
        failure: UpstreamError | None = None
        cost = 0.0
        try:
            req.status = 200
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            item = source.first
            # Frames of the events already in hand, sent as one write when the next event
            # needs a network read: never held across a wait, so nothing reaches the client
            # later.
            out: list[bytes] = []
            try:
                while item is not None:
                    assembler.feed_item(item)
                    item = dialect.for_client(item, wants_usage)
                    if item is not None:
                        out.append(dialect.frame(item))
                    if out and not source.ready():
                        await send({"type": "http.response.body", "body": b"".join(out),
                                    "more_body": True})
                        out.clear()
                    item = await source.next()
            except UpstreamError as error:
                # Headers are gone already: end the stream with an error event, never a
                # clean end; the request failed, and its log line and metrics say so.
                failure = error
                req.status = error.status
                out.append(dialect.error_frame(error))
            else:
                out.append(dialect.stream_end)
            req.finished = True
            await send({"type": "http.response.body", "body": b"".join(out),
                        "more_body": False})
        finally:
            attempts.settle(dep, failure)
            cost = await self.books.settle_stream(call, dep, assembler, attempts.key)
        self.books.ended(req.endpoint, req.status, failure)
        if failure is not None or not assembler.finished:
            return None
        return exact(orjson.dumps(assembler.result()), dep.provider.name, dep.model, cost)


def cache_policy(req: Request, cache: Cache) -> CachePolicy:
    """What this request may do with the cache, from config and its own headers."""
    if not cache.enabled:
        return _BYPASS
    ttl = None
    raw_ttl = req.headers.get(b"x-edge-cache-ttl")
    if raw_ttl is not None:
        try:
            ttl = int(raw_ttl)
        except ValueError:
            ttl = 0
        if not 0 < ttl <= 31_536_000:
            raise BadRequest("Header 'x-edge-cache-ttl' must be a whole number of seconds "
                             "between 1 and 31536000.", param="x-edge-cache-ttl")
    control = req.headers.get(b"cache-control")
    if control is not None:
        directives = {d.strip().lower() for d in control.split(b",")}
        if b"no-store" in directives:
            return _BYPASS
        if b"no-cache" in directives:
            return CachePolicy(b"refresh", lookup=False, store=True, ttl=ttl)
    if ttl is None:
        return _NORMAL
    return CachePolicy(b"miss", lookup=True, store=True, ttl=ttl)


async def _follow(req: Request, flight: Flight) -> Entry | None:
    """Wait for the leader's answer (or its error); None if it was abandoned."""
    flight.join()
    try:
        await run_watched(req, flight.done.wait)
    finally:
        flight.leave()
    if flight.error is not None:
        raise flight.error
    return flight.entry


def _check_answer(endpoint: str, answer: dict[str, Any], dep: Deployment) -> None:
    """Refuse a 200 that is not an answer (`{}`, an error object without an error status).

    It is treated like invalid JSON (SPEC §4: 502, "answered something that is not valid
    JSON"): a retryable failure, so the next candidate is tried and the breaker hears of
    it, and nothing is cached. An Anthropic message may have no content blocks and a
    response no output items; the other endpoints always answer with at least one
    choice or embedding.
    """
    field = _ANSWER_FIELDS[endpoint]
    value = answer.get(field)
    if not isinstance(value, list) or (not value and endpoint in ("chat", "embeddings")):
        raise UpstreamError(f"provider {dep.provider.name} answered 200 without "
                            f"'{field}': not a {endpoint} answer")
