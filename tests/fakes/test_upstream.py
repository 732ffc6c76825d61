"""Tests of the fake upstream itself, driven by real clients over real sockets."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from openai import OpenAI

from .upstream import FakeUpstream

REPO_ROOT = Path(__file__).resolve().parents[2]
ANTHROPIC_HEADERS = {"x-api-key": "test-key", "anthropic-version": "2023-06-01"}


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def client(upstream: FakeUpstream) -> Iterator[OpenAI]:
    # No retries: fault tests must see the first answer, not a retried one.
    with OpenAI(base_url=upstream.url + "/v1", api_key="test-key", max_retries=0) as sdk:
        yield sdk


def user(text: str) -> list[Any]:
    # list[Any], not list[dict]: the SDK's parameters are TypedDicts that a dict does not satisfy.
    return [{"role": "user", "content": text}]


def sse_data(raw: bytes) -> list[Any]:
    """The data payloads of an SSE body, JSON-decoded except for the [DONE] sentinel."""
    payloads: list[Any] = []
    for line in raw.decode().splitlines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            payloads.append(data if data == "[DONE]" else json.loads(data))
    return payloads


def sse_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in raw.decode().split("\n\n"):
        if block.strip():
            name_line, data_line = block.split("\n")
            events.append((name_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: "))))
    return events


async def post(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers=headers) as response,
    ):
        return response.status, response.headers, await response.read()


# --- OpenAI chat completions through the real SDK ---------------------------------


def test_chat_echo(upstream: FakeUpstream, client: OpenAI) -> None:
    messages: list[Any] = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hello"}, {"type": "text", "text": "world"}]},
    ]
    completion = client.chat.completions.create(model="echo-model", messages=messages)

    assert completion.id.startswith("chatcmpl-fake-")
    assert completion.object == "chat.completion"
    assert completion.model == "echo-model"
    assert completion.system_fingerprint == "fake"
    [choice] = completion.choices
    assert choice.message.content == "echo: hello world"
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (4, 3)
    assert completion.usage.total_tokens == 7

    recorded = upstream.requests[-1]
    assert recorded.path == "/v1/chat/completions"
    assert recorded.headers["authorization"] == "Bearer test-key"
    assert recorded.body["messages"] == messages


def test_chat_stream_with_usage(client: OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="gemma",
            messages=user("one two three"),
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    words = [chunk.choices[0].delta.content for chunk in chunks[1:-2]]
    assert words == ["echo: ", "one ", "two ", "three"]
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (3, 4)
    assert all(chunk.usage is None for chunk in chunks[:-1])
    assert all(chunk.model == "gemma" for chunk in chunks)


async def test_chat_stream_wire_format(upstream: FakeUpstream) -> None:
    body = {"model": "echo-model", "messages": user("hi there"), "stream": True}
    status, headers, raw = await post(upstream.url + "/v1/chat/completions", body)

    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    payloads = sse_data(raw)
    assert payloads[-1] == "[DONE]"
    # Without include_usage there is neither a usage chunk nor a usage key.
    assert all("usage" not in payload for payload in payloads[:-1])
    assert payloads[-2]["choices"][0]["finish_reason"] == "stop"


def test_chat_n(client: OpenAI) -> None:
    completion = client.chat.completions.create(model="echo-model", messages=user("a b"), n=2)
    assert [choice.index for choice in completion.choices] == [0, 1]
    assert {choice.message.content for choice in completion.choices} == {"echo: a b"}
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 6

    stream = client.chat.completions.create(model="echo-model", messages=user("a b"), n=2, stream=True)
    indexes = [chunk.choices[0].index for chunk in stream]
    assert indexes == [0, 1] * 5  # role, three words, finish; interleaved


def test_chat_tools(client: OpenAI) -> None:
    tools: list[Any] = [
        {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}},
    ]
    completion = client.chat.completions.create(model="echo-model", messages=user("please call tool now"), tools=tools)
    [choice] = completion.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    [call] = choice.message.tool_calls
    assert call.id == "call_1"
    assert call.type == "function"
    assert (call.function.name, call.function.arguments) == ("lookup", '{"x": 1}')

    chunks = list(
        client.chat.completions.create(model="echo-model", messages=user("call tool"), tools=tools, stream=True)
    )
    assert len(chunks) == 3
    assert chunks[0].choices[0].delta.role == "assistant"
    tool_calls = chunks[1].choices[0].delta.tool_calls
    assert tool_calls is not None
    assert tool_calls[0].index == 0
    assert tool_calls[0].id == "call_1"
    assert tool_calls[0].function is not None
    assert tool_calls[0].function.arguments == '{"x": 1}'
    assert chunks[2].choices[0].finish_reason == "tool_calls"

    declined = client.chat.completions.create(
        model="echo-model", messages=user("call tool"), tools=tools, tool_choice="none"
    )
    assert declined.choices[0].message.content == "echo: call tool"


def test_chat_max_tokens_and_json_mode(client: OpenAI) -> None:
    cut = client.chat.completions.create(model="echo-model", messages=user("a b c d"), max_tokens=3)
    assert cut.choices[0].message.content == "echo: a b"
    assert cut.choices[0].finish_reason == "length"

    cut = client.chat.completions.create(model="echo-model", messages=user("a b c d"), max_completion_tokens=1)
    assert cut.choices[0].message.content == "echo:"

    as_json = client.chat.completions.create(
        model="echo-model", messages=user("hi"), response_format={"type": "json_object"}
    )
    assert json.loads(as_json.choices[0].message.content or "") == {"echo": "hi"}


# --- other OpenAI endpoints --------------------------------------------------------


def test_embeddings(client: OpenAI) -> None:
    floats = client.embeddings.create(model="embed", input=["alpha", "beta gamma"], encoding_format="float")
    # The SDK asks for base64 unless told otherwise and decodes it itself.
    decoded = client.embeddings.create(model="embed", input=["alpha", "beta gamma"])

    assert [len(item.embedding) for item in floats.data] == [8, 8]
    assert [item.embedding for item in decoded.data] == [item.embedding for item in floats.data]
    assert floats.data[0].embedding != floats.data[1].embedding
    assert floats.usage.prompt_tokens == 3

    single = client.embeddings.create(model="embed", input="alpha", encoding_format="float")
    assert single.data[0].embedding == floats.data[0].embedding
    tokens = client.embeddings.create(model="embed", input=[[1, 2, 3]], encoding_format="float")
    assert tokens.usage.prompt_tokens == 3


def test_completions(client: OpenAI) -> None:
    completion = client.completions.create(model="echo-model", prompt=["one", "two three"])
    assert [choice.text for choice in completion.choices] == ["echo: one", "echo: two three"]
    assert [choice.index for choice in completion.choices] == [0, 1]
    assert completion.id.startswith("cmpl-fake-")
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (3, 5)

    chunks = list(
        client.completions.create(model="echo-model", prompt="x y", stream=True, stream_options={"include_usage": True})
    )
    assert "".join(chunk.choices[0].text for chunk in chunks[:-1]) == "echo: x y"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None


def test_models(client: OpenAI) -> None:
    assert [model.id for model in client.models.list()] == ["echo-model", "gemma"]


def test_metrics(upstream: FakeUpstream) -> None:
    upstream.metrics["vllm:num_requests_waiting"] = 7
    try:
        with urllib.request.urlopen(upstream.url + "/metrics") as response:
            text = response.read().decode()
    finally:
        upstream.metrics["vllm:num_requests_waiting"] = 0.0
    assert "# TYPE vllm:kv_cache_usage_perc gauge" in text
    assert 'vllm:num_requests_waiting{model_name="echo-model"} 7.0' in text
    assert 'vllm:num_requests_running{model_name="echo-model"} 0.0' in text


# --- Anthropic Messages API --------------------------------------------------------


async def test_anthropic_requires_headers(upstream: FakeUpstream) -> None:
    body = {"model": "echo-model", "max_tokens": 10, "messages": user("hi")}
    status, _, raw = await post(upstream.url + "/v1/messages", body, {"x-api-key": "k"})
    assert status == 401
    error = json.loads(raw)
    assert error["type"] == "error"
    assert error["error"]["type"] == "authentication_error"


async def test_anthropic_echo(upstream: FakeUpstream) -> None:
    body = {
        "model": "claude-fake",
        "max_tokens": 100,
        "system": "be brief",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}],
    }
    status, _, raw = await post(upstream.url + "/v1/messages", body, ANTHROPIC_HEADERS)
    message = json.loads(raw)

    assert status == 200
    assert message.pop("id").startswith("msg_fake_")
    assert message == {
        "type": "message",
        "role": "assistant",
        "model": "claude-fake",
        "content": [{"type": "text", "text": "echo: hello there"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 4, "output_tokens": 3},
    }
    assert upstream.requests[-1].headers["anthropic-version"] == "2023-06-01"


async def test_anthropic_tool_use_and_max_tokens(upstream: FakeUpstream) -> None:
    tools = [{"name": "lookup", "input_schema": {"type": "object"}}]
    body = {"model": "m", "max_tokens": 100, "tools": tools, "messages": user("call tool")}
    _, _, raw = await post(upstream.url + "/v1/messages", body, ANTHROPIC_HEADERS)
    message = json.loads(raw)
    assert message["content"] == [{"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"x": 1}}]
    assert message["stop_reason"] == "tool_use"

    body = {"model": "m", "max_tokens": 2, "messages": user("a b c")}
    _, _, raw = await post(upstream.url + "/v1/messages", body, ANTHROPIC_HEADERS)
    message = json.loads(raw)
    assert message["content"][0]["text"] == "echo: a"
    assert message["stop_reason"] == "max_tokens"

    tool_result = [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "42"}]
    body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": tool_result}]}
    _, _, raw = await post(upstream.url + "/v1/messages", body, ANTHROPIC_HEADERS)
    assert json.loads(raw)["content"][0]["text"] == "echo: "


async def test_anthropic_stream(upstream: FakeUpstream) -> None:
    body = {"model": "m", "max_tokens": 100, "stream": True, "messages": user("one two")}
    status, headers, raw = await post(upstream.url + "/v1/messages", body, ANTHROPIC_HEADERS)

    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(raw)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 3,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(name == data["type"] for name, data in events)
    assert events[0][1]["message"]["usage"]["input_tokens"] == 2
    assert events[1][1]["content_block"] == {"type": "text", "text": ""}
    assert "".join(data["delta"]["text"] for _, data in events[3:6]) == "echo: one two"
    assert events[7][1]["delta"]["stop_reason"] == "end_turn"
    assert events[7][1]["usage"] == {"output_tokens": 3}


async def test_anthropic_faults(upstream: FakeUpstream) -> None:
    body = {"model": "fail-429", "max_tokens": 10, "messages": user("hi")}
    status, headers, raw = await post(upstream.url + "/v1/messages", body, ANTHROPIC_HEADERS)
    assert status == 429
    assert headers["Retry-After"] == "1"
    assert json.loads(raw)["error"]["type"] == "rate_limit_error"

    body["model"] = "fail-500"
    status, _, raw = await post(upstream.url + "/v1/messages", body, ANTHROPIC_HEADERS)
    assert status == 500
    assert json.loads(raw) == {
        "type": "error",
        "error": {"type": "api_error", "message": "upstream exploded (fake 500)"},
    }

    body = {"model": "no-done", "max_tokens": 10, "stream": True, "messages": user("hi")}
    _, _, raw = await post(upstream.url + "/v1/messages", body, ANTHROPIC_HEADERS)
    assert [name for name, _ in sse_events(raw)][-1] == "message_delta"


# --- fault models ------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors(upstream: FakeUpstream, status: int) -> None:
    body = {"model": f"fail-{status}", "messages": user("hi")}
    got, _, raw = await post(upstream.url + "/v1/chat/completions", body)
    assert got == status
    assert json.loads(raw) == {
        "error": {
            "message": f"upstream exploded (fake {status})",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }


async def test_client_errors(upstream: FakeUpstream) -> None:
    url = upstream.url + "/v1/chat/completions"
    status, headers, raw = await post(url, {"model": "fail-429", "messages": user("hi")})
    assert status == 429
    assert headers["Retry-After"] == "1"
    assert json.loads(raw)["error"]["code"] == "rate_limit_exceeded"

    status, _, raw = await post(url, {"model": "fail-400", "messages": user("hi")})
    assert status == 400
    assert json.loads(raw)["error"]["type"] == "invalid_request_error"
    assert json.loads(raw)["error"]["param"] == "messages"

    status, _, _ = await post(url, {"model": "fail-401", "messages": user("hi")})
    assert status == 401


def test_errors_reach_the_sdk(client: OpenAI) -> None:
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="fail-429", messages=user("hi"))
    with pytest.raises(openai.InternalServerError):
        client.embeddings.create(model="fail-503", input="hi")


async def test_slow(upstream: FakeUpstream) -> None:
    started = time.monotonic()
    status, _, raw = await post(upstream.url + "/v1/chat/completions", {"model": "slow-300", "messages": user("hi")})
    assert time.monotonic() - started >= 0.3
    assert status == 200
    assert json.loads(raw)["choices"][0]["message"]["content"] == "echo: hi"


async def test_not_json(upstream: FakeUpstream) -> None:
    url = upstream.url + "/v1/chat/completions"
    status, headers, raw = await post(url, {"model": "non-json", "messages": user("hi")})
    assert (status, headers["Content-Type"], raw) == (200, "text/html; charset=utf-8", b"<html>oops</html>")

    status, headers, raw = await post(url, {"model": "bad-json", "messages": user("hi")})
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert raw == b'{"id": "x", "choices": ['


async def test_cut_stream(upstream: FakeUpstream) -> None:
    body = {"model": "cut-stream", "messages": user("a b c d e f"), "stream": True}
    lines: list[bytes] = []
    async with (
        aiohttp.ClientSession() as session,
        session.post(upstream.url + "/v1/chat/completions", json=body) as response,
    ):
        with pytest.raises(aiohttp.ClientPayloadError):
            async for line in response.content:
                lines.append(line)
    payloads = sse_data(b"".join(lines))
    assert [p["choices"][0]["delta"].get("content") for p in payloads] == ["", "echo: ", "a ", "b "]

    body["stream"] = False
    with pytest.raises(aiohttp.ClientPayloadError):
        await post(upstream.url + "/v1/chat/completions", body)


async def test_reset(upstream: FakeUpstream) -> None:
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post(upstream.url + "/v1/embeddings", {"model": "reset", "input": "hi"})


async def test_no_usage(upstream: FakeUpstream) -> None:
    url = upstream.url + "/v1/chat/completions"
    _, _, raw = await post(url, {"model": "no-usage", "messages": user("hi")})
    assert "usage" not in json.loads(raw)

    body = {
        "model": "no-usage",
        "messages": user("hi"),
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    _, _, raw = await post(url, body)
    payloads = sse_data(raw)
    assert payloads[-1] == "[DONE]"
    assert all("usage" not in payload and payload["choices"] for payload in payloads[:-1])


async def test_huge(upstream: FakeUpstream) -> None:
    _, _, raw = await post(upstream.url + "/v1/chat/completions", {"model": "huge", "messages": user("hi")})
    content = json.loads(raw)["choices"][0]["message"]["content"]
    assert len(content) >= 5_000_000


async def test_no_done(upstream: FakeUpstream) -> None:
    body = {"model": "no-done", "messages": user("hi"), "stream": True}
    status, _, raw = await post(upstream.url + "/v1/chat/completions", body)
    payloads = sse_data(raw)
    assert status == 200
    assert "[DONE]" not in payloads
    assert payloads[-1]["choices"][0]["finish_reason"] == "stop"


# --- stream accounting, records, CLI -----------------------------------------------


async def test_stream_counters(upstream: FakeUpstream) -> None:
    # An earlier test's stream may still be finishing on the server's thread after its client has read it all.
    assert await asyncio.to_thread(upstream.wait_for, lambda: upstream.open_streams == 0)
    completed = upstream.completed_streams
    cancelled = upstream.cancelled_streams
    await post(upstream.url + "/v1/chat/completions", {"model": "m", "messages": user("hi"), "stream": True})
    assert await asyncio.to_thread(upstream.wait_for, lambda: upstream.completed_streams == completed + 1)

    body = {"model": "slow-stream-50", "messages": user("hi"), "stream": True}
    async with aiohttp.ClientSession() as session:
        response = await session.post(upstream.url + "/v1/chat/completions", json=body)
        first = await response.content.readline()
        assert first.startswith(b"data: ")
        response.close()  # drops the connection mid-stream
    # The stream would need 2.5 s to finish; seeing it cancelled well before proves
    # the server noticed the disconnect rather than running on.
    assert await asyncio.to_thread(upstream.wait_for, lambda: upstream.cancelled_streams == cancelled + 1, 1.0)
    assert upstream.completed_streams == completed + 1


def test_reset_records() -> None:
    with FakeUpstream() as fake, urllib.request.urlopen(fake.url + "/v1/models"):
        assert [(r.method, r.path, r.body) for r in fake.requests] == [("GET", "/v1/models", None)]
        fake.reset()
        assert (fake.requests, fake.cancelled_streams, fake.completed_streams) == ([], 0, 0)


def test_cli() -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.upstream", "--port", "0"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            url = process.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:")
            with urllib.request.urlopen(url + "/v1/models") as response:
                assert json.load(response)["object"] == "list"
        finally:
            process.terminate()
