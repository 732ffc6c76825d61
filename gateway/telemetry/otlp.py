"""OTLP export of span records: the part of tracing that runs in the export helper process.

`python -P gateway/telemetry/otlp.py` is the helper (`export.ProcessSender` starts one per loaded
policy): it reads pickled batches of span records (`spans.Record`) on stdin, rebuilds the SDK's
`ReadableSpan`s and hands them to the OpenTelemetry OTLP exporter (HTTP/protobuf or gRPC), answering
one line per batch (`ok N` / `failed N`) or flush marker (`flushed`) on stdout. Its spec (endpoint,
protocol, resource, scope) comes as JSON in $GATEWAY_SPAN_EXPORT_SPEC, not in argv, which `ps` shows
to every user. It exits when its stdin closes (the gateway stopped or died), after exporting what it
holds. Run as a file rather than `-m gateway...` it imports nothing of the gateway (whose package
imports policy models and plugins): ~25 MB less memory and a faster start. The gateway imports this
module too, for the same exporters and conversion (`export_process: false` exports on a thread).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import struct
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from opentelemetry.sdk.metrics.export import MetricExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

log = logging.getLogger("gateway.telemetry")

EXPORT_TIMEOUT_S = 5.0
SPEC_ENV = "GATEWAY_SPAN_EXPORT_SPEC"  # the helper's endpoint, protocol, resource and scope (JSON)
FRAME = struct.Struct(">I")  # a batch's length before its pickle; 0: a flush marker
_KINDS = {kind.value: kind for kind in SpanKind}
_CODES = {code.value: code for code in StatusCode}
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
Records = Sequence[tuple[Any, ...]]  # spans.Record tuples (that module is not imported here)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where OTLP goes: a base URL and a protocol, resolved from the policy and OTEL_* variables."""

    base_url: str
    protocol: str  # "http/protobuf" | "grpc"

    def signal_url(self, signal: str) -> str:
        return f"{self.base_url.rstrip('/')}/v1/{signal}"


@dataclass(frozen=True, slots=True)
class Source:
    """What every exported span says about where it came from: resource attributes and scope."""

    resource: Mapping[str, str]
    scope: tuple[str, str]  # name, version

    def sdk(self) -> tuple[Resource, InstrumentationScope]:
        return Resource.create(dict(self.resource)), InstrumentationScope(*self.scope)


def write_spec(endpoint: Endpoint, source: Source) -> str:
    """The helper's spec, as JSON for $GATEWAY_SPAN_EXPORT_SPEC (`read_spec` reads it back)."""
    return json.dumps(
        {
            "endpoint": endpoint.base_url,
            "protocol": endpoint.protocol,
            "resource": dict(source.resource),
            "scope": list(source.scope),
        }
    )


def read_spec(text: str) -> tuple[Endpoint, Source]:
    spec = json.loads(text)
    name, version = spec["scope"]
    return Endpoint(spec["endpoint"], spec["protocol"]), Source(spec["resource"], (name, version))


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


def _state(header: str) -> TraceState | None:
    return TraceState.from_header([header]) if header else None


def to_readable(records: Records, resource: Resource, scope: InstrumentationScope) -> list[ReadableSpan]:
    """Span records as the SDK's `ReadableSpan`s, for any SDK exporter."""
    spans = []
    for name, trace_id, span_id, state, parent, kind, start, end, attributes, events, links, status in records:
        trace_state = _state(state)
        spans.append(
            ReadableSpan(
                name,
                SpanContext(trace_id, span_id, False, _SAMPLED, trace_state),
                None if parent is None else SpanContext(trace_id, parent[0], parent[1], _SAMPLED, trace_state),
                resource,
                attributes,
                [Event(n, a, t) for n, a, t in events or ()],
                [
                    Link(SpanContext(t, s, remote, TraceFlags(flags), _state(ts)), a)
                    for t, s, flags, remote, ts, a in links or ()
                ],
                _KINDS[kind],
                status=Status(_CODES[status[0]], status[1]),
                start_time=start,
                end_time=end,
                instrumentation_scope=scope,
            )
        )
    return spans


def export(exporter: SpanExporter, records: Records, resource: Resource, scope: InstrumentationScope) -> bool:
    """One batch through the exporter; True when the collector took it."""
    try:
        return exporter.export(to_readable(records, resource, scope)) is SpanExportResult.SUCCESS
    except Exception:  # an exporter must not kill its caller; the collector may come back
        log.warning("span export raised", exc_info=True)
        return False


def serve(endpoint: Endpoint, source: Source, frames: IO[bytes], answers: IO[bytes]) -> None:
    """The helper's loop: batches in, OTLP out, one answer line per batch or flush marker."""
    exporter = span_exporter(endpoint)
    resource, scope = source.sdk()
    try:
        while head := frames.read(FRAME.size):
            (size,) = FRAME.unpack(head)
            if size == 0:
                answers.write(b"flushed\n")
            else:
                batch = pickle.loads(frames.read(size))  # our own gateway's batches, over our own stdin
                ok = export(exporter, batch, resource, scope)
                answers.write(b"ok %d\n" % len(batch) if ok else b"failed %d\n" % len(batch))
            answers.flush()
    finally:
        exporter.shutdown()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the gateway, which then closes our stdin
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s otlp-export: %(message)s")
    serve(*read_spec(os.environ[SPEC_ENV]), sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    main()
