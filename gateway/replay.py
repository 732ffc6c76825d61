"""Replaying a whole answer (from a cache or a plugin) as a stream, chunked like a real one."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

_PIECES = re.compile(r"\S+\s*|\s+")
WORDS_PER_CHUNK = 4


def _pieces(text: str) -> Iterator[str]:
    words = _PIECES.findall(text)
    for i in range(0, len(words), WORDS_PER_CHUNK):
        yield "".join(words[i : i + WORDS_PER_CHUNK])


def chat_chunks(completion: dict[str, Any], include_usage: bool) -> Iterator[dict[str, Any]]:
    base = {
        "id": completion.get("id", "chatcmpl-replay"),
        "object": "chat.completion.chunk",
        "created": completion.get("created", 0),
        "model": completion.get("model", ""),
    }
    if "system_fingerprint" in completion:
        base["system_fingerprint"] = completion["system_fingerprint"]
    extra = {"usage": None} if include_usage else {}

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            **base,
            "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
            **extra,
        }

    for choice in completion.get("choices") or []:
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        yield chunk(index, {"role": message.get("role", "assistant"), "content": ""})
        content = message.get("content")
        if isinstance(content, str):
            for piece in _pieces(content):
                yield chunk(index, {"content": piece})
        for position, call in enumerate(message.get("tool_calls") or []):
            yield chunk(index, {"tool_calls": [{"index": position, **call}]})
        yield chunk(index, {}, choice.get("finish_reason"))
    if include_usage:
        yield {**base, "choices": [], "usage": completion.get("usage")}


def text_chunks(completion: dict[str, Any], include_usage: bool) -> Iterator[dict[str, Any]]:
    base = {
        "id": completion.get("id", "cmpl-replay"),
        "object": "text_completion",
        "created": completion.get("created", 0),
        "model": completion.get("model", ""),
    }
    extra = {"usage": None} if include_usage else {}
    for choice in completion.get("choices") or []:
        index = choice.get("index", 0)
        for piece in _pieces(choice.get("text") or ""):
            yield {
                **base,
                "choices": [{"index": index, "text": piece, "logprobs": None, "finish_reason": None}],
                **extra,
            }
        yield {
            **base,
            "choices": [{"index": index, "text": "", "logprobs": None, "finish_reason": choice.get("finish_reason")}],
            **extra,
        }
    if include_usage:
        yield {**base, "choices": [], "usage": completion.get("usage")}
