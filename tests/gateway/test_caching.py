"""The cache rules every cache plugin shares (gateway/caching.py): pure functions, no server."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import pytest
from pydantic import ValidationError

from gateway import caching, replay
from gateway.caching import (
    CacheConfig,
    CacheKeyExtra,
    assemble,
    bypass_reason,
    cache_control,
    fingerprint,
    storable,
)
from gateway.plugin import Caller, Endpoint, RequestContext
from gateway.policy import ModelRoute, Target

TOKEN_A = "sk-raw-bearer-token-AAAAAAAAAAAAAAAA"
TOKEN_B = "sk-raw-bearer-token-BBBBBBBBBBBBBBBB"
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
    }
]


def cfg(**options: Any) -> CacheConfig:
    return CacheConfig.model_validate(options)


def route(name: str = "echo") -> ModelRoute:
    return ModelRoute(name=name, targets=[Target(backend="fake", model="echo-model")])


def ctx(
    body: dict[str, Any] | None = None,
    *,
    endpoint: Endpoint = "chat",
    model: str = "echo",
    caller: str = "team-a",
    token: str = TOKEN_A,
    headers: dict[str, str] | None = None,
) -> RequestContext:
    if body is None:
        body = {"model": model, "messages": [{"role": "user", "content": "hello"}]}
    all_headers = {"authorization": f"Bearer {token}", **(headers or {})}
    return RequestContext(
        "req-1", endpoint, body, all_headers, Caller(caller, True), route(model), bool(body.get("stream"))
    )


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": "echo", "messages": [{"role": "user", "content": "hello"}], **extra}


# --- fingerprint ----------------------------------------------------------------------------------


def test_fingerprint_is_a_stable_sha256_hex() -> None:
    first = fingerprint(ctx(chat_body()), cfg())
    assert first == fingerprint(ctx(chat_body()), cfg())
    assert len(first) == 64
    int(first, 16)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"messages": [{"role": "user", "content": "hello!"}]}, id="message-text"),
        pytest.param(
            {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hello"}]},
            id="extra-message",
        ),
        pytest.param({"messages": [{"role": "assistant", "content": "hello"}]}, id="message-role"),
        pytest.param({"tools": TOOLS}, id="tools"),
        pytest.param({"tool_choice": "none"}, id="tool_choice"),
        pytest.param({"temperature": 0.0}, id="temperature-0-vs-absent"),
        pytest.param({"temperature": 0.5}, id="temperature"),
        pytest.param({"response_format": {"type": "json_object"}}, id="response_format"),
        pytest.param({"seed": 7}, id="seed"),
        pytest.param({"max_tokens": 5}, id="max_tokens"),
        pytest.param({"n": 2}, id="n"),
        pytest.param({"top_p": 0.5}, id="top_p"),
    ],
)
def test_fingerprint_changes_with_what_changes_the_answer(change: dict[str, Any]) -> None:
    assert fingerprint(ctx(chat_body()), cfg()) != fingerprint(ctx(chat_body(**change)), cfg())


def test_fingerprint_changes_with_seed_value() -> None:
    assert fingerprint(ctx(chat_body(seed=1)), cfg()) != fingerprint(ctx(chat_body(seed=2)), cfg())


def test_fingerprint_changes_with_temperature_value() -> None:
    assert fingerprint(ctx(chat_body(temperature=0.2)), cfg()) != fingerprint(ctx(chat_body(temperature=0.3)), cfg())


def test_fingerprint_changes_with_the_model_route() -> None:
    one = ctx(chat_body(), model="echo")
    other = ctx({**chat_body(), "model": "echo"}, model="echo-2")  # same body, another route
    assert fingerprint(one, cfg()) != fingerprint(other, cfg())
    assert fingerprint(one, cfg()) != fingerprint(ctx(chat_body(model="echo-2"), model="echo-2"), cfg())


def test_fingerprint_changes_with_the_endpoint() -> None:
    body = {"model": "echo", "prompt": "hello"}
    assert fingerprint(ctx(body, endpoint="completions"), cfg()) != fingerprint(ctx(body, endpoint="chat"), cfg())


def test_fingerprint_depends_on_the_caller_unless_shared() -> None:
    a, b = ctx(chat_body(), caller="team-a"), ctx(chat_body(), caller="team-b")
    assert fingerprint(a, cfg()) != fingerprint(b, cfg())
    assert fingerprint(a, cfg(shared=True)) == fingerprint(b, cfg(shared=True))
    assert fingerprint(a, cfg(shared=True)) != fingerprint(a, cfg())


def test_fingerprint_changes_with_cache_key_extra_parts() -> None:
    plain = ctx(chat_body())
    v1, v1_again, v2 = ctx(chat_body()), ctx(chat_body()), ctx(chat_body())
    v1.put(CacheKeyExtra({"rag_index": "v1"}))
    v1_again.put(CacheKeyExtra({"rag_index": "v1"}))
    v2.put(CacheKeyExtra({"rag_index": "v2"}))
    assert fingerprint(v1, cfg()) == fingerprint(v1_again, cfg())
    assert fingerprint(v1, cfg()) != fingerprint(v2, cfg())
    assert fingerprint(v1, cfg()) != fingerprint(plain, cfg())
    two_parts = ctx(chat_body())
    two_parts.put(CacheKeyExtra({"rag_index": "v1", "tenant": "x"}))
    assert fingerprint(two_parts, cfg()) != fingerprint(v1, cfg())
    # an empty extra is the same as none
    empty = ctx(chat_body())
    empty.put(CacheKeyExtra())
    assert fingerprint(empty, cfg()) == fingerprint(plain, cfg())


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"stream": True}, id="stream"),
        pytest.param({"stream": True, "stream_options": {"include_usage": True}}, id="stream_options"),
        pytest.param({"user": "end-user-42"}, id="user"),
        pytest.param({"metadata": {"trace": "abc"}}, id="metadata"),
        pytest.param({"store": True}, id="store"),
        pytest.param({"service_tier": "flex"}, id="service_tier"),
    ],
)
def test_fingerprint_ignores_delivery_and_caller_metadata(change: dict[str, Any]) -> None:
    assert fingerprint(ctx(chat_body()), cfg()) == fingerprint(ctx(chat_body(**change)), cfg())


def test_fingerprint_ignores_key_order_at_every_level() -> None:
    one = {
        "model": "echo",
        "messages": [{"role": "user", "content": "hello"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"a": 1, "b": 2}}},
        "temperature": 0,
    }
    other = {
        "temperature": 0,
        "response_format": {"json_schema": {"schema": {"b": 2, "a": 1}, "name": "x"}, "type": "json_schema"},
        "messages": [{"content": "hello", "role": "user"}],
        "model": "echo",
    }
    assert fingerprint(ctx(one), cfg()) == fingerprint(ctx(other), cfg())


def test_fingerprint_body_override() -> None:
    # the semantic cache keys on a body of its own (without the last user turn); the rest still counts
    request = ctx(chat_body(seed=3))
    other = chat_body(seed=4)
    assert fingerprint(request, cfg(), body=other) == fingerprint(ctx(chat_body(seed=4)), cfg())
    assert fingerprint(request, cfg(), body=other) != fingerprint(request, cfg())
    # fields that never change the answer are left out of an override too
    assert fingerprint(request, cfg(), body={**other, "stream": True, "user": "u"}) == fingerprint(
        request, cfg(), body=other
    )
    # the override still carries the route and the caller's scope
    assert fingerprint(ctx(chat_body(), caller="team-b"), cfg(), body=other) != fingerprint(request, cfg(), body=other)


def test_fingerprint_does_not_depend_on_the_bearer_token() -> None:
    # same key name, different raw tokens (e.g. a rotated key): same entry
    a = ctx(chat_body(), caller="team-a", token=TOKEN_A)
    b = ctx(chat_body(), caller="team-a", token=TOKEN_B)
    assert fingerprint(a, cfg()) == fingerprint(b, cfg())


def test_fingerprint_material_never_contains_the_bearer_token(monkeypatch: pytest.MonkeyPatch) -> None:
    hashed: list[bytes] = []
    real = hashlib.sha256

    def spy(data: bytes = b"", **kwargs: Any) -> Any:
        hashed.append(bytes(data))
        return real(data, **kwargs)

    monkeypatch.setattr(caching.hashlib, "sha256", spy)
    fingerprint(ctx(chat_body(), caller="team-a", token=TOKEN_A), cfg())
    fingerprint(ctx(chat_body(), caller="team-a", token=TOKEN_A), cfg(shared=True))
    monkeypatch.undo()
    assert len(hashed) == 2
    for material in hashed:
        assert TOKEN_A.encode() not in material
        assert b"Bearer" not in material
    assert b"team-a" in hashed[0]  # the caller's name is what scopes the entry
    assert b"team-a" not in hashed[1]  # shared: no caller at all


def test_fingerprint_does_not_mutate_the_body() -> None:
    body = chat_body(stream=True, user="u", metadata={"a": "b"})
    before = copy.deepcopy(body)
    fingerprint(ctx(body), cfg())
    assert body == before


# --- cache_control ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("no-cache", (True, False)),
        ("no-store", (False, True)),
        ("no-cache, no-store", (True, True)),
        ("no-store,no-cache", (True, True)),
        ("  no-cache  ,   no-store  ", (True, True)),
        ("max-age=0", (False, False)),
        ("max-age=0, no-store", (False, True)),
        ("No-Cache", (True, False)),
        ("NO-STORE", (False, True)),
        ("No-Cache, No-Store", (True, True)),
        ("public", (False, False)),
        ("", (False, False)),
        ("no-cachex", (False, False)),
    ],
)
def test_cache_control(value: str, expected: tuple[bool, bool]) -> None:
    assert cache_control({"cache-control": value}) == expected


def test_cache_control_absent() -> None:
    assert cache_control({}) == (False, False)
    assert cache_control({"pragma": "no-cache"}) == (False, False)


# --- bypass_reason ---------------------------------------------------------------------------------


def test_bypass_embeddings() -> None:
    body = {"model": "echo", "input": "hello"}
    assert bypass_reason(ctx(body, endpoint="embeddings"), cfg()) == "endpoint"
    assert bypass_reason(ctx(body, endpoint="embeddings"), cfg(cache_sampled=True)) == "endpoint"


@pytest.mark.parametrize("temperature", [0.7, 1, 2.0, 1e-9])
def test_bypass_sampled_unless_cache_sampled(temperature: float) -> None:
    assert bypass_reason(ctx(chat_body(temperature=temperature)), cfg()) == "sampled"
    assert bypass_reason(ctx(chat_body(temperature=temperature)), cfg(cache_sampled=True)) is None


@pytest.mark.parametrize("body", [chat_body(), chat_body(temperature=0), chat_body(temperature=0.0)])
def test_temperature_zero_or_absent_is_cacheable(body: dict[str, Any]) -> None:
    assert bypass_reason(ctx(body), cfg()) is None


def test_completions_are_cacheable() -> None:
    body = {"model": "echo", "prompt": "hi"}
    assert bypass_reason(ctx(body, endpoint="completions"), cfg()) is None
    assert bypass_reason(ctx({**body, "temperature": 0.9}, endpoint="completions"), cfg()) == "sampled"


# --- storable --------------------------------------------------------------------------------------


def answer(*finishes: str | None, tool_calls: bool = False) -> dict[str, Any]:
    choices = []
    for i, finish in enumerate(finishes):
        message: dict[str, Any] = {"role": "assistant", "content": None if tool_calls else "hi"}
        if tool_calls:
            message["tool_calls"] = [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
        choices.append({"index": i, "message": message, "finish_reason": finish})
    return {"object": "chat.completion", "choices": choices}


@pytest.mark.parametrize(
    ("finishes", "expected"),
    [
        (("stop",), True),
        (("length",), True),
        (("stop", "length"), True),
        (("content_filter",), False),
        ((None,), False),
        (("stop", "content_filter"), False),
        (("stop", None), False),
        (("tool_calls",), False),
        (("function_call",), False),
    ],
)
def test_storable_by_finish_reason(finishes: tuple[str | None, ...], expected: bool) -> None:
    assert storable(answer(*finishes), cfg()) is expected


def test_storable_tool_calls_only_with_cache_tool_calls() -> None:
    calls = answer("tool_calls", tool_calls=True)
    assert storable(calls, cfg()) is False
    assert storable(calls, cfg(cache_tool_calls=True)) is True
    assert storable(answer("function_call"), cfg(cache_tool_calls=True)) is True
    # a message that calls tools is not stored by default even if its finish_reason says "stop"
    assert storable(answer("stop", tool_calls=True), cfg()) is False
    assert storable(answer("stop", tool_calls=True), cfg(cache_tool_calls=True)) is True


def test_storable_custom_finish_reasons() -> None:
    assert storable(answer("length"), cfg(finish_reasons=("stop",))) is False
    assert storable(answer("stop"), cfg(finish_reasons=("stop",))) is True


@pytest.mark.parametrize(
    "bad",
    [
        {},
        {"choices": []},
        {"choices": None},
        {"choices": "stop"},
        {"choices": ["stop"]},
        {"error": {"message": "boom"}},
    ],
)
def test_not_storable_without_proper_choices(bad: dict[str, Any]) -> None:
    assert storable(bad, cfg()) is False


def test_storable_text_completion() -> None:
    text = {"object": "text_completion", "choices": [{"index": 0, "text": "x", "finish_reason": "stop"}]}
    assert storable(text, cfg()) is True


# --- CacheConfig -----------------------------------------------------------------------------------


def test_cache_config_defaults_and_validation() -> None:
    c = cfg()
    assert (c.store, c.shared, c.cache_sampled, c.cache_tool_calls, c.fail_open) == (
        "memory",
        False,
        False,
        False,
        True,
    )
    assert c.finish_reasons == ("stop", "length")
    for bad in ({"ttl_s": 0}, {"store": "disk"}, {"max_entries": 0}, {"max_bytes": 10}, {"unknown": 1}):
        with pytest.raises(ValidationError):
            cfg(**bad)


# --- assemble --------------------------------------------------------------------------------------

BASE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 123, "model": "m", "system_fingerprint": "fp"}
USAGE = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {**BASE, "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]}


def test_assemble_chat_text_with_usage() -> None:
    chunks = [
        chunk(0, {"role": "assistant", "content": ""}),
        chunk(0, {"content": "Hello "}),
        chunk(0, {"content": "there,  "}),
        chunk(0, {"content": "world.\n"}),
        chunk(0, {}, "stop"),
    ]
    out = assemble("chat", chunks, USAGE)
    assert out == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 123,
        "model": "m",
        "system_fingerprint": "fp",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello there,  world.\n"},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
    }
    assert out["usage"] is not USAGE  # a copy


def test_assemble_without_usage_has_no_usage_key() -> None:
    out = assemble("chat", [chunk(0, {"role": "assistant", "content": "x"}), chunk(0, {}, "length")], None)
    assert "usage" not in out
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["choices"][0]["message"]["content"] == "x"


def test_assemble_empty_content_is_empty_string() -> None:
    out = assemble("chat", [chunk(0, {"role": "assistant", "content": ""}), chunk(0, {}, "stop")], None)
    assert out["choices"][0]["message"] == {"role": "assistant", "content": ""}


def test_assemble_tool_call_argument_fragments() -> None:
    chunks = [
        chunk(0, {"role": "assistant", "content": None}),
        chunk(
            0,
            {
                "tool_calls": [
                    {"index": 0, "id": "call_a", "type": "function", "function": {"name": "get_", "arguments": ""}}
                ]
            },
        ),
        chunk(0, {"tool_calls": [{"index": 0, "function": {"name": "weather", "arguments": '{"ci'}}]}),
        chunk(0, {"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Par'}}]}),
        chunk(
            0,
            {"tool_calls": [{"index": 1, "id": "call_b", "type": "function", "function": {"name": "time"}}]},
        ),
        chunk(0, {"tool_calls": [{"index": 0, "function": {"arguments": 'is"}'}}]}),
        chunk(0, {"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}),
        chunk(0, {}, "tool_calls"),
    ]
    out = assemble("chat", chunks, USAGE)
    message = out["choices"][0]["message"]
    assert message == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_b", "type": "function", "function": {"name": "time", "arguments": "{}"}},
        ],
    }
    assert out["choices"][0]["finish_reason"] == "tool_calls"
    assert out["usage"] == USAGE


def test_assemble_two_interleaved_choices() -> None:
    chunks = [
        chunk(0, {"role": "assistant", "content": ""}),
        chunk(1, {"role": "assistant", "content": ""}),
        chunk(1, {"content": "second "}),
        chunk(0, {"content": "first "}),
        chunk(0, {"content": "one"}),
        chunk(1, {"content": "two"}),
        chunk(1, {}, "length"),
        chunk(0, {}, "stop"),
    ]
    out = assemble("chat", chunks, USAGE)
    assert [c["index"] for c in out["choices"]] == [0, 1]
    assert [c["message"]["content"] for c in out["choices"]] == ["first one", "second two"]
    assert [c["finish_reason"] for c in out["choices"]] == ["stop", "length"]


def test_assemble_text_completions() -> None:
    base = {"id": "cmpl-1", "object": "text_completion", "created": 5, "model": "m"}

    def text_chunk(index: int, text: str, finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": finish}]}

    chunks = [
        text_chunk(0, "Once "),
        text_chunk(1, "Twice "),
        text_chunk(0, "upon"),
        text_chunk(1, "more"),
        text_chunk(0, "", "stop"),
        text_chunk(1, "", "length"),
    ]
    out = assemble("completions", chunks, USAGE)
    assert out == {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 5,
        "model": "m",
        "choices": [
            {"index": 0, "text": "Once upon", "logprobs": None, "finish_reason": "stop"},
            {"index": 1, "text": "Twice more", "logprobs": None, "finish_reason": "length"},
        ],
        "usage": USAGE,
    }


def test_assemble_skips_choice_less_chunks() -> None:
    chunks = [
        chunk(0, {"role": "assistant", "content": "a"}),
        {**BASE, "choices": [], "usage": None},
        chunk(0, {}, "stop"),
    ]
    out = assemble("chat", chunks, None)
    assert out["choices"][0]["message"]["content"] == "a"


def test_assemble_inverts_replay_for_chat() -> None:
    whole = {
        "id": "chatcmpl-9",
        "object": "chat.completion",
        "created": 99,
        "model": "m",
        "system_fingerprint": "fp",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "a  b\n c d e f g h i j"},
                "logprobs": None,
                "finish_reason": "stop",
            },
            {
                "index": 1,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
                    ],
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            },
        ],
        "usage": USAGE,
    }
    chunks = list(replay.chat_chunks(whole, include_usage=True))
    assert assemble("chat", chunks, USAGE) == whole


def test_assemble_inverts_replay_for_text() -> None:
    whole = {
        "id": "cmpl-9",
        "object": "text_completion",
        "created": 99,
        "model": "m",
        "choices": [{"index": 0, "text": "one two three four five six", "logprobs": None, "finish_reason": "length"}],
        "usage": USAGE,
    }
    assert assemble("completions", list(replay.text_chunks(whole, include_usage=False)), USAGE) == whole
