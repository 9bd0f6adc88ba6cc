"""Optional OpenTelemetry tracing (ENABLE_TRACING): one server span per request, children inside.

Off by default, and then nearly free: nothing from opentelemetry is imported, and every
call returns one shared no-op object that is its own context manager, so the request path
pays a method call and an empty `with`.

On, it needs the `edge[tracing]` extra (opentelemetry-sdk and the OTLP/HTTP exporter) and
is configured the standard way, by the OTEL_* environment variables the SDK reads itself:
OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_HEADERS,
OTEL_BSP_SCHEDULE_DELAY, OTEL_PROPAGATORS, OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME
("edge" unless set). Spans are batched (BatchSpanProcessor) and sent by the SDK's own
thread, so exporting never blocks the Trio loop; `shutdown()` flushes what is left.

The provider is private to each `Tracing` (never installed as the global one): an app owns
its tracer, tests can build several, and a worker process builds its own after spawn.

The current span lives in a contextvar. Trio copies the context when a task is spawned,
so a task started inside a span (a hedged upstream attempt, say) opens its spans as
children of that span, and its own spans never leak back into the parent task.

A span that ends with an exception is marked as an error, except for a Trio cancellation
(a client that went away, the losing side of a hedge race), which is recorded as the
attribute `edge.cancelled` instead: nothing failed.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

import trio

from ._version import __version__
from .config import Config, ConfigError

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

__all__ = ["SpanLike", "Tracing"]

SERVICE_NAME = "edge"


class SpanLike(Protocol):
    """What the code being traced may do with its span."""

    def set(self, key: str, value: Any) -> None:
        """Record an attribute (None is ignored)."""

    def error(self, message: str) -> None:
        """Mark the span as failed, with a short reason."""


class _NoopSpan:
    """Disabled tracing: a span that records nothing and is its own context manager."""

    __slots__ = ()

    def __enter__(self) -> _NoopSpan:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None

    def set(self, key: str, value: Any) -> None:
        return None

    def error(self, message: str) -> None:
        return None


_NOOP = _NoopSpan()


class Tracing:
    """edge's tracer; `Tracing.from_config(config)` is the way to make one.

    Every method is safe to call whether tracing is on or off.
    """

    __slots__ = ("enabled", "_otel")

    def __init__(self, otel: _Otel | None = None) -> None:
        self._otel = otel
        self.enabled = otel is not None

    @classmethod
    def from_config(cls, config: Config) -> Tracing:
        """On iff `config.enable_tracing`; exporter and resource from the OTEL_* variables.

        Raises:
            ConfigError: tracing is on but the OpenTelemetry packages are not installed.
        """
        if not config.enable_tracing:
            return cls()
        try:
            otel = _Otel()
        except ImportError as exc:
            raise ConfigError(
                "environment: ENABLE_TRACING: tracing needs the OpenTelemetry packages "
                f"({exc.name} is missing); install them with: pip install 'edge[tracing]'"
            ) from exc
        return cls(otel)

    def request(self, name: str, headers: dict[bytes, bytes]) -> AbstractContextManager[SpanLike]:
        """A server span for one request, continuing the client's W3C trace context if sent.

        Args:
            name: the span name, e.g. "POST /v1/chat/completions".
            headers: the request headers as ASGI gives them (lower-case byte names).
        """
        otel = self._otel
        if otel is None:
            return _NOOP
        return otel.request(name, headers)

    def span(self, name: str, **attributes: Any) -> AbstractContextManager[SpanLike]:
        """A child of the current span (or a root span when there is none)."""
        otel = self._otel
        if otel is None:
            return _NOOP
        return otel.span(name, attributes)

    def inject(self, headers: list[tuple[str, str]]) -> None:
        """Add traceparent (and tracestate) for the current span to upstream request headers.

        A header of the same name already in `headers` is replaced, never duplicated.
        """
        otel = self._otel
        if otel is not None:
            otel.inject(headers)

    def shutdown(self) -> None:
        """Export the spans still queued and stop the exporter; later spans are dropped.

        Blocks for as long as the export takes (bounded by OTEL_EXPORTER_OTLP_TIMEOUT), so
        from inside Trio call it through `trio.to_thread.run_sync`. Calling it twice is fine.
        """
        otel = self._otel
        if otel is not None:
            otel.shutdown()


class _HeaderGetter:
    """Reads propagation fields from ASGI headers (the propagator's `Getter` protocol)."""

    @staticmethod
    def get(carrier: dict[bytes, bytes], key: str) -> list[str] | None:
        value = carrier.get(key.encode("latin-1"))
        return None if value is None else [value.decode("latin-1")]

    @staticmethod
    def keys(carrier: dict[bytes, bytes]) -> list[str]:
        return [key.decode("latin-1") for key in carrier]


class _HeaderSetter:
    """Writes propagation fields into an upstream header list, replacing older values."""

    @staticmethod
    def set(carrier: list[tuple[str, str]], key: str, value: str) -> None:
        lower = key.lower()
        carrier[:] = [item for item in carrier if item[0].lower() != lower]
        carrier.append((key, value))


# Typed Any: opentelemetry's Getter/Setter base classes are not imported while tracing is off.
_GETTER: Any = _HeaderGetter()
_SETTER: Any = _HeaderSetter()


class _Otel:
    """The enabled half: the only code that imports opentelemetry, and only when built."""

    def __init__(self) -> None:
        from opentelemetry import context, propagate, trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import OTELResourceDetector, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self.attach = context.attach
        self.detach = context.detach
        self.propagate = propagate
        self.set_span_in_context = trace.set_span_in_context
        self.server_kind = SpanKind.SERVER
        self.Status = Status
        self.ERROR = StatusCode.ERROR
        self.UNSET = StatusCode.UNSET

        # Resource.create lets explicit attributes win over the environment, so name the
        # service only when neither OTEL_SERVICE_NAME nor OTEL_RESOURCE_ATTRIBUTES does.
        named = "service.name" in OTELResourceDetector().detect().attributes
        resource = Resource.create(
            {"service.version": __version__} if named
            else {"service.name": SERVICE_NAME, "service.version": __version__})
        self.provider: TracerProvider = TracerProvider(resource=resource)
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self.tracer: Tracer = self.provider.get_tracer("edge", __version__)
        self._closed = False

    def request(self, name: str, headers: dict[bytes, bytes]) -> _OtelSpan:
        parent = self.propagate.extract(headers, getter=_GETTER)
        span = self.tracer.start_span(name, context=parent, kind=self.server_kind)
        return _OtelSpan(self, span, parent)

    def span(self, name: str, attributes: dict[str, Any]) -> _OtelSpan:
        if attributes:
            attributes = {k: v for k, v in attributes.items() if v is not None}
        span = self.tracer.start_span(name, attributes=attributes or None)
        return _OtelSpan(self, span, None)

    def inject(self, headers: list[tuple[str, str]]) -> None:
        self.propagate.inject(headers, setter=_SETTER)

    def shutdown(self) -> None:
        if not self._closed:
            self._closed = True
            self.provider.shutdown()


class _OtelSpan:
    """One started span: `with` makes it current for the block and ends it afterwards."""

    __slots__ = ("_otel", "_span", "_parent", "_token")

    def __init__(self, otel: _Otel, span: Span, parent: Context | None) -> None:
        self._otel = otel
        self._span = span
        self._parent = parent
        self._token: object = None

    def __enter__(self) -> _OtelSpan:
        otel = self._otel
        self._token = otel.attach(otel.set_span_in_context(self._span, self._parent))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        span = self._span
        try:
            if exc is not None:
                if isinstance(exc, trio.Cancelled):
                    span.set_attribute("edge.cancelled", True)
                elif isinstance(exc, Exception):
                    span.record_exception(exc)
                    self._fail(f"{type(exc).__name__}: {exc}")
        finally:
            self._otel.detach(self._token)  # type: ignore[arg-type]
            span.end()

    def _fail(self, message: str) -> None:
        # The first reason given (by `error()` in the block) is the one worth keeping.
        status = getattr(self._span, "status", None)
        if status is None or status.status_code is self._otel.UNSET:
            self._span.set_status(self._otel.Status(self._otel.ERROR, message))

    def set(self, key: str, value: Any) -> None:
        if value is not None:
            self._span.set_attribute(key, value)

    def error(self, message: str) -> None:
        self._fail(message)
