"""Unit tests for the OpenAI <-> Anthropic translation layer (pure functions, no network)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from gateway.upstream.anthropic_translate import (
    AnthropicStreamError,
    AnthropicStreamTranslator,
    TranslationError,
    error_from_anthropic,
    from_anthropic_response,
    to_anthropic_request,
)

MODEL = "claude-sonnet-4-5"


def _req(messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return to_anthropic_request({"model": "gpt-4o", "messages": messages, **extra}, MODEL)


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "text", "text": text}]}


def _translation_error(body: dict[str, Any]) -> TranslationError:
    with pytest.raises(TranslationError) as info:
        to_anthropic_request(body, MODEL)
    return info.value


# ----------------------------------------------------------------------------- requests


def test_minimal_request_replaces_model_and_defaults_max_tokens() -> None:
    assert _req([{"role": "user", "content": "Hi"}]) == {
        "model": MODEL,
        "messages": [_user("Hi")],
        "max_tokens": 4096,
    }


def test_default_max_tokens_is_configurable() -> None:
    body = {"model": "x", "messages": [{"role": "user", "content": "Hi"}]}
    assert to_anthropic_request(body, MODEL, default_max_tokens=123)["max_tokens"] == 123


def test_max_tokens_and_max_completion_tokens() -> None:
    hi = [{"role": "user", "content": "Hi"}]
    assert _req(hi, max_tokens=50)["max_tokens"] == 50
    assert _req(hi, max_completion_tokens=70)["max_tokens"] == 70
    # max_completion_tokens is the newer name and wins when both are sent.
    assert _req(hi, max_tokens=50, max_completion_tokens=70)["max_tokens"] == 70


def test_system_and_developer_messages_anywhere_are_joined_into_system() -> None:
    out = _req(
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi"},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": "Bye"},
            {"role": "system", "content": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}]},
        ]
    )
    assert out == {
        "model": MODEL,
        "system": "You are terse.\n\nAnswer in French.\n\nA\n\nB",
        # Removing the developer message leaves two user turns side by side: they merge.
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "Bye"}]}],
        "max_tokens": 4096,
    }


def test_system_message_with_image_part_is_rejected() -> None:
    err = _translation_error(
        {
            "messages": [
                {
                    "role": "system",
                    "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}],
                },
                {"role": "user", "content": "Hi"},
            ]
        }
    )
    assert err.param == "messages[0].content[0].type"


def test_consecutive_same_role_messages_are_merged() -> None:
    out = _req(
        [
            {"role": "user", "content": "a"},
            {"role": "user", "content": "b"},
            {"role": "assistant", "content": "c"},
            {"role": "assistant", "content": [{"type": "text", "text": "d"}]},
            {"role": "user", "content": "e"},
        ]
    )
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "c"}, {"type": "text", "text": "d"}]},
        _user("e"),
    ]


def test_empty_text_is_dropped_because_anthropic_rejects_empty_blocks() -> None:
    out = _req(
        [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "b"},
        ]
    )
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    ]


def test_user_text_and_image_parts() -> None:
    out = _req(
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in these?"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"},
                    },
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                ],
            }
        ]
    )
    assert out["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in these?"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
                },
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            ],
        }
    ]


@pytest.mark.parametrize("url", ["ftp://example.com/a.png", "data:image/png,notbase64", "file:///etc/passwd"])
def test_unsupported_image_url_is_rejected_with_path(url: str) -> None:
    err = _translation_error(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "x"},
                        {"type": "image_url", "image_url": {"url": url}},
                    ],
                }
            ]
        }
    )
    assert err.param == "messages[0].content[1].image_url.url"


def test_unsupported_user_part_type_is_rejected_with_path() -> None:
    part = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    err = _translation_error({"messages": [{"role": "user", "content": [part]}]})
    assert err.param == "messages[0].content[0].type"
    assert "input_audio" in err.message


def test_tool_round_trip_request() -> None:
    out = _req(
        [
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": "Checking both.",
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                    },
                    {
                        "id": "toolu_2",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Rome"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
            {
                "role": "tool",
                "tool_call_id": "toolu_2",
                "content": [{"type": "text", "text": "2"}, {"type": "text", "text": "5C"}],
            },
            {"role": "user", "content": "Thanks, and in Fahrenheit?"},
        ]
    )
    assert out["messages"] == [
        _user("Weather in Paris and Rome?"),
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking both."},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_2", "name": "weather", "input": {"city": "Rome"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "25C"},
                {"type": "text", "text": "Thanks, and in Fahrenheit?"},
            ],
        },
    ]


def test_assistant_with_only_tool_calls_and_empty_arguments() -> None:
    out = _req(
        [
            {"role": "user", "content": "time?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "now", "arguments": ""}}],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "12:00"},
        ]
    )
    assert out["messages"][1:] == [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "call_1", "name": "now", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "12:00"}]},
    ]


@pytest.mark.parametrize("arguments", ['{"city": ', "[1, 2]", '"just a string"'])
def test_bad_tool_call_arguments_are_rejected_with_path(arguments: str) -> None:
    err = _translation_error(
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                        {"id": "b", "type": "function", "function": {"name": "f", "arguments": arguments}},
                    ],
                },
            ]
        }
    )
    assert err.param == "messages[1].tool_calls[1].function.arguments"


def test_tool_call_without_id_is_rejected() -> None:
    call = {"type": "function", "function": {"name": "f", "arguments": "{}"}}
    err = _translation_error(
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [call]}]}
    )
    assert err.param == "messages[1].tool_calls[0].id"


def test_tool_message_without_tool_call_id_is_rejected() -> None:
    err = _translation_error({"messages": [{"role": "user", "content": "x"}, {"role": "tool", "content": "r"}]})
    assert err.param == "messages[1].tool_call_id"


def test_legacy_function_role_is_rejected() -> None:
    err = _translation_error(
        {"messages": [{"role": "user", "content": "x"}, {"role": "function", "name": "f", "content": "r"}]}
    )
    assert err.param == "messages[1].role"


def test_unknown_role_is_rejected() -> None:
    err = _translation_error({"messages": [{"role": "robot", "content": "x"}]})
    assert err.param == "messages[0].role"


@pytest.mark.parametrize("messages", [None, [], "hello", [{"role": "system", "content": "only a system prompt"}]])
def test_missing_or_empty_conversation_is_rejected(messages: Any) -> None:
    assert _translation_error({"messages": messages}).param == "messages"


def test_sampling_parameters_stream_and_user() -> None:
    out = _req(
        [{"role": "user", "content": "Hi"}],
        temperature=0.2,
        top_p=0.9,
        stop="END",
        stream=True,
        user="user-42",
    )
    assert out == {
        "model": MODEL,
        "messages": [_user("Hi")],
        "max_tokens": 4096,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop_sequences": ["END"],
        "stream": True,
        "metadata": {"user_id": "user-42"},
    }


def test_stop_list_and_empty_stop() -> None:
    hi = [{"role": "user", "content": "Hi"}]
    assert _req(hi, stop=["a", "b"])["stop_sequences"] == ["a", "b"]
    assert "stop_sequences" not in _req(hi, stop=[])
    assert "stop_sequences" not in _req(hi, stop=None)


def test_openai_only_fields_are_dropped() -> None:
    out = _req(
        [{"role": "user", "content": "Hi"}],
        stream_options={"include_usage": True},
        seed=7,
        logprobs=False,
        frequency_penalty=0.5,
        presence_penalty=0.5,
        logit_bias={"50256": -100},
        store=False,
        n=1,
        response_format={"type": "text"},
        service_tier="auto",
    )
    assert out == {"model": MODEL, "messages": [_user("Hi")], "max_tokens": 4096}


def test_request_body_is_not_mutated() -> None:
    body = {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "a"},
            {"role": "user", "content": [{"type": "text", "text": "b"}]},
        ],
        "stop": ["x"],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    }
    snapshot = copy.deepcopy(body)
    to_anthropic_request(body, MODEL)
    assert body == snapshot


def test_tools_are_converted() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    out = _req(
        [{"role": "user", "content": "Hi"}],
        tools=[
            {
                "type": "function",
                "function": {"name": "weather", "description": "Get weather", "parameters": schema},
            },
            {"type": "function", "function": {"name": "now", "strict": True}},
        ],
    )
    assert out["tools"] == [
        {"name": "weather", "description": "Get weather", "input_schema": schema},
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in out


def test_non_function_tool_is_rejected_with_path() -> None:
    tools = [
        {"type": "function", "function": {"name": "f"}},
        {"type": "custom", "custom": {"name": "g"}},
    ]
    assert _translation_error({"messages": [_user("x")], "tools": tools}).param == "tools[1].type"


WEATHER_TOOL = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        ({"type": "function", "function": {"name": "weather"}}, {"type": "tool", "name": "weather"}),
    ],
)
def test_tool_choice_variants(tool_choice: Any, expected: dict[str, Any]) -> None:
    out = _req([_user("x")], tools=[WEATHER_TOOL], tool_choice=tool_choice)
    assert out["tool_choice"] == expected


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        (None, {"type": "auto", "disable_parallel_tool_use": True}),
        ("auto", {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", {"type": "any", "disable_parallel_tool_use": True}),
        (
            {"type": "function", "function": {"name": "weather"}},
            {"type": "tool", "name": "weather", "disable_parallel_tool_use": True},
        ),
        # Anthropic's "none" choice takes no parallelism flag.
        ("none", {"type": "none"}),
    ],
)
def test_parallel_tool_calls_false_disables_parallel_use(tool_choice: Any, expected: dict[str, Any]) -> None:
    out = _req([_user("x")], tools=[WEATHER_TOOL], tool_choice=tool_choice, parallel_tool_calls=False)
    assert out["tool_choice"] == expected


def test_parallel_tool_calls_true_changes_nothing() -> None:
    out = _req([_user("x")], tools=[WEATHER_TOOL], parallel_tool_calls=True)
    assert "tool_choice" not in out


def test_tool_choice_without_tools() -> None:
    assert "tool_choice" not in _req([_user("x")], tool_choice="auto", parallel_tool_calls=False)
    assert "tool_choice" not in _req([_user("x")], tool_choice="none")
    assert _translation_error({"messages": [_user("x")], "tool_choice": "required"}).param == "tool_choice"


@pytest.mark.parametrize("tool_choice", ["sometimes", {"type": "function"}, {"type": "allowed_tools"}, 3])
def test_invalid_tool_choice_is_rejected(tool_choice: Any) -> None:
    body = {"messages": [_user("x")], "tools": [WEATHER_TOOL], "tool_choice": tool_choice}
    assert _translation_error(body).param == "tool_choice"


@pytest.mark.parametrize("n", [2, 5])
def test_n_greater_than_one_is_rejected(n: int) -> None:
    assert _translation_error({"messages": [_user("x")], "n": n}).param == "n"


@pytest.mark.parametrize(
    "response_format",
    [{"type": "json_object"}, {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}],
)
def test_json_response_format_is_rejected_clearly(response_format: dict[str, Any]) -> None:
    err = _translation_error({"messages": [_user("x")], "response_format": response_format})
    assert err.param == "response_format"
    assert "not supported" in err.message
    assert response_format["type"] in err.message


def test_logprobs_true_is_rejected() -> None:
    assert _translation_error({"messages": [_user("x")], "logprobs": True, "top_logprobs": 3}).param == "logprobs"


def test_legacy_functions_are_rejected() -> None:
    body = {"messages": [_user("x")], "functions": [{"name": "f", "parameters": {}}]}
    assert _translation_error(body).param == "functions"


def test_translation_error_attributes() -> None:
    err = TranslationError("boom", "n")
    assert (err.message, err.param, str(err)) == ("boom", "n", "boom")
    assert TranslationError("no param").param is None


# ---------------------------------------------------------------------------- responses


def _anthropic_message(content: list[dict[str, Any]], stop_reason: Any, **usage: Any) -> dict[str, Any]:
    return {
        "id": "msg_01ABC",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 5, **usage},
    }


def test_text_response() -> None:
    resp = _anthropic_message([{"type": "text", "text": "Hello"}, {"type": "text", "text": " world"}], "end_turn")
    assert from_anthropic_response(resp, created=1700000000) == {
        "id": "chatcmpl-msg_01ABC",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "claude-sonnet-4-5-20250929",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello world"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


def test_tool_use_only_response_has_null_content() -> None:
    resp = _anthropic_message(
        [{"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}], "tool_use"
    )
    out = from_anthropic_response(resp, created=1)
    assert out["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": json.dumps({"city": "Paris"})},
                    }
                ],
            },
            "finish_reason": "tool_calls",
        }
    ]
    assert json.loads(out["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}


def test_text_thinking_and_tool_use_response() -> None:
    resp = _anthropic_message(
        [
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_1", "name": "now", "input": {}},
            {"type": "tool_use", "id": "toolu_2", "name": "weather", "input": {"city": "Rome"}},
        ],
        "tool_use",
    )
    assert from_anthropic_response(resp, created=1)["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "now", "arguments": "{}"}},
            {
                "id": "toolu_2",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city": "Rome"}'},
            },
        ],
    }


def test_empty_content_without_tools_is_empty_string() -> None:
    out = from_anthropic_response(_anthropic_message([], "end_turn"), created=1)
    assert out["choices"][0]["message"] == {"role": "assistant", "content": ""}


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("pause_turn", "stop"),
        ("refusal", "content_filter"),
        (None, None),
        ("some_future_reason", None),
    ],
)
def test_finish_reason_mapping(stop_reason: Any, finish_reason: str | None) -> None:
    resp = _anthropic_message([{"type": "text", "text": "x"}], stop_reason)
    assert from_anthropic_response(resp, created=1)["choices"][0]["finish_reason"] == finish_reason


def test_usage_includes_cache_tokens_in_prompt() -> None:
    resp = _anthropic_message(
        [{"type": "text", "text": "x"}],
        "end_turn",
        cache_creation_input_tokens=200,
        cache_read_input_tokens=3000,
    )
    assert from_anthropic_response(resp, created=1)["usage"] == {
        "prompt_tokens": 3210,
        "completion_tokens": 5,
        "total_tokens": 3215,
    }


def test_usage_with_null_cache_fields() -> None:
    resp = _anthropic_message(
        [{"type": "text", "text": "x"}],
        "end_turn",
        cache_creation_input_tokens=None,
        cache_read_input_tokens=None,
    )
    assert from_anthropic_response(resp, created=1)["usage"] == {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
    }


# ------------------------------------------------------------------------------ streams


CREATED = 1700000123
STREAM_MODEL = "claude-sonnet-4-5-20250929"


def _chunk(delta: dict[str, Any], finish_reason: str | None = None, *, usage: bool = True) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": "chatcmpl-msg_stream1",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": STREAM_MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    if usage:
        chunk["usage"] = None
    return chunk


def _message_start(**usage: Any) -> tuple[str, dict[str, Any]]:
    message: dict[str, Any] = {
        "id": "msg_stream1",
        "type": "message",
        "role": "assistant",
        "model": STREAM_MODEL,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 25, "output_tokens": 1, **usage},
    }
    return "message_start", {"type": "message_start", "message": message}


def _event(name: str, **data: Any) -> tuple[str, dict[str, Any]]:
    return name, {"type": name, **data}


REALISTIC_STREAM = [
    _message_start(cache_creation_input_tokens=0, cache_read_input_tokens=100),
    _event("ping"),
    _event("content_block_start", index=0, content_block={"type": "thinking", "thinking": ""}),
    _event("content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": "User wants weather."}),
    _event("content_block_delta", index=0, delta={"type": "signature_delta", "signature": "EqQB"}),
    _event("content_block_stop", index=0),
    _event("content_block_start", index=1, content_block={"type": "text", "text": ""}),
    _event("content_block_delta", index=1, delta={"type": "text_delta", "text": "Let me"}),
    _event("content_block_delta", index=1, delta={"type": "text_delta", "text": " check."}),
    _event("content_block_stop", index=1),
    _event(
        "content_block_start",
        index=2,
        content_block={"type": "tool_use", "id": "toolu_A", "name": "weather", "input": {}},
    ),
    _event("content_block_delta", index=2, delta={"type": "input_json_delta", "partial_json": ""}),
    _event("content_block_delta", index=2, delta={"type": "input_json_delta", "partial_json": '{"city": '}),
    _event("content_block_delta", index=2, delta={"type": "input_json_delta", "partial_json": '"Paris"}'}),
    _event("content_block_stop", index=2),
    _event(
        "content_block_start",
        index=3,
        content_block={"type": "tool_use", "id": "toolu_B", "name": "now", "input": {}},
    ),
    _event("content_block_stop", index=3),
    _event(
        "message_delta",
        delta={"stop_reason": "tool_use", "stop_sequence": None},
        usage={"output_tokens": 57},
    ),
    _event("message_stop"),
]


def test_realistic_stream_with_usage_produces_exact_chunks() -> None:
    translator = AnthropicStreamTranslator(include_usage=True, created=CREATED)
    chunks = [chunk for name, data in REALISTIC_STREAM for chunk in translator.feed(name, data)]
    assert chunks == [
        _chunk({"role": "assistant", "content": ""}),
        _chunk({"content": "Let me"}),
        _chunk({"content": " check."}),
        _chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "toolu_A",
                        "type": "function",
                        "function": {"name": "weather", "arguments": ""},
                    }
                ]
            }
        ),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        _chunk(
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "toolu_B",
                        "type": "function",
                        "function": {"name": "now", "arguments": ""},
                    }
                ]
            }
        ),
        # A zero-argument tool streams no JSON; "{}" keeps the accumulated arguments parseable.
        _chunk({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}),
        _chunk({}, "tool_calls"),
        {
            "id": "chatcmpl-msg_stream1",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": STREAM_MODEL,
            "choices": [],
            "usage": {"prompt_tokens": 125, "completion_tokens": 57, "total_tokens": 182},
        },
    ]
    assert translator.finished


def test_stream_without_usage_has_no_usage_keys_and_no_final_chunk() -> None:
    translator = AnthropicStreamTranslator(include_usage=False, created=CREATED)
    events = [
        _message_start(),
        _event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        _event("content_block_delta", index=0, delta={"type": "text_delta", "text": "Hi!"}),
        _event("content_block_stop", index=0),
        _event(
            "message_delta",
            delta={"stop_reason": "end_turn", "stop_sequence": None},
            usage={"output_tokens": 3},
        ),
        _event("message_stop"),
    ]
    chunks = [chunk for name, data in events for chunk in translator.feed(name, data)]
    assert chunks == [
        _chunk({"role": "assistant", "content": ""}, usage=False),
        _chunk({"content": "Hi!"}, usage=False),
        _chunk({}, "stop", usage=False),
    ]
    assert translator.finished


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("max_tokens", "length"),
        ("stop_sequence", "stop"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
    ],
)
def test_stream_finish_reason_mapping(stop_reason: str, finish_reason: str) -> None:
    translator = AnthropicStreamTranslator(include_usage=False, created=CREATED)
    translator.feed(*_message_start())
    chunks = translator.feed(*_event("message_delta", delta={"stop_reason": stop_reason}, usage={"output_tokens": 9}))
    assert chunks == [_chunk({}, finish_reason, usage=False)]


@pytest.mark.parametrize("stop_reason", [None, "some_future_reason"])
def test_stream_never_invents_a_finish_reason(stop_reason: Any) -> None:
    translator = AnthropicStreamTranslator(include_usage=True, created=CREATED)
    translator.feed(*_message_start())
    assert (
        translator.feed(*_event("message_delta", delta={"stop_reason": stop_reason}, usage={"output_tokens": 9})) == []
    )


def test_stream_usage_takes_cumulative_counts_from_message_delta() -> None:
    translator = AnthropicStreamTranslator(include_usage=True, created=CREATED)
    translator.feed(*_message_start(cache_read_input_tokens=None))
    translator.feed(
        *_event(
            "message_delta",
            delta={"stop_reason": "end_turn"},
            usage={"input_tokens": 30, "cache_read_input_tokens": 10, "output_tokens": 12},
        )
    )
    (final,) = translator.feed(*_event("message_stop"))
    assert final["usage"] == {"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52}


def test_stream_error_event_raises() -> None:
    translator = AnthropicStreamTranslator(include_usage=False, created=CREATED)
    translator.feed(*_message_start())
    with pytest.raises(AnthropicStreamError) as info:
        translator.feed("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    assert (info.value.message, info.value.type) == ("Overloaded", "overloaded_error")
    assert not translator.finished


def test_stream_error_event_with_malformed_body_still_raises() -> None:
    translator = AnthropicStreamTranslator(include_usage=False, created=CREATED)
    with pytest.raises(AnthropicStreamError) as info:
        translator.feed("error", {"type": "error"})
    assert (info.value.message, info.value.type) == ("Anthropic stream error", "api_error")


def test_unfinished_stream_is_not_finished() -> None:
    translator = AnthropicStreamTranslator(include_usage=True, created=CREATED)
    for name, data in REALISTIC_STREAM[:-1]:  # everything but message_stop
        translator.feed(name, data)
    assert not translator.finished


def test_ping_unknown_events_and_events_after_stop_produce_nothing() -> None:
    translator = AnthropicStreamTranslator(include_usage=True, created=CREATED)
    assert translator.feed(*_event("ping")) == []
    translator.feed(*_message_start())
    assert translator.feed("some_future_event", {"type": "some_future_event"}) == []
    translator.feed(*_event("message_stop"))
    assert translator.finished
    assert translator.feed(*_event("content_block_delta", index=0, delta={"type": "text_delta", "text": "x"})) == []


def test_event_name_falls_back_to_data_type() -> None:
    translator = AnthropicStreamTranslator(include_usage=False, created=CREATED)
    assert translator.feed("", _message_start()[1]) == [_chunk({"role": "assistant", "content": ""}, usage=False)]


# ------------------------------------------------------------------------------- errors


def test_error_from_standard_body() -> None:
    body = {"type": "error", "error": {"type": "rate_limit_error", "message": "Slow down"}}
    assert error_from_anthropic(429, body) == ("Slow down", "rate_limit_error")


def test_error_from_json_text_and_bytes() -> None:
    text = json.dumps({"type": "error", "error": {"type": "invalid_request_error", "message": "bad max_tokens"}})
    assert error_from_anthropic(400, text) == ("bad max_tokens", "invalid_request_error")
    assert error_from_anthropic(400, text.encode()) == ("bad max_tokens", "invalid_request_error")


@pytest.mark.parametrize(
    ("status", "error_type"),
    [(401, "authentication_error"), (404, "not_found_error"), (418, "invalid_request_error"),
     (502, "api_error"), (529, "overloaded_error")],
)  # fmt: skip
def test_error_type_falls_back_to_status(status: int, error_type: str) -> None:
    assert error_from_anthropic(status, None) == (f"Anthropic API error (HTTP {status})", error_type)


def test_error_from_non_json_text_keeps_a_snippet() -> None:
    assert error_from_anthropic(502, "<html>Bad Gateway</html>\n") == (
        "Anthropic API error (HTTP 502): <html>Bad Gateway</html>",
        "api_error",
    )
    message, _ = error_from_anthropic(502, "x" * 5000)
    assert len(message) < 600


@pytest.mark.parametrize(
    "body",
    [{}, {"error": "nope"}, {"error": {"type": 5, "message": None}}, [1, 2], object(), b"\xff\xfe", 3.5, ""],
)
def test_error_from_odd_bodies_never_raises(body: Any) -> None:
    message, error_type = error_from_anthropic(500, body)
    assert message.startswith("Anthropic API error (HTTP 500)")
    assert error_type == "api_error"


def test_error_keeps_type_when_message_missing() -> None:
    assert error_from_anthropic(529, {"error": {"type": "overloaded_error"}}) == (
        "Anthropic API error (HTTP 529)",
        "overloaded_error",
    )
