"""Optional OpenTelemetry tracing of publish and run (extra ``tasker[otel]``).

Off unless ``TASKER_OTEL_ENABLED=true``; off costs nothing (no import, no
receiver). When on, each process that publishes or runs tasks sets up its own
tracer provider: pool processes in ``worker_process_init`` (a provider made
before the fork would hold the parent's exporter threads), other processes
when they call :func:`setup_tracing`. The exporter, endpoint, protocol,
service name and sampler come from the standard ``OTEL_*`` variables, read by
the OpenTelemetry SDK itself; ``TASKER_OTEL_FILE`` writes spans as JSON lines
to a file instead (local debugging and tests).

Every span started while a task runs, and every producer and consumer span,
carries the attribute ``correlation_id``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any

from celery.signals import before_task_publish, task_prerun, worker_process_init

from tasker.correlation import CORRELATION_HEADER, current_correlation_id
from tasker.settings import Settings, get_settings

__all__ = ["setup_tracing", "tracing_enabled"]

logger = logging.getLogger("tasker.tracing")

_lock = threading.Lock()  # OpenTelemetry's provider is process-wide: so is its setup
_setup_pid: int | None = None


def tracing_enabled() -> bool:
    return _setup_pid == os.getpid()


def setup_tracing(settings: Settings | None = None) -> bool:
    """Set up tracing in this process (idempotent); False when off or not installed."""
    global _setup_pid  # OpenTelemetry's provider is process-wide: set up once per process (pid)
    settings = settings or get_settings()
    if not settings.otel_enabled:
        return False
    with _lock:
        if _setup_pid == os.getpid():
            return True
        try:
            provider = _provider(settings)
            # optional: the otel extra (imported only when tracing is on)
            from opentelemetry import trace
            from opentelemetry.instrumentation.celery import CeleryInstrumentor
        except ImportError as exc:
            logger.warning("tracing.unavailable", extra={
                "reason": f"{exc}; install tasker[otel]"})
            return False
        trace.set_tracer_provider(provider)
        instrumentor = CeleryInstrumentor()
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()  # inherited across fork: bind to this provider
        instrumentor.instrument(tracer_provider=provider)
        # Connected after the instrumentor's receivers, so the producer or
        # consumer span it just started is the current span.
        before_task_publish.connect(_tag_producer_span, weak=False)
        task_prerun.connect(_tag_consumer_span, weak=False)
        _setup_pid = os.getpid()
    logger.info("tracing.enabled", extra={"exporter": "file" if settings.otel_file else "otel"})
    return True


def _provider(settings: Settings) -> Any:
    # optional: the otel extra (imported only when tracing is on)
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SimpleSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class CorrelationSpanProcessor(SpanProcessor):
        """Tags every span started inside a running task with its correlation id."""

        def on_start(self, span: Any, parent_context: Any = None) -> None:
            cid = current_correlation_id()
            if cid:
                span.set_attribute("correlation_id", cid)

    class JsonLinesExporter(SpanExporter):
        """One JSON object per finished span, appended to a file."""

        def __init__(self, path: str) -> None:
            self.path = path

        def export(self, spans: Any) -> SpanExportResult:
            with open(self.path, "a", encoding="utf-8") as f:
                for span in spans:
                    f.write(json.dumps(json.loads(span.to_json(indent=None))) + "\n")
            return SpanExportResult.SUCCESS

    # Resource.create() merges OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES.
    resource = Resource.create({"service.name": "tasker"}).merge(Resource.create())
    provider = TracerProvider(resource=resource)  # sampler: OTEL_TRACES_SAMPLER(_ARG)
    provider.add_span_processor(CorrelationSpanProcessor())
    if settings.otel_file:
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(settings.otel_file)))
    else:
        # optional: the otel extra (imported only when tracing is on)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        if settings.otel_protocol == "grpc":

            # optional: the otel extra (imported only when tracing is on)
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcExporter,
            )

            provider.add_span_processor(BatchSpanProcessor(GrpcExporter()))
        else:
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def _tag_producer_span(headers: dict[str, Any] | None = None, **_: Any) -> None:
    _tag_current_span((headers or {}).get(CORRELATION_HEADER))


def _tag_consumer_span(**_: Any) -> None:
    _tag_current_span(current_correlation_id())


def _tag_current_span(cid: object) -> None:
    if not cid or not tracing_enabled():
        return
    # optional: the otel extra (imported only when tracing is on)
    from opentelemetry import trace

    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("correlation_id", str(cid))


@worker_process_init.connect(weak=False)
def _trace_pool_process(**_: Any) -> None:
    try:
        setup_tracing()
    except Exception:  # noqa: BLE001 - tracing must never stop a process from starting
        logger.exception("tracing.setup_failed")
