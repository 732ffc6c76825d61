"""guardrails_ai's phases: texts go to the worker, its reports come back as decisions (`core.decide`).

start            launch the worker (its own venv); refused validators fail the policy, a worker that
                 cannot start leaves on_error in charge (and /ready says so)
on_request       every checked message in one round trip: block, or rewrite with the validators' fixes
on_response      the answer's texts, the same way (a block becomes a content_filter answer)
on_stream_chunk  streamed text checked a sentence at a time, released once checked
on_stream_end    check and release what is still held
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from gateway.guarding import (
    GuardVerdict,
    Stage,
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
from gateway.plugin import (
    CONTINUE,
    Emit,
    Plugin,
    Readiness,
    RequestContext,
    RequestDecision,
    StreamDecision,
)
from plugins.guardrails_ai.client import WorkerClient, WorkerConfigError, WorkerUnavailable, log
from plugins.guardrails_ai.config import GuardrailsAiConfig
from plugins.guardrails_ai.core import Outcome, ProtocolError, Report, decide, most_serious, segment_end
from plugins.guardrails_ai.process import resolve_python


@dataclass(slots=True)
class _Stream:
    pending: dict[int, str] = field(default_factory=dict)  # per choice index: text not yet checked
    template: dict[str, Any] = field(default_factory=dict)  # id, object, created, model of the last chunk
    unchecked: bool = False  # the worker failed once with on_error allow: the rest passes unchecked


class GuardrailsAi(Plugin):
    """Runs guardrails-ai validators (in a worker process of their own) on requests and answers."""

    name = "guardrails_ai"
    Config = GuardrailsAiConfig
    config: GuardrailsAiConfig

    def __init__(self, config: GuardrailsAiConfig) -> None:
        super().__init__(config)
        init = {
            "paths": list(config.paths),
            "modules": list(config.modules),
            "runner": config.runner,
            "validators": [{"use": v.use, "args": v.args, "on_fail": v.on_fail} for v in config.validators],
        }
        self.worker = WorkerClient(
            resolve_python(config.python),
            init,
            start_timeout_s=config.start_timeout_s,
            hang_s=max(5.0, 3 * config.timeout_s),
        )

    async def start(self) -> None:
        try:
            await self.worker.start()
        except WorkerConfigError:
            await self.worker.close()
            raise
        except WorkerUnavailable as exc:
            log.warning("guardrails_ai: worker unavailable, on_error (%s) applies: %s", self.config.on_error, exc)

    async def close(self) -> None:
        await self.worker.close()

    async def ready(self) -> Readiness | None:
        if self.worker.up:
            return Readiness(True, f"guardrails worker {self.worker.pid} up (guardrails {self.worker.version})")
        allow = self.config.on_error == "allow"
        mode = "texts pass unchecked" if allow else "every checked text is blocked"
        return Readiness(allow, f"guardrails worker down, {mode}: {self.worker.last_error}", degraded=True)

    # --- checking -------------------------------------------------------------------------------------------

    async def _check(self, ctx: RequestContext, stage: Stage, texts: list[str]) -> list[Outcome] | None:
        """The outcome of each text, recorded as verdicts; None when the worker could not tell."""
        indices = self.config.stage_validators(stage)
        try:
            raw = await self.worker.validate(indices, texts, self.config.timeout_s)
            reports = [Report.from_wire(r, len(self.config.validators)) for r in raw]
        except (WorkerUnavailable, ProtocolError) as exc:
            record(ctx, GuardVerdict(self.name, stage, "error", reason=f"worker: {exc}"))
            return None
        outcomes = [decide(text, report, self.config.validators) for text, report in zip(texts, reports, strict=True)]
        for outcome in outcomes:
            if outcome.action == "error":
                record(ctx, GuardVerdict(self.name, stage, "error", reason=outcome.error))
            for fired in outcome.fired:
                record(ctx, GuardVerdict(self.name, stage, fired.action, rule=fired.validator, reason=fired.reason))
        if not any(o.fired or o.action == "error" for o in outcomes):
            record(ctx, GuardVerdict(self.name, stage, "allow"))
        return outcomes

    async def _texts(self, ctx: RequestContext, stage: Stage, slots: list[TextSlot]) -> bool:
        """Check the texts and apply fixes in place; True if they must be blocked."""
        slots = [s for s in slots if s.text.strip()]
        if not slots or not self.config.stage_validators(stage):
            return False
        outcomes = await self._check(ctx, stage, [s.text for s in slots])
        if outcomes is None:
            return self.config.on_error == "block"
        worst = most_serious(outcomes)
        if worst == "block" or (worst == "error" and self.config.on_error == "block"):
            return True
        for slot, outcome in zip(slots, outcomes, strict=True):
            if outcome.action == "redact":
                slot.replace(outcome.text)
        return False

    async def on_request(self, ctx: RequestContext) -> RequestDecision:
        if applies(ctx, self.config, "input") and await self._texts(
            ctx, "input", list(message_texts(ctx.body, self.config.roles))
        ):
            return blocked_request()
        return CONTINUE

    async def on_response(self, ctx: RequestContext, completion: dict[str, Any]) -> RequestDecision:
        if applies(ctx, self.config, "output") and await self._texts(ctx, "output", list(answer_texts(completion))):
            return blocked_answer(completion)
        return CONTINUE

    # --- streams -------------------------------------------------------------------------------------------

    def _stream(self, ctx: RequestContext) -> _Stream:
        return ctx.own(self, _Stream)

    def _streamed(self, ctx: RequestContext) -> bool:
        return applies(ctx, self.config, "output") and bool(self.config.stage_validators("output"))

    async def on_stream_chunk(self, ctx: RequestContext, chunk: dict[str, Any]) -> StreamDecision:
        if not self._streamed(ctx):
            return CONTINUE
        choices = chunk.get("choices") or []
        if len(choices) > 1:
            return await each_choice(ctx, chunk, self.on_stream_chunk)
        state = self._stream(ctx)
        state.template = {k: chunk[k] for k in ("id", "object", "created", "model") if k in chunk}
        if not choices:
            return CONTINUE
        choice = choices[0]
        index, final = int(choice.get("index") or 0), bool(choice.get("finish_reason"))
        text = chunk_text(chunk)
        if not text and not final:
            return CONTINUE  # a role or tool-call delta: nothing to check
        pending = state.pending.get(index, "") + text
        cut = len(pending) if final else segment_end(pending, self.config.stream_chars)
        state.pending[index] = pending[cut:]
        out = await self._segment(ctx, state, pending[:cut])
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

    async def _segment(self, ctx: RequestContext, state: _Stream, text: str) -> str | None:
        """One checked piece of a stream: the text to release (fixed), or None to end the stream."""
        if not text.strip() or state.unchecked:
            return text
        outcomes = await self._check(ctx, "output", [text])
        failed = outcomes is None or outcomes[0].action == "error"
        if failed and self.config.on_error == "allow":
            state.unchecked = True  # no timeout_s wait per sentence for a worker that is down or stuck
            return text
        if outcomes is None or outcomes[0].action in ("block", "error"):
            return None
        return outcomes[0].text

    async def on_stream_end(self, ctx: RequestContext) -> StreamDecision:
        """The upstream ended without a finish chunk for some choice: check and release what is held."""
        state = ctx.owned_by(self, _Stream)
        if state is None:
            return CONTINUE
        out: list[dict[str, Any]] = []
        for index, pending in state.pending.items():
            if not pending:
                continue
            text = await self._segment(ctx, state, pending)
            if text is None:
                return blocked_chunk(ctx, state.template)
            choice: dict[str, Any] = {"index": index, "finish_reason": None}
            choice.update({"delta": {"content": text}} if ctx.endpoint == "chat" else {"text": text})
            out.append({**state.template, "choices": [choice]})
        state.pending.clear()
        return Emit(tuple(out)) if out else CONTINUE


def _carries_text(choice: dict[str, Any]) -> bool:
    delta = choice.get("delta")
    return isinstance(choice.get("text"), str) or (isinstance(delta, dict) and "content" in delta)


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
