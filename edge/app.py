"""The ASGI app: a tiny router and the request lifecycle of DESIGN.md.

    route + auth + body limit → parse + validate → candidates → attempts → respond

The router finds the handler, authenticates every /v1/* request (`edge.auth`) and turns
what a handler raised into an answer: every failure is an `EdgeError` rendered by
`errors.render` in the caller's dialect; any other exception is logged and answered as a
generic 500 in the same format, so no client ever sees a traceback and no input stops the
server from serving others. The handlers live by job: the completion path in
`edge.completion`, the operator's endpoints in `edge.ops`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import trio

from . import schema, ui
from .auth import Authenticator
from .bookkeeping import Books
from .completion import Completions
from .config import Config
from .dialects import AnthropicDialect, OpenAIDialect
from .errors import (
    EdgeError,
    MethodNotAllowed,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
    clip,
    render,
)
from .exchange import JSON_HEADERS, ClientGone, Receive, Request, Scope, Send, read_body, send_json
from .logs import LEVELS, log
from .metrics import Metrics
from .ops import Ops
from .request_head import anthropic_path, origin_path
from .responses_door import ResponsesDialect
from .responses_store import PREFIX as STORED_RESPONSES
from .responses_store import StoredResponses
from .service import Edge, open_edge
from .tracing import Tracing

Handler = Callable[[Request], Awaitable[None]]

_INFO = LEVELS["info"]
_CHAT = OpenAIDialect("chat", schema.validate_chat)
_EMBEDDINGS = OpenAIDialect("embeddings", schema.validate_embeddings)
_MESSAGES = AnthropicDialect()
_RESPONSES = ResponsesDialect()
_ADMIN_ROUTE = ("GET", "POST", "PATCH", "DELETE")  # the admin API answers 405 itself
_UI_ROUTE = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")  # /ui answers 405


class EdgeApp:
    """The ASGI application. `edge` is None until the lifespan has opened the service."""

    def __init__(self, config: Config, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self.edge: Edge | None = None
        self.tracing = Tracing.from_config(config)
        self.auth = Authenticator(config.auth)
        self.books = Books(self.metrics)
        completions = Completions(config, self.service, self.books, self.tracing)
        ops = Ops(lambda: self.edge, self.service, self.metrics)

        def door(dialect: OpenAIDialect | AnthropicDialect | ResponsesDialect) -> Handler:
            return lambda req: completions.handle(req, dialect)

        self._routes: dict[str, tuple[tuple[str, ...], Handler]] = {
            "/v1/chat/completions": (("POST",), door(_CHAT)),
            "/v1/embeddings": (("POST",), door(_EMBEDDINGS)),
            "/v1/messages": (("POST",), door(_MESSAGES)),
            "/v1/responses": (("POST",), door(_RESPONSES)),
            "/v1/models": (("GET",), ops.models),
            "/health": (("GET", "HEAD"), ops.health),
            "/health/live": (("GET", "HEAD"), ops.live),
            "/health/ready": (("GET", "HEAD"), ops.ready),
        }
        if config.enable_metrics:
            self._routes["/metrics"] = (("GET",), ops.metrics_endpoint)
        # GET/DELETE /v1/responses/{id}[/input_items]: the handler checks path and method
        self._stored = (("GET", "DELETE"), StoredResponses(self.service).handle)

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
        if route is None and path.startswith(STORED_RESPONSES):
            route = self._stored
        req.anthropic = anthropic_path(path)
        try:
            if path.startswith("/v1/"):
                self.authenticate(req)  # every /v1/* answer needs a key, even a 404 or 405
            elif route is None and (path == "/admin" or path.startswith("/admin/")):
                route = _ADMIN_ROUTE, self._admin
            elif route is None and (path == "/ui" or path.startswith("/ui/")):
                route = _UI_ROUTE, self._ui
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

    # -- answers ---------------------------------------------------------------------

    async def send_error(self, req: Request, error: EdgeError) -> None:
        status, body = render(error, anthropic=req.anthropic)
        headers = [*JSON_HEADERS, (b"content-length", b"%d" % len(body)),
                   (b"x-request-id", req.request_id), *error.headers()]
        if isinstance(error, MethodNotAllowed):
            route = self._routes.get(req.scope["path"])
            if route is not None:
                headers.append((b"allow", ", ".join(route[0]).encode()))
        req.status = status
        self.books.ended(req.endpoint, status, error)
        try:
            await req.send({"type": "http.response.start", "status": status, "headers": headers})
            await req.send({"type": "http.response.body", "body": body})
        except OSError:
            return  # the client is gone; nothing to tell it

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
        """Sets `req.key` and `req.tenant` from the client key; Unauthorized for a wrong one.

        The running service's authenticator also knows the store's admin-made keys; before
        start-up (and after shutdown) the file's keys alone decide, so a request that is
        going to get a 503 still gets its 401 first.
        """
        edge = self.edge
        auth = edge.auth if edge is not None else self.auth
        key = auth.authenticate(req.headers, time.time())
        req.key = key
        req.tenant = key.name

    async def _admin(self, req: Request) -> None:
        """`/admin/*`: 404 with no admin key configured, 401 without it, before any body
        is read; then the admin API answers (its errors in OpenAI's format)."""
        path = req.scope["path"]
        auth = self.auth
        if not auth.admin_enabled:
            raise NotFound(f"Unknown path: {clip(path)}", code="unknown_url")
        if not auth.is_admin(req.headers):
            raise Unauthorized("The admin API needs 'Authorization: Bearer <admin key>'.",
                               code="invalid_admin_key")
        edge = self.service()
        req.endpoint = "admin"
        body = await read_body(req, self.config.server.max_request_bytes,
                               self.config.server.request_body_timeout_s)
        status, payload, headers = await edge.admin.dispatch(
            req.scope["method"], path, req.scope.get("query_string", b""), body)
        if status == 204:
            req.status = 204
            await req.send({"type": "http.response.start", "status": 204,
                            "headers": [(b"x-request-id", req.request_id), *headers]})
            req.finished = True
            await req.send({"type": "http.response.body", "body": b""})
        else:
            await send_json(req, status, payload, headers)

    async def _ui(self, req: Request) -> None:
        """`/ui`: the dashboard's static files, every answer with its security headers
        (a 404 or 405 included, so no /ui response is ever framable or sniffable)."""
        method = req.scope["method"]
        extra: list[tuple[bytes, bytes]] = []
        if method in ("GET", "HEAD"):
            status, (content_type, body) = ui.lookup(req.scope["path"], self.auth.admin_enabled)
        else:
            status, content_type, body = 405, b"text/plain; charset=utf-8", b"Use GET.\n"
            extra.append((b"allow", b"GET, HEAD"))
        req.status = status
        await req.send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", content_type), (b"content-length", b"%d" % len(body)),
            (b"x-request-id", req.request_id), *ui.HEADERS, *extra]})
        req.finished = True
        await req.send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})


def build_app(config: Config, metrics: Metrics | None = None) -> EdgeApp:
    """The ASGI app for `config`; serve it with Hypercorn's Trio worker (see `edge.server`)."""
    return EdgeApp(config, metrics)
