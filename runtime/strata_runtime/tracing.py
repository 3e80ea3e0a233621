"""Opt-in OpenTelemetry tracing: one span per HTTP request, with the gateway, cache, upstream
and memory work nested inside it, exported over OTLP/HTTP.

    HTTP POST /v1/chat/completions        (app.RequestObserver)
    └── gateway.chat                      (gateway.Gateway)
        └── cache                         (around the cache lookup, when a cache is configured)
            └── upstream                  (gateway.upstreams: one per model tried)
    └── memory.l2 / memory.recall         (the memory engine's session-store calls, long-term recall)

Off by default (`tracing.enabled` in the runtime config). The SDK and exporter come from the
`otel` extra and are imported only when tracing is enabled; while it is off, `span()` returns
a shared no-op context manager, so the request path pays one global lookup. The exporter
honours the standard `OTEL_EXPORTER_OTLP_*` variables unless `tracing.endpoint` is set.
The trace context goes upstream as a W3C `traceparent` header.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from strata_runtime.config.runtime import TracingConfig

T = TypeVar("T")
_NOOP: AbstractContextManager[Any] = contextlib.nullcontext()
_tracer: Any = None
_provider: Any = None


def configure(config: TracingConfig, *, exporter: Any = None) -> None:
    """Start tracing when the config asks for it; `exporter` replaces OTLP (tests pass an in-memory one)."""
    global _tracer, _provider
    shutdown()
    if not config.enabled:
        return
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio
    except ImportError as e:
        raise RuntimeError("tracing.enabled needs the otel extra: pip install 'strata[otel]'") from e
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        processor: Any = BatchSpanProcessor(OTLPSpanExporter(endpoint=config.endpoint))
    else:
        processor = SimpleSpanProcessor(exporter)
    provider = TracerProvider(resource=Resource.create({"service.name": config.service_name}),
                              sampler=ParentBasedTraceIdRatio(config.sample_ratio))
    provider.add_span_processor(processor)
    _provider, _tracer = provider, provider.get_tracer("strata_runtime")


def shutdown() -> None:
    """Flush and stop the exporter (at shutdown; spans still buffered are sent)."""
    global _tracer, _provider
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()


def enabled() -> bool:
    return _tracer is not None


def span(name: str, **attributes: Any) -> AbstractContextManager[Any]:
    """A span around a block, child of the current one; a no-op while tracing is off."""
    if _tracer is None:
        return _NOOP
    return _tracer.start_as_current_span(name, attributes=_clean(attributes))  # type: ignore[no-any-return]


async def traced(name: str, awaitable: Awaitable[T]) -> T:
    """Await `awaitable` inside a span (for one-line call sites such as the memory engine's store calls)."""
    if _tracer is None:
        return await awaitable
    with _tracer.start_as_current_span(name):
        return await awaitable


def start_span(name: str, **attributes: Any) -> Any:
    """A span that outlives the block that starts it (a stream); end it with `end_span`. None while off."""
    if _tracer is None:
        return None
    return _tracer.start_span(name, attributes=_clean(attributes))


def end_span(span: Any, error: BaseException | None = None, **attributes: Any) -> None:
    if span is None:
        return
    if attributes:
        span.set_attributes(_clean(attributes))
    if error is not None:
        from opentelemetry.trace import Status, StatusCode

        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
    span.end()


def traceparent_header() -> bytes:
    """The current trace context as pre-encoded header lines for an upstream request, or nothing."""
    if _tracer is None:
        return b""
    from opentelemetry.propagate import inject

    carrier: dict[str, str] = {}
    inject(carrier)
    return b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in carrier.items())


def _clean(attributes: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attributes.items() if v is not None}
