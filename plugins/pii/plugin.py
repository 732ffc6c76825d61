"""pii's phases: thin adapters between the request context and `detect` / `transform`.

    start            build (or reuse) the Presidio analyzer in a thread; a failure is kept for on_error
    on_request       every checked message: block the request, or rewrite the text before it goes upstream
    on_response      the answer: block it, transform new PII, restore the request's pseudonyms
    on_stream_chunk  streamed text held back `hold_chars`, released once checked, never splitting PII
    on_stream_end    release (or block) what is still held

Per-request state (`_PiiState`: the pseudonym vault and the stream buffers) lives on the context
(`ctx.own`), one per pii entry of the chain. Every analysis runs in a worker thread: spaCy must not stall the loop.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from presidio_analyzer import AnalyzerEngine

from gateway.guarding import (
    ContentRedactor,
    GuardVerdict,
    Stage,
    StreamText,
    answer_texts,
    applies,
    blocked_answer,
    blocked_chunk,
    blocked_request,
    chunk_text,
    message_texts,
    record,
    set_chunk_text,
)
from gateway.plugin import CONTINUE, Emit, Plugin, Readiness, RequestContext, RequestDecision, StreamDecision
from plugins.pii.config import PiiConfig
from plugins.pii.core import Finding, Vault, detect, protect_answer, release_point, transform, worth_analysing
from plugins.pii.engine import shared_analyzer

log = logging.getLogger("gateway.pii")


@dataclass(slots=True)
class _Stream:
    """One streamed answer as this entry sees it."""

    check: bool  # look for new PII (output stage), or only restore pseudonyms
    buffers: dict[int, StreamText] = field(default_factory=dict)  # per choice index
    template: dict[str, Any] = field(default_factory=dict)  # id, object, created, model of the last chunk
    found: list[Finding] = field(default_factory=list)  # what was transformed, for the verdict
    failed: bool = False


@dataclass(slots=True)
class _PiiState:
    vault: Vault = field(default_factory=Vault)
    stream: _Stream | None = None


class _AnalysisFailed(Exception):
    pass


class PiiGuard(Plugin):
    """Redacts, masks, pseudonymizes or blocks PII (Presidio, Korean RRNs and phones) in requests and answers."""

    name = "pii"
    Config = PiiConfig
    config: PiiConfig

    def __init__(self, config: PiiConfig) -> None:
        super().__init__(config)
        self.analyzer: AnalyzerEngine | None = None
        self.load_error: str | None = None

    async def start(self) -> None:
        cfg = self.config
        try:
            self.analyzer = await asyncio.to_thread(shared_analyzer, cfg.model, cfg.language)
        except Exception as exc:  # on_error decides what requests get; the policy still loads
            self.load_error = str(exc)
            log.error("pii: analyzer unavailable, every check will %s (on_error): %s", cfg.on_error, exc)

    async def ready(self) -> Readiness | None:
        if self.load_error is None:
            return Readiness(True, f"analyzer loaded (spaCy model {self.config.model})")
        allow = self.config.on_error == "allow"
        mode = "texts pass unchecked" if allow else "every checked request is blocked"
        return Readiness(allow, f"analyzer unavailable, {mode}: {self.load_error}", degraded=True)

    # --- phases -----------------------------------------------------------------------------------------

    def redact_for_record(self, text: str) -> str:
        """Text as traces and the request log may keep it: every finding as <ENTITY> (runs in a thread)."""
        if self.analyzer is None:
            return "<REDACTED>" if text.strip() else text
        findings = detect(text, self.config, self.analyzer)
        return "".join(_typed(text, findings))

    async def on_request(self, ctx: RequestContext) -> RequestDecision:
        cfg = self.config
        ctx.put(ContentRedactor(self.redact_for_record))
        if not applies(ctx, cfg, "input"):
            return CONTINUE
        slots = [slot for slot in message_texts(ctx.body, cfg.roles) if slot.text.strip()]
        if not slots:
            return CONTINUE
        try:
            found = await self._detect([slot.text for slot in slots])
        except _AnalysisFailed as exc:
            self._record_error(ctx, "input", str(exc))
            return CONTINUE if cfg.on_error == "allow" else blocked_request()
        self._record(ctx, "input", (f for findings in found for f in findings))
        if not any(found):
            return CONTINUE
        if cfg.action == "block":
            return blocked_request()
        vault = self._state(ctx).vault
        for slot, findings in zip(slots, found, strict=True):
            if findings:
                slot.replace(transform(slot.text, findings, cfg, vault))
        return CONTINUE

    async def on_response(self, ctx: RequestContext, completion: dict[str, Any]) -> RequestDecision:
        cfg = self.config
        vault = self._state(ctx).vault
        check = applies(ctx, cfg, "output")
        if not check and not vault:
            return CONTINUE
        slots = [slot for slot in answer_texts(completion) if slot.text]
        found: list[list[Finding]] = [[] for _ in slots]
        if check:
            try:
                found = await self._detect([slot.text for slot in slots])
            except _AnalysisFailed as exc:
                self._record_error(ctx, "output", str(exc))
                if cfg.on_error == "block":
                    return blocked_answer(completion)
            else:
                self._record(ctx, "output", (f for findings in found for f in findings))
                if cfg.action == "block" and any(found):
                    return blocked_answer(completion)
        for slot, findings in zip(slots, found, strict=True):
            text = protect_answer(slot.text, findings, cfg, vault)
            if text != slot.text:
                slot.replace(text)
        return CONTINUE

    async def on_stream_chunk(self, ctx: RequestContext, chunk: dict[str, Any]) -> StreamDecision:
        stream = self._stream(ctx)
        if stream is None:
            return CONTINUE
        stream.template = {k: chunk[k] for k in ("id", "object", "created", "model") if k in chunk}
        choices = chunk.get("choices") or [{}]
        index = choices[0].get("index", 0)
        finishing = any(choice.get("finish_reason") for choice in choices)
        text = chunk_text(chunk)
        if not text and not finishing:
            return CONTINUE  # the role chunk, a tool call: nothing to hold
        cfg = self.config
        buffer = stream.buffers.setdefault(index, StreamText(cfg.hold_chars))
        if not finishing and len(buffer.pending) + len(text) <= cfg.hold_chars + cfg.stream_batch_chars:
            buffer.pending += text  # not enough new text to be worth an analysis yet
            return Emit(())
        out = buffer.push(text)
        if not finishing and not out:
            return Emit(())
        released = await self._release(ctx, stream, buffer, out, final=finishing)
        if released is None:
            return blocked_chunk(ctx, chunk)
        if not finishing:
            if not released:
                return Emit(())
            set_chunk_text(chunk, released)
            return Emit((chunk,))
        set_chunk_text(chunk, "")
        if not released:
            return Emit((chunk,))
        head = copy.deepcopy(chunk)  # the text first, then the finish reason on its own
        for choice in head.get("choices") or []:
            choice["finish_reason"] = None
        set_chunk_text(head, released)
        return Emit((head, chunk))

    async def on_stream_end(self, ctx: RequestContext) -> StreamDecision:
        stream = self._stream(ctx)
        if stream is None:
            return CONTINUE
        out: list[dict[str, Any]] = []
        for index, buffer in sorted(stream.buffers.items()):
            if not buffer.pending:
                continue
            released = await self._release(ctx, stream, buffer, "", final=True)
            if released is None:
                return blocked_chunk(ctx, stream.template or None)
            if released:
                out.append(self._text_chunk(ctx, stream, index, released))
        if stream.check and not stream.failed:
            self._record(ctx, "output", stream.found)
        return Emit(tuple(out)) if out else CONTINUE

    # --- helpers ----------------------------------------------------------------------------------------

    async def _release(
        self, ctx: RequestContext, stream: _Stream, buffer: StreamText, out: str, *, final: bool
    ) -> str | None:
        """Check the held window, give back what may leave now (all of it when final); None: block.

        `out` is what the buffer just offered to release; the window is that plus what it still holds,
        so PII across the border is seen whole and the cut moves back before it.
        """
        cfg = self.config
        vault = self._state(ctx).vault
        window = out + buffer.pending
        if not window:
            return ""
        findings: list[Finding] = []
        if stream.check and not stream.failed:
            try:
                findings = (await self._detect([window]))[0]
            except _AnalysisFailed as exc:
                stream.failed = True
                self._record_error(ctx, "output", str(exc))
                if cfg.on_error == "block":
                    return None
        if findings and cfg.action == "block":
            self._record(ctx, "output", findings)
            return None
        cut = len(window) if final else release_point(window, len(out), findings, placeholders=bool(vault))
        buffer.pending = window[cut:]
        buffer.released -= len(out) - cut
        kept = [f for f in findings if f.end <= cut]
        stream.found.extend(kept)
        return protect_answer(window[:cut], kept, cfg, vault)

    async def _detect(self, texts: list[str]) -> list[list[Finding]]:
        if self.analyzer is None:
            raise _AnalysisFailed(f"analyzer unavailable: {self.load_error}")
        analyzer, cfg = self.analyzer, self.config
        if not any(worth_analysing(text, cfg.entities) for text in texts):
            return [[] for _ in texts]  # a thread hop costs more than this check, and it cannot find anything
        try:
            return await asyncio.to_thread(lambda: [detect(text, cfg, analyzer) for text in texts])
        except Exception as exc:
            log.exception("pii: analysis failed")
            raise _AnalysisFailed(f"analysis failed: {type(exc).__name__}: {exc}") from exc

    def _state(self, ctx: RequestContext) -> _PiiState:
        return ctx.own(self, _PiiState)

    def _stream(self, ctx: RequestContext) -> _Stream | None:
        """This request's stream state, made at its first chunk; None when there is nothing to do."""
        state = self._state(ctx)
        if state.stream is None:
            check = applies(ctx, self.config, "output")
            if not check and not state.vault:
                return None
            state.stream = _Stream(check=check)
        return state.stream

    def _text_chunk(self, ctx: RequestContext, stream: _Stream, index: int, text: str) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": index, "finish_reason": None}
        if ctx.endpoint == "chat":
            choice["delta"] = {"content": text}
        else:
            choice["text"] = text
        kind = "chat.completion.chunk" if ctx.endpoint == "chat" else "text_completion"
        return {
            "id": f"gw-{ctx.request_id}",
            "object": kind,
            "created": 0,
            "model": "",
            **stream.template,
            "choices": [choice],
        }

    def _record(self, ctx: RequestContext, stage: Stage, findings: Iterable[Finding]) -> None:
        best: dict[str, float] = {}
        count = 0
        for f in findings:
            best[f.entity] = max(best.get(f.entity, 0.0), f.score)
            count += 1
        if not best:
            record(ctx, GuardVerdict(self.name, stage, "allow"))
            return
        verdict = GuardVerdict(
            self.name,
            stage,
            self.config.action,
            rule=",".join(sorted(best)),
            score=max(best.values()),
            reason=f"{count} finding(s)",
        )
        record(ctx, verdict)

    def _record_error(self, ctx: RequestContext, stage: Stage, reason: str) -> None:
        action = "error" if self.config.on_error == "allow" else "block"
        record(ctx, GuardVerdict(self.name, stage, action, rule="analyzer", reason=f"{reason}; {action} by policy"))


def _typed(text: str, findings: list[Finding]) -> Iterable[str]:
    at = 0
    for f in findings:
        yield text[at : f.start]
        yield f"<{f.entity}>"
        at = f.end
    yield text[at:]
