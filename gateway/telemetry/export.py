"""Getting spans and metrics off the machine without ever slowing a request.

Spans go into a bounded queue; one daemon thread exports them in batches. A full queue drops the
span (counted), a failing or slow collector only delays that thread (failures counted), so the event
loop never waits on the network. Exporters speak OTLP over HTTP/protobuf or gRPC.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from opentelemetry.context import Context
from opentelemetry.sdk.metrics.export import MetricExporter
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from gateway import metrics

log = logging.getLogger("gateway.telemetry")

SPANS_DROPPED = metrics.counter(
    "gateway_telemetry_spans_dropped_total", "Spans dropped before export, by reason.", ("reason",)
)
SPANS_EXPORTED = metrics.counter(
    "gateway_telemetry_spans_exported_total", "Spans handed to the OTLP exporter, by result.", ("result",)
)

BATCH = 512
EXPORT_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where OTLP goes: a base URL and a protocol, resolved from the policy and OTEL_* variables."""

    base_url: str
    protocol: str  # "http/protobuf" | "grpc"

    def signal_url(self, signal: str) -> str:
        return f"{self.base_url.rstrip('/')}/v1/{signal}"


def span_exporter(endpoint: Endpoint) -> SpanExporter:
    if endpoint.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter

        return GrpcSpanExporter(
            endpoint=endpoint.base_url, insecure=endpoint.base_url.startswith("http://"), timeout=EXPORT_TIMEOUT_S
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter

    return HttpSpanExporter(endpoint=endpoint.signal_url("traces"), timeout=EXPORT_TIMEOUT_S)


def metric_exporter(endpoint: Endpoint) -> MetricExporter:
    if endpoint.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter

        return GrpcMetricExporter(
            endpoint=endpoint.base_url, insecure=endpoint.base_url.startswith("http://"), timeout=EXPORT_TIMEOUT_S
        )
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter

    return HttpMetricExporter(endpoint=endpoint.signal_url("metrics"), timeout=EXPORT_TIMEOUT_S)


class BoundedSpanProcessor(SpanProcessor):
    """Batches finished spans to an exporter from one thread; never blocks the caller."""

    def __init__(self, exporter: SpanExporter, max_queue: int, delay_s: float = 1.0) -> None:
        self._exporter = exporter
        self._queue: collections.deque[ReadableSpan] = collections.deque()
        self._max_queue = max_queue
        self._delay_s = delay_s
        self._wake = threading.Event()
        self._flushed = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="otlp-span-export", daemon=True)
        self._thread.start()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        if not span.context.trace_flags.sampled:
            return
        if self._stopping:
            SPANS_DROPPED.labels("shutdown").inc()
            return
        if len(self._queue) >= self._max_queue:
            SPANS_DROPPED.labels("queue_full").inc()
            return
        self._queue.append(span)  # deque.append is atomic: no lock on the request path
        if len(self._queue) >= BATCH:
            self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(self._delay_s)
            self._wake.clear()
            self._drain()
            with self._flushed:
                self._flushed.notify_all()
            if self._stopping:
                return

    def _drain(self) -> None:
        while self._queue:
            batch: list[ReadableSpan] = []
            while self._queue and len(batch) < BATCH:
                batch.append(self._queue.popleft())
            self._export(batch)

    def _export(self, batch: Sequence[ReadableSpan]) -> None:
        try:
            result = self._exporter.export(batch)
        except Exception:  # an exporter must not kill the thread; the collector may come back
            log.warning("span export raised", exc_info=True)
            result = SpanExportResult.FAILURE
        outcome = "ok" if result is SpanExportResult.SUCCESS else "failed"
        SPANS_EXPORTED.labels(outcome).inc(len(batch))

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        with self._flushed:
            self._wake.set()
            return self._flushed.wait(timeout_millis / 1000)

    def shutdown(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(EXPORT_TIMEOUT_S * 2)
        self._exporter.shutdown()
