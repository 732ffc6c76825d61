"""A real OTLP receiver for tests: HTTP/protobuf (POST /v1/traces, /v1/metrics) and gRPC.

Export requests are decoded with the OpenTelemetry protobuf definitions and kept as plain
`ReceivedSpan`s and metric summaries, so tests assert on what a collector would really get.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from tests.gateway_server import free_port

KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


@dataclass
class ReceivedSpan:
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    status_code: int  # 0 unset, 1 ok, 2 error
    resource: dict[str, Any]


@dataclass
class ReceivedMetric:
    name: str
    unit: str
    kind: str
    bounds: list[float] = field(default_factory=list)
    points: list[dict[str, Any]] = field(default_factory=list)  # attributes, count/sum or value


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind) if kind else None


def _attributes(items: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in items if isinstance(kv, KeyValue)}


class OtlpReceiver:
    def __init__(self) -> None:
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.spans: list[ReceivedSpan] = []
        self.metrics: list[ReceivedMetric] = []
        self.http_exports = 0
        self.grpc_exports = 0
        self._lock = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=4))

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    # --- decoding ---------------------------------------------------------------------------------

    def take_traces(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        found: list[ReceivedSpan] = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    found.append(
                        ReceivedSpan(
                            name=span.name,
                            kind=KINDS.get(span.kind, str(span.kind)),
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            attributes=_attributes(span.attributes),
                            events=[(e.name, _attributes(e.attributes)) for e in span.events],
                            status_code=span.status.code,
                            resource=resource,
                        )
                    )
        with self._lock:
            self.spans.extend(found)

    def take_metrics(self, request: metrics_service_pb2.ExportMetricsServiceRequest) -> None:
        found: list[ReceivedMetric] = []
        for resource_metrics in request.resource_metrics:
            for scope in resource_metrics.scope_metrics:
                for metric in scope.metrics:
                    kind = metric.WhichOneof("data") or ""
                    received = ReceivedMetric(metric.name, metric.unit, kind)
                    if kind == "histogram":
                        for point in metric.histogram.data_points:
                            received.bounds = list(point.explicit_bounds)
                            received.points.append(
                                {
                                    "attributes": _attributes(point.attributes),
                                    "count": point.count,
                                    "sum": point.sum,
                                    "buckets": list(point.bucket_counts),
                                }
                            )
                    elif kind == "sum":
                        for point in metric.sum.data_points:
                            value = point.as_int if point.HasField("as_int") else point.as_double
                            received.points.append({"attributes": _attributes(point.attributes), "value": value})
                    found.append(received)
        with self._lock:
            self.metrics.extend(found)

    # --- queries ----------------------------------------------------------------------------------

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if predicate():
                    return True
            time.sleep(0.05)
        with self._lock:
            return predicate()

    def trace_of(self, request_id: str, timeout: float = 30.0) -> list[ReceivedSpan]:
        """Every span of the trace whose server span carries this request id (waits for the client span)."""

        def server() -> ReceivedSpan | None:
            return next((s for s in self.spans if s.attributes.get("gateway.request_id") == request_id), None)

        assert self.wait_for(lambda: server() is not None, timeout), f"no server span for request {request_id}"
        with self._lock:
            root = server()
            assert root is not None
            return [s for s in self.spans if s.trace_id == root.trace_id]

    def metric(self, name: str) -> list[ReceivedMetric]:
        with self._lock:
            return [m for m in self.metrics if m.name == name]

    def clear(self) -> None:
        with self._lock:
            self.spans.clear()
            self.metrics.clear()

    # --- serving ----------------------------------------------------------------------------------

    async def _traces(self, request: web.Request) -> web.Response:
        message = trace_service_pb2.ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        self.take_traces(message)
        self.http_exports += 1
        body = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")

    async def _metrics(self, request: web.Request) -> web.Response:
        message = metrics_service_pb2.ExportMetricsServiceRequest()
        message.ParseFromString(await request.read())
        self.take_metrics(message)
        body = metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        app.router.add_post("/v1/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(self._runner.setup())
        loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.http_port).start())
        self._started.set()
        loop.run_forever()

    def start(self) -> OtlpReceiver:
        self._started = threading.Event()
        self._thread.start()
        assert self._started.wait(10), "the OTLP receiver did not start"
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_GrpcTraces(self), self._grpc)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_GrpcMetrics(self), self._grpc)
        self._grpc.add_insecure_port(f"127.0.0.1:{self.grpc_port}")
        self._grpc.start()
        return self

    def stop(self) -> None:
        self._grpc.stop(grace=None)
        loop = self._loop
        if loop is not None and self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10)

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _GrpcTraces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self.receiver = receiver

    def Export(self, request: Any, context: Any) -> Any:
        self.receiver.take_traces(request)
        self.receiver.grpc_exports += 1
        return trace_service_pb2.ExportTraceServiceResponse()


class _GrpcMetrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self.receiver = receiver

    def Export(self, request: Any, context: Any) -> Any:
        self.receiver.take_metrics(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()
