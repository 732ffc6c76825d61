"""The rules plugin's phases: thin adapters from requests, answers and streams to `scan`/`apply`."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.guarding import (
    GuardVerdict,
    Stage,
    StreamText,
    TextSlot,
    answer_texts,
    applies,
    blocked_answer,
    blocked_chunk,
    blocked_request,
    chunk_text,
    each_choice,
    message_texts,
    record,
    set_chunk_text,
)
from gateway.plugin import CONTINUE, Emit, Plugin, RequestContext, RequestDecision, StreamDecision
from plugins.rules.config import RulesConfig
from plugins.rules.core import Match, apply, fired, growing, scan, settled_cut, worst


@dataclass(slots=True)
class _Held:
    """One streamed choice: text not yet released, and the tail of what was (context for the next scan)."""

    buffer: StreamText
    tail: str = ""


@dataclass(slots=True)
class _Stream:
    held: dict[int, _Held] = field(default_factory=dict)
    template: dict[str, Any] = field(default_factory=dict)  # id, object, created, model of the last chunk


class Rules(Plugin):
    """Regex and keyword deny rules (block, redact or flag) with an allow-list, on requests and answers."""

    name = "rules"
    Config = RulesConfig
    config: RulesConfig

    def _applies(self, ctx: RequestContext, stage: Stage) -> bool:
        return self.config.ruleset.checks(stage) and applies(ctx, self.config, stage)

    def _inline(self, text: str, start: int = 0) -> bool:
        """Short enough to scan on the event loop (longer texts go to a worker thread)."""
        return len(text) - start <= self.config.inline_chars

    async def _scan(
        self, text: str, stage: Stage, start: int = 0, *, partial: bool = False
    ) -> tuple[list[Match], int | None]:
        """`scan` (and, for a stream, `growing`) on the loop for a short text, else in a worker thread."""
        rules = self.config.ruleset

        def work(concurrent: bool) -> tuple[list[Match], int | None]:
            matches = scan(text, rules, stage, start=start, concurrent=concurrent)
            return matches, growing(text, rules, stage, start=start, concurrent=concurrent) if partial else None

        if self._inline(text, start):
            return work(False)
        return await asyncio.to_thread(work, True)

    def _record(self, ctx: RequestContext, stage: Stage, matches: list[Match]) -> None:
        for (rule, action), count in fired(matches).items():
            record(ctx, GuardVerdict(self.name, stage, action, rule=rule, reason=f"{count} match(es)"))

    def _failed(self, ctx: RequestContext, stage: Stage, exc: Exception) -> bool:
        """Record a scan that could not finish; True if the text must be blocked (on_error: block)."""
        record(ctx, GuardVerdict(self.name, stage, "error", reason=f"scan failed: {exc!r}"))
        return self.config.on_error == "block"

    async def _check(self, ctx: RequestContext, stage: Stage, slots: Iterable[TextSlot]) -> bool:
        """Scan the texts and redact them in place; True if they must be blocked instead."""
        found: list[tuple[TextSlot, list[Match]]] = []
        for slot in slots:
            try:
                if self._inline(slot.text):  # most texts: scanned here, without a coroutine for `_scan`
                    matches = scan(slot.text, self.config.ruleset, stage)
                else:
                    matches, _ = await self._scan(slot.text, stage)
            except TimeoutError as exc:
                if self._failed(ctx, stage, exc):
                    return True
                continue
            if matches:
                found.append((slot, matches))
        if not found:  # nothing matched (the usual case): no verdict to record
            return False
        every = [m for _, matches in found for m in matches]
        if worst(every) == "block":
            self._record(ctx, stage, [m for m in every if m.action == "block"])
            return True
        for slot, matches in found:
            if worst(matches) == "redact":
                slot.replace(apply(slot.text, matches))
        self._record(ctx, stage, every)
        return False

    async def on_request(self, ctx: RequestContext) -> RequestDecision:
        if self._applies(ctx, "input") and await self._check(ctx, "input", message_texts(ctx.body, self.config.roles)):
            return blocked_request()
        return CONTINUE

    async def on_response(self, ctx: RequestContext, completion: dict[str, Any]) -> RequestDecision:
        if self._applies(ctx, "output") and await self._check(ctx, "output", answer_texts(completion)):
            return blocked_answer(completion)
        return CONTINUE

    # --- streams -------------------------------------------------------------------------------------

    def _stream(self, ctx: RequestContext) -> _Stream:
        return ctx.own(self, _Stream)

    async def on_stream_chunk(self, ctx: RequestContext, chunk: dict[str, Any]) -> StreamDecision:
        if not self._applies(ctx, "output"):
            return CONTINUE
        choices = chunk.get("choices") or []
        if len(choices) > 1:  # never seen from OpenAI-style upstreams, but each choice has its own text
            return await each_choice(ctx, chunk, self.on_stream_chunk)
        state = self._stream(ctx)
        state.template = {k: chunk[k] for k in ("id", "object", "created", "model") if k in chunk}
        if not choices:
            return CONTINUE
        choice = choices[0]
        final = bool(choice.get("finish_reason"))
        text = chunk_text(chunk)
        held = state.held.setdefault(int(choice.get("index") or 0), _Held(StreamText(self.config.hold)))
        if not text and not final:
            return CONTINUE  # a role or tool-call delta: nothing to check
        out = await self._release(ctx, held, text, final)
        if out is None:
            return blocked_chunk(ctx, chunk)
        if final and out and not _carries_text(choice):
            return Emit((_text_chunk(chunk, out), chunk))
        if out == text:
            return CONTINUE
        if not out and set(choice.get("delta") or {}) <= {"content"} and not final:
            return Emit(())
        set_chunk_text(chunk, out)
        return Emit((chunk,))

    async def on_stream_end(self, ctx: RequestContext) -> StreamDecision:
        """The upstream ended without a finish chunk for some choice: release (or block) what is held."""
        state = ctx.owned_by(self, _Stream)
        if state is None:
            return CONTINUE
        out: list[dict[str, Any]] = []
        for index, held in state.held.items():
            if not held.buffer.pending:
                continue
            text = await self._release(ctx, held, "", final=True)
            if text is None:
                return blocked_chunk(ctx, state.template)
            if text:
                out.append(_text_chunk({**state.template, "choices": [_choice(ctx, index)]}, text))
        return Emit(tuple(out)) if out else CONTINUE

    async def _release(self, ctx: RequestContext, held: _Held, text: str, final: bool) -> str | None:
        """Push text into the hold-back buffer; the text now safe to send, redacted (None: block)."""
        buffer = held.buffer
        if final:
            released = buffer.push(text) + buffer.flush()
        elif len(buffer.pending) + len(text) < buffer.hold + self.config.release_chars:
            buffer.pending += text  # not enough new text to be worth a scan yet
            return ""
        else:
            released = buffer.push(text)
        window = held.tail + released + buffer.pending
        start = len(held.tail)
        cut = start + len(released)
        try:
            matches, grows = await self._scan(window, "output", start, partial=not final)
        except TimeoutError as exc:
            if self._failed(ctx, "output", exc):
                return None
            matches, grows = [], None
        if not final:
            cut = settled_cut(matches, cut)
            if grows is not None and len(window) - grows <= self.config.hold_max_chars:
                cut = min(cut, grows)
            buffer.pending = window[cut:]  # a match crossing the release point waits for the next chunk
            buffer.released -= start + len(released) - cut
        settled = [m for m in matches if m.end <= cut]
        if worst(settled) == "block":
            self._record(ctx, "output", [m for m in settled if m.action == "block"])
            return None
        self._record(ctx, "output", settled)
        held.tail = window[max(0, cut - self.config.hold) : cut]
        return apply(window[start:cut], [_shift(m, -start) for m in settled])


def _shift(m: Match, by: int) -> Match:
    return Match(m.rule, m.action, m.start + by, m.end + by, m.replacement)


def _carries_text(choice: dict[str, Any]) -> bool:
    delta = choice.get("delta")
    return isinstance(choice.get("text"), str) or (isinstance(delta, dict) and "content" in delta)


def _choice(ctx: RequestContext, index: int) -> dict[str, Any]:
    if ctx.endpoint == "chat":
        return {"index": index, "delta": {"content": ""}, "finish_reason": None}
    return {"index": index, "text": "", "finish_reason": None}


def _text_chunk(chunk: dict[str, Any], text: str) -> dict[str, Any]:
    """A copy of `chunk` carrying only `text` (released before the chunk that ends the choice)."""
    out = copy.deepcopy(chunk)
    out.pop("usage", None)
    choice = out["choices"][0]
    choice["finish_reason"] = None
    if isinstance(choice.get("delta"), dict) or "text" not in choice:
        choice["delta"] = {"content": text}
    else:
        choice["text"] = text
    return out
