"""Translate between OpenAI Chat Completions and Anthropic Messages payloads (dicts in, dicts out).

The caller owns HTTP, auth, retries and SSE framing. Client input Anthropic cannot honour raises
TranslationError (a 400 for the caller) rather than being silently approximated.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping
from typing import Any

# Unknown or missing stop reasons map to None: never report a clean "stop" we didn't see.
_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "pause_turn": "stop",  # a server tool paused the turn; what was produced so far stands alone
    "refusal": "content_filter",
}
_TOOL_CHOICES = {"auto": "auto", "required": "any", "none": "none"}
# Anthropic's documented status -> error type pairs, for bodies that don't say.
_STATUS_ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
    403: "permission_error", 404: "not_found_error", 413: "request_too_large",
    429: "rate_limit_error", 500: "api_error", 504: "timeout_error", 529: "overloaded_error",
}  # fmt: skip
_DATA_URL = re.compile(r"data:(?P<media>[\w.+-]+/[\w.+-]+);base64,(?P<data>.*)", re.DOTALL)
_EMPTY_SCHEMA = {"type": "object", "properties": {}}


class TranslationError(Exception):
    """Client input that cannot be expressed in Anthropic's API."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class AnthropicStreamError(Exception):
    """Anthropic sent an `error` event mid-stream (e.g. overloaded_error)."""

    def __init__(self, message: str, error_type: str) -> None:
        super().__init__(message)
        self.message = message
        self.type = error_type


def to_anthropic_request(body: Mapping[str, Any], model: str, *, default_max_tokens: int = 4096) -> dict[str, Any]:
    """OpenAI chat.completions request body -> Anthropic /v1/messages request body."""
    _reject_unsupported(body)
    system, messages = _convert_messages(body.get("messages"))
    out: dict[str, Any] = {"model": model, "messages": messages}
    if system:
        out["system"] = "\n\n".join(system)
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    # Anthropic requires max_tokens; OpenAI treats it as optional.
    out["max_tokens"] = default_max_tokens if max_tokens is None else max_tokens
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            out[key] = body[key]
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, (str, list)):
        raise TranslationError("stop must be a string or an array of strings", "stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("stream") is not None:
        out["stream"] = bool(body["stream"])
    tools = body.get("tools") or []
    if tools:
        out["tools"] = [_convert_tool(tool, f"tools[{i}]") for i, tool in enumerate(tools)]
    choice = _convert_tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"), bool(tools))
    if choice is not None:
        out["tool_choice"] = choice
    if body.get("user") is not None:
        out["metadata"] = {"user_id": str(body["user"])}
    return out


def _reject_unsupported(body: Mapping[str, Any]) -> None:
    if body.get("n") not in (None, 1):
        raise TranslationError("n > 1 is not supported for Anthropic models; send separate requests", "n")
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, Mapping) and fmt.get("type") == "text"):
        kind = fmt.get("type") if isinstance(fmt, Mapping) else fmt
        raise TranslationError(
            f"response_format {kind!r} is not supported for Anthropic models (no native JSON mode); "
            "describe the format in the prompt or use a tool instead",
            "response_format",
        )
    if body.get("logprobs"):
        raise TranslationError("logprobs are not available from Anthropic models", "logprobs")
    for legacy in ("functions", "function_call"):
        if body.get(legacy) is not None:
            raise TranslationError(f"legacy {legacy} is not supported; use tools and tool_choice", legacy)
    if "audio" in (body.get("modalities") or ()):
        raise TranslationError("audio output is not supported for Anthropic models", "modalities")


def _convert_messages(raw: Any) -> tuple[list[str], list[dict[str, Any]]]:
    if not isinstance(raw, list) or not raw:
        raise TranslationError("messages must be a non-empty array", "messages")
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, msg in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(msg, Mapping):
            raise TranslationError("each message must be an object", where)
        role = msg.get("role")
        if role in ("system", "developer"):
            system.extend(block["text"] for block in _content_blocks(msg.get("content"), where))
            continue
        if role == "user":
            blocks = _content_blocks(msg.get("content"), where, images=True)
        elif role == "assistant":
            blocks = _content_blocks(msg.get("content"), where) + _tool_use_blocks(msg, where)
        elif role == "tool":
            role, blocks = "user", [_tool_result(msg, where)]
        elif role == "function":
            raise TranslationError(
                "legacy 'function' messages are not supported; use 'tool' messages with tool_call_id",
                f"{where}.role",
            )
        else:
            raise TranslationError(f"unsupported message role {role!r}", f"{where}.role")
        # Anthropic requires strict user/assistant alternation, so same-role runs become one turn.
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        elif blocks:
            turns.append({"role": role, "content": blocks})
    if not turns:
        raise TranslationError("at least one user or assistant message is required", "messages")
    return system, turns


def _content_blocks(content: Any, where: str, *, images: bool = False) -> list[dict[str, Any]]:
    """A string-or-parts content field as Anthropic text (and, for users, image) blocks."""
    if content is None:
        return []
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
    if not isinstance(parts, list):
        raise TranslationError("content must be a string or an array of content parts", f"{where}.content")
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(parts):
        path = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text" and isinstance(part.get("text"), str):
            if part["text"]:  # Anthropic rejects empty text blocks
                blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url" and images:
            blocks.append(_image_block(part.get("image_url"), f"{path}.image_url.url"))
        else:
            raise TranslationError(f"unsupported content part type {kind!r} here", f"{path}.type")
    return blocks


def _image_block(image_url: Any, path: str) -> dict[str, Any]:
    url = image_url.get("url") if isinstance(image_url, Mapping) else image_url
    if isinstance(url, str):
        if match := _DATA_URL.fullmatch(url):
            source = {"type": "base64", "media_type": match["media"], "data": match["data"]}
            return {"type": "image", "source": source}
        if url.startswith(("http://", "https://")):
            return {"type": "image", "source": {"type": "url", "url": url}}
    raise TranslationError("image URL must be an http(s) URL or a base64 data: URL", path)


def _tool_use_blocks(msg: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for j, call in enumerate(msg.get("tool_calls") or []):
        path = f"{where}.tool_calls[{j}]"
        fn = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
            raise TranslationError("tool call needs a function with a name", f"{path}.function")
        if not isinstance(call.get("id"), str) or not call["id"]:
            raise TranslationError("tool call needs an id", f"{path}.id")
        arguments = _parse_arguments(fn.get("arguments"), f"{path}.function.arguments")
        blocks.append({"type": "tool_use", "id": call["id"], "name": fn["name"], "input": arguments})
    return blocks


def _parse_arguments(raw: Any, path: str) -> dict[str, Any]:
    # Some clients replay a zero-argument call with "" (or nothing) instead of "{}".
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}
    try:
        parsed = json.loads(raw) if isinstance(raw, str) else None
    except json.JSONDecodeError as exc:
        raise TranslationError(f"tool call arguments are not valid JSON: {exc.msg}", path) from exc
    if not isinstance(parsed, dict):
        raise TranslationError("tool call arguments must be a JSON object, encoded as a string", path)
    return parsed


def _tool_result(msg: Mapping[str, Any], where: str) -> dict[str, Any]:
    call_id = msg.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise TranslationError("tool messages need a tool_call_id", f"{where}.tool_call_id")
    text = "".join(block["text"] for block in _content_blocks(msg.get("content"), where))
    return {"type": "tool_result", "tool_use_id": call_id, "content": text}


def _convert_tool(tool: Any, path: str) -> dict[str, Any]:
    if not isinstance(tool, Mapping) or tool.get("type") != "function":
        raise TranslationError("only function tools are supported", f"{path}.type")
    fn = tool.get("function")
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
        raise TranslationError("tool needs a function with a name", f"{path}.function.name")
    # Anthropic requires a schema; OpenAI lets argument-less functions omit it.
    out = {"name": fn["name"], "input_schema": fn.get("parameters") or _EMPTY_SCHEMA}
    if fn.get("description"):
        out["description"] = fn["description"]
    return out


def _convert_tool_choice(choice: Any, parallel: Any, has_tools: bool) -> dict[str, Any] | None:
    choice = "auto" if choice is None and parallel is False else choice
    if choice is None:
        return None
    fn = choice.get("function") if isinstance(choice, Mapping) else None
    if isinstance(choice, str) and choice in _TOOL_CHOICES:
        out: dict[str, Any] = {"type": _TOOL_CHOICES[choice]}
    elif isinstance(fn, Mapping) and choice.get("type") == "function" and isinstance(fn.get("name"), str):
        out = {"type": "tool", "name": fn["name"]}
    else:
        raise TranslationError("tool_choice must be 'auto', 'required', 'none' or a function", "tool_choice")
    if not has_tools:
        if out["type"] in ("auto", "none"):
            return None  # meaningless without tools, and Anthropic rejects tool_choice without tools
        raise TranslationError("tool_choice forces a tool call but no tools were given", "tool_choice")
    if parallel is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    return out


def _finish_reason(stop_reason: Any) -> str | None:
    return _FINISH_REASONS.get(stop_reason) if isinstance(stop_reason, str) else None


def _usage(usage: Any) -> dict[str, int] | None:
    """OpenAI usage, or None when Anthropic sent no token counts (the gateway then counts them)."""
    # OpenAI's prompt_tokens includes cached input; Anthropic counts it separately (null when unused).
    prompt_keys = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    if not isinstance(usage, Mapping) or all(usage.get(key) is None for key in (*prompt_keys, "output_tokens")):
        return None
    prompt = sum(usage.get(key) or 0 for key in prompt_keys)
    completion = usage.get("output_tokens") or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def from_anthropic_response(resp: Mapping[str, Any], *, created: int) -> dict[str, Any]:
    """Anthropic message response -> OpenAI chat.completion object."""
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in resp.get("content") or []:
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "tool_use":
            function = {"name": block.get("name"), "arguments": json.dumps(block.get("input") or {})}
            tool_calls.append({"id": block.get("id"), "type": "function", "function": function})
        # thinking and server-tool blocks have no OpenAI equivalent
    content = "".join(texts) if texts or not tool_calls else None
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": f"chatcmpl-{resp.get('id') or ''}",
        "object": "chat.completion",
        "created": created,
        "model": resp.get("model"),
        "choices": [{"index": 0, "message": message, "finish_reason": _finish_reason(resp.get("stop_reason"))}],
        "usage": _usage(resp.get("usage")),
    }


class AnthropicStreamTranslator:
    """Translates one Anthropic SSE stream into OpenAI chat.completion.chunk dicts."""

    def __init__(self, *, include_usage: bool, created: int) -> None:
        self._include_usage = include_usage
        self._envelope: dict[str, Any] = {
            "id": "chatcmpl-",
            "object": "chat.completion.chunk",
            "created": created,
            "model": None,  # id and model arrive with message_start
        }
        self._usage: dict[str, Any] = {}
        self._tool_index: dict[Any, int] = {}  # Anthropic content-block index -> OpenAI tool_calls index
        self._tools_with_args: set[int] = set()
        self._finished = False

    @property
    def finished(self) -> bool:
        """True once message_stop has been seen (the stream ended properly)."""
        return self._finished

    def feed(self, event: str, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        """One Anthropic SSE event (name and parsed data) -> OpenAI chunks to send, in order."""
        kind = event or data.get("type")
        if kind == "error":
            message, error_type = _error_parts(data)
            raise AnthropicStreamError(message or "Anthropic stream error", error_type or "api_error")
        if self._finished:
            return []
        if kind == "message_start":
            msg = data.get("message") or {}
            self._envelope.update(id=f"chatcmpl-{msg.get('id') or ''}", model=msg.get("model"))
            self._record_usage(msg.get("usage"))
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            return self._block_start(data.get("index"), data.get("content_block") or {})
        if kind == "content_block_delta":
            return self._block_delta(data.get("index"), data.get("delta") or {})
        if kind == "content_block_stop":
            k = self._tool_index.get(data.get("index"))
            if k is not None and k not in self._tools_with_args:
                # A zero-argument call streams no JSON, and "" breaks clients that json.loads it.
                return [self._tool_chunk(k, function={"arguments": "{}"})]
            return []
        if kind == "message_delta":
            self._record_usage(data.get("usage"))
            finish = _finish_reason((data.get("delta") or {}).get("stop_reason"))
            return [self._chunk({}, finish)] if finish else []
        if kind == "message_stop":
            self._finished = True
            if not self._include_usage:
                return []
            return [{**self._envelope, "choices": [], "usage": _usage(self._usage)}]
        return []  # ping, and event types Anthropic may add later

    def _block_start(self, index: Any, block: Mapping[str, Any]) -> list[dict[str, Any]]:
        if block.get("type") == "tool_use":
            k = self._tool_index[index] = len(self._tool_index)
            function = {"name": block.get("name"), "arguments": ""}
            return [self._tool_chunk(k, id=block.get("id"), type="function", function=function)]
        if block.get("type") == "text" and block.get("text"):
            return [self._chunk({"content": block["text"]})]
        return []

    def _block_delta(self, index: Any, delta: Mapping[str, Any]) -> list[dict[str, Any]]:
        if delta.get("type") == "text_delta" and delta.get("text"):
            return [self._chunk({"content": delta["text"]})]
        k = self._tool_index.get(index)
        # Server-tool blocks stream input_json_delta too; only client tool calls were announced.
        if delta.get("type") == "input_json_delta" and k is not None and delta.get("partial_json"):
            self._tools_with_args.add(k)
            return [self._tool_chunk(k, function={"arguments": delta["partial_json"]})]
        return []  # thinking, signature and citation deltas have no OpenAI equivalent

    def _record_usage(self, usage: Any) -> None:
        # Counters in message_delta are cumulative, so later values replace earlier ones.
        if isinstance(usage, Mapping):
            self._usage.update({key: value for key, value in usage.items() if value is not None})

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        chunk = {**self._envelope, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
        if self._include_usage:
            chunk["usage"] = None  # as OpenAI does: only the final chunk carries usage
        return chunk

    def _tool_chunk(self, k: int, **fields: Any) -> dict[str, Any]:
        return self._chunk({"tool_calls": [{"index": k, **fields}]})


def _error_parts(body: Any) -> tuple[str | None, str | None]:
    error = body.get("error") if isinstance(body, Mapping) else None
    if not isinstance(error, Mapping):
        return None, None
    message, error_type = error.get("message"), error.get("type")
    return (
        message if isinstance(message, str) and message else None,
        error_type if isinstance(error_type, str) and error_type else None,
    )


def error_from_anthropic(status: int, body: Any) -> tuple[str, str]:
    """Summarise an Anthropic error body as (message, anthropic_error_type). Never raises."""
    generic = f"Anthropic API error (HTTP {status})"
    try:
        fallback = _STATUS_ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        if isinstance(body, (bytes, bytearray)):
            body = bytes(body).decode("utf-8", "replace")
        if isinstance(body, str):
            with contextlib.suppress(ValueError):
                body = json.loads(body)
        message, error_type = _error_parts(body)
        if message is None and isinstance(body, str) and body.strip():
            message = f"{generic}: {body.strip()[:500]}"  # e.g. a proxy's HTML error page
        return message or generic, error_type or fallback
    except Exception:
        return generic, "api_error"
