"""One request-log record, built from the request context once the answer is sent.

Never the caller's key (only `caller.name`), never upstream keys. Content (prompt and answer) only when
the policy sets `telemetry.request_log.capture_content`, and then only as it was sent to and received
from the upstream: after the request chain ran (so the `pii` plugin's input stage has already redacted
or pseudonymized it) and before the response chain (so pseudonyms are never restored into the log).
Then the `ContentRedactor` a `pii` plugin put on the context redacts both texts, on the writer's thread.
Streamed answers are not captured (the relay keeps no copy of their text).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import msgspec

from gateway import tokens
from gateway.guarding import ContentRedactor, GuardVerdict
from gateway.plugin import RequestContext
from gateway.requestlog.store import COLUMNS
from gateway.router import Attempt

REDACT = "_redact"  # not a column: the redactor travelling with a record to the writer's thread
MAX_CONTENT_CHARS = 32_000  # a log is not an archive: longer content is cut (and says so)


@dataclass(slots=True)
class UpstreamAnswer:
    """The answer's text as the upstream sent it (before the response chain), kept for the log."""

    text: str


def keep_answer(ctx: RequestContext, answer: dict[str, Any], capture: bool) -> None:
    """Called with a whole upstream answer before the response chain rewrites it."""
    if capture:
        ctx.put(UpstreamAnswer(tokens.completion_text(answer)))


def from_context(ctx: RequestContext, capture: bool) -> dict[str, Any]:
    """The record; with content, `REDACT` holds the pii plugin's redactor, applied by the writer's thread."""
    usage = ctx.usage or {}
    attempt = ctx.get(Attempt)
    verdict = ctx.get(GuardVerdict)
    answer = ctx.get(UpstreamAnswer)
    out = {
        "ts": time.time(),
        "request_id": ctx.request_id,
        "trace_id": ctx.trace_id,
        "span_id": ctx.span_id,
        "caller": ctx.caller.name,
        "model": ctx.route.name,
        "served_model": attempt.route.name if attempt is not None else None,
        "backend": ctx.target.backend if ctx.target else None,
        "endpoint": ctx.endpoint,
        "stream": ctx.stream,
        "status": ctx.status,
        "total_ms": round((time.perf_counter() - ctx.started) * 1000, 3),
        "upstream_ms": round(ctx.upstream_s * 1000, 3) if ctx.target is not None else None,
        "ttft_ms": round(ctx.ttft_s * 1000, 3) if ctx.ttft_s is not None else None,
        "prompt_tokens": _int(usage.get("prompt_tokens")),
        "completion_tokens": _int(usage.get("completion_tokens")),
        "cost_usd": _cost(ctx),
        "cache": ctx.response_headers.get("x-gateway-cache"),
        "guard": _guard(verdict),
        "finish_reasons": ",".join(ctx.finish_reasons) or None,
        "error": ctx.error,
        "prompt": _cut(prompt_text(ctx.body)) if capture else None,
        "answer": _cut(answer.text) if capture and answer is not None else None,
    }
    redactor = ctx.get(ContentRedactor) if capture else None
    if redactor is not None:
        out[REDACT] = redactor.redact
    return out


def redact(record: dict[str, Any]) -> dict[str, Any]:
    """Apply the record's redactor to its content (CPU-heavy: on the writer's thread, never the loop).

    A redactor that fails leaves no content behind: unredacted text is never stored."""
    redactor = record.pop(REDACT, None)
    if redactor is None:
        return record
    for key in ("prompt", "answer"):
        if record.get(key):
            try:
                record[key] = redactor(record[key])
            except Exception:
                record[key] = "[not recorded: redaction failed]"
    return record


def _cost(ctx: RequestContext) -> float | None:
    from gateway.quota import cost  # here: quota imports the runtime, which imports this module

    global _cost
    _cost = cost  # later calls go straight to quota.cost
    return cost(ctx)


def rejected(request_id: str, status: int, error: str | None, started: float | None = None) -> dict[str, Any]:
    """A request turned away before a model was known (bad key, bad JSON, unknown model)."""
    record: dict[str, Any] = dict.fromkeys(COLUMNS)
    record.update(ts=time.time(), request_id=request_id, status=status, error=error, stream=False)
    if started is not None:
        record["total_ms"] = round((time.perf_counter() - started) * 1000, 3)
    return record


def prompt_text(body: dict[str, Any]) -> str:
    """What was sent upstream, as readable text: `role: text` per chat message, or the prompt/input."""
    lines: list[str] = []
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            text = _content_text(message.get("content"))
            lines.append(f"{message.get('role', '?')}: {text}")
    for key in ("prompt", "input"):
        value = body.get(key)
        if isinstance(value, str):
            lines.append(value)
        elif isinstance(value, list):
            lines.extend(v for v in value if isinstance(v, str))
    return "\n".join(lines)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # parts: only the text ones
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _guard(verdict: GuardVerdict | None) -> str | None:
    """The most serious guard verdict (what `gateway.guarding.record` kept), as JSON; never the text."""
    if verdict is None:
        return None
    fields: dict[str, Any] = {"plugin": verdict.plugin, "stage": verdict.stage, "action": verdict.action}
    if verdict.rule is not None:
        fields["rule"] = verdict.rule
    if verdict.score is not None:
        fields["score"] = verdict.score
    return msgspec.json.encode(fields).decode()


def _cut(text: str) -> str:
    return text if len(text) <= MAX_CONTENT_CHARS else text[:MAX_CONTENT_CHARS] + "…[cut]"


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
