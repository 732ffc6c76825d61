"""The pure parts of tracing: where OTLP goes, and GenAI attributes from request and answer bodies."""

from __future__ import annotations

from gateway.policy import Telemetry
from gateway.telemetry import resolve_endpoint
from gateway.telemetry.genai import answer_texts, input_messages, request_attributes, response_attributes, span_name


def test_the_policy_endpoint_wins_over_the_environment_and_nothing_is_exported_without_one() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    assert resolve_endpoint(Telemetry(), {}) is None
    from_env = resolve_endpoint(Telemetry(), env)
    assert from_env is not None and from_env.base_url == "http://collector:4318" and from_env.protocol == "grpc"
    assert from_env.signal_url("traces") == "http://collector:4318/v1/traces"
    own = resolve_endpoint(Telemetry(otlp_endpoint="http://mine:4318/", otlp_protocol="http/protobuf"), env)
    assert own is not None and own.signal_url("metrics") == "http://mine:4318/v1/metrics"
    assert resolve_endpoint(Telemetry(otlp_endpoint="http://mine:4318"), {"OTEL_SDK_DISABLED": "true"}) is None


def test_request_attributes_follow_the_semantic_conventions() -> None:
    body = {
        "model": "m",
        "temperature": 0.5,
        "top_p": 1,
        "max_completion_tokens": 9,
        "stop": "\n",
        "n": 2,
        "seed": True,
    }
    attributes = request_attributes("completions", "vllm", "https://llm.internal/v1", body)
    assert attributes == {
        "gen_ai.operation.name": "text_completion",
        "gen_ai.provider.name": "vllm",
        "gen_ai.request.model": "m",
        "server.address": "llm.internal",
        "server.port": 443,
        "gen_ai.request.temperature": 0.5,
        "gen_ai.request.top_p": 1,
        "gen_ai.request.max_tokens": 9,
        "gen_ai.request.choice.count": 2,
        "gen_ai.request.stop_sequences": ["\n"],
    }
    assert span_name("chat", "gemma-3-270m") == "chat gemma-3-270m"
    assert span_name("embeddings", "e5") == "embeddings e5"


def test_response_attributes_and_content_capture() -> None:
    answer = {"id": "x1", "model": "m-2", "choices": [{"message": {"content": "hi bob"}, "finish_reason": "stop"}]}
    usage = {"prompt_tokens": 3, "completion_tokens": 2}
    assert response_attributes(answer, usage, ["stop"]) == {
        "gen_ai.response.id": "x1",
        "gen_ai.response.model": "m-2",
        "gen_ai.response.finish_reasons": ["stop"],
        "gen_ai.usage.input_tokens": 3,
        "gen_ai.usage.output_tokens": 2,
    }
    assert answer_texts(answer) == [("hi bob", "stop")]
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "call bob"}]}]}
    captured = input_messages("chat", body, lambda text: text.replace("bob", "<PERSON>"))
    assert captured == '[{"role":"user","parts":[{"type":"text","content":"call <PERSON>"}]}]'
