"""OTLP export of span records: the part of tracing that runs in the export helper process.

`python -P gateway/telemetry/otlp.py` is the helper (`export.ProcessSender` starts one per loaded
policy): it reads pickled batches of span records (`spans.Record`) on stdin and exports them
(`SpanExport`: over HTTP, OTLP/protobuf written straight from the records by `encode` and sent by the
OpenTelemetry OTLP exporter's HTTP client; over gRPC, the SDK's `ReadableSpan`s through its gRPC
exporter), answering one line per batch (`ok N` / `failed N`) or flush marker (`flushed`) on stdout. Its spec (endpoint,
protocol, resource, scope) comes as JSON in $GATEWAY_SPAN_EXPORT_SPEC, not in argv, which `ps` shows
to every user. It exits when its stdin closes (the gateway stopped or died), after exporting what it
holds. Run as a file rather than `-m gateway...` it imports nothing of the gateway (whose package
imports policy models and plugins): ~25 MB less memory and a faster start. The gateway imports this
module too, for the same exporters and conversion (`export_process: false` exports on a thread).
"""

from __future__ import annotations

import functools
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


# OTLP/protobuf written directly. The SDK's encoder builds a protobuf object per span, attribute and value:
# about 30 us a span here, most of the export helper's CPU. The wire format of ExportTraceServiceRequest
# (opentelemetry-proto v1) is small and stable, so `encode` writes the same message as bytes from the records
# (4-10 us a span; ~36 with the ReadableSpan rebuild). tests/observability/test_otlp_wire.py parses its output
# with opentelemetry-proto and compares it with the SDK encoder's for the same spans. Field numbers are those of
# trace.proto and common.proto.
_FIXED64 = struct.Struct("<Q")
_FIXED32 = struct.Struct("<I")
_DOUBLE = struct.Struct("<d")
_INT64 = (-(2**63), 2**63 - 1)
_ONE_BYTE = [bytes((n,)) for n in range(128)]
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200  # SpanFlags
_KEYS: dict[str, bytes] = {}  # attribute key -> its encoded KeyValue.key field (bounded below)
_PAIRS: dict[tuple[bytes, str, type, Any], bytes] = {}  # (field tag, key, type, value) -> the encoded field
_WARNED: set[str] = set()  # attribute keys already reported as not encodable (once each, not once a span)


def _varint(n: int) -> bytes:
    if 0 <= n < 128:
        return _ONE_BYTE[n]
    n &= 0xFFFFFFFFFFFFFFFF  # negative int64: ten bytes, two's complement
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: string, bytes or message."""
    return tag + _varint(len(payload)) + payload


def _value(value: Any) -> bytes:
    """An AnyValue message's body (None: the empty AnyValue, as the SDK writes it)."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _field(b"\x0a", value.encode())
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            raise ValueError(f"integer out of int64 range: {value}")
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE.pack(value)
    if isinstance(value, bytes):
        return _field(b"\x3a", value)
    if isinstance(value, Sequence):
        return _field(b"\x2a", b"".join([_field(b"\x0a", _value(item)) for item in value]))
    if isinstance(value, Mapping):
        return _field(b"\x32", b"".join([_field(b"\x0a", _key_value(str(k), v)) for k, v in value.items()]))
    raise TypeError(f"invalid attribute value type {type(value).__name__}")


def _key_value(key: str, value: Any) -> bytes:
    encoded = _KEYS.get(key)
    if encoded is None:
        encoded = _field(b"\x0a", key.encode())
        if len(_KEYS) < 4096:
            _KEYS[key] = encoded
    return encoded + _field(b"\x12", _value(value))


def _attributes(tag: bytes, attributes: Mapping[str, Any] | None) -> list[bytes]:
    """Each attribute as a repeated KeyValue field; one that cannot be encoded is dropped, as the SDK does.

    Most pairs repeat from span to span (plugin names, methods, models, small counts): their encoded field
    is looked up, not rebuilt. Floats are never cached (-0.0 == 0.0 would share an encoding)."""
    if not attributes:
        return []
    fields = []
    for key, value in attributes.items():
        kind = value.__class__
        cached = kind is str or kind is bool or kind is int
        if cached:
            found = _PAIRS.get((tag, key, kind, value))
            if found is not None:
                fields.append(found)
                continue
        try:
            encoded = _field(tag, _key_value(key, value))
        except (TypeError, ValueError) as error:
            if key not in _WARNED and len(_WARNED) < 1024:
                _WARNED.add(key)
                log.warning("span attribute %r not exported (reported once): %s", key, error)
            continue
        fields.append(encoded)
        if cached and len(encoded) <= 256:
            if len(_PAIRS) >= 8192:  # unique values (request ids) would fill it: start over
                _PAIRS.clear()
            _PAIRS[(tag, key, kind, value)] = encoded
    return fields


@functools.lru_cache(maxsize=256)
def _trace_state(header: str) -> bytes:
    """A span's trace_state field, normalised as the SDK's encoder writes it."""
    state = TraceState.from_header([header])
    text = ",".join(f"{key}={value}" for key, value in state.items())
    return _field(b"\x1a", text.encode()) if text else b""


def _span(record: tuple[Any, ...]) -> bytes:
    name, trace_id, span_id, state, parent, kind, start, end, attributes, events, links, status = record
    parts = [b"\x0a\x10" + trace_id.to_bytes(16, "big"), b"\x12\x08" + span_id.to_bytes(8, "big")]
    if state:
        parts.append(_trace_state(state))
    if parent is not None:
        parts.append(b"\x22\x08" + parent[0].to_bytes(8, "big"))
    if name:
        parts.append(_field(b"\x2a", name.encode()))
    parts.append(b"\x30" + _varint(kind + 1))  # OTLP's SpanKind counts from UNSPECIFIED = 0
    if start:
        parts.append(b"\x39" + _FIXED64.pack(start))
    if end:
        parts.append(b"\x41" + _FIXED64.pack(end))
    parts += _attributes(b"\x4a", attributes)
    for event_name, event_attributes, at in events or ():
        event = [b"\x09" + _FIXED64.pack(at)] if at else []
        if event_name:
            event.append(_field(b"\x12", event_name.encode()))
        event += _attributes(b"\x1a", event_attributes)
        parts.append(_field(b"\x5a", b"".join(event)))
    for link_trace, link_span, _flags, remote, _state, link_attributes in links or ():
        link = [b"\x0a\x10" + link_trace.to_bytes(16, "big"), b"\x12\x08" + link_span.to_bytes(8, "big")]
        link += _attributes(b"\x22", link_attributes)
        link.append(b"\x35" + _FIXED32.pack(_HAS_IS_REMOTE | (_IS_REMOTE if remote else 0)))
        parts.append(_field(b"\x6a", b"".join(link)))
    code, description = status
    body = _field(b"\x12", description.encode()) if description and code == StatusCode.ERROR.value else b""
    parts.append(_field(b"\x7a", body + (b"\x18" + _varint(code) if code else b"")))
    remote = parent is not None and parent[1]
    parts.append(b"\x85\x01" + _FIXED32.pack(_HAS_IS_REMOTE | (_IS_REMOTE if remote else 0)))
    return b"".join(parts)


def encode(records: Records, resource: Resource, scope: InstrumentationScope) -> bytes:
    """An ExportTraceServiceRequest holding `records` under one resource and scope, serialised."""
    if not records:
        return b""
    resource_field = _field(b"\x0a", b"".join(_attributes(b"\x0a", resource.attributes)))
    scope_body = [_field(b"\x0a", scope.name.encode())] if scope.name else []
    if scope.version:
        scope_body.append(_field(b"\x12", scope.version.encode()))
    scope_body += _attributes(b"\x1a", scope.attributes)
    spans = [_field(b"\x12", _span(record)) for record in records]
    scope_spans = _field(b"\x12", _field(b"\x0a", b"".join(scope_body)) + b"".join(spans))
    return _field(b"\x0a", resource_field + scope_spans)


class SpanExport:
    """Span records to the collector: the SDK's OTLP exporter, fed directly encoded bytes over HTTP.

    Over HTTP the records skip the SDK's objects: `encode` writes the request and the exporter's own HTTP
    client (its retries, headers, compression, TLS settings) sends it. That client is the exporter's private
    `_client`; where an SDK version lacks it, and for gRPC, records go through `ReadableSpan`s and the
    exporter's `export` (tests/observability/test_otlp_wire.py checks the direct path is in use). The direct
    path skips the SDK exporter's self-metrics (off unless OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED); the
    gateway counts exported and failed spans itself.
    """

    def __init__(self, endpoint: Endpoint, source: Source) -> None:
        self._exporter = span_exporter(endpoint)
        self._resource, self._scope = source.sdk()
        self._client: Any = getattr(self._exporter, "_client", None)
        self.direct = endpoint.protocol != "grpc" and callable(getattr(self._client, "export", None))
        self._max_bytes: int = getattr(self._exporter, "_max_request_size", 64 * 2**20)

    def export(self, records: Records) -> bool:
        """One batch to the collector; True when it took it. Never raises: the collector may come back."""
        try:
            if not self.direct:
                return self._exporter.export(to_readable(records, self._resource, self._scope)) is (
                    SpanExportResult.SUCCESS
                )
            data = encode(records, self._resource, self._scope)
            if 0 < self._max_bytes < len(data):
                log.warning("span batch of %d bytes dropped: over the exporter's %d", len(data), self._max_bytes)
                return False
            return bool(self._client.export(data).success)
        except Exception:
            log.warning("span export raised", exc_info=True)
            return False

    def shutdown(self) -> None:
        self._exporter.shutdown()


def serve(endpoint: Endpoint, source: Source, frames: IO[bytes], answers: IO[bytes]) -> None:
    """The helper's loop: batches in, OTLP out, one answer line per batch or flush marker."""
    exporter = SpanExport(endpoint, source)
    try:
        while head := frames.read(FRAME.size):
            (size,) = FRAME.unpack(head)
            if size == 0:
                answers.write(b"flushed\n")
            else:
                batch = pickle.loads(frames.read(size))  # our own gateway's batches, over our own stdin
                ok = exporter.export(batch)
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
