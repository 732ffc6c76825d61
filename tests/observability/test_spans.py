"""The gateway's own spans (`FastTracer`/`FastSpan`) and their way out (`SpanQueue`, the export helper
process): the OpenTelemetry API's behaviour, the SDK's sampling decisions, and spans arriving at a real
OTLP receiver over the network, including after the helper process dies."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, TraceIdRatioBased
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import REGISTRY

from gateway.policy import Telemetry as TelemetryConfig
from gateway.telemetry import Telemetry, export
from gateway.telemetry.export import ProcessSender, SpanQueue, ThreadSender
from gateway.telemetry.otlp import Endpoint, Source, to_readable
from gateway.telemetry.request import RequestTrace, trace_headers
from gateway.telemetry.spans import LIMIT, FastSpan, FastTracer, Record
from tests.fakes.otlp import OtlpReceiver

SOURCE = Source({"service.name": "spans-under-test", "service.version": "9.9"}, ("gateway", "9.9"))


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as found:
        yield found


def recorded(ratio: float = 1.0) -> tuple[FastTracer, list[Record]]:
    records: list[Record] = []
    return FastTracer(ratio, records.append), records


def remote(sampled: bool, state: str = "") -> otel_context.Context:
    flags = "01" if sampled else "00"
    carrier = {"traceparent": f"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}"}
    if state:
        carrier["tracestate"] = state
    return TraceContextTextMapPropagator().extract(carrier)


def exported(records: list[Record]) -> list[tuple[str, str]]:
    return [(r[0], f"{r[1]:032x}") for r in records]


def counter(name: str, label: str) -> float:
    key = "result" if name == "gateway_telemetry_spans_exported_total" else "reason"
    return REGISTRY.get_sample_value(name, {key: label}) or 0.0


# --- sampling: the SDK's default sampler, decided the same way ----------------------------------


@pytest.mark.parametrize("ratio", [0.0, 0.25, 1.0])
def test_new_traces_are_sampled_as_the_sdk_ratio_sampler_decides(ratio: float) -> None:
    tracer, records = recorded(ratio)
    sdk = ParentBased(TraceIdRatioBased(ratio))
    spans = [tracer.start_span("root") for _ in range(2000)]
    for span in spans:
        found = span.get_span_context()
        decision = sdk.should_sample(None, found.trace_id, "root").decision
        assert span.is_recording() == (decision is Decision.RECORD_AND_SAMPLE)
        assert found.trace_flags.sampled == span.is_recording()
        assert found.is_valid and not found.is_remote
        span.end()
    share = len(records) / len(spans)
    assert abs(share - ratio) < 0.05
    assert len({r[1] for r in records}) == len(records)  # every root its own trace


def test_a_remote_parent_decides_and_its_trace_state_carries_on() -> None:
    tracer, records = recorded(0.0)  # the ratio alone would sample nothing
    span = tracer.start_span("child", context=remote(True, "vendor=1"), kind=SpanKind.SERVER)
    found = span.get_span_context()
    assert span.is_recording() and found.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736
    assert found.trace_state.get("vendor") == "1"
    span.end()
    name, trace_id, span_id, state, parent, kind = records[0][:6]
    assert (name, trace_id, span_id, state) == ("child", found.trace_id, found.span_id, "vendor=1")
    assert parent == (0x00F067AA0BA902B7, True) and kind == SpanKind.SERVER.value

    unsampled = FastTracer(1.0, records.append).start_span("x", context=remote(False, "vendor=2"))
    assert isinstance(unsampled, NonRecordingSpan) and not unsampled.is_recording()
    assert unsampled.get_span_context().trace_id == found.trace_id
    assert unsampled.get_span_context().span_id not in (0, 0x00F067AA0BA902B7)  # its own id, for propagation
    assert unsampled.get_span_context().trace_state.get("vendor") == "2"
    unsampled.end()
    assert len(records) == 1


def test_children_follow_the_current_span_and_the_routing_api() -> None:
    tracer, records = recorded(1.0)
    with tracer.start_as_current_span("parent") as parent:
        child = trace.get_tracer("any").start_span("unrouted")  # no gateway request: the API's no-op
        assert not child.is_recording()
        inner = tracer.start_span("child")
        inner.end()
    assert [r[0] for r in records] == ["child", "parent"]
    parent_id = parent.get_span_context().span_id
    assert records[0][4] == (parent_id, False) and records[1][4] is None
    assert records[0][1] == records[1][1]


def test_trusted_spans_take_their_attributes_as_given_and_still_respect_the_limit() -> None:
    tracer, records = recorded()
    given = {"gateway.plugin.name": "rules", "seq": ["x", "y"]}
    with tracer.start_as_current_span("parent") as parent:
        span = tracer.start_trusted("current parent", given)
        assert isinstance(span, FastSpan)
        span.set_trusted({"n": 1, "flag": False})
        span.end()
    explicit = tracer.start_trusted("explicit parent", {}, parent, SpanKind.CLIENT)
    explicit.end()
    child, _, other = records
    assert child[8] is given and given == {"gateway.plugin.name": "rules", "seq": ["x", "y"], "n": 1, "flag": False}
    assert child[4] == (parent.get_span_context().span_id, False) and child[1] == other[1]
    assert other[4] == child[4] and other[5] == SpanKind.CLIENT.value

    full = tracer.start_trusted("full", {f"k{i}": i for i in range(LIMIT - 1)})
    assert isinstance(full, FastSpan)
    full.set_trusted({"a": 1, "b": 2, "c": 3})  # past the limit: the oldest go, as with set_attributes
    full.end()
    attributes = records[-1][8]
    assert len(attributes) == LIMIT and "k0" not in attributes and "k1" not in attributes
    assert attributes["c"] == 3 and attributes[f"k{LIMIT - 2}"] == LIMIT - 2

    unsampled = FastTracer(0.0, records.append).start_trusted("not sampled", {"x": 1})
    assert not unsampled.is_recording() and unsampled.get_span_context().is_valid


def test_a_plugin_step_is_current_while_it_runs_and_records_what_escapes_it() -> None:
    telemetry = Telemetry(TelemetryConfig(otlp_endpoint="http://127.0.0.1:9", export_process=False))
    tracer, records = recorded()
    telemetry.tracer = tracer
    token = otel_context.attach(otel_context.Context())
    try:
        request = RequestTrace.start(telemetry, "POST", "/v1/chat/completions", {})
        with request.step("rules", "request") as step:
            assert step is not None and trace.get_current_span() is step
            trace.get_tracer("plugin").start_span("the plugin's own").end()  # the routing API: a child of the step
        assert trace.get_current_span() is request.span
        with pytest.raises(KeyError), request.step("exact_cache", "response"):
            raise KeyError("boom")
        assert trace.get_current_span() is request.span
        request.finish(200, {"gateway.backend": "b"})
    finally:
        otel_context.detach(token)
        telemetry.shutdown()
    own, rules, failed, server = records
    names = ["the plugin's own", "plugin rules", "plugin exact_cache", "POST /v1/chat/completions"]
    assert [r[0] for r in records] == names
    assert own[4] == (rules[2], False) and rules[4] == (server[2], False) and failed[4] == (server[2], False)
    assert rules[8] == {"gateway.plugin.name": "rules", "gateway.plugin.phase": "request"} and rules[11][0] == 0
    assert failed[8]["error.type"] == "KeyError" and failed[11] == (StatusCode.ERROR.value, None)
    assert server[8]["http.response.status_code"] == 200 and server[8]["gateway.backend"] == "b"

    quiet = RequestTrace(telemetry, FastTracer(0.0, records.append), NonRecordingSpan(SpanContext(1, 2, False)))
    with quiet.step("rules", "request") as nothing:
        assert nothing is None


# --- the API's span behaviour ----------------------------------------------------------------


def test_attributes_are_cleaned_and_bounded_like_the_sdk() -> None:
    tracer, records = recorded()
    span = tracer.start_span("a", attributes={"ok": 1, "bad": {"no": "dicts"}, "seq": ["x", "y"]})
    span.set_attribute("mixed", [1, "two"])  # not homogeneous: dropped
    span.set_attribute("flag", True)
    span.set_attributes({"f": 0.5, "n": None})  # None is not a value: dropped
    for i in range(LIMIT + 5):
        span.set_attribute(f"k{i}", i)
    span.end()
    attributes = records[0][8]
    assert len(attributes) == LIMIT
    assert "ok" not in attributes and "k4" not in attributes and "k5" in attributes  # the oldest went first
    assert attributes[f"k{LIMIT + 4}"] == LIMIT + 4
    assert "bad" not in attributes and "mixed" not in attributes and "n" not in attributes

    other = tracer.start_span("b", attributes={"seq": ["x", "y"], "flag": True})
    other.end()
    assert records[1][8] == {"seq": ("x", "y"), "flag": True}


def test_status_events_links_and_end() -> None:
    tracer, records = recorded()
    linked = SpanContext(7, 8, True, TraceFlags(TraceFlags.SAMPLED))
    span = tracer.start_span("s", links=[Link(linked, {"why": "retry"})])
    assert isinstance(span, FastSpan)
    span.set_status(StatusCode.OK, "ignored: only errors carry a description")
    span.set_status(Status(StatusCode.ERROR, "late"))  # OK is final
    span.add_event("first", {"n": 1}, timestamp=123)
    try:
        raise ValueError("boom")
    except ValueError as exc:
        span.record_exception(exc)
    span.update_name("renamed")
    span.end(end_time=10**19)
    span.set_attribute("after", 1)  # ignored once ended
    span.end()  # a second end is ignored
    assert len(records) == 1 and not span.is_recording()
    name, *_, attributes, events, links, status = records[0]
    assert name == "renamed" and attributes == {} and status == (StatusCode.OK.value, None)
    assert events[0] == ("first", {"n": 1}, 123)
    assert events[1][0] == "exception" and events[1][1]["exception.type"] == "ValueError"
    assert events[1][1]["exception.message"] == "boom" and "Traceback" in events[1][1]["exception.stacktrace"]
    assert links == [(7, 8, 1, True, "", {"why": "retry"})]

    failed = tracer.start_span("f")
    failed.set_status(Status(StatusCode.ERROR, "upstream 503"))
    failed.end()
    assert records[1][-1] == (StatusCode.ERROR.value, "upstream 503")


def test_use_span_records_an_escaping_exception() -> None:
    tracer, records = recorded()
    with pytest.raises(RuntimeError), tracer.start_as_current_span("failing"):
        raise RuntimeError("no")
    status = records[0][-1]
    assert status == (StatusCode.ERROR.value, "RuntimeError: no")
    assert records[0][9][0][0] == "exception"


def test_records_become_readable_spans_the_otlp_encoder_takes() -> None:
    tracer, records = recorded()
    root = tracer.start_span("root", context=remote(True, "vendor=1"), kind=SpanKind.SERVER, attributes={"a": "b"})
    child = tracer.start_span("child", context=trace.set_span_in_context(root), kind=SpanKind.CLIENT)
    child.add_event("gen_ai.first_chunk", timestamp=5)
    child.add_link(SpanContext(3, 4, False, TraceFlags(TraceFlags.SAMPLED)), {"l": 1})
    child.set_status(Status(StatusCode.ERROR, "bad"))
    child.end()
    root.end()
    resource, scope = SOURCE.sdk()
    readable = to_readable(records, resource, scope)
    first, second = readable
    assert first.name == "child" and first.kind is SpanKind.CLIENT
    assert first.parent is not None and first.parent.span_id == root.get_span_context().span_id
    assert not first.parent.is_remote and second.parent is not None and second.parent.is_remote
    assert first.context.trace_state.get("vendor") == "1"
    assert [(e.name, e.timestamp) for e in first.events] == [("gen_ai.first_chunk", 5)]
    assert first.links[0].context.span_id == 4 and dict(first.links[0].attributes or {}) == {"l": 1}
    assert first.status.status_code is StatusCode.ERROR and first.status.description == "bad"
    assert first.resource.attributes["service.name"] == "spans-under-test"
    assert first.instrumentation_scope is not None and first.instrumentation_scope.version == "9.9"
    message = encode_spans(readable)
    spans = message.resource_spans[0].scope_spans[0].spans
    assert [s.name for s in spans] == ["child", "root"]
    assert spans[1].parent_span_id == bytes.fromhex("00f067aa0ba902b7")
    assert spans[0].start_time_unix_nano <= spans[0].end_time_unix_nano


# --- the queue and the way out ---------------------------------------------------------------


class Collecting:
    def __init__(self) -> None:
        self.batches: list[list[Record]] = []

    def send(self, batch: list[Record]) -> None:
        self.batches.append(batch)

    def flush(self, timeout_s: float) -> bool:
        return True

    def close(self, timeout_s: float) -> None:
        return None


def test_a_full_queue_drops_and_counts_and_never_blocks() -> None:
    sender = Collecting()
    queue = SpanQueue(sender, max_queue=16, delay_s=60)
    before = counter("gateway_telemetry_spans_dropped_total", "queue_full")
    tracer = FastTracer(1.0, queue.put)
    started = time.perf_counter()
    for i in range(40):
        tracer.start_span(f"s{i}").end()
    assert time.perf_counter() - started < 1.0
    assert counter("gateway_telemetry_spans_dropped_total", "queue_full") - before == 24
    assert queue.force_flush(5)
    assert [r[0] for batch in sender.batches for r in batch] == [f"s{i}" for i in range(16)]
    queue.shutdown()
    shut = counter("gateway_telemetry_spans_dropped_total", "shutdown")
    tracer.start_span("late").end()
    assert counter("gateway_telemetry_spans_dropped_total", "shutdown") == shut + 1


def test_batches_go_out_at_the_batch_size_without_waiting_for_the_timer() -> None:
    sender = Collecting()
    queue = SpanQueue(sender, max_queue=4096, delay_s=60)
    tracer = FastTracer(1.0, queue.put)
    for i in range(export.BATCH):
        tracer.start_span(f"s{i}").end()
    deadline = time.monotonic() + 5
    while not sender.batches and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(sender.batches) == 1 and len(sender.batches[0]) == export.BATCH
    queue.shutdown()


@pytest.mark.parametrize("sender_kind", ["process", "thread"])
def test_spans_reach_a_real_collector(receiver: OtlpReceiver, sender_kind: str) -> None:
    endpoint = Endpoint(receiver.http_url, "http/protobuf")
    sender = ProcessSender(endpoint, SOURCE) if sender_kind == "process" else ThreadSender(endpoint, SOURCE)
    queue = SpanQueue(sender, 4096)
    tracer = FastTracer(1.0, queue.put)
    before = counter("gateway_telemetry_spans_exported_total", "ok")
    with tracer.start_as_current_span(f"root-{sender_kind}", kind=SpanKind.SERVER) as root:
        tracer.start_span("inner", attributes={"gateway.plugin.name": "rules"}).end()
    trace_id = f"{root.get_span_context().trace_id:032x}"
    assert queue.force_flush(30)
    got = [s for s in receiver.spans if s.trace_id == trace_id]
    assert sorted(s.name for s in got) == sorted(["inner", f"root-{sender_kind}"])
    inner = next(s for s in got if s.name == "inner")
    assert inner.parent_span_id == f"{root.get_span_context().span_id:016x}"
    assert inner.attributes == {"gateway.plugin.name": "rules"}
    assert inner.resource["service.name"] == "spans-under-test" and inner.resource["service.version"] == "9.9"
    assert counter("gateway_telemetry_spans_exported_total", "ok") - before == 2
    if isinstance(sender, ProcessSender):  # where to export is in its environment, not in argv (`ps` shows argv)
        assert sender.pid is not None
        argv = Path(f"/proc/{sender.pid}/cmdline").read_bytes().decode()
        assert "gateway/telemetry/otlp.py" in argv and str(receiver.http_port) not in argv
    queue.shutdown()


def test_the_export_process_comes_back_after_it_dies_and_goes_away_with_the_queue(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export, "RESTART_AFTER_S", 0.0)
    sender = ProcessSender(Endpoint(receiver.http_url, "http/protobuf"), SOURCE)
    queue = SpanQueue(sender, 4096)
    tracer = FastTracer(1.0, queue.put)
    tracer.start_span("before").end()
    assert queue.force_flush(30)
    first = sender.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while sender.pid is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sender.pid is None

    span = tracer.start_span("after")  # the next batch finds the helper gone and starts another
    span.end()
    assert queue.force_flush(30)
    trace_id = f"{span.get_span_context().trace_id:032x}"
    assert any(s.trace_id == trace_id for s in receiver.spans)
    second = sender.pid
    assert second is not None and second != first
    queue.shutdown()
    assert sender.pid is None
    with pytest.raises(ProcessLookupError):  # its stdin closed: it exported what it held and exited (and was reaped)
        os.kill(second, 0)


def test_the_export_process_exports_what_it_holds_when_its_stdin_closes(receiver: OtlpReceiver) -> None:
    """As when the gateway is killed: the helper reads the end of its input, exports, exits; nothing outlives."""
    sender = ProcessSender(Endpoint(receiver.http_url, "http/protobuf"), SOURCE)
    tracer, records = recorded()
    span = tracer.start_span("orphaned")
    span.end()
    sender.send(records)
    helper = sender._helper
    assert helper is not None and helper.proc.stdin is not None
    helper.proc.stdin.close()
    assert helper.proc.wait(30) == 0
    trace_id = f"{span.get_span_context().trace_id:032x}"
    assert receiver.wait_for(lambda: any(s.trace_id == trace_id for s in receiver.spans), timeout=10)


def test_a_helper_that_stops_reading_never_holds_flush_or_shutdown(receiver: OtlpReceiver) -> None:
    sender = ProcessSender(Endpoint(receiver.http_url, "http/protobuf"), SOURCE)
    assert sender.flush(30)  # started and answering
    pid = sender.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # hung: reads nothing more
    tracer, records = recorded()
    for i in range(3000):  # far more than a pipe holds: the write blocks
        tracer.start_span(f"s{i}", attributes={"gateway.request_id": f"{i:064d}"}).end()
    before = counter("gateway_telemetry_spans_exported_total", "failed")
    writer = threading.Thread(target=sender.send, args=(records,), daemon=True)
    writer.start()
    time.sleep(0.3)
    assert writer.is_alive()  # blocked on the full pipe
    started = time.monotonic()
    assert sender.flush(1.0) is False
    sender.close(2.0)  # the stuck helper is stopped
    assert time.monotonic() - started < 8
    writer.join(10)
    assert not writer.is_alive()
    assert counter("gateway_telemetry_spans_exported_total", "failed") - before == len(records)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_dead_collector_counts_failures_through_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    sender = ProcessSender(Endpoint("http://127.0.0.1:9", "http/protobuf"), SOURCE)
    queue = SpanQueue(sender, 4096)
    before = counter("gateway_telemetry_spans_exported_total", "failed")
    FastTracer(1.0, queue.put).start_span("lost").end()
    assert queue.force_flush(30)
    assert counter("gateway_telemetry_spans_exported_total", "failed") - before == 1
    queue.shutdown()


@pytest.mark.parametrize("sampled", [True, False])
@pytest.mark.parametrize("state", ["", "vendor=1,other=two"])
def test_trace_headers_are_what_the_w3c_propagator_writes(sampled: bool, state: str) -> None:
    tracer, _ = recorded(1.0)
    span = tracer.start_span("call", context=remote(sampled, state))
    expected: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(expected, context=trace.set_span_in_context(span))
    assert trace_headers(span) == expected
    assert expected["traceparent"].endswith("-01" if sampled else "-00")
