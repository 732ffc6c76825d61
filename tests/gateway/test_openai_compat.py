"""The gateway as real OpenAI-compatible clients see it: the OpenAI SDK (sync and async), LangChain
and plain httpx, against a real gateway served by uvicorn in front of the fake upstream.

Expected numbers are what the fake computes: it echoes the last user message as "echo: <text>" and
counts usage in whitespace-separated words (see tests/fakes/upstream.py).
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from langchain_openai import ChatOpenAI
from openai import AsyncOpenAI, OpenAI

from tests.conftest import ANTHROPIC_KEY, CLIENT_KEY, FAULTS, UPSTREAM_KEY
from tests.fakes.upstream import TOOL_ARGUMENTS, FakeUpstream, RecordedRequest, _embedding
from tests.gateway_server import GatewayServer

TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}


# --- helpers ------------------------------------------------------------------------------------------


def words(*texts: str) -> int:
    """The fake's token count: whitespace-separated words."""
    return sum(len(text.split()) for text in texts)


def marker() -> str:
    """A unique word that identifies one test's request among everything the shared fake recorded."""
    return f"m{uuid.uuid4().hex[:12]}"


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def recorded(upstream: FakeUpstream, mark: str) -> RecordedRequest:
    """The single request the upstream received that carries `mark` (no retries, no duplicates)."""
    hits = [r for r in list(upstream.requests) if mark in json.dumps(r.body)]
    assert len(hits) == 1, f"expected exactly one upstream request with {mark!r}, got {len(hits)}"
    return hits[0]


def sse_events(raw: str) -> list[str]:
    """The data payloads of an SSE body, in order."""
    out = []
    for block in raw.split("\n\n"):
        data = [line.removeprefix("data:").lstrip() for line in block.splitlines() if line.startswith("data:")]
        if data:
            out.append("\n".join(data))
    return out


@pytest.fixture(scope="module")
def client(gateway: GatewayServer) -> Iterator[OpenAI]:
    # No retries: every test must see the gateway's first answer.
    with OpenAI(base_url=gateway.base_url, api_key=CLIENT_KEY, max_retries=0) as sdk:
        yield sdk


def async_client(gateway: GatewayServer) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=gateway.base_url, api_key=CLIENT_KEY, max_retries=0)


# --- chat completions ---------------------------------------------------------------------------------


def test_chat_plain_sync(client: OpenAI, upstream: FakeUpstream) -> None:
    mark = marker()
    prompt = f"hello there {mark}"
    resp = client.chat.completions.create(model="echo", messages=user(prompt))

    assert resp.object == "chat.completion"
    assert len(resp.choices) == 1
    choice = resp.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content == f"echo: {prompt}"
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "stop"
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == words(prompt) == 3
    assert resp.usage.completion_tokens == words(f"echo: {prompt}") == 4
    assert resp.usage.total_tokens == 7
    # id and model are the upstream's, untouched
    assert resp.id.startswith("chatcmpl-fake-")
    assert resp.model == "echo-model"
    assert resp.system_fingerprint == "fake"
    assert recorded(upstream, mark).path == "/v1/chat/completions"


async def test_chat_plain_async(gateway: GatewayServer) -> None:
    mark = marker()
    prompt = f"async hello {mark}"
    async with async_client(gateway) as aclient:
        resp = await aclient.chat.completions.create(
            model="echo",
            messages=[{"role": "system", "content": "one two three"}, *user(prompt)],
        )
    assert resp.choices[0].message.content == f"echo: {prompt}"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens) == (6, 4, 10)
    assert resp.id.startswith("chatcmpl-fake-")
    assert resp.model == "echo-model"


def test_chat_stream_without_usage(client: OpenAI) -> None:
    prompt = f"stream me some words {marker()}"
    chunks = list(client.chat.completions.create(model="echo", messages=user(prompt), stream=True))

    assert chunks, "no chunks"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert all(c.usage is None for c in chunks)
    assert all(len(c.choices) == 1 for c in chunks)
    assert {c.id for c in chunks} == {chunks[0].id}
    assert chunks[0].id.startswith("chatcmpl-fake-")
    assert all(c.model == "echo-model" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == f"echo: {prompt}"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason is not None]
    assert finishes == ["stop"]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_chat_stream_with_usage(client: OpenAI) -> None:
    prompt = f"count these words please {marker()}"
    chunks = list(
        client.chat.completions.create(
            model="echo", messages=user(prompt), stream=True, stream_options={"include_usage": True}
        )
    )
    *content_chunks, final = chunks
    # the last chunk carries the usage and no choices
    assert final.choices == []
    assert final.usage is not None
    assert final.usage.prompt_tokens == words(prompt) == 5
    assert final.usage.completion_tokens == words(f"echo: {prompt}") == 6
    assert final.usage.total_tokens == 11
    assert final.id == content_chunks[0].id
    # no other chunk has usage; exactly one finish_reason, on the last content chunk
    assert all(c.usage is None for c in content_chunks)
    assert all(len(c.choices) == 1 for c in content_chunks)
    assert "".join(c.choices[0].delta.content or "" for c in content_chunks) == f"echo: {prompt}"
    finishes = [c.choices[0].finish_reason for c in content_chunks if c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert content_chunks[-1].choices[0].finish_reason == "stop"


async def test_chat_stream_async(gateway: GatewayServer) -> None:
    prompt = f"async stream {marker()}"
    async with async_client(gateway) as aclient:
        stream = await aclient.chat.completions.create(
            model="echo", messages=user(prompt), stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == f"echo: {prompt}"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == words(prompt) + words(f"echo: {prompt}")


def test_raw_sse_without_usage_has_no_usage_key_and_ends_with_done(gateway: GatewayServer) -> None:
    prompt = f"raw sse {marker()}"
    body = {"model": "echo", "messages": user(prompt), "stream": True}
    with (
        httpx.Client(timeout=10) as http,
        http.stream("POST", f"{gateway.base_url}/chat/completions", json=body, headers=AUTH) as resp,
    ):
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        raw = resp.read().decode()

    assert '"usage"' not in raw
    assert raw.endswith("data: [DONE]\n\n")
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    assert events.count("[DONE]") == 1
    chunks = [json.loads(e) for e in events[:-1]]
    assert all("usage" not in c for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == f"echo: {prompt}"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]] == ["stop"]


def test_raw_sse_with_usage_sends_one_usage_chunk_last(gateway: GatewayServer) -> None:
    prompt = f"raw usage {marker()}"
    body = {"model": "echo", "messages": user(prompt), "stream": True, "stream_options": {"include_usage": True}}
    with httpx.Client(timeout=10) as http:
        resp = http.post(f"{gateway.base_url}/chat/completions", json=body, headers=AUTH)
    assert resp.status_code == 200
    assert resp.text.endswith("data: [DONE]\n\n")
    events = sse_events(resp.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    with_usage = [c for c in chunks if c.get("usage")]
    assert with_usage == [chunks[-1]]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {
        "prompt_tokens": words(prompt),
        "completion_tokens": words(f"echo: {prompt}"),
        "total_tokens": words(prompt) + words(f"echo: {prompt}"),
    }


def test_chat_n2_gives_two_choices(client: OpenAI) -> None:
    prompt = f"twice please {marker()}"
    resp = client.chat.completions.create(model="echo", messages=user(prompt), n=2)
    assert [c.index for c in resp.choices] == [0, 1]
    assert [c.message.content for c in resp.choices] == [f"echo: {prompt}"] * 2
    assert [c.finish_reason for c in resp.choices] == ["stop", "stop"]
    assert resp.usage is not None
    assert resp.usage.completion_tokens == 2 * words(f"echo: {prompt}")


def test_chat_n2_stream(client: OpenAI) -> None:
    prompt = f"twice streamed {marker()}"
    chunks = list(client.chat.completions.create(model="echo", messages=user(prompt), n=2, stream=True))
    for index in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == index]
        assert "".join(ch.delta.content or "" for ch in mine) == f"echo: {prompt}"
        assert [ch.finish_reason for ch in mine if ch.finish_reason] == ["stop"]


def test_tool_call(client: OpenAI, upstream: FakeUpstream) -> None:
    mark = marker()
    resp = client.chat.completions.create(
        model="echo", messages=user(f"please call tool {mark}"), tools=TOOLS, tool_choice="auto"
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    assert len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.id == "call_1"
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert call.function.arguments == TOOL_ARGUMENTS
    assert json.loads(call.function.arguments) == {"x": 1}
    assert resp.usage is not None
    assert resp.usage.completion_tokens == words(TOOL_ARGUMENTS)
    sent = recorded(upstream, mark).body
    assert sent["tools"] == TOOLS
    assert sent["tool_choice"] == "auto"


def test_tool_call_stream(client: OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="echo", messages=user(f"call tool now {marker()}"), tools=TOOLS, stream=True
        )
    )
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas, "no tool_calls delta"
    first = deltas[0]
    assert first.index == 0
    assert first.id == "call_1"
    assert first.type == "function"
    assert first.function is not None
    assert first.function.name == "get_weather"
    assert "".join(d.function.arguments or "" for d in deltas if d.function) == TOOL_ARGUMENTS
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    assert all(not c.choices[0].delta.content for c in chunks if c.choices)


def test_response_format_json_object(client: OpenAI, upstream: FakeUpstream) -> None:
    mark = marker()
    prompt = f"give me json {mark}"
    resp = client.chat.completions.create(model="echo", messages=user(prompt), response_format={"type": "json_object"})
    content = resp.choices[0].message.content
    assert content is not None
    assert json.loads(content) == {"echo": prompt}
    assert recorded(upstream, mark).body["response_format"] == {"type": "json_object"}


# --- pass-through and credentials ---------------------------------------------------------------------


def test_unknown_fields_pass_through_and_model_is_rewritten(client: OpenAI, upstream: FakeUpstream) -> None:
    mark = marker()
    extra = {"seed": 7, "logit_bias": {"1": 2}, "my_custom_field": {"a": [1, 2]}}
    resp = client.chat.completions.create(
        model="echo", messages=user(f"pass through {mark}"), temperature=0.5, extra_body=extra
    )
    assert resp.choices[0].message.content == f"echo: pass through {mark}"

    req = recorded(upstream, mark)
    body = req.body
    assert body["model"] == "echo-model"
    assert body["seed"] == 7
    assert body["logit_bias"] == {"1": 2}
    assert body["my_custom_field"] == {"a": [1, 2]}
    assert body["temperature"] == 0.5
    assert body["messages"] == user(f"pass through {mark}")
    # nothing added beyond what the client sent (model rewritten only)
    assert set(body) == {"model", "messages", "temperature", "seed", "logit_bias", "my_custom_field"}


def test_client_key_never_reaches_upstream(client: OpenAI, upstream: FakeUpstream) -> None:
    mark = marker()
    client.chat.completions.create(model="echo", messages=user(f"secret {mark}"))
    req = recorded(upstream, mark)
    assert req.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    leaked = {name: value for name, value in req.headers.items() if CLIENT_KEY in value}
    assert leaked == {}
    assert CLIENT_KEY not in json.dumps(req.body)


def test_client_key_never_reaches_upstream_when_streaming(client: OpenAI, upstream: FakeUpstream) -> None:
    mark = marker()
    list(client.chat.completions.create(model="echo", messages=user(f"secret {mark}"), stream=True))
    req = recorded(upstream, mark)
    assert req.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert not any(CLIENT_KEY in value for value in req.headers.values())
    # the gateway asks upstream for usage even though the client did not
    assert req.body["stream"] is True
    assert req.body["stream_options"] == {"include_usage": True}


# --- response headers ---------------------------------------------------------------------------------


def test_request_id_and_backend_headers(client: OpenAI, upstream: FakeUpstream) -> None:
    mark = marker()
    raw = client.chat.completions.with_raw_response.create(model="echo", messages=user(f"headers {mark}"))
    assert raw.status_code == 200
    assert raw.headers["x-gateway-backend"] == "fake"
    request_id = raw.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)  # 128 random bits
    assert raw.parse().choices[0].message.content == f"echo: headers {mark}"
    # the same id travels upstream, so traces join up
    assert recorded(upstream, mark).headers["x-request-id"] == request_id


def test_sane_request_id_is_echoed(client: OpenAI, upstream: FakeUpstream) -> None:
    mark = marker()
    given = f"trace-{mark}.1:abc_DEF"
    raw = client.chat.completions.with_raw_response.create(
        model="echo", messages=user(f"id {mark}"), extra_headers={"x-request-id": given}
    )
    assert raw.headers["x-request-id"] == given
    assert recorded(upstream, mark).headers["x-request-id"] == given


def test_sane_request_id_is_echoed_on_streams(client: OpenAI) -> None:
    given = f"stream-{marker()}"
    with client.chat.completions.with_streaming_response.create(
        model="echo", messages=user("s"), stream=True, extra_headers={"x-request-id": given}
    ) as raw:
        assert raw.headers["x-request-id"] == given
        assert raw.headers["x-gateway-backend"] == "fake"
        assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices) == "echo: s"


@pytest.mark.parametrize("given", ["a" * 300, "has spaces in it", "semi;colon", ""])
def test_insane_request_id_is_replaced(client: OpenAI, upstream: FakeUpstream, given: str) -> None:
    mark = marker()
    raw = client.chat.completions.with_raw_response.create(
        model="echo", messages=user(f"id {mark}"), extra_headers={"x-request-id": given}
    )
    returned = raw.headers["x-request-id"]
    assert returned
    assert returned != given
    assert len(returned) <= 128
    assert " " not in returned
    assert recorded(upstream, mark).headers["x-request-id"] == returned


def test_request_ids_are_unique_per_request(client: OpenAI) -> None:
    ids = {
        client.chat.completions.with_raw_response.create(model="echo", messages=user("x")).headers["x-request-id"]
        for _ in range(3)
    }
    assert len(ids) == 3


def test_backend_header_for_anthropic(client: OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="claude", messages=user("hi"))
    assert raw.headers["x-gateway-backend"] == "claude"


# --- completions, embeddings, models ------------------------------------------------------------------


def test_completions_plain(client: OpenAI, upstream: FakeUpstream) -> None:
    mark = marker()
    prompt = f"complete this {mark}"
    resp = client.completions.create(model="echo", prompt=prompt, max_tokens=50)
    assert resp.object == "text_completion"
    assert resp.id.startswith("cmpl-fake-")
    assert resp.model == "echo-model"
    assert [c.text for c in resp.choices] == [f"echo: {prompt}"]
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens) == (3, 4, 7)
    req = recorded(upstream, mark)
    assert req.path == "/v1/completions"
    assert req.body == {"model": "echo-model", "prompt": prompt, "max_tokens": 50}


def test_completions_stream(client: OpenAI) -> None:
    prompt = f"stream complete {marker()}"
    chunks = list(
        client.completions.create(model="echo", prompt=prompt, stream=True, stream_options={"include_usage": True})
    )
    *content, final = chunks
    assert "".join(c.choices[0].text for c in content) == f"echo: {prompt}"
    assert [c.choices[0].finish_reason for c in content if c.choices[0].finish_reason] == ["stop"]
    assert final.choices == []
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (3, 4)


def test_completions_stream_without_usage(client: OpenAI) -> None:
    prompt = f"no usage {marker()}"
    chunks = list(client.completions.create(model="echo", prompt=prompt, stream=True))
    assert all(c.usage is None for c in chunks)
    assert all(len(c.choices) == 1 for c in chunks)
    assert "".join(c.choices[0].text for c in chunks) == f"echo: {prompt}"


def test_embeddings_sdk_default_base64(client: OpenAI, upstream: FakeUpstream) -> None:
    mark = marker()
    text = f"embed me {mark}"
    resp = client.embeddings.create(model="echo", input=text)
    assert resp.object == "list"
    assert resp.model == "echo-model"
    assert len(resp.data) == 1
    assert resp.data[0].index == 0
    assert resp.data[0].embedding == pytest.approx(_embedding(text, 8), abs=0)
    assert resp.usage.prompt_tokens == 3
    assert resp.usage.total_tokens == 3
    req = recorded(upstream, mark)
    assert req.path == "/v1/embeddings"
    assert req.body["encoding_format"] == "base64"
    assert req.body["model"] == "echo-model"


def test_embeddings_float_list_input(client: OpenAI, upstream: FakeUpstream) -> None:
    mark = marker()
    inputs = [f"first {mark}", "second one here", "third"]
    resp = client.embeddings.create(model="echo", input=inputs, encoding_format="float", dimensions=4)
    assert [d.index for d in resp.data] == [0, 1, 2]
    for item, datum in zip(inputs, resp.data, strict=True):
        assert isinstance(datum.embedding, list)
        assert datum.embedding == _embedding(item, 4)
    assert resp.usage.prompt_tokens == words(*inputs) == 6
    body = recorded(upstream, mark).body
    assert body == {"model": "echo-model", "input": inputs, "encoding_format": "float", "dimensions": 4}


def test_embeddings_base64_and_float_agree(client: OpenAI) -> None:
    text = f"same vector {marker()}"
    as_b64 = client.embeddings.create(model="echo", input=text).data[0].embedding
    as_float = client.embeddings.create(model="echo", input=text, encoding_format="float").data[0].embedding
    assert as_b64 == as_float


def expected_model_names() -> list[str]:
    names = ["echo", "claude", "decorated", "small-window", "unreachable"]
    for fault in FAULTS:
        names += [fault, f"claude-{fault}"]
    return names


def test_models_list(client: OpenAI) -> None:
    models = list(client.models.list())
    names = [m.id for m in models]
    assert len(names) == len(set(names))
    assert sorted(names) == sorted(expected_model_names())
    assert all(m.object == "model" and m.owned_by == "gateway" for m in models)
    # the upstream's own model ids are not exposed
    assert "echo-model" not in names


def test_models_retrieve(client: OpenAI) -> None:
    model = client.models.retrieve("echo")
    assert model.id == "echo"
    assert model.object == "model"
    assert model.owned_by == "gateway"
    assert client.models.retrieve("claude-fail-500").id == "claude-fail-500"


def test_models_retrieve_unknown_is_404(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("no-such-model")
    assert info.value.status_code == 404
    assert isinstance(info.value.body, dict)
    assert info.value.body["code"] == "model_not_found"


def test_chat_unknown_model_is_404(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=user("x"))
    assert isinstance(info.value.body, dict)
    assert info.value.body["code"] == "model_not_found"
    assert info.value.body["param"] == "model"


def test_wrong_key_is_rejected(gateway: GatewayServer) -> None:
    with (
        OpenAI(base_url=gateway.base_url, api_key="sk-wrong", max_retries=0) as bad,
        pytest.raises(openai.AuthenticationError),
    ):
        bad.chat.completions.create(model="echo", messages=user("x"))


def test_sdk_stream_helper_accumulates(client: OpenAI) -> None:
    prompt = f"helper stream {marker()}"
    with client.chat.completions.stream(
        model="echo", messages=user(prompt), stream_options={"include_usage": True}
    ) as stream:
        deltas = [event.delta for event in stream if event.type == "content.delta"]
        final = stream.get_final_completion()
    assert "".join(deltas) == f"echo: {prompt}"
    assert final.choices[0].message.content == f"echo: {prompt}"
    assert final.choices[0].finish_reason == "stop"
    assert final.usage is not None
    assert final.usage.completion_tokens == words(f"echo: {prompt}")


# --- errors as the SDK sees them ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "exc_type", "status", "code"),
    [
        ("fail-400", openai.BadRequestError, 400, None),
        ("fail-429", openai.RateLimitError, 429, "rate_limit_exceeded"),
        ("fail-500", openai.InternalServerError, 502, "upstream_error"),
        ("fail-503", openai.InternalServerError, 503, "backend_unavailable"),
        ("unreachable", openai.InternalServerError, 503, "backend_unavailable"),
        ("claude-fail-429", openai.RateLimitError, 429, "rate_limit_exceeded"),
        ("claude-fail-500", openai.InternalServerError, 502, "upstream_error"),
    ],
)
def test_upstream_errors_map_to_sdk_exceptions(
    client: OpenAI, model: str, exc_type: type[openai.APIStatusError], status: int, code: str | None
) -> None:
    given = f"err-{marker()}"
    with pytest.raises(exc_type) as info:
        client.chat.completions.create(model=model, messages=user("x"), extra_headers={"x-request-id": given})
    assert info.value.status_code == status
    assert info.value.response.headers["x-request-id"] == given
    assert isinstance(info.value.body, dict)
    assert set(info.value.body) == {"message", "type", "param", "code"}
    assert info.value.body["code"] == code
    assert isinstance(info.value.body["message"], str) and info.value.body["message"]
    if status == 429:
        assert info.value.response.headers["retry-after"] == "1"


def test_context_window_error(client: OpenAI, upstream: FakeUpstream) -> None:
    mark = marker()
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="small-window", messages=user(f"{mark} " + "word " * 60))
    assert isinstance(info.value.body, dict)
    assert info.value.body["code"] == "context_length_exceeded"
    assert not [r for r in list(upstream.requests) if mark in json.dumps(r.body)]


def test_broken_stream_raises_in_the_sdk(client: OpenAI) -> None:
    stream = client.chat.completions.create(model="cut-stream", messages=user("a b c d e f g h"), stream=True)
    received: list[str] = []
    with pytest.raises(openai.APIError):
        for chunk in stream:
            received.extend(choice.delta.content or "" for choice in chunk.choices)
    # what arrived before the break was delivered, and nothing claimed a clean finish
    assert "".join(received) == "echo: a b "


# --- Anthropic backend --------------------------------------------------------------------------------


def test_anthropic_plain(client: OpenAI, upstream: FakeUpstream) -> None:
    mark = marker()
    prompt = f"hi claude {mark}"
    resp = client.chat.completions.create(
        model="claude", messages=[{"role": "system", "content": "You are terse."}, *user(prompt)]
    )
    assert resp.object == "chat.completion"
    assert resp.id.startswith("chatcmpl-msg_fake_")
    assert resp.model == "claude-echo"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == f"echo: {prompt}"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == words("You are terse.", prompt) == 6
    assert resp.usage.completion_tokens == words(f"echo: {prompt}") == 4
    assert resp.usage.total_tokens == 10

    req = recorded(upstream, mark)
    assert req.path == "/v1/messages"
    assert req.headers["x-api-key"] == ANTHROPIC_KEY
    assert req.headers["anthropic-version"] == "2023-06-01"
    assert not any(CLIENT_KEY in value for value in req.headers.values())
    assert req.body == {
        "model": "claude-echo",
        "messages": [{"role": "user", "content": [{"type": "text", "text": prompt}]}],
        "system": "You are terse.",
        "max_tokens": 4096,
        "stream": False,
    }


def test_anthropic_max_tokens_from_client(client: OpenAI, upstream: FakeUpstream) -> None:
    mark = marker()
    resp = client.chat.completions.create(model="claude", messages=user(f"one two three four {mark}"), max_tokens=2)
    assert resp.choices[0].message.content == "echo: one"
    assert resp.choices[0].finish_reason == "length"
    body = recorded(upstream, mark).body
    assert body["max_tokens"] == 2
    assert "system" not in body


def test_anthropic_stream(client: OpenAI, upstream: FakeUpstream) -> None:
    mark = marker()
    prompt = f"stream from claude {mark}"
    chunks = list(
        client.chat.completions.create(
            model="claude",
            messages=[{"role": "system", "content": "Sys."}, *user(prompt)],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    *content, final = chunks
    assert "".join(c.choices[0].delta.content or "" for c in content) == f"echo: {prompt}"
    assert [c.choices[0].finish_reason for c in content if c.choices[0].finish_reason] == ["stop"]
    assert content[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in content)
    assert final.choices == []
    assert final.usage is not None
    assert final.usage.prompt_tokens == words("Sys.", prompt)
    assert final.usage.completion_tokens == words(f"echo: {prompt}")
    assert all(c.model == "claude-echo" for c in chunks)
    assert {c.id for c in chunks} == {chunks[0].id}

    req = recorded(upstream, mark)
    assert req.headers["x-api-key"] == ANTHROPIC_KEY
    assert "anthropic-version" in req.headers
    assert req.body["stream"] is True
    assert req.body["system"] == "Sys."
    assert req.body["max_tokens"] == 4096
    assert all(m["role"] != "system" for m in req.body["messages"])
    assert "stream_options" not in req.body


def test_anthropic_stream_without_usage(client: OpenAI) -> None:
    prompt = f"claude no usage {marker()}"
    chunks = list(client.chat.completions.create(model="claude", messages=user(prompt), stream=True))
    assert all(c.usage is None for c in chunks)
    assert all(len(c.choices) == 1 for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == f"echo: {prompt}"
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["stop"]


def test_anthropic_tool_call_round_trip(client: OpenAI, upstream: FakeUpstream) -> None:
    mark = marker()
    question = f"please call tool for Paris {mark}"
    first = client.chat.completions.create(model="claude", messages=user(question), tools=TOOLS)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    [call] = choice.message.tool_calls
    assert call.id == "toolu_1"
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"x": 1}

    sent = recorded(upstream, mark).body
    assert sent["tools"] == [
        {
            "name": "get_weather",
            "input_schema": TOOLS[0]["function"]["parameters"],
            "description": "Weather for a city.",
        }
    ]

    # send the tool result back, as an agent loop would
    follow_up = [
        *user(question),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": call.function.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": f"sunny {mark}-2"},
        {"role": "user", "content": "thanks"},
    ]
    second = client.chat.completions.create(model="claude", messages=follow_up, tools=TOOLS)
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "echo: thanks"
    assert second.choices[0].message.tool_calls is None

    body = recorded(upstream, f"{mark}-2").body
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": question}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                           "input": {"x": 1}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": f"sunny {mark}-2"},
            {"type": "text", "text": "thanks"},
        ]},
    ]  # fmt: skip


def test_anthropic_tool_call_stream(client: OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(model="claude", messages=user(f"call tool {marker()}"), tools=TOOLS, stream=True)
    )
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas
    assert deltas[0].id == "toolu_1"
    assert deltas[0].function is not None
    assert deltas[0].function.name == "get_weather"
    assert all(d.index == 0 for d in deltas)
    assert json.loads("".join(d.function.arguments or "" for d in deltas if d.function)) == {"x": 1}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


async def test_anthropic_async(gateway: GatewayServer) -> None:
    prompt = f"async claude {marker()}"
    async with async_client(gateway) as aclient:
        resp = await aclient.chat.completions.create(model="claude", messages=user(prompt))
    assert resp.choices[0].message.content == f"echo: {prompt}"


# --- prompt_decorator through the app ----------------------------------------------------------------


def test_prompt_decorator_adds_system_message(client: OpenAI, upstream: FakeUpstream) -> None:
    mark = marker()
    prompt = f"decorate me {mark}"
    resp = client.chat.completions.create(model="decorated", messages=user(prompt))
    assert resp.choices[0].message.content == f"echo: {prompt}"
    # the fake counts every message's words, so the added system text shows in the usage
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == words("Be brief.", prompt)
    body = recorded(upstream, mark).body
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, *user(prompt)]
    assert body["model"] == "echo-model"


def test_prompt_decorator_merges_into_existing_system(client: OpenAI, upstream: FakeUpstream) -> None:
    mark = marker()
    messages: list[Any] = [{"role": "system", "content": "You are a pirate."}, *user(f"ahoy {mark}")]
    client.chat.completions.create(model="decorated", messages=messages)
    sent = recorded(upstream, mark).body["messages"]
    assert sent[0] == {"role": "system", "content": "Be brief.\n\nYou are a pirate."}
    assert [m["role"] for m in sent] == ["system", "user"]
    assert sent[1] == messages[1]


def test_prompt_decorator_on_streams(client: OpenAI, upstream: FakeUpstream) -> None:
    mark = marker()
    text = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(model="decorated", messages=user(f"s {mark}"), stream=True)
        if c.choices
    )
    assert text == f"echo: s {mark}"
    assert recorded(upstream, mark).body["messages"][0] == {"role": "system", "content": "Be brief."}


def test_prompt_decorator_does_not_leak_to_other_models(client: OpenAI, upstream: FakeUpstream) -> None:
    mark = marker()
    client.chat.completions.create(model="echo", messages=user(f"plain {mark}"))
    assert recorded(upstream, mark).body["messages"] == user(f"plain {mark}")


# --- concurrency --------------------------------------------------------------------------------------


async def test_fifty_concurrent_streams(gateway: GatewayServer) -> None:
    run = marker()

    async def one(aclient: AsyncOpenAI, i: int) -> tuple[str, list[str], Any]:
        prompt = f"stream {i} of run {run} " + " ".join(f"w{i}x{j}" for j in range(i % 7 + 1))
        stream = await aclient.chat.completions.create(
            model="echo", messages=user(prompt), stream=True, stream_options={"include_usage": True}
        )
        parts: list[str] = []
        finishes: list[str] = []
        usage = None
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                parts.append(choice.delta.content or "")
                if choice.finish_reason:
                    finishes.append(choice.finish_reason)
        assert "".join(parts) == f"echo: {prompt}", i
        return prompt, finishes, usage

    async with async_client(gateway) as aclient:
        results = await asyncio.gather(*(one(aclient, i) for i in range(50)))

    assert len({prompt for prompt, _, _ in results}) == 50
    for prompt, finishes, usage in results:
        assert finishes == ["stop"]
        assert usage is not None
        assert usage.prompt_tokens == words(prompt)
        assert usage.completion_tokens == words(f"echo: {prompt}")


# --- LangChain ----------------------------------------------------------------------------------------


def langchain(gateway: GatewayServer, model: str) -> ChatOpenAI:
    return ChatOpenAI(base_url=gateway.base_url, api_key=CLIENT_KEY, model=model, max_retries=0, timeout=10)


@pytest.mark.parametrize("model", ["echo", "claude"])
def test_langchain_invoke(gateway: GatewayServer, upstream: FakeUpstream, model: str) -> None:
    mark = marker()
    message = langchain(gateway, model).invoke(f"hello langchain {mark}")
    assert message.content == f"echo: hello langchain {mark}"
    assert message.usage_metadata is not None
    assert message.usage_metadata["input_tokens"] == 3
    assert message.usage_metadata["output_tokens"] == 4
    req = recorded(upstream, mark)
    assert not any(CLIENT_KEY in value for value in req.headers.values())


@pytest.mark.parametrize("model", ["echo", "claude"])
def test_langchain_stream(gateway: GatewayServer, model: str) -> None:
    prompt = f"stream langchain {marker()}"
    chunks = list(langchain(gateway, model).stream(prompt))
    assert len(chunks) > 1
    assert "".join(str(c.content) for c in chunks) == f"echo: {prompt}"


@pytest.mark.parametrize("model", ["echo", "claude"])
async def test_langchain_async(gateway: GatewayServer, model: str) -> None:
    prompt = f"async langchain {marker()}"
    chat = langchain(gateway, model)
    message = await chat.ainvoke(prompt)
    assert message.content == f"echo: {prompt}"
    text = "".join([str(c.content) async for c in chat.astream(prompt)])
    assert text == f"echo: {prompt}"


def test_langchain_with_system_message_on_claude(gateway: GatewayServer, upstream: FakeUpstream) -> None:
    mark = marker()
    message = langchain(gateway, "claude").invoke([("system", "Be kind."), ("human", f"hey {mark}")])
    assert message.content == f"echo: hey {mark}"
    assert recorded(upstream, mark).body["system"] == "Be kind."


# --- operational endpoints ----------------------------------------------------------------------------


def test_health(gateway: GatewayServer) -> None:
    resp = httpx.get(f"{gateway.url}/health", timeout=5)
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok"}


def test_ready(gateway: GatewayServer) -> None:
    resp = httpx.get(f"{gateway.url}/ready", timeout=10)
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "ready"
    backends = body["backends"]
    assert set(backends) == {"fake", "claude", "fake-short", "claude-short", "nowhere"}
    assert backends["fake"]["reachable"] is True
    assert backends["claude"]["reachable"] is True
    assert backends["nowhere"]["reachable"] is False


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def test_openapi_document(gateway: GatewayServer) -> None:
    resp = httpx.get(f"{gateway.url}/openapi.json", timeout=5)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/json")
    doc = resp.json()
    assert doc["openapi"] == "3.1.0"
    assert isinstance(doc["info"]["title"], str) and doc["info"]["title"]
    assert isinstance(doc["info"]["version"], str) and doc["info"]["version"]
    assert set(doc) <= {"openapi", "info", "jsonSchemaDialect", "servers", "paths", "webhooks", "components",
                        "security", "tags", "externalDocs"}  # fmt: skip

    methods = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
    for path, item in doc["paths"].items():
        assert path.startswith("/")
        for method, op in item.items():
            assert method in methods | {"parameters", "summary", "description", "servers"}
            if method in methods:
                assert op["responses"], f"{method} {path} has no responses"
                for code in op["responses"]:
                    assert code == "default" or (code.isdigit() and len(code) == 3)
    for ref in _refs(doc):
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.removeprefix("#/components/schemas/") in doc["components"]["schemas"], ref

    chat = doc["paths"]["/v1/chat/completions"]["post"]
    ref = chat["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = doc["components"]["schemas"][ref.removeprefix("#/components/schemas/")]
    assert schema["type"] == "object"
    assert {"model", "messages"} <= set(schema["required"])
    assert {"model", "messages", "stream", "tools", "stream_options"} <= set(schema["properties"])
    assert "text/event-stream" in chat["responses"]["200"]["content"]
    assert {"/v1/completions", "/v1/embeddings", "/v1/models", "/v1/models/{model}"} <= set(doc["paths"])
