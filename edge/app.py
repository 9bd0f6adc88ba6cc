"""The ASGI app: a tiny router and the request lifecycle of DESIGN.md.

    route + auth + body limit → parse + validate → candidates → attempts → respond

Every failure is an `EdgeError` rendered by `errors.render` in the caller's dialect; any
other exception is logged and answered as a generic 500 in the same format, so no client
ever sees a traceback and no input stops the server from serving others.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
import trio

from . import schema
from ._version import __version__
from .cache import Cache, Entry, Flight
from .config import Config
from .dialects import AnthropicDialect, Dialect, EventSource, OpenAIDialect
from .errors import (
    BadRequest,
    EdgeError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    ServiceUnavailable,
    Unauthorized,
    UpstreamError,
    clip,
    render,
)
from .failover import Attempts
from .http1 import CONTINUE_EXTENSION
from .logs import LEVELS, log
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import Metrics
from .request_head import anthropic_path, origin_path, request_id
from .routing import Deployment
from .service import Edge, open_edge
from .tracing import Tracing

T = TypeVar("T")
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

JSON = b"application/json"
_JSON_HEADERS = [(b"content-type", JSON)]
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class ClientGone(Exception):
    """The client disconnected; nothing more is sent."""


class Request:
    """What the handlers need to know about one request; built once, passed along."""

    __slots__ = ("scope", "receive", "send", "headers", "request_id", "start", "tenant",
                 "anthropic", "endpoint", "status", "finished", "provider", "model", "cache",
                 "usage")

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.headers: dict[bytes, bytes] = dict(scope["headers"])
        self.request_id = request_id(self.headers.get(b"x-request-id"))
        self.start = time.perf_counter()
        self.tenant = "anonymous"
        self.anthropic = False
        self.endpoint = "other"
        self.status = 200
        # Set just before the last body message: Hypercorn reports "disconnect" as soon as a
        # response is complete, and that must not cancel the work that follows it.
        self.finished = False
        # For the request's log line: who answered, for which model, from where.
        self.provider: str | None = None
        self.model: str | None = None
        self.cache: bytes | None = None
        self.usage: str | None = None  # "upstream" or "estimated": where the token counts came from

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.start) * 1000.0


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
                 "wants_usage")

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


_INFO = LEVELS["info"]
_BYTES_PER_TOKEN = 4
_BOOKKEEPING_S = 5.0
# The field without which a 200 from upstream is not an answer for that endpoint.
_ANSWER_FIELDS = {"chat": "choices", "embeddings": "data", "messages": "content"}
_CHAT = OpenAIDialect("chat", schema.validate_chat)
_EMBEDDINGS = OpenAIDialect("embeddings", schema.validate_embeddings)
_MESSAGES = AnthropicDialect()


class EdgeApp:
    """The ASGI application. `edge` is None until the lifespan has opened the service."""

    def __init__(self, config: Config, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self.edge: Edge | None = None
        self.tracing = Tracing.from_config(config)
        self.max_body = config.server.max_request_bytes
        self.body_timeout = config.server.request_body_timeout_s
        # digest -> (the same digest, key): the digest is decoded once, not per request
        self._keys = {bytes.fromhex(k.sha256): (bytes.fromhex(k.sha256), k)
                      for k in config.auth.keys}
        self._anonymous_ok = not self._keys or config.auth.allow_anonymous
        self._routes: dict[str, tuple[tuple[str, ...], Callable[[Request], Awaitable[None]]]] = {
            "/v1/chat/completions": (("POST",), self.chat),
            "/v1/embeddings": (("POST",), self.embeddings),
            "/v1/messages": (("POST",), self.messages),
            "/v1/models": (("GET",), self.models),
            "/health": (("GET", "HEAD"), self.health),
            "/health/live": (("GET", "HEAD"), self.live),
            "/health/ready": (("GET", "HEAD"), self.ready),
        }
        if config.enable_metrics:
            self._routes["/metrics"] = (("GET",), self.metrics_endpoint)

    # -- ASGI entry ------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(Request(scope, receive, send))
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "lifespan.startup":
            return
        try:
            async with open_edge(self.config, self.metrics, self.tracing) as edge:
                self.edge = edge
                await send({"type": "lifespan.startup.complete"})
                message = await receive()  # lifespan.shutdown
                edge.draining = True
        except Exception as exc:  # a failed start-up must be reported, not hang the server
            log.error("startup failed", error=repr(exc))
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            return
        finally:
            self.edge = None
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.tracing.shutdown)
        await send({"type": "lifespan.shutdown.complete"})

    async def _http(self, req: Request) -> None:
        path = req.scope["path"]
        if path[:1] != "/":
            path = req.scope["path"] = origin_path(path)
        route = self._routes.get(path)
        req.anthropic = anthropic_path(path)
        try:
            if path.startswith("/v1/"):
                self.authenticate(req)  # every /v1/* answer needs a key, even a 404 or 405
            if route is None:
                raise NotFound(f"Unknown path: {clip(path)}", code="unknown_url")
            methods, handler = route
            if req.scope["method"] not in methods:
                raise MethodNotAllowed(
                    f"Method {clip(req.scope['method'], 16)} is not allowed on {path}; "
                    f"use {methods[0]}.")
            if self.tracing.enabled:
                await self._traced(req, handler, path)
            else:
                await handler(req)
        except EdgeError as error:
            await self.send_error(req, error)
        except ClientGone:
            req.status = 499
        except Exception as exc:  # the last line of defence: log it, answer in format
            log.error("unhandled error", request_id=req.request_id.decode(),
                      error=clip(repr(exc), 1024), path=clip(path))
            await self.send_error(req, EdgeError("Internal error in edge; see the proxy log."))
        if req.status >= 500:
            self._log_request(req, path, "warning")
        elif log.threshold <= _INFO and not path.startswith("/health"):
            self._log_request(req, path, "info")

    async def _traced(self, req: Request, handler: Callable[[Request], Awaitable[None]],
                      path: str) -> None:
        """The handler inside a server span that continues the client's traceparent."""
        with self.tracing.request(f"{req.scope['method']} {path}", req.headers) as span:
            span.set("http.request_id", req.request_id.decode())
            try:
                await handler(req)
            except EdgeError as error:
                span.set("http.status_code", error.status)
                span.error(error.message)
                raise
            span.set("http.status_code", req.status)
            for name in ("provider", "model", "tenant"):
                value = getattr(req, name)
                if value is not None:
                    span.set(f"edge.{name}", value)
            if req.cache is not None:
                span.set("edge.cache", req.cache.decode())

    @staticmethod
    def _log_request(req: Request, path: str, level: str) -> None:
        log.log(level, "request", request_id=req.request_id.decode(),
                method=clip(req.scope["method"], 16), path=clip(path), status=req.status,
                latency_ms=round(req.elapsed_ms(), 3), provider=req.provider, model=req.model,
                tenant=req.tenant,
                cache=req.cache.decode() if req.cache is not None else None, usage=req.usage)

    # -- responses -------------------------------------------------------------------

    def base_headers(self, req: Request) -> list[tuple[bytes, bytes]]:
        return [(b"x-request-id", req.request_id)]

    async def send_error(self, req: Request, error: EdgeError) -> None:
        status, body = render(error, anthropic=req.anthropic)
        headers = [*_JSON_HEADERS, (b"content-length", b"%d" % len(body)),
                   *self.base_headers(req), *error.headers()]
        if isinstance(error, MethodNotAllowed):
            route = self._routes.get(req.scope["path"])
            if route is not None:
                headers.append((b"allow", ", ".join(route[0]).encode()))
        req.status = status
        self.metrics.child(self.metrics.errors, error.kind).inc()
        self.metrics.child(self.metrics.requests, req.endpoint, _status_class(status)).inc()
        try:
            await req.send({"type": "http.response.start", "status": status, "headers": headers})
            await req.send({"type": "http.response.body", "body": body})
        except OSError:
            return  # the client is gone; nothing to tell it

    async def send_json(self, req: Request, status: int, body: bytes,
                        headers: list[tuple[bytes, bytes]] | None = None) -> None:
        # Content-Length spares Hypercorn the chunked framing and its terminator write.
        all_headers = [*_JSON_HEADERS, (b"content-length", b"%d" % len(body)),
                       (b"x-request-id", req.request_id)]
        if headers:
            all_headers.extend(headers)
        req.status = status
        await req.send({"type": "http.response.start", "status": status, "headers": all_headers})
        req.finished = True
        await req.send({"type": "http.response.body", "body": body})

    # -- request plumbing ------------------------------------------------------------

    def service(self) -> Edge:
        edge = self.edge
        if edge is None or not edge.ready:
            raise ServiceUnavailable("edge is starting up; retry shortly.", retry_after=1)
        if edge.draining:
            raise ServiceUnavailable("edge is shutting down; retry on another instance.",
                                     retry_after=1)
        return edge

    def authenticate(self, req: Request) -> None:
        """Sets `req.tenant` from the client key; raises Unauthorized for a wrong key."""
        token = None
        auth = req.headers.get(b"authorization")
        if auth is not None:
            scheme, _, value = auth.partition(b" ")
            if scheme.lower() == b"bearer":
                token = value.strip()
        if token is None:
            token = req.headers.get(b"x-api-key")
        if not self._keys:
            req.tenant = "anonymous"  # no keys configured: loopback or allow_anonymous (config)
            return
        if not token:
            if self._anonymous_ok:
                req.tenant = "anonymous"
                return
            raise Unauthorized("Missing API key: send 'Authorization: Bearer KEY' or 'x-api-key'.")
        digest = hashlib.sha256(token).digest()
        found = self._keys.get(digest)
        if found is None or not hmac.compare_digest(found[0], digest):
            raise Unauthorized("Invalid API key.")
        req.tenant = found[1].name

    async def read_body(self, req: Request) -> bytes:
        """The whole body, refusing more than max_request_bytes before reading it.

        A client that waits for `100 Continue` gets it here, once the key and the declared
        size have passed. The whole read is bounded by request_body_timeout_s (408).
        """
        declared = req.headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                size = 0
            if size > self.max_body:
                raise PayloadTooLarge(
                    f"Request body of {size} bytes exceeds the limit of {self.max_body} bytes."
                )
        if b"expect" in req.headers:
            go_ahead = req.scope.get("extensions", {}).get(CONTINUE_EXTENSION)
            if go_ahead is not None:
                await go_ahead["send"]()
        with trio.move_on_after(self.body_timeout):
            return await self._receive_body(req)
        raise RequestTimeout(
            f"The request body did not arrive within {self.body_timeout:g} seconds.")

    async def _receive_body(self, req: Request) -> bytes:
        message = await req.receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            if len(body) > self.max_body:
                raise PayloadTooLarge(f"Request body exceeds the limit of {self.max_body} bytes.")
            return body
        parts = [body]
        size = len(body)
        while message.get("more_body", False):
            message = await req.receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise PayloadTooLarge(f"Request body exceeds the limit of {self.max_body} bytes.")
            parts.append(chunk)
        return b"".join(parts)

    async def until_disconnect(self, req: Request, scope: trio.CancelScope,
                               flight: Flight | None = None) -> None:
        """Cancel `scope` when the client goes away (Hypercorn never cancels the app).

        A coalescing leader whose followers still wait keeps its upstream call going until
        none is left waiting, so their answer is not thrown away.
        """
        while True:
            message = await req.receive()
            if message["type"] == "http.disconnect":
                if req.finished:
                    return
                if flight is not None:
                    await flight.wait_idle()
                scope.cancel()
                return

    async def run_watched(self, req: Request, work: Callable[[], Awaitable[T]],
                          flight: Flight | None = None) -> T:
        """Run `work`, cancelling it at once if the client disconnects (then ClientGone).

        Errors from `work` are re-raised as themselves, not wrapped in an ExceptionGroup.
        """
        box: list[tuple[bool, Any]] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.until_disconnect, req, nursery.cancel_scope, flight)
            try:
                box.append((True, await work()))
            except Exception as exc:
                box.append((False, exc))
            nursery.cancel_scope.cancel()
        if not box:
            raise ClientGone()
        ok, value = box[0]
        if ok:
            return value  # type: ignore[no-any-return]
        raise value

    # -- endpoints -------------------------------------------------------------------

    async def chat(self, req: Request) -> None:
        await self._completion(req, _CHAT)

    async def embeddings(self, req: Request) -> None:
        await self._completion(req, _EMBEDDINGS)

    async def messages(self, req: Request) -> None:
        await self._completion(req, _MESSAGES)

    async def _completion(self, req: Request, dialect: Dialect) -> None:
        req.endpoint = dialect.endpoint
        edge = self.service()
        if edge.limiter.limited(req.tenant):
            await edge.limiter.admit(req.tenant)
        raw = await self.read_body(req)
        body = schema.parse_object(raw)
        model = dialect.validate(body)
        req.model = model
        if not edge.router.groups(model):
            raise NotFound(f"No configured provider serves the model '{clip(model)}'.",
                           param="model", code="model_not_found")
        policy = self.cache_policy(req, edge.cache)
        stream = body.get("stream") is True and dialect is not _EMBEDDINGS
        call = Call(req, edge, dialect, body, raw, model, policy, stream)
        metrics = self.metrics
        metrics.inflight.inc()
        try:
            await self._serve(call)
        finally:
            metrics.inflight.dec()
            metrics.child(metrics.duration, req.endpoint).observe(time.perf_counter() - req.start)

    def cache_policy(self, req: Request, cache: Cache) -> CachePolicy:
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

    async def _serve(self, call: Call) -> None:
        """Cache lookup, coalescing, then the upstream: the whole life of a completion."""
        cache = call.edge.cache
        policy = call.policy
        key = cache.key(call.dialect.endpoint, call.body, call.req.tenant) if policy.store else ""
        flight: Flight | None = None
        if policy.lookup:
            while True:
                with self.tracing.span("cache.lookup") as span:
                    hit = await cache.lookup(key)
                    span.set("edge.cache", hit[1] if hit is not None else "miss")
                if hit is not None:
                    await self._send_hit(call, *hit)
                    return
                leader, flight = cache.lead_or_follow(key)
                if leader:
                    break
                entry = await self._follow(call.req, flight)
                flight = None
                if entry is not None:
                    # SPEC §4: followers "are served as hits"; the answer is in this
                    # process's memory, so an L1 hit in the header, body and metrics.
                    cache.served_follower()
                    await self._send_hit(call, entry, "l1")
                    return
                # the leader was abandoned: look again, and lead if nobody else does
        try:
            if call.stream:
                entry = await self.run_watched(call.req, lambda: self._relay_stream(call), flight)
            else:
                entry = await self.run_watched(call.req, lambda: self._answer_json(call), flight)
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

    async def _follow(self, req: Request, flight: Flight) -> Entry | None:
        """Wait for the leader's answer (or its error); None if it was abandoned."""
        flight.join()
        try:
            await self.run_watched(req, flight.done.wait)
        finally:
            flight.leave()
        if flight.error is not None:
            raise flight.error
        return flight.entry

    async def _send_hit(self, call: Call, entry: Entry, tier: str) -> None:
        req = call.req
        self.metrics.child(self.metrics.cost_saved, entry.provider,
                           self.metrics.model_label(entry.model)).inc(entry.cost_usd)
        self.metrics.child(self.metrics.requests, req.endpoint, "2xx").inc()
        latency = round(req.elapsed_ms(), 3)
        cache_header = b"hit-l1" if tier == "l1" else b"hit-l2"
        req.provider, req.cache = entry.provider, cache_header
        if call.stream:
            headers = [*_SSE_HEADERS, (b"x-request-id", req.request_id),
                       (b"x-edge-cache", cache_header),
                       (b"x-edge-provider", entry.provider.encode()),
                       (b"x-edge-latency-ms", f"{latency:.3f}".encode())]
            payload = call.dialect.replay(entry.answer(), call.wants_usage)
            req.status = 200
            await req.send({"type": "http.response.start", "status": 200, "headers": headers})
            req.finished = True
            await req.send({"type": "http.response.body", "body": payload})
            return
        meta = orjson.dumps({"provider": entry.provider, "cached": True, "cache_tier": tier,
                             "latency_ms": latency, "cost_usd": 0.0})
        await self.send_json(req, 200, _with_metadata(entry.body, meta), [
            (b"x-edge-cache", cache_header),
            (b"x-edge-provider", entry.provider.encode()),
            (b"x-edge-latency-ms", f"{latency:.3f}".encode()),
            (b"x-edge-cost-usd", b"0"),
        ])

    async def _charge(self, call: Call, usage: tuple[int, int]) -> None:
        """Tokens count against the client key's tpm once the answer is known (or cut).

        Runs in a shielded scope with a deadline (`_bookkeeping`): a request being
        cancelled still pays, and a slow limiter store cannot hold the request forever.
        """
        limiter = call.edge.limiter
        tenant = call.req.tenant
        if limiter.limited(tenant):
            with _bookkeeping():
                await limiter.charge(tenant, usage[0] + usage[1])

    def _account(self, call: Call, dep: Deployment, usage: tuple[int, int],
                 estimated: bool = False) -> float:
        """Tokens and cost of one upstream answer, into the metrics; returns the cost."""
        prompt, completion = usage
        cost = call.edge.prices.cost(dep.model, prompt, completion)
        m = self.metrics
        m.usage(dep.provider.name, dep.model, prompt, completion, cost)
        if estimated:
            m.child(m.tokens_estimated, dep.provider.name, m.model_label(dep.model)).inc(
                prompt + completion)
            call.req.usage = "estimated"
        else:
            call.req.usage = "upstream"
        return cost

    async def _settle_stream(self, call: Call, dep: Deployment, assembler: Any) -> float:
        """Tokens and cost of a stream however it ended (whole, failed, cut by the client):
        the upstream's counts where it sent them, else an estimate of what was relayed
        (`_estimated_tokens`), counted as such. Returns the cost."""
        prompt, completion = assembler.reported_usage()
        estimated = prompt is None or completion is None
        if prompt is None:
            body = call.body
            system = {"content": body.get("system")}  # Anthropic's system prompt
            chars = schema.prompt_chars(body) + schema.prompt_chars({"messages": [system]})
            prompt = _estimated_tokens(chars)
        if completion is None:
            completion = _estimated_tokens(assembler.text_bytes)
        cost = self._account(call, dep, (prompt, completion), estimated)
        await self._charge(call, (prompt, completion))
        return cost

    def _latency_observer(self, dep: Deployment, began: float) -> None:
        m = self.metrics
        m.child(m.provider_latency, dep.provider.name, m.model_label(dep.model)).observe(
            time.perf_counter() - began)

    async def _answer_json(self, call: Call) -> Entry:
        dialect, body, raw = call.dialect, call.body, call.raw

        async def attempt(dep: Deployment) -> dict[str, Any]:
            began = time.perf_counter()
            answer = await dialect.fetch(dep, body, raw)
            self._latency_observer(dep, began)
            _check_answer(dialect.endpoint, answer, dep)
            return answer

        plan = call.edge.router.plan(call.model, body)
        answer, dep = await Attempts(plan, attempt, call.edge.config.routing,
                                     self.metrics, tracing=self.tracing).run()
        answer.pop("metadata", None)  # an upstream's own field would collide with ours
        usage = dialect.usage(answer)
        cost = self._account(call, dep, usage)
        entry = Entry(orjson.dumps(answer), dep.provider.name, dep.model, cost)
        req = call.req
        req.provider, req.cache = dep.provider.name, call.policy.header
        latency = round(req.elapsed_ms(), 3)
        meta = orjson.dumps({"provider": dep.provider.name, "cached": False, "cache_tier": None,
                             "latency_ms": latency, "cost_usd": cost})
        self.metrics.child(self.metrics.requests, req.endpoint, "2xx").inc()
        try:
            await self.send_json(req, 200, _with_metadata(entry.body, meta), [
                (b"x-edge-cache", call.policy.header),
                (b"x-edge-provider", dep.provider.name.encode()),
                (b"x-edge-latency-ms", f"{latency:.3f}".encode()),
                (b"x-edge-cost-usd", f"{cost:.8f}".encode()),
            ])
        finally:
            await self._charge(call, usage)  # the answer was paid for, sent or not
        return entry

    async def _relay_stream(self, call: Call) -> Entry | None:
        """Relay the upstream's items as they come; the assembled answer if it completed."""
        dialect, body, raw = call.dialect, call.body, call.raw

        async def attempt(dep: Deployment) -> EventSource:
            began = time.perf_counter()
            source = await dialect.open(dep, body, raw)  # fails over until the first item
            self._latency_observer(dep, began)
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
        headers = [
            *_SSE_HEADERS,
            (b"x-request-id", req.request_id),
            (b"x-edge-cache", call.policy.header),
            (b"x-edge-provider", dep.provider.name.encode()),
            (b"x-edge-latency-ms", f"{latency:.3f}".encode()),
        ]
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
            cost = await self._settle_stream(call, dep, assembler)
        m = self.metrics
        m.child(m.requests, req.endpoint, _status_class(req.status)).inc()
        if failure is not None:
            m.child(m.errors, failure.kind).inc()
            return None
        if not assembler.finished:
            return None
        return Entry(orjson.dumps(assembler.result()), dep.provider.name, dep.model, cost)

    async def models(self, req: Request) -> None:
        edge = self.service()
        data = [{"id": name, "object": "model", "created": 0, "owned_by": owner}
                for name, owner in edge.router.model_list()]
        await self.send_json(req, 200, orjson.dumps({"object": "list", "data": data}))

    async def health(self, req: Request) -> None:
        edge = self.edge
        providers = {}
        usable = False
        if edge is not None:
            for name in edge.providers:
                healthy = edge.router.healthy(name)
                usable = usable or healthy
                providers[name] = {"configured": True, "healthy": healthy}
        status = "healthy" if usable and edge is not None and not edge.draining else (
            "draining" if edge is not None and edge.draining else "unhealthy")
        body = {
            "status": status,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "version": __version__,
            "cache": {"l1_healthy": edge is not None and edge.cache.l1_healthy,
                      "l2_healthy": edge is not None and edge.cache.l2_healthy,
                      "l2_configured": edge is not None and edge.cache.l2_configured},
            "providers": providers,
        }
        await self.send_json(req, 200 if status == "healthy" else 503, orjson.dumps(body))

    async def live(self, req: Request) -> None:
        await self.send_json(req, 200, b'{"status":"alive"}')

    async def ready(self, req: Request) -> None:
        edge = self.edge
        if edge is not None and edge.ready and not edge.draining:
            await self.send_json(req, 200, b'{"status":"ready"}')
        else:
            state = "draining" if edge is not None and edge.draining else "starting"
            await self.send_json(req, 503, orjson.dumps({"status": state}))

    async def metrics_endpoint(self, req: Request) -> None:
        body = self.metrics.render()
        await req.send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", METRICS_CONTENT_TYPE.encode()), (b"x-request-id", req.request_id)]})
        await req.send({"type": "http.response.body", "body": body})


def _check_answer(endpoint: str, answer: dict[str, Any], dep: Deployment) -> None:
    """Refuse a 200 that is not an answer (`{}`, an error object without an error status).

    It is treated like invalid JSON (SPEC §4: 502, "answered something that is not valid
    JSON"): a retryable failure, so the next candidate is tried and the breaker hears of
    it, and nothing is cached. An Anthropic message may have no content blocks; the
    other endpoints always answer with at least one choice or embedding.
    """
    field = _ANSWER_FIELDS[endpoint]
    value = answer.get(field)
    if not isinstance(value, list) or (not value and endpoint != "messages"):
        raise UpstreamError(f"provider {dep.provider.name} answered 200 without "
                            f"'{field}': not a {endpoint} answer")


def _with_metadata(body: bytes, meta: bytes) -> bytes:
    """`body` (a compact JSON object, as orjson writes it) with edge's "metadata" field last."""
    comma = b"," if body[-2:] != b"{}" else b""  # only the empty object ends in "{}"
    return b"".join((body[:-1], comma, b'"metadata":', meta, b"}"))


def _estimated_tokens(size: int) -> int:
    """Tokens in `size` characters or bytes of text: ~4 a token, the usual rule of thumb for
    English with OpenAI's and Anthropic's tokenizers (an estimate, and counted as one)."""
    return -(-size // _BYTES_PER_TOKEN)


def _bookkeeping() -> trio.CancelScope:
    """A scope for accounting that must run while its request is being cancelled (the
    client hung up), shielded from that but bounded, so it can never hold a task long."""
    return trio.CancelScope(deadline=trio.current_time() + _BOOKKEEPING_S, shield=True)


def _status_class(status: int) -> str:
    return f"{status // 100}xx"


def build_app(config: Config, metrics: Metrics | None = None) -> EdgeApp:
    """The ASGI app for `config`; serve it with Hypercorn's Trio worker (see `edge.server`)."""
    return EdgeApp(config, metrics)
