"""`otlp.encode`: span records written straight to OTLP/protobuf must be the message the SDK's own encoder
builds from the same spans (parsed back with opentelemetry-proto), for every kind of value a span can hold,
and `SpanExport` must send those bytes through the exporter's HTTP client to a real collector."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from gateway.telemetry import otlp
from gateway.telemetry.otlp import Endpoint, Source, SpanExport, encode, to_readable
from gateway.telemetry.spans import FastTracer, Record
from tests.fakes.otlp import OtlpReceiver, ReceivedSpan
from tests.gateway_server import free_port
from tests.observability.test_spans import remote

SOURCE = Source({"service.name": "wire-under-test", "service.version": "1.2"}, ("gateway", "1.2"))
RESOURCE, SCOPE = SOURCE.sdk()


def sdk_message(records: list[Record]) -> ExportTraceServiceRequest:
    return encode_spans(to_readable(records, RESOURCE, SCOPE))


def ours(records: list[Record]) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest.FromString(encode(records, RESOURCE, SCOPE))


def record(**changes: Any) -> Record:
    fields: dict[str, Any] = {
        "name": "chat bench",
        "trace_id": 0x4BF92F3577B34DA6A3CE929D0E0E4736,
        "span_id": 0x00F067AA0BA902B7,
        "state": "",
        "parent": None,
        "kind": SpanKind.CLIENT.value,
        "start": 1_700_000_000_000_000_000,
        "end": 1_700_000_000_000_500_000,
        "attributes": {"gen_ai.operation.name": "chat"},
        "events": None,
        "links": None,
        "status": (StatusCode.UNSET.value, None),
    }
    fields.update(changes)
    return tuple(fields.values())


def test_the_spans_a_request_makes_encode_as_the_sdk_encodes_them() -> None:
    records: list[Record] = []
    tracer = FastTracer(1.0, records.append)
    server = tracer.start_span(
        "POST /v1/chat/completions",
        context=remote(True, "vendor=1,other=two"),
        kind=SpanKind.SERVER,
        attributes={"http.request.method": "POST", "http.response.status_code": 200, "gateway.cached": False},
    )
    inside = trace.set_span_in_context(server)
    step = tracer.start_span("exact_cache request", context=inside, attributes={"gateway.plugin": "exact_cache"})
    step.end()
    client = tracer.start_span("chat bench", context=inside, kind=SpanKind.CLIENT)
    client.set_attributes(
        {
            "gen_ai.request.temperature": 0.25,
            "gen_ai.request.max_tokens": 16,
            "gen_ai.response.finish_reasons": ("stop", "length"),
            "server.port": 8000,
            "gateway.note": "naïve 요청 ✓",  # not ASCII
        }
    )
    client.add_event("gen_ai.first_chunk", {"gateway.chunk": 1}, timestamp=1_700_000_000_000_100_000)
    client.add_link(SpanContext(3, 4, True, TraceFlags(TraceFlags.SAMPLED)), {"l": 1})
    client.add_link(SpanContext(5, 6, False, TraceFlags(TraceFlags.DEFAULT)))
    try:
        raise RuntimeError("upstream went away")
    except RuntimeError as error:
        client.record_exception(error)
    client.set_status(Status(StatusCode.ERROR, "upstream went away"))
    client.end()
    server.set_status(Status(StatusCode.OK))
    server.end()
    assert len(records) == 3
    found, expected = ours(records), sdk_message(records)
    assert found == expected
    spans = found.resource_spans[0].scope_spans[0].spans
    assert [s.name for s in spans] == ["exact_cache request", "chat bench", "POST /v1/chat/completions"]
    assert spans[2].trace_state == "vendor=1,other=two" and spans[2].flags == 0x300  # remote parent
    assert spans[1].status.message == "upstream went away" and spans[1].status.code == 2
    assert found.resource_spans[0].resource == expected.resource_spans[0].resource
    assert {kv.key for kv in found.resource_spans[0].resource.attributes} >= {"service.name", "telemetry.sdk.name"}


@pytest.mark.parametrize(
    "attributes",
    [
        {"empty": "", "zero": 0, "false": False, "negative": -5, "min": -(2**63), "max": 2**63 - 1},
        {"float": -0.0, "inf": float("inf"), "tiny": 5e-324, "big": 1e308},
        {"strings": ("a", "", "ü"), "ints": (1, -1, 2**40), "bools": (True, False), "floats": (0.5,)},
        {"empty tuple": (), "with none": ("a", None, "b"), "bytes": b"\x00\xff"},
        {"nested": {"k": "v", "n": {"deeper": [1, 2]}}},
        {f"key {n}": n for n in range(130)},
        {},
    ],
)
def test_every_value_kind_encodes_as_the_sdk_encodes_it(attributes: dict[str, Any]) -> None:
    records = [record(attributes=attributes)]
    assert ours(records) == sdk_message(records)


def test_an_attribute_that_cannot_be_encoded_is_dropped_and_the_rest_go_out(caplog: pytest.LogCaptureFixture) -> None:
    records = [record(attributes={"too big": 2**64, "kept": "yes", "odd": object()})] * 50
    spans = ours(records).resource_spans[0].scope_spans[0].spans
    assert len(spans) == 50
    assert all([(kv.key, kv.value.string_value) for kv in span.attributes] == [("kept", "yes")] for span in spans)
    warned = [r.getMessage() for r in caplog.records if "not exported" in r.getMessage()]
    assert len(warned) == 2 and "'too big'" in warned[0] and "'odd'" in warned[1]  # once a key, not once a span


@pytest.mark.parametrize(
    "changes",
    [
        {"parent": (0x1234, False)},
        {"parent": (0x1234, True), "state": "a=b"},
        {"state": "not a valid state;;"},
        {"kind": SpanKind.INTERNAL.value, "name": ""},
        {"kind": SpanKind.CONSUMER.value, "status": (StatusCode.OK.value, "ignored unless ERROR")},
        {"status": (StatusCode.ERROR.value, None)},
        {"events": [("", None, 7), ("e", {"x": (1, 2)}, 8)]},
        {"links": [(1, 2, 1, True, "k=v", None), (3, 4, 0, False, "", {"a": "b"})]},
        {"trace_id": 2**128 - 1, "span_id": 1},
    ],
)
def test_span_fields_encode_as_the_sdk_encodes_them(changes: dict[str, Any]) -> None:
    records = [record(**changes), record(span_id=99)]
    assert ours(records) == sdk_message(records)


def test_repeated_pairs_keep_their_type_and_place() -> None:
    """Pairs seen before are reused encoded: True, 1 and "1" under one key stay three different values, and
    a pair in a span's attributes, an event's and a link's is written with each place's field number."""
    pairs: list[dict[str, Any]] = [{"k": True}, {"k": 1}, {"k": "1"}, {"k": 1.0}, {"k": -0.0}, {"k": 0.0}]
    for _ in range(2):  # the second round finds every pair already encoded
        for attributes in pairs:
            records = [
                record(
                    attributes=attributes,
                    events=[("e", attributes, 5)],
                    links=[(1, 2, 1, False, "", attributes)],
                )
            ]
            assert ours(records) == sdk_message(records)
            span = ours(records).resource_spans[0].scope_spans[0].spans[0]
            kind = span.attributes[0].value.WhichOneof("value")
            assert kind == {bool: "bool_value", int: "int_value", str: "string_value", float: "double_value"}[
                type(attributes["k"])
            ]
            assert span.events[0].attributes == span.attributes == span.links[0].attributes


def test_an_empty_batch_is_an_empty_request() -> None:
    assert encode([], RESOURCE, SCOPE) == b"" == sdk_message([]).SerializeToString()


values = st.recursive(
    st.none() | st.booleans() | st.text() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(attributes=st.dictionaries(st.text(max_size=12), values, max_size=8), name=st.text(max_size=20))
def test_any_attributes_encode_as_the_sdk_encodes_them(attributes: dict[str, Any], name: str) -> None:
    records = [record(attributes=attributes, name=name)]
    assert ours(records) == sdk_message(records)


# --- SpanExport: the bytes go through the exporter's HTTP client, over the network ----------------


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as found:
        yield found


def named(receiver: OtlpReceiver, name: str) -> list[ReceivedSpan]:
    with receiver._lock:
        return [s for s in receiver.spans if s.name == name]


def test_http_export_sends_the_direct_encoding_to_a_real_collector(receiver: OtlpReceiver) -> None:
    export = SpanExport(Endpoint(receiver.http_url, "http/protobuf"), SOURCE)
    assert export.direct  # this SDK's exporter has the HTTP client the direct path sends through
    records = [record(name="over http", span_id=n + 1, attributes={"n": n}) for n in range(3)]
    try:
        assert export.export(records)
        assert receiver.wait_for(lambda: len(named(receiver, "over http")) == 3)
    finally:
        export.shutdown()
    received = named(receiver, "over http")
    assert sorted(s.attributes["n"] for s in received) == [0, 1, 2]
    assert {s.resource["service.name"] for s in received} == {"wire-under-test"}
    assert {s.kind for s in received} == {"CLIENT"} and receiver.http_exports >= 1


def test_grpc_export_goes_through_the_sdk_exporter(receiver: OtlpReceiver) -> None:
    export = SpanExport(Endpoint(receiver.grpc_url, "grpc"), SOURCE)
    assert not export.direct
    try:
        assert export.export([record(name="over grpc")])
        assert receiver.wait_for(lambda: len(named(receiver, "over grpc")) == 1)
    finally:
        export.shutdown()


def test_a_refused_or_oversized_batch_is_a_failure_not_an_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(otlp, "EXPORT_TIMEOUT_S", 0.5)
    export = SpanExport(Endpoint(f"http://127.0.0.1:{free_port()}", "http/protobuf"), SOURCE)  # nothing listens
    try:
        assert not export.export([record()])
        export._max_bytes = 10
        assert not export.export([record()])
    finally:
        export.shutdown()
