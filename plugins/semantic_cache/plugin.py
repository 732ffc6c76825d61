from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
from pydantic import Field

from gateway import metrics
from gateway.caching import (
    DEGRADED,
    CacheConfig,
    Outcome,
    applies,
    assemble,
    bypass_reason,
    cache_control,
    decide,
    fingerprint,
    storable,
    store_failed,
    unavailable,
)
from gateway.embeddings import Embedder, EmbedderError, Vector
from gateway.plugin import CONTINUE, Plugin, Readiness, RequestContext, RequestDecision, Respond, StreamDecision
from gateway.redis_link import RedisLink, RedisUnavailable
from plugins.semantic_cache.index import Entry, SemanticIndex
from plugins.semantic_cache.shared import SharedEntries
from plugins.semantic_cache.verify import Strictness, verify

log = logging.getLogger("gateway.semantic_cache")

VERIFIER = metrics.counter(
    "gateway_semantic_cache_verifier_total",
    "Candidates above the similarity threshold, by the verifier's verdict.",
    ("model", "verdict"),
)
SIMILARITY = metrics.histogram(
    "gateway_semantic_cache_similarity",
    "Similarity of the best candidate found for a request.",
    ("model",),
    buckets=(0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.98, 1.0),
)


class SemanticCacheConfig(CacheConfig):
    model_path: str | None = Field(
        None, description="sentence-transformers model folder; default: the packaged all-MiniLM-L6-v2."
    )
    threshold: float = Field(
        0.70, ge=0, le=1, description="Least cosine similarity for a candidate (tuned with the verifier on)."
    )
    strictness: Strictness = Field(
        "balanced", description="Verifier after the vector search: strict, balanced, or off (threshold only)."
    )
    top_k: int = Field(4, ge=1, le=64, description="Candidates checked by the verifier per request.")
    max_batch: int = Field(32, ge=1, description="Most texts embedded in one call under load.")
    embed_timeout_ms: int = Field(2000, ge=1, description="Slower embeddings skip the cache for that request.")


@dataclass(slots=True)
class _Pending:
    scope: str
    query: str
    store: bool
    vector: Vector | None = None
    chunks: list[dict[str, Any]] = field(default_factory=list)


def last_user_text(messages: list[dict[str, Any]]) -> str | None:
    """The text of the final message if it is the user's; None otherwise (nothing to match on)."""
    if not messages or messages[-1].get("role") != "user":
        return None
    content = messages[-1].get("content")
    if isinstance(content, str):
        return content.strip() or None
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        if len(parts) != len(content) or not all(isinstance(t, str) for t in parts):
            return None  # images or audio: the text alone does not say what was asked
        return "\n".join(t for t in parts if t).strip() or None
    return None


class SemanticCache(Plugin):
    """Answers paraphrases of earlier questions, verified so near misses are not served."""

    name = "semantic_cache"
    Config = SemanticCacheConfig
    config: SemanticCacheConfig

    def __init__(self, config: SemanticCacheConfig) -> None:
        super().__init__(config)
        self.embedder = Embedder(config.model_path, max_batch=config.max_batch)
        self.index: SemanticIndex | None = None
        self.link: RedisLink | None = None
        self.shared: SharedEntries | None = None
        self._follower: asyncio.Task[None] | None = None
        if config.store == "redis":
            self.link = RedisLink(
                config.redis_url, timeout_s=config.redis_timeout_ms / 1000, retry_after_s=config.retry_after_s
            )
            self.shared = SharedEntries(self.link, config.namespace, config.max_entries)

    async def start(self) -> None:
        await self.embedder.start()
        self.index = SemanticIndex(self.embedder.dimension, self.config.max_entries, self.config.max_bytes)
        if self.shared is not None:
            self._follower = asyncio.get_running_loop().create_task(
                self.shared.follow(self._adopt, self.config.retry_after_s)
            )

    async def close(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
        await self.embedder.close()
        if self.link is not None:
            await self.link.close()

    async def flush(self) -> None:
        """Forget every entry (the admin API's cache flush). Memory store only: a shared index lives in
        every replica's memory and Redis, and cannot be emptied from one of them consistently yet."""
        if self.shared is not None:
            raise RuntimeError("flushing a shared (store: redis) semantic cache is not supported")
        self.index = SemanticIndex(self.embedder.dimension, self.config.max_entries, self.config.max_bytes)

    async def ready(self) -> Readiness | None:
        if self.link is None:
            return Readiness(True, f"{len(self.index or ())} entries in memory")
        up = await self.link.ping()
        DEGRADED.labels(self.name).set(0 if up else 1)
        if up:
            return Readiness(True, f"redis reachable, {len(self.index or ())} entries indexed")
        mode = "serving without the cache (fail_open)" if self.config.fail_open else "answering 503 (fail closed)"
        return Readiness(self.config.fail_open, f"redis unreachable, {mode}: {self.link.last_error}", degraded=True)

    def _adopt(self, entry: Entry, vector: Vector) -> None:
        if self.index is not None:
            self.index.add(entry, vector)

    def _decide(self, ctx: RequestContext, outcome: Outcome, reason: str | None = None, **extra: Any) -> None:
        decide(ctx, self.name, outcome, reason, **extra)

    async def on_request(self, ctx: RequestContext) -> RequestDecision:
        if not applies(ctx, self.config):
            return CONTINUE
        reason = bypass_reason(ctx, self.config) or ("endpoint" if ctx.endpoint != "chat" else None)
        messages = ctx.body.get("messages") or []
        query = last_user_text(messages) if reason is None else None
        if query is None:
            self._decide(ctx, "bypass", reason or "last turn is not user text")
            return CONTINUE
        no_cache, no_store = cache_control(ctx.headers)
        scope = fingerprint(ctx, self.config, body={**ctx.body, "messages": messages[:-1]})
        pending = _Pending(scope, query, store=not no_store)
        ctx.put(pending)
        try:
            async with asyncio.timeout(self.config.embed_timeout_ms / 1000):
                pending.vector = await self.embedder.embed(query)
        except (EmbedderError, TimeoutError) as exc:
            log.warning("request %s: embedding failed, skipping the semantic cache: %s", ctx.request_id, exc)
            pending.store = False
            self._decide(ctx, "bypass", "embedder unavailable")
            return CONTINUE
        if no_cache:
            self._decide(ctx, "bypass", "no-cache")
            return CONTINUE
        if self.link is not None and not self.link.up and not await self.link.ping():
            # Answers live in Redis: while it is down nothing can be served or stored.
            if not self.config.fail_open:
                return self._unavailable(ctx, pending)
            pending.store = False
            self._decide(ctx, "bypass", "store unavailable")
            return CONTINUE
        return await self._lookup(ctx, pending)

    def _unavailable(self, ctx: RequestContext, pending: _Pending) -> RequestDecision:
        """Redis is down and the policy says fail closed."""
        pending.store = False
        self._decide(ctx, "bypass", "store unavailable")
        return unavailable()

    async def _lookup(self, ctx: RequestContext, pending: _Pending) -> RequestDecision:
        assert self.index is not None and pending.vector is not None
        candidates = self.index.search(pending.scope, pending.vector, self.config.top_k, self.config.threshold)
        if candidates:
            SIMILARITY.labels(ctx.route.name).observe(candidates[0][1])
        rejected: str | None = None
        for entry, similarity in candidates:
            verdict = verify(pending.query, entry.text, self.config.strictness)
            VERIFIER.labels(ctx.route.name, "pass" if verdict.ok else verdict.reason).inc()
            if not verdict.ok:
                rejected = rejected or verdict.reason
                continue
            answer = entry.answer
            if answer is None and self.shared is not None:
                try:
                    answer = await self.shared.answer(entry.id)
                except RedisUnavailable:
                    store_failed(self.name)
                    if not self.config.fail_open:
                        return self._unavailable(ctx, pending)
                    pending.store = False
                    self._decide(ctx, "bypass", "store unavailable")
                    return CONTINUE
                if answer is None:  # expired in Redis before it expired here
                    self.index.remove(entry.id)
                    continue
            if answer is None:
                continue
            pending.store = False
            self._decide(ctx, "semantic-hit", similarity=similarity, verifier="pass")
            return Respond(msgspec.json.decode(answer))
        self._decide(ctx, "miss", rejected, verifier=rejected)
        return CONTINUE

    async def on_response(self, ctx: RequestContext, completion: dict[str, Any]) -> RequestDecision:
        pending = ctx.get(_Pending)
        if pending is not None and pending.store:
            await self._store(pending, completion)
        return CONTINUE

    async def on_stream_chunk(self, ctx: RequestContext, chunk: dict[str, Any]) -> StreamDecision:
        pending = ctx.get(_Pending)
        if pending is not None and pending.store:
            pending.chunks.append(chunk)
        return CONTINUE

    async def on_stream_end(self, ctx: RequestContext) -> StreamDecision:
        pending = ctx.get(_Pending)
        if pending is not None and pending.store:
            await self._store(pending, assemble(ctx.endpoint, pending.chunks, ctx.usage))
        return CONTINUE

    async def _store(self, pending: _Pending, answer: dict[str, Any]) -> None:
        pending.store = False
        if pending.vector is None or self.index is None or not storable(answer, self.config):
            return
        encoded = msgspec.json.encode(answer)
        entry = Entry(secrets.randbits(63), pending.scope, pending.query, time.time() + self.config.ttl_s)
        if self.shared is None:
            entry.answer = encoded
            self.index.add(entry, pending.vector)
            return
        try:
            await self.shared.publish(entry, pending.vector, encoded, self.config.ttl_s)
        except RedisUnavailable as exc:
            # Not cached this time: other replicas could not serve it either.
            store_failed(self.name)
            log.warning("semantic cache: storing an answer in Redis failed: %s", exc)
            return
        DEGRADED.labels(self.name).set(0)
        self.index.add(entry, pending.vector)
