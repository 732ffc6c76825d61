from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from opentelemetry import trace

from gateway import metrics
from gateway.caching import CacheKeyExtra, CacheVerdict
from gateway.embeddings import Embedder
from gateway.errors import error_body
from gateway.plugin import CONTINUE, Plugin, Readiness, RequestContext, RequestDecision, Respond
from gateway.rag.inject import SYSTEM_TEMPLATE, USER_TEMPLATE, Passage, inject, numbered, query_text
from gateway.rag.rerank import Reranker
from gateway.rag.search import Filters, Hit, Searcher
from plugins.rag.config import RagConfig
from plugins.rag.live import LiveIndex

log = logging.getLogger("gateway.rag")
tracer = trace.get_tracer("gateway")
HEADER = "x-gateway-rag-sources"

RETRIEVALS = metrics.counter(
    "gateway_rag_retrievals_total", "Retrievals by outcome: injected, empty, error.", ("model", "outcome")
)
LATENCY = metrics.histogram(
    "gateway_rag_retrieval_seconds",
    "Query embedding, search and injection, per request.",
    ("model",),
    buckets=(0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 1.0),
)


@dataclass(slots=True)
class RagResult:
    """What the rag plugin injected into this request (for logs and later plugins)."""

    index: str
    version: str
    passages: list[Passage] = field(default_factory=list)


def allowed_collections(config: RagConfig, caller_name: str, authenticated: bool) -> frozenset[str] | None:
    """The collections a caller may search (None: all of them)."""
    granted = config.access.get(caller_name) if authenticated else None
    if granted is None:
        granted = config.default_access
    if config.collections is None:
        return None if granted is None else frozenset(granted)
    return frozenset(config.collections) if granted is None else frozenset(granted) & frozenset(config.collections)


def sources_header(passages: list[Passage]) -> str:
    sources = dict.fromkeys(p.hit.chunk.source for p in passages)
    return ", ".join(quote(s, safe="/._-~()") for s in sources)


class Rag(Plugin):
    """Retrieves passages from a document index and injects them into chat requests (RAG)."""

    name = "rag"
    Config = RagConfig
    config: RagConfig

    def __init__(self, config: RagConfig) -> None:
        super().__init__(config)
        self.embedder = Embedder(config.model_path, max_batch=config.max_batch)
        self.live: LiveIndex | None = None
        self.reranker: Reranker | None = None
        self.filters: Filters = tuple(sorted(config.filters.items()))
        self.template = config.template or (SYSTEM_TEMPLATE if config.inject_as == "system" else USER_TEMPLATE)
        self._warned_order = False

    async def start(self) -> None:
        await self.embedder.start()
        if self.config.rerank is not None:
            self.reranker = await asyncio.to_thread(Reranker, self.config.rerank.model_path)
        self.live = LiveIndex(self.config, self.embedder.dimension)
        await self.live.start()

    async def close(self) -> None:
        if self.live is not None:
            await self.live.close()
        await self.embedder.close()

    async def ready(self) -> Readiness | None:
        searcher = self.live.searcher if self.live else None
        if searcher is None:
            return Readiness(False, f"index {self.config.label} not loaded")
        detail = f"index {self.config.label} version {searcher.manifest.id}, {len(searcher)} chunks"
        error = self.live.last_error if self.live else None
        return Readiness(True, f"{detail}; reload failing: {error}" if error else detail, degraded=error is not None)

    async def on_request(self, ctx: RequestContext) -> RequestDecision:
        if ctx.endpoint != "chat":
            return CONTINUE
        messages = ctx.body.get("messages") or []
        query = query_text(messages, self.config.query_window)
        searcher = self.live.searcher if self.live else None
        if query is None or searcher is None:
            return CONTINUE
        if ctx.get(CacheVerdict) is not None and not self._warned_order:
            self._warned_order = True  # a cache ran first: its key cannot include the index version
            log.warning("rag: place the rag plugin before exact_cache/semantic_cache (model %s)", ctx.route.name)
        extra = ctx.get(CacheKeyExtra)
        if extra is None:
            ctx.put(extra := CacheKeyExtra())
        extra.parts[f"rag:{self.config.label}"] = searcher.manifest.key
        allowed = allowed_collections(self.config, ctx.caller.name, ctx.caller.key is not None)
        started = time.perf_counter()
        with tracer.start_as_current_span("retrieval") as span:
            span.set_attribute("rag.index", self.config.label)
            span.set_attribute("rag.version", searcher.manifest.id)
            try:
                vector = await self.embedder.embed(query) if self.config.mode != "bm25" else None
                hits, passages = await asyncio.to_thread(self._retrieve, searcher, query, vector, allowed)
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(trace.StatusCode.ERROR, exc.__class__.__name__)
                RETRIEVALS.labels(ctx.route.name, "error").inc()
                log.exception("rag: retrieval failed for request %s", ctx.request_id)
                if self.config.on_error == "fail":
                    message = "The document index is unavailable; try again shortly."
                    return Respond(error_body(message, "server_error", None, "rag_unavailable"), status=503)
                return CONTINUE
            span.set_attribute("rag.chunk_ids", [h.chunk.id for h in hits])
            span.set_attribute("rag.scores", [h.score for h in hits])
            span.set_attribute("rag.injected", len(passages))
            span.set_attribute("rag.context_tokens", sum(p.tokens for p in passages))
        LATENCY.labels(ctx.route.name).observe(time.perf_counter() - started)
        RETRIEVALS.labels(ctx.route.name, "injected" if passages else "empty").inc()
        ctx.put(RagResult(self.config.label, searcher.manifest.id, passages))
        if passages:
            ctx.body["messages"] = inject(
                messages,
                passages,
                inject_as=self.config.inject_as,
                template=self.template,
                question=query_last(messages),
            )
            ctx.response_headers[HEADER] = sources_header(passages)
        return CONTINUE

    def _retrieve(
        self, searcher: Searcher, query: str, vector: Any, allowed: frozenset[str] | None
    ) -> tuple[list[Hit], list[Passage]]:
        """On a worker thread: search, rerank, filter by similarity, number within the token budget."""
        cfg = self.config
        selection = searcher.select(allowed, self.filters)
        depth = cfg.rerank.candidates if self.reranker is not None and cfg.rerank is not None else cfg.top_k
        hits = searcher.search(
            query, vector, top_k=depth, mode=cfg.mode, candidates=cfg.candidates, rrf_k=cfg.rrf_k, selection=selection
        )
        if self.reranker is not None:
            hits = self.reranker.rerank(query, hits, cfg.top_k)
        if cfg.min_similarity is not None and vector is not None:
            floor = cfg.min_similarity
            hits = [
                h for h in hits if (h.dense if h.dense is not None else searcher.similarity(vector, h.chunk)) >= floor
            ]
        return hits, numbered(hits, cfg.passage_template, cfg.max_context_tokens)


def query_last(messages: list[dict[str, Any]]) -> str:
    """The question placeholder: the last user turn's text alone (the query may carry earlier turns)."""
    return query_text(messages, 0) or ""
