from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import msgspec
from pydantic import Field

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
from gateway.plugin import (
    CONTINUE,
    Plugin,
    Readiness,
    RequestContext,
    RequestDecision,
    Respond,
    StreamDecision,
)
from gateway.redis_link import RedisLink, RedisUnavailable
from plugins.exact_cache.stores import AnswerStore, MemoryStore, RedisStore

log = logging.getLogger("gateway.exact_cache")
COALESCED = "coalesced with an identical request in flight"


class ExactCacheConfig(CacheConfig):
    coalesce: bool = Field(True, description="Identical requests in flight share one upstream call.")
    coalesce_wait_s: float = Field(
        60.0, gt=0, description="Longest a coalesced request waits for the first one before going upstream."
    )


@dataclass(slots=True)
class _Pending:
    """This request's cache state (kept on the request context, never on the plugin)."""

    key: str
    store: bool
    leader: asyncio.Future[bytes | None] | None = None
    chunks: list[dict[str, Any]] = field(default_factory=list)


class ExactCache(Plugin):
    """Answers repeated requests from a cache keyed by the exact request and the caller."""

    name = "exact_cache"
    Config = ExactCacheConfig
    config: ExactCacheConfig

    def __init__(self, config: ExactCacheConfig) -> None:
        super().__init__(config)
        self.link: RedisLink | None = None
        self.store: AnswerStore
        if config.store == "redis":
            self.link = RedisLink(
                config.redis_url, timeout_s=config.redis_timeout_ms / 1000, retry_after_s=config.retry_after_s
            )
            self.store = RedisStore(self.link, config.namespace)
        else:
            self.store = MemoryStore(config.max_entries, config.max_bytes)
        # Shared by all requests on purpose: the requests now in flight, by key, for coalescing.
        self._in_flight: dict[str, asyncio.Future[bytes | None]] = {}

    async def close(self) -> None:
        if self.link is not None:
            await self.link.close()

    async def ready(self) -> Readiness | None:
        if self.link is None:
            return None
        up = await self.link.ping()
        DEGRADED.labels(self.name).set(0 if up else 1)
        if up:
            return Readiness(True, "redis reachable")
        mode = "serving without the cache (fail_open)" if self.config.fail_open else "rejecting cached models"
        return Readiness(self.config.fail_open, f"redis unreachable, {mode}: {self.link.last_error}", degraded=True)

    def _decide(self, ctx: RequestContext, outcome: Outcome, reason: str | None = None) -> None:
        decide(ctx, self.name, outcome, reason, counted_as="coalesced" if reason == COALESCED else None)

    async def on_request(self, ctx: RequestContext) -> RequestDecision:
        if not applies(ctx, self.config):
            return CONTINUE
        reason = bypass_reason(ctx, self.config)
        if reason is not None:
            self._decide(ctx, "bypass", reason)
            return CONTINUE
        no_cache, no_store = cache_control(ctx.headers)
        pending = _Pending(fingerprint(ctx, self.config), store=not no_store)
        ctx.put(pending)
        if no_cache:
            self._decide(ctx, "bypass", "no-cache")
            return CONTINUE
        try:
            cached = await self.store.get(pending.key)
        except RedisUnavailable as exc:
            return self._store_down(ctx, pending, str(exc))
        if cached is not None:
            pending.store = False
            self._decide(ctx, "hit")
            return Respond(msgspec.json.decode(cached))
        if self.config.coalesce:
            return await self._coalesce(ctx, pending)
        self._decide(ctx, "miss")
        return CONTINUE

    async def _coalesce(self, ctx: RequestContext, pending: _Pending) -> RequestDecision:
        leader = self._in_flight.get(pending.key)
        if leader is None:
            pending.leader = self._in_flight[pending.key] = asyncio.get_running_loop().create_future()
            self._decide(ctx, "miss")
            return CONTINUE
        try:
            answer = await asyncio.wait_for(asyncio.shield(leader), self.config.coalesce_wait_s)
        except TimeoutError:
            answer = None
        if answer is None:  # the first request failed or was not cacheable: go upstream ourselves
            self._decide(ctx, "miss", "coalesced request failed")
            return CONTINUE
        pending.store = False
        self._decide(ctx, "hit", COALESCED)
        return Respond(msgspec.json.decode(answer))  # each waiter gets its own copy to transform

    def _store_down(self, ctx: RequestContext, pending: _Pending, error: str) -> RequestDecision:
        store_failed(self.name)
        pending.store = False
        self._decide(ctx, "bypass", "store unavailable")
        if self.config.fail_open:
            return CONTINUE
        log.warning("request %s: cache store unavailable, failing closed: %s", ctx.request_id, error)
        return unavailable()

    async def on_response(self, ctx: RequestContext, completion: dict[str, Any]) -> RequestDecision:
        pending = ctx.get(_Pending)
        if pending is not None:
            await self._finish(pending, completion)
        return CONTINUE

    async def on_stream_chunk(self, ctx: RequestContext, chunk: dict[str, Any]) -> StreamDecision:
        pending = ctx.get(_Pending)
        if pending is not None and (pending.store or pending.leader is not None):
            pending.chunks.append(chunk)
        return CONTINUE

    async def on_stream_end(self, ctx: RequestContext) -> StreamDecision:
        pending = ctx.get(_Pending)
        if pending is not None and (pending.store or pending.leader is not None):
            await self._finish(pending, assemble(ctx.endpoint, pending.chunks, ctx.usage))
        return CONTINUE

    async def on_end(self, ctx: RequestContext) -> None:
        pending = ctx.get(_Pending)
        if pending is not None:
            self._release(pending, None)  # failed, broken or not cacheable: waiters go upstream

    async def _finish(self, pending: _Pending, answer: dict[str, Any]) -> None:
        if not storable(answer, self.config):
            self._release(pending, None)
            return
        encoded = msgspec.json.encode(answer)
        if pending.store:
            # Stored before waiters are released, so a request arriving meanwhile finds it.
            pending.store = False
            try:
                await self.store.put(pending.key, encoded, self.config.ttl_s)
                if self.link is not None:
                    DEGRADED.labels(self.name).set(0)
            except RedisUnavailable:
                store_failed(self.name)
        self._release(pending, encoded)

    def _release(self, pending: _Pending, answer: bytes | None) -> None:
        leader, pending.leader = pending.leader, None
        if leader is None:
            return
        if self._in_flight.get(pending.key) is leader:
            del self._in_flight[pending.key]
        if not leader.done():
            leader.set_result(answer)
