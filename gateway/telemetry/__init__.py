"""OpenTelemetry traces and metrics for the request path (OTLP over HTTP or gRPC).

Each loaded policy has its own `Telemetry`: a tracer (`spans.FastTracer`: a ratio sampler that
follows the client's `traceparent` decision; spans recorded as plain tuples), a bounded export queue
feeding an export helper process (`export.py`) and, when an endpoint is known, a meter
provider exporting the GenAI metrics. Nothing is exported unless the policy's `otlp_endpoint` or
`OTEL_EXPORTER_OTLP_ENDPOINT` names a collector. Per request (`RequestTrace`):

    server span  "POST /v1/chat/completions"   (kind SERVER; parent: the client's traceparent)
      ├ plugin <name>                           one per plugin step in the request/response phase
      └ route <model>                           the routing decision: attempts, chosen backend
          └ chat <model>                        kind CLIENT, one per upstream call (GenAI semconv);
                                                its traceparent goes upstream

Plugins may add spans with the plain OpenTelemetry API (`trace.get_tracer(...)`): the global tracer
provider routes them to the tracer of the policy serving the current request.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from gateway.policy import Telemetry as TelemetryConfig
from gateway.telemetry import genai
from gateway.telemetry.export import ProcessSender, Sender, SpanQueue, ThreadSender
from gateway.telemetry.histograms import Histograms
from gateway.telemetry.otlp import Endpoint, Source, metric_exporter
from gateway.telemetry.request import RequestTrace, install_routing_provider
from gateway.telemetry.spans import FastTracer

__all__ = ["RequestTrace", "Telemetry", "resolve_endpoint"]


def resolve_endpoint(config: TelemetryConfig, env: Mapping[str, str] = os.environ) -> Endpoint | None:
    """The policy's otlp_endpoint, else OTEL_EXPORTER_OTLP_ENDPOINT; None: export nothing."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    base = config.otlp_endpoint or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not base:
        return None
    protocol = config.otlp_protocol or env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    return Endpoint(base, "grpc" if protocol == "grpc" else "http/protobuf")


def _sample_ratio(config: TelemetryConfig, env: Mapping[str, str]) -> float:
    if config.sample_ratio is not None:
        return config.sample_ratio
    try:
        return min(1.0, max(0.0, float(env.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))))
    except ValueError:
        return 1.0


class Telemetry:
    """Tracing and OTLP metrics of one loaded policy."""

    def __init__(self, config: TelemetryConfig, version: str = "0.0.0", env: Mapping[str, str] = os.environ) -> None:
        self.config = config
        self.endpoint = resolve_endpoint(config, env)
        self.tracer: FastTracer | None = None
        self._spans: SpanQueue | None = None
        self.otlp: Histograms | None = None  # the OTLP metrics (the Prometheus ones are always recorded)
        if self.endpoint is None:
            return
        name = config.service_name if "service_name" in config.model_fields_set else None
        name = name or env.get("OTEL_SERVICE_NAME") or config.service_name
        source = Source({"service.name": name, "service.version": version}, ("gateway", version))
        sender: Sender = (ProcessSender if config.export_process else ThreadSender)(self.endpoint, source)
        self._spans = SpanQueue(sender, config.span_queue_size)
        self.tracer = FastTracer(_sample_ratio(config, env), self._spans.put)
        install_routing_provider()
        if not config.otlp_metrics or env.get("OTEL_METRICS_EXPORTER", "").strip().lower() == "none":
            return
        resource, scope = source.sdk()
        self.otlp = Histograms(
            genai.OTLP_SPECS, metric_exporter(self.endpoint), resource, scope, config.metrics_interval_s
        )

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    def start_request(self, method: str, path: str, headers: Mapping[str, str]) -> RequestTrace | None:
        if self.tracer is None:
            return None
        return RequestTrace.start(self, method, path, headers)

    def flush(self, timeout_s: float = 10.0) -> None:
        if self._spans is not None:
            self._spans.force_flush(timeout_s)
        if self.otlp is not None:
            self.otlp.force_flush()

    def shutdown(self) -> None:
        if self._spans is not None:
            self._spans.shutdown()
        if self.otlp is not None:
            self.otlp.shutdown()
