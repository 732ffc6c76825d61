"""llm_judge's phases: thin adapters between the request context and the judge model.

Per-request state lives on the context (`ctx.own(self, _Judging)`, one per llm_judge entry of the chain).

    on_request       parallel: start the judge as a veto beside the upstream call; sequential: await it
    on_response      judge a whole answer; a block empties it with finish_reason content_filter
    on_stream_chunk  hold: keep every chunk back; end: keep back only the chunks that finish a choice
    on_stream_end    judge the whole streamed text, then release the held chunks or end the stream blocked
    on_end           cancel a judge nobody waited for (the request failed or was answered early)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway import metrics
from gateway.errors import GatewayError, UpstreamTimeout
from gateway.guarding import (
    GuardVerdict,
    Stage,
    answer_texts,
    applies,
    blocked_answer,
    blocked_chunk,
    blocked_request,
    record,
)
from gateway.plugin import CONTINUE, Emit, Plugin, RequestContext, RequestDecision, Respond, StreamDecision
from gateway.policy import did_you_mean
from plugins.llm_judge.config import LlmJudgeConfig
from plugins.llm_judge.judging import build_judge_request, parse_verdict, request_text

log = logging.getLogger("gateway.llm_judge")
Outcome = Literal["allow", "block", "timeout", "error", "unparseable"]

JUDGE_SECONDS = metrics.histogram(
    "gateway_llm_judge_seconds",
    "Time to the judge model's verdict, by stage and outcome (allow, block, timeout, error, unparseable).",
    ("stage", "outcome"),
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


class JudgeModelMissing(LookupError):
    """The policy names a judge model that is not one of its models."""


@dataclass(slots=True)
class _Judging:
    """One request's judging by one llm_judge entry."""

    input_veto: asyncio.Task[Respond | None] | None = None
    texts: dict[int, list[str]] = field(default_factory=dict)  # streamed text per choice index
    held: list[dict[str, Any]] = field(default_factory=list)  # chunks not yet released


class LlmJudge(Plugin):
    """Asks a model of the policy whether the request (and/or the answer) breaks a written policy."""

    name = "llm_judge"
    Config = LlmJudgeConfig
    config: LlmJudgeConfig

    async def start(self) -> None:
        known = _policy_models(self.services)
        if known is not None and self.config.model not in known:
            raise JudgeModelMissing(
                f"llm_judge: the judge model {self.config.model!r} is not a model of this policy"
                f"{did_you_mean(self.config.model, known)}; add it under models: or fix llm_judge's model:"
            )

    # --- the request --------------------------------------------------------------------------------

    async def on_request(self, ctx: RequestContext) -> RequestDecision:
        if not applies(ctx, self.config, "input"):
            return CONTINUE
        text = request_text(ctx.body, self.config.roles)
        if not text:
            return CONTINUE
        if not self.config.parallel:
            return await self._veto(ctx, text) or CONTINUE
        veto = asyncio.ensure_future(self._veto(ctx, text))
        self._judging(ctx).input_veto = veto
        ctx.vetoes.append(veto)
        return CONTINUE

    async def _veto(self, ctx: RequestContext, text: str) -> Respond | None:
        return blocked_request() if await self._blocks(ctx, text, "input") else None

    async def _unheard_veto(self, ctx: RequestContext) -> Respond | None:
        """The input verdict, where the gateway never waited for it.

        The gateway races vetoes against the upstream call only; an answer a later plugin gives early (a
        cache hit) would otherwise leave without the verdict. Once the race was run this is already done.
        """
        judging = self._judging(ctx)
        veto, judging.input_veto = judging.input_veto, None
        if veto is None:
            return None
        try:
            return await veto
        except asyncio.CancelledError:
            if veto.cancelled():  # cancelled by the gateway after the race: nothing left to say
                return None
            raise

    # --- the answer ---------------------------------------------------------------------------------

    async def on_response(self, ctx: RequestContext, completion: dict[str, Any]) -> RequestDecision:
        if (early := await self._unheard_veto(ctx)) is not None:
            return early
        if not applies(ctx, self.config, "output"):
            return CONTINUE
        text = "\n\n".join(slot.text for slot in answer_texts(completion) if slot.text.strip())
        if text and await self._blocks(ctx, text, "output"):
            return blocked_answer(completion)
        return CONTINUE

    async def on_stream_chunk(self, ctx: RequestContext, chunk: dict[str, Any]) -> StreamDecision:
        if await self._unheard_veto(ctx) is not None:
            return blocked_chunk(ctx, chunk)  # a replayed early answer: the stream is open, end it blocked
        if not applies(ctx, self.config, "output"):
            return CONTINUE
        judging = self._judging(ctx)
        finishes = False
        for choice in chunk.get("choices") or []:
            judging.texts.setdefault(choice.get("index", 0), []).append(_choice_text(choice))
            finishes = finishes or bool(choice.get("finish_reason"))
        if self.config.output_stream_mode == "hold" or finishes:
            judging.held.append(chunk)
            return Emit()
        return CONTINUE

    async def on_stream_end(self, ctx: RequestContext) -> StreamDecision:
        if not applies(ctx, self.config, "output"):
            return CONTINUE
        judging = self._judging(ctx)
        held, judging.held = judging.held, []
        text = "\n\n".join(t for pieces in judging.texts.values() if (t := "".join(pieces)).strip())
        flag_only = self.config.output_stream_mode == "end"
        if not text or not await self._blocks(ctx, text, "output", flag_only=flag_only):
            return Emit(tuple(held))
        if self.config.output_stream_mode == "hold":
            return blocked_chunk(ctx, held[0] if held else None)
        # The text is out already: all that is left is to say so in the finish reason.
        flagged = tuple(_flagged(chunk) for chunk in held)
        return Emit(flagged or (blocked_chunk(ctx, None).body,))

    async def on_end(self, ctx: RequestContext) -> None:
        judging = ctx.owned_by(self, _Judging, remove=True)
        if judging is not None and judging.input_veto is not None and not judging.input_veto.done():
            judging.input_veto.cancel()

    # --- asking the judge ---------------------------------------------------------------------------

    async def _blocks(self, ctx: RequestContext, text: str, stage: Stage, *, flag_only: bool = False) -> bool:
        """Whether `text` is blocked: the judge's verdict, or the policy's choice when there is none.

        flag_only: the text is out already, so a block is recorded as a flag.
        """
        cfg = self.config
        started = time.perf_counter()
        outcome: Outcome
        detail = ""
        try:
            async with asyncio.timeout(cfg.timeout_s):
                answer = await self.services.complete(
                    cfg.model, build_judge_request(text, cfg, stage), caller=f"{self.name}:{ctx.caller.name}"
                )
            said = "\n".join(slot.text for slot in answer_texts(answer))
            verdict = parse_verdict(said)
            outcome = verdict or "unparseable"
            detail = said[:200]
        except (TimeoutError, UpstreamTimeout) as exc:
            outcome, detail = "timeout", str(exc) or f"no verdict within timeout_s={cfg.timeout_s:g}"
        except GatewayError as exc:
            outcome, detail = "error", exc.message
        except Exception as exc:  # the judge's failure is the policy's on_error case, never the client's 500
            log.exception("request %s: llm_judge call failed", ctx.request_id)
            outcome, detail = "error", repr(exc)
        JUDGE_SECONDS.labels(stage, outcome).observe(time.perf_counter() - started)
        if outcome == "allow" or outcome == "block":
            blocked, rule, reason = outcome == "block", "judge", detail
        else:
            fallback = (cfg.on_timeout or cfg.on_error) if outcome == "timeout" else cfg.on_error
            blocked, rule, reason = fallback == "block", outcome, f"judge {outcome} ({detail}); {fallback} by policy"
        action = ("flag" if flag_only else "block") if blocked else ("allow" if rule == "judge" else "error")
        record(ctx, GuardVerdict(self.name, stage, action, rule=rule, reason=reason))
        return blocked

    def _judging(self, ctx: RequestContext) -> _Judging:
        return ctx.own(self, _Judging)


def _policy_models(services: Any) -> Collection[str] | None:
    """The policy's model names, or None when they cannot be known (the plugin was built outside a runtime).

    Services offers no listing of models yet, so this reads the runtime's routes it wraps.
    """
    routes = getattr(getattr(services, "_runtime", None), "routes", None)
    return routes.keys() if isinstance(routes, Mapping) else None


def _choice_text(choice: dict[str, Any]) -> str:
    delta = choice.get("delta")
    if isinstance(delta, dict):
        content = delta.get("content")
        return content if isinstance(content, str) else ""
    text = choice.get("text")
    return text if isinstance(text, str) else ""


def _flagged(chunk: dict[str, Any]) -> dict[str, Any]:
    """A finishing chunk, its text withheld and its finish reason content_filter."""
    choices = []
    for choice in chunk.get("choices") or []:
        choice = {**choice}
        if isinstance(choice.get("delta"), dict):
            choice["delta"] = {k: v for k, v in choice["delta"].items() if k not in ("content", "tool_calls")}
        if "text" in choice:
            choice["text"] = ""
        if choice.get("finish_reason"):
            choice["finish_reason"] = "content_filter"
        choices.append(choice)
    return {**chunk, "choices": choices}
