"""Traces through the real app: OpenAI SDK client -> gateway -> fake upstream, spans decoded by a
real OTLP receiver (HTTP/protobuf and gRPC)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import CLIENT_KEY, UPSTREAM_KEY
from tests.fakes.otlp import OtlpReceiver, ReceivedSpan
from tests.fakes.upstream import FakeUpstream
from tests.gateway_server import GatewayServer

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


def policy(upstream: FakeUpstream, endpoint: str, telemetry: str = "", plugins: str = "[]") -> str:
    return f"""
backends:
  - name: fake
    type: openai
    base_url: "{upstream.url}/v1"
    api_key: "{UPSTREAM_KEY}"
models:
  - name: echo
    targets: [{{backend: fake, model: echo-model}}]
    temperature: null
    plugins: {plugins}
  - name: flaky
    targets: [{{backend: fake, model: fail-503}}]
    retries: 1
    circuit: {{failures: 1000000}}
auth:
  keys:
    - {{name: team-a, key: "{CLIENT_KEY}"}}
telemetry:
  otlp_endpoint: "{endpoint}"
  service_name: gateway-under-test
  metrics_interval_s: 0.3
  {telemetry}
"""


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as found:
        yield found


def start(tmp_path: Path, text: str) -> GatewayServer:
    path = tmp_path / f"policy-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(text.replace("    temperature: null\n", ""))
    return GatewayServer(path).start()


@pytest.fixture(scope="module")
def traced(
    upstream: FakeUpstream, receiver: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayServer]:
    plugins = "[{use: exact_cache}]"
    server = start(tmp_path_factory.mktemp("traced"), policy(upstream, receiver.http_url, plugins=plugins))
    yield server
    server.stop()


def client(server: GatewayServer, headers: dict[str, str] | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=CLIENT_KEY, default_headers=headers, max_retries=0)


def by_name(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    found = [s for s in spans if s.name == name]
    assert found, f"no span {name!r} among {[s.name for s in spans]}"
    return found[0]


def test_chat_trace_continues_the_client_trace_and_follows_genai_conventions(
    traced: GatewayServer, receiver: OtlpReceiver, upstream: FakeUpstream
) -> None:
    prompt = f"trace me {uuid.uuid4().hex}"
    headers = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"}
    raw = client(traced, headers).chat.completions.with_raw_response.create(
        model="echo", messages=[{"role": "user", "content": prompt}], temperature=0, top_p=0.9, max_tokens=50
    )
    answer = raw.parse()
    spans = receiver.trace_of(raw.headers["x-request-id"])
    assert receiver.wait_for(lambda: len([s for s in receiver.spans if s.trace_id == CLIENT_TRACE]) >= 4)
    spans = [s for s in receiver.spans if s.trace_id == CLIENT_TRACE]

    server = by_name(spans, "POST /v1/chat/completions")
    assert server.kind == "SERVER"
    assert server.trace_id == CLIENT_TRACE and server.parent_span_id == CLIENT_SPAN
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["gateway.backend"] == "fake"
    assert server.attributes["gateway.cache"] == "miss"
    assert server.resource["service.name"] == "gateway-under-test"

    call = by_name(spans, "chat echo-model")
    assert call.kind == "CLIENT"
    attributes = call.attributes
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.request.model"] == "echo-model"
    assert attributes["gen_ai.response.model"] == answer.model
    assert attributes["gen_ai.response.id"] == answer.id
    assert attributes["gen_ai.response.finish_reasons"] == [answer.choices[0].finish_reason]
    assert answer.usage is not None
    assert attributes["gen_ai.usage.input_tokens"] == answer.usage.prompt_tokens
    assert attributes["gen_ai.usage.output_tokens"] == answer.usage.completion_tokens
    assert attributes["gen_ai.request.temperature"] == 0
    assert attributes["gen_ai.request.top_p"] == pytest.approx(0.9)
    assert attributes["gen_ai.request.max_tokens"] == 50
    assert attributes["server.address"] == "127.0.0.1"
    assert attributes["server.port"] == int(upstream.url.rsplit(":", 1)[1])
    assert "error.type" not in attributes

    route = by_name(spans, "route echo")
    assert call.parent_span_id == route.span_id and route.parent_span_id == server.span_id
    assert route.attributes["gateway.backend"] == "fake" and route.attributes["gateway.route.attempts"] == 1
    cache = by_name(spans, "plugin exact_cache")
    assert cache.parent_span_id == server.span_id and cache.attributes["gateway.cache.result"] == "miss"

    # The upstream received a traceparent naming the client span, in the same trace.
    sent = [r for r in upstream.requests if isinstance(r.body, dict) and prompt in str(r.body)]
    assert sent and sent[-1].headers["traceparent"] == f"00-{CLIENT_TRACE}-{call.span_id}-01"
    # No content unless the policy opts in, and never a key.
    for span in spans:
        assert prompt not in str(span.attributes) and prompt not in str(span.events)
    for span in receiver.spans:
        for secret in (UPSTREAM_KEY, CLIENT_KEY, UPSTREAM_KEY[-16:], CLIENT_KEY[-16:]):
            assert secret not in str(span.attributes) + str(span.events) + str(span.resource)


def test_stream_trace_has_time_to_first_chunk_and_usage(traced: GatewayServer, receiver: OtlpReceiver) -> None:
    with client(traced).chat.completions.with_streaming_response.create(
        model="echo", messages=[{"role": "user", "content": f"stream {uuid.uuid4().hex}"}], stream=True
    ) as response:
        request_id = response.headers["x-request-id"]
        chunks = list(response.parse())
    assert chunks
    assert receiver.wait_for(lambda: any(s.name == "chat echo-model" and s.trace_id for s in receiver.spans))
    spans = receiver.trace_of(request_id)
    call = by_name(spans, "chat echo-model")
    assert call.attributes["gen_ai.response.time_to_first_chunk"] > 0
    assert call.attributes["gen_ai.usage.output_tokens"] > 0
    assert call.attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert call.attributes["gen_ai.response.id"] == chunks[0].id
    assert ("gen_ai.first_chunk", {}) in call.events
    server = by_name(spans, "POST /v1/chat/completions")
    assert server.attributes["gateway.stream"] is True
    assert server.attributes["gen_ai.usage.output_tokens"] == call.attributes["gen_ai.usage.output_tokens"]


def test_failed_attempts_are_client_spans_with_error_type(traced: GatewayServer, receiver: OtlpReceiver) -> None:
    with pytest.raises(openai.APIStatusError) as failed:
        client(traced).chat.completions.create(model="flaky", messages=[{"role": "user", "content": "hi"}])
    assert failed.value.status_code == 503
    spans = receiver.trace_of(failed.value.response.headers["x-request-id"])
    assert receiver.wait_for(lambda: len([s for s in receiver.spans if s.name == "chat fail-503"]) >= 2)
    spans = receiver.trace_of(failed.value.response.headers["x-request-id"])
    calls = [s for s in spans if s.name == "chat fail-503"]
    assert len(calls) == 2  # the first call and its retry
    assert all(c.status_code == 2 and c.attributes["error.type"] for c in calls)
    server = by_name(spans, "POST /v1/chat/completions")
    assert server.status_code == 2 and server.attributes["http.response.status_code"] == 503


def test_cache_hit_has_no_client_span(traced: GatewayServer, receiver: OtlpReceiver) -> None:
    messages = [{"role": "user", "content": f"cache me {uuid.uuid4().hex}"}]
    client(traced).chat.completions.create(model="echo", messages=messages)
    raw = client(traced).chat.completions.with_raw_response.create(model="echo", messages=messages)
    assert raw.headers["x-gateway-cache"] == "hit"
    spans = receiver.trace_of(raw.headers["x-request-id"])
    assert not [s for s in spans if s.kind == "CLIENT"]
    assert by_name(spans, "plugin exact_cache").attributes["gateway.cache.result"] == "hit"


def test_genai_metrics_use_the_spec_buckets_over_otlp_and_prometheus(
    traced: GatewayServer, receiver: OtlpReceiver
) -> None:
    client(traced).chat.completions.create(model="echo", messages=[{"role": "user", "content": uuid.uuid4().hex}])
    assert receiver.wait_for(lambda: bool(receiver.metric("gen_ai.client.token.usage")), timeout=10)
    usage = receiver.metric("gen_ai.client.token.usage")[-1]
    assert usage.kind == "histogram" and usage.unit == "{token}"
    assert usage.bounds[:4] == [1, 4, 16, 64] and usage.bounds[-1] == 67108864
    kinds = {p["attributes"]["gen_ai.token.type"] for p in usage.points}
    assert kinds == {"input", "output"}
    assert receiver.wait_for(lambda: bool(receiver.metric("gen_ai.client.operation.duration")))
    duration = receiver.metric("gen_ai.client.operation.duration")[-1]
    assert duration.unit == "s" and duration.bounds[:3] == [0.01, 0.02, 0.04]
    assert any(p["attributes"]["gen_ai.request.model"] == "echo-model" for p in duration.points)

    assert all(sum(p["buckets"]) == p["count"] for p in usage.points + duration.points)

    text = httpx.get(traced.url + "/metrics").text
    assert 'gen_ai_client_token_usage_bucket{gen_ai_operation_name="chat"' in text
    assert 'le="6.7108864e+07"' in text and 'le="4.0"' in text
    assert "gen_ai_client_operation_duration_seconds_bucket" in text
    assert "gateway_overhead_seconds_count" in text
    assert 'gateway_telemetry_spans_exported_total{result="ok"}' in text


def test_stream_time_to_first_token_and_overhead_go_out_over_otlp(
    traced: GatewayServer, receiver: OtlpReceiver
) -> None:
    stream = client(traced).chat.completions.create(
        model="echo", messages=[{"role": "user", "content": uuid.uuid4().hex}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert receiver.wait_for(lambda: bool(receiver.metric("gateway.time_to_first_token")), timeout=10)
    ttft = receiver.metric("gateway.time_to_first_token")[-1]
    assert ttft.unit == "s" and ttft.bounds[0] == 0.001
    assert any(p["attributes"]["gateway.model"] == "echo" and p["count"] >= 1 for p in ttft.points)
    assert receiver.wait_for(lambda: bool(receiver.metric("gateway.overhead")))
    overhead = receiver.metric("gateway.overhead")[-1]
    streamed = [p for p in overhead.points if p["attributes"]["gateway.stream"] is True]
    assert streamed and streamed[0]["count"] >= 1 and sum(streamed[0]["buckets"]) == streamed[0]["count"]


def test_grpc_export_and_content_capture_redacted_by_the_pii_guard(
    upstream: FakeUpstream, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    text = policy(
        upstream,
        receiver.grpc_url,
        telemetry="otlp_protocol: grpc\n  capture_content: true",
        plugins="[{use: pii, action: pseudonymize}]",
    )
    server = start(tmp_path, text)
    try:
        secret = "jane.doe@example.com"
        raw = client(server).chat.completions.with_raw_response.create(
            model="echo", messages=[{"role": "user", "content": f"Mail {secret} about the launch"}]
        )
        assert secret in (raw.parse().choices[0].message.content or "")  # the caller gets the original back
        spans = receiver.trace_of(raw.headers["x-request-id"])
        assert receiver.grpc_exports > 0
        call = by_name(spans, "chat echo-model")
        assert "<EMAIL_ADDRESS" in call.attributes["gen_ai.input.messages"]
        assert "gen_ai.output.messages" in call.attributes
        assert all(secret not in str(s.attributes) + str(s.events) for s in spans)

        with client(server).chat.completions.with_streaming_response.create(
            model="echo", messages=[{"role": "user", "content": f"Streamed words for {secret}"}], stream=True
        ) as response:
            request_id = response.headers["x-request-id"]
            streamed = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
        assert secret in streamed
        assert receiver.wait_for(
            lambda: any(
                "Streamed words" in str(s.attributes.get("gen_ai.output.messages"))
                for s in receiver.spans
                if s.name == "chat echo-model"
            ),
            timeout=30,
        )
        call = by_name(receiver.trace_of(request_id), "chat echo-model")
        assert "Streamed words for <EMAIL_ADDRESS" in call.attributes["gen_ai.output.messages"]
        assert secret not in call.attributes["gen_ai.output.messages"]
    finally:
        server.stop()


def test_unsampled_requests_export_nothing_but_propagate(
    upstream: FakeUpstream, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    server = start(tmp_path, policy(upstream, receiver.http_url, telemetry="sample_ratio: 0"))
    try:
        prompt = f"unsampled {uuid.uuid4().hex}"
        raw = client(server).chat.completions.with_raw_response.create(
            model="echo", messages=[{"role": "user", "content": prompt}]
        )
        sent = [r for r in upstream.requests if prompt in str(r.body)]
        trace_id, flags = sent[-1].headers["traceparent"].split("-")[1::2]
        assert int(flags, 16) & 1 == 0  # not sampled
        assert not receiver.wait_for(lambda: any(s.trace_id == trace_id for s in receiver.spans), timeout=1.5)
        assert raw.headers["x-request-id"]
    finally:
        server.stop()


def test_a_dead_collector_never_fails_requests(upstream: FakeUpstream, tmp_path: Path) -> None:
    dead = "http://127.0.0.1:9"  # discard port: connection refused
    server = start(tmp_path, policy(upstream, dead, telemetry="overhead_header: true"))
    try:
        for n in range(20):
            raw = client(server).chat.completions.with_raw_response.create(
                model="echo", messages=[{"role": "user", "content": f"dead collector {n}"}]
            )
            assert raw.parse().choices[0].message.content
            assert float(raw.headers["x-gateway-overhead-ms"]) >= 0
        server.holder.current.telemetry.flush(timeout_s=15)
        text = httpx.get(server.url + "/metrics").text
        marker = 'gateway_telemetry_spans_exported_total{result="failed"}'
        failed = [line for line in text.splitlines() if line.startswith(marker)]
        assert failed and float(failed[0].split()[-1]) > 0
    finally:
        server.stop()


def test_tracing_off_passes_the_client_traceparent_upstream(gateway: GatewayServer, upstream: FakeUpstream) -> None:
    prompt = f"passthrough {uuid.uuid4().hex}"
    parent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
    client(gateway, {"traceparent": parent, "tracestate": "vendor=1"}).chat.completions.create(
        model="echo", messages=[{"role": "user", "content": prompt}]
    )
    sent = [r for r in upstream.requests if prompt in str(r.body)]
    assert sent[-1].headers["traceparent"] == parent and sent[-1].headers["tracestate"] == "vendor=1"
