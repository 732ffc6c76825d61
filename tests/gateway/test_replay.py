"""Replaying a whole answer as stream chunks: re-assembling the chunks gives back the answer."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.replay import WORDS_PER_CHUNK, chat_chunks, text_chunks

USAGE = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
TOOL_CALLS = [
    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
    {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
]


def chat_completion(*choices: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-test",
        "choices": list(choices),
        "usage": USAGE,
        **extra,
    }


def choice(index: int = 0, content: str | None = "hi", finish: str = "stop", **message: Any) -> dict[str, Any]:
    return {
        "index": index,
        "message": {"role": "assistant", "content": content, **message},
        "logprobs": None,
        "finish_reason": finish,
    }


def assemble_chat(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """What an OpenAI SDK does with a stream: one message per choice index."""
    choices: dict[int, dict[str, Any]] = {}
    usage = None
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        if chunk.get("usage"):
            usage = chunk["usage"]
        for c in chunk["choices"]:
            slot = choices.setdefault(c["index"], {"role": None, "content": "", "tool_calls": {}, "finish": None})
            delta = c["delta"]
            if "role" in delta:
                slot["role"] = delta["role"]
            slot["content"] += delta.get("content") or ""
            for call in delta.get("tool_calls") or []:
                into = slot["tool_calls"].setdefault(
                    call["index"], {"id": None, "type": None, "function": {"name": "", "arguments": ""}}
                )
                into["id"] = call.get("id", into["id"])
                into["type"] = call.get("type", into["type"])
                into["function"]["name"] += call["function"].get("name", "")
                into["function"]["arguments"] += call["function"].get("arguments", "")
            if c["finish_reason"] is not None:
                slot["finish"] = c["finish_reason"]
    return {
        "choices": {
            i: {**s, "tool_calls": [s["tool_calls"][k] for k in sorted(s["tool_calls"])]} for i, s in choices.items()
        },
        "usage": usage,
    }


def test_chat_chunks_exact_shape() -> None:
    completion = chat_completion(choice(content="one two three four five six"), system_fingerprint="fp_1")
    chunks = list(chat_chunks(completion, include_usage=True))
    base = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-test",
        "system_fingerprint": "fp_1",
    }

    def c(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            **base,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            "usage": None,
        }

    assert chunks == [
        c({"role": "assistant", "content": ""}),
        c({"content": "one two three four "}),
        c({"content": "five six"}),
        c({}, "stop"),
        {**base, "choices": [], "usage": USAGE},
    ]


def test_chat_chunks_reassemble_content_finish_reason_and_usage() -> None:
    text = "  The quick\tbrown fox\n\njumps over the lazy dog.  "
    chunks = list(chat_chunks(chat_completion(choice(content=text, finish="length")), include_usage=True))
    assembled = assemble_chat(chunks)
    assert assembled["choices"] == {0: {"role": "assistant", "content": text, "tool_calls": [], "finish": "length"}}
    assert assembled["usage"] == USAGE
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == USAGE


def test_chat_chunks_reassemble_tool_calls() -> None:
    completion = chat_completion(choice(content=None, finish="tool_calls", tool_calls=TOOL_CALLS))
    chunks = list(chat_chunks(completion, include_usage=False))
    assembled = assemble_chat(chunks)
    assert assembled["choices"][0]["tool_calls"] == TOOL_CALLS
    assert assembled["choices"][0]["finish"] == "tool_calls"
    assert assembled["choices"][0]["content"] == ""
    tool_chunks = [c for c in chunks if "tool_calls" in c["choices"][0]["delta"]]
    assert [c["choices"][0]["delta"]["tool_calls"][0]["index"] for c in tool_chunks] == [0, 1]


def test_chat_chunks_several_choices() -> None:
    completion = chat_completion(choice(0, "first answer"), choice(1, "second", finish="length"))
    assembled = assemble_chat(list(chat_chunks(completion, include_usage=True)))
    assert {i: (c["content"], c["finish"]) for i, c in assembled["choices"].items()} == {
        0: ("first answer", "stop"),
        1: ("second", "length"),
    }


def test_chat_chunks_without_usage_have_no_usage_key() -> None:
    chunks = list(chat_chunks(chat_completion(choice(content="a b")), include_usage=False))
    assert all("usage" not in c for c in chunks)
    assert all(c["choices"] for c in chunks)


def test_chat_chunks_defaults_for_a_bare_answer() -> None:
    chunks = list(chat_chunks({"choices": [{"message": {"content": "x"}, "finish_reason": "stop"}]}, True))
    assert chunks[0]["id"] == "chatcmpl-replay"
    assert chunks[0]["created"] == 0
    assert chunks[0]["model"] == ""
    assert "system_fingerprint" not in chunks[0]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1] == {
        "id": "chatcmpl-replay",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "",
        "choices": [],
        "usage": None,
    }


def test_chat_chunks_of_an_answer_without_choices() -> None:
    assert list(chat_chunks({"choices": []}, include_usage=False)) == []


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_any_content_reassembles_exactly(text: str) -> None:
    chunks = list(chat_chunks(chat_completion(choice(content=text)), include_usage=True))
    assert assemble_chat(chunks)["choices"][0]["content"] == text
    pieces = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
    assert all(p for p in pieces)  # no empty content chunk between the role chunk and the finish chunk
    assert all(len(p.split()) <= WORDS_PER_CHUNK for p in pieces)


def test_text_chunks_reassemble() -> None:
    completion = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 5,
        "model": "m",
        "choices": [
            {"index": 0, "text": "alpha beta gamma delta epsilon", "finish_reason": "stop"},
            {"index": 1, "text": "", "finish_reason": "length"},
        ],
        "usage": USAGE,
    }
    chunks = list(text_chunks(completion, include_usage=True))
    assert all(c["object"] == "text_completion" and c["id"] == "cmpl-1" for c in chunks)
    texts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    for c in chunks[:-1]:
        assert c["usage"] is None
        (part,) = c["choices"]
        texts[part["index"]] = texts.get(part["index"], "") + part["text"]
        if part["finish_reason"] is not None:
            finishes[part["index"]] = part["finish_reason"]
    assert texts == {0: "alpha beta gamma delta epsilon", 1: ""}
    assert finishes == {0: "stop", 1: "length"}
    assert [c["choices"][0]["text"] for c in chunks[:3]] == ["alpha beta gamma delta ", "epsilon", ""]
    assert chunks[-1] == {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 5,
        "model": "m",
        "choices": [],
        "usage": USAGE,
    }


def test_text_chunks_without_usage() -> None:
    chunks = list(text_chunks({"choices": [{"text": "x", "finish_reason": "stop"}]}, include_usage=False))
    assert [c["choices"][0]["text"] for c in chunks] == ["x", ""]
    assert all("usage" not in c for c in chunks)
    assert chunks[0]["id"] == "cmpl-replay"
