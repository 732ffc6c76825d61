"""The embedding_guard plugin: a thin adapter from the phases to `Detector` and `decide`.

Streamed answers (when `apply_to` has output) are held back until checked, so no unchecked text reaches the
client. `stream_check: sentence` releases the held chunks at each sentence end, once the new sentence (alone,
and joined to the one before it) has passed: the client waits for the end of each sentence plus one check,
and an answer costs two embeddings per sentence. `stream_check: end` holds the whole answer and checks it
once: cheapest, but the client sees nothing until the upstream has finished.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from gateway import metrics
from gateway.embeddings import Embedder, EmbedderError
from gateway.guarding import (
    GuardVerdict,
    Stage,
    answer_texts,
    applies,
    blocked_answer,
    blocked_chunk,
    blocked_request,
    chunk_text,
    message_texts,
    record,
)
from gateway.plugin import (
    CONTINUE,
    Emit,
    Plugin,
    Readiness,
    RequestContext,
    RequestDecision,
    Respond,
    StreamDecision,
)
from plugins.embedding_guard.config import EmbeddingGuardConfig
from plugins.embedding_guard.detect import Detection, Matrix, decide, ends_sentence, sentences, strongest
from plugins.embedding_guard.detector import Detector
from plugins.embedding_guard.examples import ExampleSet, collect
from plugins.embedding_guard.fit_cache import default_directory
from plugins.embedding_guard.trained import trained_contrast

T = TypeVar("T")
OFF_LOOP_CHARS = 2000  # sentence splitting of longer texts runs on a thread
# Scoring more text than this runs on a thread: the classifier's n-grams cost about 0.1 ms per 100 characters.
CHECK_ON_LOOP_CHARS = 200
# Example sets already embedded in this process, by (model, texts): a policy reload, or several models
# using the same preset, do not embed them again. Bounded: a few sets of a few hundred vectors each.
_EMBEDDED: OrderedDict[tuple[str | None, tuple[str, ...]], Matrix] = OrderedDict()
_EMBEDDED_MAX = 8
# Detectors fitted in this process, by (model, example sets): the contrast's fit is not repeated either (and across
# processes, the fitted contrast is read back from the disk cache: fit_cache.py).
_FITTED: OrderedDict[tuple[str | None, ExampleSet, bool], Detector] = OrderedDict()
_FITTED_MAX = 4

SIMILARITY = metrics.histogram(
    "gateway_embedding_guard_similarity",
    "Similarity of each checked request or answer to its nearest attack example.",
    ("stage", "view"),
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
)


@dataclass(slots=True)
class _HeldStream:
    """A streamed answer's chunks not yet released, and the text they carry."""

    chunks: list[dict[str, Any]] = field(default_factory=list)
    pending: str = ""
    context: str = ""  # the last sentence already checked, read again with the next one
    quiet: GuardVerdict | None = None  # the strongest "allow" so far, recorded once at the end
    loud: bool = False  # a flag or error was recorded: no "allow" at the end


def latest_turn(body: dict[str, Any]) -> dict[str, Any]:
    """The body with only the messages after the last assistant message (the user's turn, tool results)."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return body
    start = 0
    for i, message in enumerate(messages):
        if isinstance(message, dict) and message.get("role") == "assistant":
            start = i + 1
    return {**body, "messages": messages[start:]}


class EmbeddingGuard(Plugin):
    """Blocks or flags requests (and answers) close to known attacks or denied topics."""

    name = "embedding_guard"
    Config = EmbeddingGuardConfig
    config: EmbeddingGuardConfig

    def __init__(self, config: EmbeddingGuardConfig) -> None:
        super().__init__(config)
        self.embedder = Embedder(config.model_path, max_batch=config.max_batch)
        self.detector: Detector | None = None
        self._prefetching: set[asyncio.Future[Any]] = set()

    async def start(self) -> None:
        cfg = self.config
        await self.embedder.start()
        try:
            examples = await asyncio.to_thread(
                collect,
                examples=cfg.examples,
                examples_file=cfg.examples_file,
                preset=cfg.preset,
                benign_examples=cfg.benign_examples,
                benign_file=cfg.benign_file,
            )
            key = (cfg.model_path, examples, cfg.uses_trained)
            if key in _FITTED:
                _FITTED.move_to_end(key)
            else:
                attacks = await self._embed_all(examples.attacks)
                benign = await self._embed_all(examples.benign)
                trained = None
                if cfg.uses_trained and cfg.preset is not None:
                    trained = await asyncio.to_thread(trained_contrast, cfg.preset)
                _FITTED[key] = await asyncio.to_thread(
                    Detector, examples, attacks, benign, default_directory(), trained
                )
                while len(_FITTED) > _FITTED_MAX:
                    _FITTED.popitem(last=False)
            self.detector = _FITTED[key]
        except BaseException:
            await self.embedder.close()
            raise

    async def close(self) -> None:
        await self.embedder.close()

    async def ready(self) -> Readiness | None:
        if self.detector is None:
            return Readiness(False, "example sets not embedded yet")
        examples = self.detector.examples
        return Readiness(True, f"{len(examples.attacks)} attack and {len(examples.benign)} benign examples")

    async def _embed_all(self, texts: tuple[str, ...]) -> Matrix:
        key = (self.config.model_path, texts)
        if key in _EMBEDDED:
            _EMBEDDED.move_to_end(key)
            return _EMBEDDED[key]
        vectors = await asyncio.gather(*(self.embedder.embed(text) for text in texts))
        width = self.embedder.dimension
        matrix = np.vstack(vectors).astype(np.float32) if vectors else np.zeros((0, width), dtype=np.float32)
        matrix.flags.writeable = False
        _EMBEDDED[key] = matrix
        while len(_EMBEDDED) > _EMBEDDED_MAX:
            _EMBEDDED.popitem(last=False)
        return matrix

    async def _detect(self, texts: list[str]) -> Detection | None:
        detector, cfg = self.detector, self.config
        assert detector is not None, "start() was not called"
        chars = sum(len(t) for t in texts)
        units = await _maybe_off_loop(chars > OFF_LOOP_CHARS, detector.units, texts, cfg.max_windows, cfg.non_latin)
        if not units:
            return None
        async with asyncio.timeout(cfg.embed_timeout_ms / 1000):
            vectors = await asyncio.gather(*(self.embedder.embed(u.text) for u in units))
        lexical = any(u.view == "lexical" for u in units)
        off_loop = lexical or sum(len(u.text) for u in units) > CHECK_ON_LOOP_CHARS
        detections = await _maybe_off_loop(off_loop, detector.check, units, vectors)
        return strongest(detections, cfg)

    async def _verdict(self, stage: Stage, texts: list[str]) -> GuardVerdict | None:
        """Check the texts: allow, block, flag, or error (None: nothing to check)."""
        cfg = self.config
        try:
            found = await self._detect(texts)
        except (EmbedderError, TimeoutError) as exc:
            action = "block" if cfg.on_error == "block" else "error"
            return GuardVerdict(self.name, stage, action, reason=f"embedding failed: {exc or type(exc).__name__}")
        if found is None:
            return None
        assert self.detector is not None
        SIMILARITY.labels(stage, found.view).observe(max(found.score, 0.0))
        rule, example = self.detector.describe(found)
        action = cfg.action if decide(found, cfg) else "allow"
        reason = (
            f"{found.view}: margin {found.margin:+.3f} over benign, vote {found.vote:+.3f}, "
            f"contrast {found.likelihood:.2f}; "
            f"nearest example {example[:80]!r}"
        )
        return GuardVerdict(self.name, stage, action, rule, round(found.score, 4), reason)

    def _input_texts(self, ctx: RequestContext) -> list[str] | None:
        cfg = self.config
        if ctx.endpoint == "embeddings" or not applies(ctx, cfg, "input"):
            return None
        body = ctx.body if cfg.whole_conversation else latest_turn(ctx.body)
        return [slot.text for slot in message_texts(body, cfg.roles)]

    def prefetch(self, ctx: RequestContext) -> None:
        """Start embedding the request's texts while the plugins before this one (pii) run; `on_request`
        asks the embedder for the same texts and waits for these vectors (a text an earlier plugin has
        changed by then is embedded anew, and the request is judged as it goes upstream)."""
        texts = self._input_texts(ctx)
        detector = self.detector
        if not texts or detector is None or sum(len(t) for t in texts) > OFF_LOOP_CHARS:
            return
        units = detector.units(texts, self.config.max_windows, self.config.non_latin)
        for unit in units:
            task = asyncio.ensure_future(self.embedder.embed(unit.text))
            self._prefetching.add(task)  # the loop keeps only a weak reference to a task
            task.add_done_callback(self._prefetched)

    def _prefetched(self, task: asyncio.Future[Any]) -> None:
        self._prefetching.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved here; a failure surfaces in on_request's own call

    async def on_request(self, ctx: RequestContext) -> RequestDecision:
        texts = self._input_texts(ctx)
        if texts is None:
            return CONTINUE
        verdict = await self._verdict("input", texts)
        if verdict is not None:
            record(ctx, verdict)
            if verdict.action == "block":
                return blocked_request()
        return CONTINUE

    async def on_response(self, ctx: RequestContext, completion: dict[str, Any]) -> RequestDecision:
        if ctx.endpoint == "embeddings" or not applies(ctx, self.config, "output"):
            return CONTINUE
        verdict = await self._verdict("output", [slot.text for slot in answer_texts(completion)])
        if verdict is not None:
            record(ctx, verdict)
            if verdict.action == "block":
                return blocked_answer(completion)
        return CONTINUE

    async def on_stream_chunk(self, ctx: RequestContext, chunk: dict[str, Any]) -> StreamDecision:
        if not applies(ctx, self.config, "output"):
            return CONTINUE
        held = ctx.get(_HeldStream)
        if held is None:
            held = _HeldStream()
            ctx.put(held)
        held.chunks.append(chunk)
        held.pending += chunk_text(chunk)
        finished = any(choice.get("finish_reason") for choice in chunk.get("choices") or [])
        if self.config.stream_check == "end" or not (finished or ends_sentence(held.pending)):
            return Emit(())
        return await self._release(ctx, held)

    async def on_stream_end(self, ctx: RequestContext) -> StreamDecision:
        held = ctx.get(_HeldStream)
        if held is None or not applies(ctx, self.config, "output"):
            return CONTINUE
        decision = await self._release(ctx, held) if held.chunks else CONTINUE
        if held.quiet is not None and not held.loud and not isinstance(decision, Respond):
            record(ctx, held.quiet)  # one "allow" per answer, not one per sentence
        return decision

    async def _release(self, ctx: RequestContext, held: _HeldStream) -> StreamDecision:
        """Check the held text; release it, or end the stream."""
        # The new text alone (the context would dilute it), and joined to the last checked sentence (a
        # sentence split across the boundary).
        new = held.pending.strip()
        texts = [new, f"{held.context} {new}"] if held.context else [new]
        verdict = await self._verdict("output", texts) if new else None
        if verdict is not None and verdict.action != "allow":
            record(ctx, verdict)
            held.loud = True
            if verdict.action == "block":
                return blocked_chunk(ctx, held.chunks[0])
        elif verdict is not None and (held.quiet is None or (held.quiet.score or 0.0) < (verdict.score or 0.0)):
            held.quiet = verdict
        released = tuple(held.chunks)
        done = sentences(held.pending)
        held.chunks, held.context, held.pending = [], done[-1] if done else held.context, ""
        return Emit(released)


async def _maybe_off_loop(off: bool, fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(fn, *args) if off else fn(*args)
