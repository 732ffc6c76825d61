"""What every guard plugin shares: options, verdicts, and how a block looks to the client.

A blocked request gets a 400 `content_policy_violation` that never says which rule fired; a blocked
answer ends with `finish_reason: "content_filter"` (plain or streamed). The rule, score and reason go
to the logs, to metrics and to the request context (`GuardVerdict`, for traces) instead.

    message_texts(body)            every text in the conversation, with a setter to rewrite it
    blocked_request()              the 400 a blocked request gets
    blocked_answer(answer)         a whole answer replaced by an empty content_filter one
    blocked_chunk(ctx, chunk)      the last chunk of a stream cut by a guard
    StreamText                     streamed text held back just enough to see across chunk borders
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from opentelemetry import trace
from pydantic import Field

from gateway import metrics
from gateway.errors import error_body
from gateway.plugin import Continue, Emit, PluginConfig, RequestContext, Respond, StreamDecision

log = logging.getLogger("gateway.guard")
Stage = Literal["input", "output"]
BLOCK_MESSAGE = "This request was blocked by the gateway's content policy."

VERDICTS = metrics.counter(
    "gateway_guard_verdicts_total", "Guard decisions by plugin, stage and action.", ("plugin", "stage", "action")
)


class GuardConfig(PluginConfig):
    apply_to: tuple[Stage, ...] = Field(("input", "output"), description="Check the request, the answer, or both.")
    on_error: Literal["allow", "block"] = Field(
        "allow", description="When the guard's own dependency fails: let the text through, or block it."
    )
    roles: tuple[str, ...] = Field(
        ("user", "system", "developer", "tool"), description="Input messages whose text is checked."
    )
    models: tuple[str, ...] | None = Field(None, description="Only these model names (default: all).")


@dataclass(slots=True)
class GuardVerdict:
    plugin: str
    stage: Stage
    action: str  # allow | block | redact | mask | flag | pseudonymize | error
    rule: str | None = None
    score: float | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class ContentRedactor:
    """Put on the context by a PII guard: how text must be redacted before it is recorded anywhere
    (span content, request log). CPU-heavy: call it off the event loop."""

    redact: Callable[[str], str]


def record(ctx: RequestContext, verdict: GuardVerdict) -> None:
    """Count and log a verdict, keep the most serious one on the context, and note it on the current span."""
    VERDICTS.labels(verdict.plugin, verdict.stage, verdict.action).inc()
    span = trace.get_current_span()
    if span.is_recording():
        span.add_event(
            "gateway.guard",
            {
                "gateway.guard.plugin": verdict.plugin,
                "gateway.guard.stage": verdict.stage,
                "gateway.guard.action": verdict.action,
                "gateway.guard.rule": verdict.rule or "",
                "gateway.guard.score": verdict.score if verdict.score is not None else -1.0,
                "gateway.guard.reason": verdict.reason or "",
            },
        )
    if verdict.action != "allow":
        log.info(
            "request %s: %s %s %s (rule %s, score %s): %s",
            ctx.request_id,
            verdict.plugin,
            verdict.stage,
            verdict.action,
            verdict.rule,
            verdict.score,
            verdict.reason,
        )
        ctx.put(verdict)


def applies(ctx: RequestContext, cfg: GuardConfig, stage: Stage) -> bool:
    return stage in cfg.apply_to and (cfg.models is None or ctx.route.name in cfg.models)


@dataclass(slots=True)
class TextSlot:
    """One text in a request body or answer, and where it lives (`holder[key]`), to write it back."""

    role: str
    text: str
    holder: dict[str, Any]
    key: str

    def replace(self, text: str) -> None:
        self.holder[self.key] = text


def message_texts(body: dict[str, Any], roles: tuple[str, ...]) -> Iterator[TextSlot]:
    """Texts of chat messages (string content and text parts) or of a completion prompt."""
    for message in body.get("messages") or []:
        role = message.get("role", "")
        if role not in roles:
            continue
        content = message.get("content")
        if isinstance(content, str):
            yield TextSlot(role, content, message, "content")
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    yield TextSlot(role, part["text"], part, "text")
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        yield TextSlot("user", prompt, body, "prompt")


def answer_texts(answer: dict[str, Any]) -> Iterator[TextSlot]:
    for choice in answer.get("choices") or []:
        message = choice.get("message")
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            yield TextSlot("assistant", message["content"], message, "content")
        elif isinstance(choice.get("text"), str):
            yield TextSlot("assistant", choice["text"], choice, "text")


def blocked_request() -> Respond:
    return Respond(error_body(BLOCK_MESSAGE, "invalid_request_error", None, "content_policy_violation"), status=400)


def blocked_answer(answer: dict[str, Any]) -> Respond:
    """The answer with its text withheld and every choice ended by the content filter."""
    for choice in answer.get("choices") or []:
        if isinstance(choice.get("message"), dict):
            choice["message"] = {"role": "assistant", "content": ""}
        if "text" in choice:
            choice["text"] = ""
        choice["finish_reason"] = "content_filter"
    return Respond(answer)


def blocked_chunk(ctx: RequestContext, chunk: dict[str, Any] | None) -> Respond:
    """End a stream: one last chunk with finish_reason content_filter (then [DONE])."""
    base = {k: v for k, v in (chunk or {}).items() if k in ("id", "object", "created", "model")}
    kind = "chat.completion.chunk" if ctx.endpoint == "chat" else "text_completion"
    choice: dict[str, Any] = {"index": 0, "finish_reason": "content_filter"}
    if ctx.endpoint == "chat":
        choice["delta"] = {}
    else:
        choice["text"] = ""
    return Respond(
        {"id": f"gw-{ctx.request_id}", "object": kind, "created": 0, "model": "", **base, "choices": [choice]}
    )


def set_chunk_text(chunk: dict[str, Any], text: str) -> None:
    """Replace the text of a chunk's first choice (delta content or text)."""
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta")
        if isinstance(delta, dict) and ("content" in delta or not choice.get("finish_reason")):
            delta["content"] = text
        elif "text" in choice:
            choice["text"] = text
        break


def chunk_text(chunk: dict[str, Any]) -> str:
    parts: list[str] = []
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("content"), str):
            parts.append(delta["content"])
        elif isinstance(choice.get("text"), str):
            parts.append(choice["text"])
    return "".join(parts)


class StreamText:
    """Streamed answer text, released with a hold-back of `hold` characters.

    A guard that rewrites or blocks text must see a pattern split across chunks ("jo" + "hn@x.com")
    before any of it leaves: `push` returns the text that is now safe to release (all but the last
    `hold` characters, cut at a whitespace when possible), `flush` the rest at the end of the stream.
    """

    def __init__(self, hold: int) -> None:
        self.hold = hold
        self.pending = ""
        self.released = 0

    def push(self, text: str) -> str:
        self.pending += text
        if len(self.pending) <= self.hold:
            return ""
        cut = len(self.pending) - self.hold
        space = self.pending.rfind(" ", 0, cut + 1)
        cut = space + 1 if space > 0 else cut
        out, self.pending = self.pending[:cut], self.pending[cut:]
        self.released += len(out)
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        self.released += len(out)
        return out


async def each_choice(
    ctx: RequestContext,
    chunk: dict[str, Any],
    check: Callable[[RequestContext, dict[str, Any]], Awaitable[StreamDecision]],
) -> StreamDecision:
    """A chunk carrying several choices (n > 1), checked one choice at a time by `check` (a guard's
    on_stream_chunk), so each choice's held-back text stays its own."""
    out: list[dict[str, Any]] = []
    for choice in chunk["choices"]:
        part = {**chunk, "choices": [choice]}
        decision = await check(ctx, part)
        if isinstance(decision, Respond):
            return decision
        out.extend((part,) if isinstance(decision, Continue) else decision.chunks)
    return Emit(tuple(out))
