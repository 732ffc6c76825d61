"""What every cache plugin shares: options, when an answer may be cached, and the request key.

The rules are pure functions so both caches (and their tests) agree on them:

    cache_control(headers)         Cache-Control: no-cache (skip lookup, refresh) / no-store
    bypass_reason(ctx, cfg)        why this request must not be answered from (or stored in) a cache
    storable(answer, cfg)          whether a finished answer may be stored
    fingerprint(ctx, cfg, ...)     sha256 of everything that changes the answer, plus the caller's scope
    assemble(endpoint, chunks)     a streamed answer put back together as a whole answer
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
from opentelemetry import trace
from pydantic import Field

from gateway import metrics
from gateway.errors import error_body
from gateway.plugin import PluginConfig, RequestContext, Respond

Outcome = Literal["hit", "miss", "bypass", "semantic-hit"]
HEADER = "x-gateway-cache"

LOOKUPS = metrics.counter(
    "gateway_cache_requests_total",
    "Cache decisions: hit, miss, bypass, semantic-hit, coalesced.",
    ("plugin", "model", "outcome"),
)
STORE_ERRORS = metrics.counter(
    "gateway_cache_store_errors_total", "Cache store calls that failed or timed out.", ("plugin",)
)
DEGRADED = metrics.gauge("gateway_cache_degraded", "1 while a cache's shared store is unreachable.", ("plugin",))
# Fields that never change the answer: how it is delivered, and metadata about the caller.
NOT_IN_KEY = frozenset({"stream", "stream_options", "user", "metadata", "store", "service_tier"})


class CacheConfig(PluginConfig):
    store: Literal["memory", "redis"] = Field("memory", description="memory: this process; redis: shared.")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Used when store is redis.")
    namespace: str = Field("llmgw", min_length=1, description="Prefix of every Redis key.")
    ttl_s: float = Field(3600.0, gt=0, description="How long an answer stays servable.")
    max_entries: int = Field(10_000, ge=1, description="Most answers kept in memory (LRU).")
    max_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Most bytes of answers kept in memory.")
    shared: bool = Field(False, description="Share answers across callers (keys). Off: each caller has its own.")
    cache_sampled: bool = Field(
        False, description="Also cache requests with temperature > 0 (their answers are meant to vary)."
    )
    cache_tool_calls: bool = Field(False, description="Also cache answers that call tools.")
    finish_reasons: tuple[str, ...] = Field(
        ("stop", "length"), description="Answers are stored only if every choice ended with one of these."
    )
    redis_timeout_ms: int = Field(50, ge=1, description="A Redis call slower than this counts as a failure.")
    retry_after_s: float = Field(1.0, gt=0, description="After a Redis failure, wait this long before trying it.")
    fail_open: bool = Field(True, description="Redis down: serve without the cache (true) or answer 503 (false).")
    models: tuple[str, ...] | None = Field(
        None, description="Only these model names use this cache (default: every model the entry applies to)."
    )


@dataclass(slots=True)
class CacheKeyExtra:
    """Put on the request context by plugins whose state changes answers (e.g. a RAG index version)."""

    parts: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class CacheVerdict:
    """What a cache decided, for traces and logs (set by each cache plugin on the context)."""

    plugin: str
    outcome: Outcome
    reason: str | None = None
    similarity: float | None = None
    verifier: str | None = None


def decide(
    ctx: RequestContext,
    plugin: str,
    outcome: Outcome,
    reason: str | None = None,
    *,
    counted_as: str | None = None,
    similarity: float | None = None,
    verifier: str | None = None,
) -> None:
    """Record a cache decision: the response header, the verdict for traces, the counter."""
    ctx.response_headers[HEADER] = outcome
    ctx.put(CacheVerdict(plugin, outcome, reason, similarity, verifier))
    LOOKUPS.labels(plugin, ctx.route.name, counted_as or outcome).inc()
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("gateway.cache.result", outcome)
        if reason:
            span.set_attribute("gateway.cache.reason", reason)
        if similarity is not None:
            span.set_attribute("gateway.cache.similarity", similarity)


def store_failed(plugin: str) -> None:
    STORE_ERRORS.labels(plugin).inc()
    DEGRADED.labels(plugin).set(1)


def unavailable() -> Respond:
    """The answer when the shared store is down and the policy says fail closed."""
    message = "The response cache is unavailable; try again shortly."
    return Respond(error_body(message, "server_error", None, "cache_unavailable"), status=503)


def cache_control(headers: Mapping[str, str]) -> tuple[bool, bool]:
    """(no_cache, no_store) from the request's Cache-Control header."""
    value = headers.get("cache-control")
    if not value:
        return False, False
    value = value.lower()
    directives = {d.strip().split("=", 1)[0] for d in value.split(",")}
    return "no-cache" in directives, "no-store" in directives


def applies(ctx: RequestContext, cfg: CacheConfig) -> bool:
    """False for models the policy leaves out: the cache then stays silent (no header, no metrics)."""
    return cfg.models is None or ctx.route.name in cfg.models


def bypass_reason(ctx: RequestContext, cfg: CacheConfig) -> str | None:
    if ctx.endpoint not in ("chat", "completions"):
        return "endpoint"
    temperature = ctx.body.get("temperature")
    if not cfg.cache_sampled and isinstance(temperature, int | float) and temperature > 0:
        return "sampled"
    return None


def storable(answer: Mapping[str, Any], cfg: CacheConfig) -> bool:
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices:
        return False
    allowed = _storable_reasons(cfg.finish_reasons, cfg.cache_tool_calls)
    for choice in choices:
        if not isinstance(choice, Mapping) or choice.get("finish_reason") not in allowed:
            return False
        message = choice.get("message")
        if not cfg.cache_tool_calls and isinstance(message, Mapping) and message.get("tool_calls"):
            return False
    return True


@functools.lru_cache(maxsize=64)
def _storable_reasons(finish_reasons: tuple[str, ...], tool_calls: bool) -> frozenset[str]:
    return frozenset(finish_reasons) | ({"tool_calls", "function_call"} if tool_calls else frozenset())


def scope(ctx: RequestContext, cfg: CacheConfig) -> str:
    return "*" if cfg.shared else ctx.caller.name


def fingerprint(ctx: RequestContext, cfg: CacheConfig, *, body: Mapping[str, Any] | None = None) -> str:
    """sha256 over the canonical request (keys sorted) with the model name and the caller's scope.

    `body` replaces the request body (the semantic cache passes it without the last user turn).
    The caller's identity is its key *name* or a hash of its token, never the token itself.
    """
    source = ctx.body if body is None else body
    body = {k: v for k, v in source.items() if k not in NOT_IN_KEY}
    extra = ctx.get(CacheKeyExtra)
    material = {
        "v": 1,
        "endpoint": ctx.endpoint,
        "model": ctx.route.name,
        "scope": scope(ctx, cfg),
        "body": body,
        "extra": extra.parts if extra else {},
    }
    return hashlib.sha256(msgspec.json.encode(material, order="sorted")).hexdigest()


def assemble(endpoint: str, chunks: Iterable[Mapping[str, Any]], usage: Mapping[str, Any] | None) -> dict[str, Any]:
    """A whole chat/text completion from its streamed chunks (content, tool calls, finish reasons)."""
    first: Mapping[str, Any] = {}
    choices: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        first = first or chunk
        for delta_choice in chunk.get("choices") or []:
            index = delta_choice.get("index", 0)
            choice = choices.setdefault(index, {"index": index, "text": [], "role": "assistant", "tools": {}})
            if delta_choice.get("finish_reason"):
                choice["finish_reason"] = delta_choice["finish_reason"]
            if endpoint == "completions":
                choice["text"].append(delta_choice.get("text") or "")
                continue
            delta = delta_choice.get("delta") or {}
            choice["role"] = delta.get("role") or choice["role"]
            if isinstance(delta.get("content"), str):
                choice["text"].append(delta["content"])
            for call in delta.get("tool_calls") or []:
                _merge_tool_call(choice["tools"], call)
    out_choices = [_finish_choice(endpoint, c) for _, c in sorted(choices.items())]
    kind = "chat.completion" if endpoint == "chat" else "text_completion"
    answer = {
        "id": first.get("id"),
        "object": kind,
        "created": first.get("created"),
        "model": first.get("model"),
        "choices": out_choices,
    }
    if "system_fingerprint" in first:
        answer["system_fingerprint"] = first["system_fingerprint"]
    if usage is not None:
        answer["usage"] = dict(usage)
    return answer


def _merge_tool_call(tools: dict[int, dict[str, Any]], call: Mapping[str, Any]) -> None:
    slot = tools.setdefault(call.get("index", 0), {"id": None, "type": "function", "name": "", "arguments": ""})
    slot["id"] = call.get("id") or slot["id"]
    function = call.get("function") or {}
    slot["name"] += function.get("name") or ""
    slot["arguments"] += function.get("arguments") or ""


def _finish_choice(endpoint: str, choice: dict[str, Any]) -> dict[str, Any]:
    finish = choice.get("finish_reason")
    if endpoint == "completions":
        return {"index": choice["index"], "text": "".join(choice["text"]), "logprobs": None, "finish_reason": finish}
    message: dict[str, Any] = {"role": choice["role"], "content": "".join(choice["text"]) or None}
    if choice["tools"]:
        message["tool_calls"] = [
            {"id": t["id"], "type": t["type"], "function": {"name": t["name"], "arguments": t["arguments"]}}
            for _, t in sorted(choice["tools"].items())
        ]
    elif message["content"] is None:
        message["content"] = ""
    return {"index": choice["index"], "message": message, "logprobs": None, "finish_reason": finish}
