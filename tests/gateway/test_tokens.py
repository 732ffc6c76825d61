"""Token counting with the bundled cl100k_base encoding."""

from __future__ import annotations

from typing import Any

import pytest

from gateway import tokens


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        ("hello world", 2),
        ("Hello, world!", 4),
        ("tiktoken is great!", 6),
        (" ", 1),
        ("hello world\nhello world", 5),
    ],
)
def test_count_known_strings(text: str, expected: int) -> None:
    assert tokens.count(text) == expected


def test_special_token_text_is_counted_as_ordinary_text() -> None:
    assert tokens.count("<|endoftext|>") == 7  # not refused, not one special token


def test_encoding_is_the_offline_cl100k_and_cached() -> None:
    assert tokens.encoding() is tokens.encoding()
    assert tokens.encoding().encode("hello world") == [15339, 1917]


async def test_count_async_matches_count_on_both_sides_of_the_thread_threshold() -> None:
    short = "hello world " * 10
    long = "hello world " * (tokens.OFF_LOOP_CHARS // 12 + 10)
    assert len(long) >= tokens.OFF_LOOP_CHARS
    assert await tokens.count_async(short) == tokens.count(short) == 21  # the trailing space is a token
    assert await tokens.count_async(long) == tokens.count(long)


def _chat(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": list(messages), **extra}


async def test_chat_overhead_is_three_per_message_plus_three() -> None:
    one = _chat({"role": "user", "content": "hello world"})
    assert tokens.prompt_text("chat", one) == ("hello world", 6)
    assert await tokens.count_prompt("chat", one) == 3 * 1 + 3 + 2

    two = _chat({"role": "system", "content": "hello world"}, {"role": "user", "content": "hello world"})
    # Texts are joined by newlines: "hello world\nhello world" is 5 tokens.
    assert await tokens.count_prompt("chat", two) == 3 * 2 + 3 + 5

    assert await tokens.count_prompt("chat", _chat()) == 3


def test_chat_prompt_text_includes_parts_names_tool_calls_and_tools() -> None:
    body = _chat(
        {"role": "user", "name": "bob", "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        tools=[{"type": "function", "function": {"name": "f"}}],
    )
    text, overhead = tokens.prompt_text("chat", body)
    assert text == (
        "hi\nbob\n"
        '[{"id":"1","type":"function","function":{"name":"f","arguments":"{}"}}]\n'
        '[{"type":"function","function":{"name":"f"}}]'
    )
    assert overhead == 9


@pytest.mark.parametrize(
    ("endpoint", "body", "expected"),
    [
        ("completions", {"prompt": [15339, 1917, 0]}, ("", 3)),
        ("completions", {"prompt": [[1, 2], [3], [4, 5, 6]]}, ("", 6)),
        ("embeddings", {"input": [1, 2, 3, 4]}, ("", 4)),
        ("embeddings", {"input": [[1, 2], [3]]}, ("", 3)),
        ("embeddings", {"input": ["hello", "world"]}, ("hello\nworld", 0)),
        ("completions", {"prompt": "hello world"}, ("hello world", 0)),
        ("completions", {"prompt": []}, ("", 0)),
    ],
)
def test_prompt_text_for_completions_and_embeddings(
    endpoint: str, body: dict[str, Any], expected: tuple[str, int]
) -> None:
    assert tokens.prompt_text(endpoint, body) == expected


async def test_token_list_inputs_count_one_per_token() -> None:
    assert await tokens.count_prompt("completions", {"prompt": [15339, 1917, 0]}) == 3
    assert await tokens.count_prompt("embeddings", {"input": [[1, 2], [3]]}) == 3
    assert await tokens.count_prompt("completions", {"prompt": "hello world"}) == 2


def test_completion_text_of_chat_text_and_stream_answers() -> None:
    chat = {
        "choices": [
            {"message": {"content": "hello"}},
            {
                "message": {
                    "content": None,
                    "tool_calls": [{"function": {"name": "f", "arguments": '{"a":1}'}}, "junk"],
                }
            },
            "not a choice",
        ]
    }
    assert tokens.completion_text(chat) == 'hellof{"a":1}'
    assert tokens.completion_text({"choices": [{"text": "abc"}, {"text": "def"}]}) == "abcdef"
    assert tokens.completion_text({"choices": [{"delta": {"content": "x"}}]}) == "x"
    assert tokens.completion_text({}) == ""


def test_usage() -> None:
    assert tokens.usage(3, 4) == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
