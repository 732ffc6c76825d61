"""Runs one model's plugins through the phases, honouring each decision.

The request phase runs in policy order (global plugins, then the model's). Response and stream
phases run in reverse, like an onion: the plugin that saw the request first sees the answer last.
When plugin i answers early (Respond), only plugins before i see that answer.
"""

from __future__ import annotations

import logging
from typing import Any

from gateway.plugin import Continue, Emit, Plugin, RequestContext, RequestDecision, Respond, overrides
from gateway.telemetry.request import RequestTrace

log = logging.getLogger("gateway")


class Chain:
    __slots__ = ("_end", "_prefetch", "_request", "_response", "_stream", "_stream_tail", "plugins")

    def __init__(self, plugins: list[Plugin]) -> None:
        self.plugins = plugins
        indexed = list(enumerate(plugins))
        # Only worth it behind another request plugin: the first one's work overlaps nothing.
        first = next((i for i, p in indexed if overrides(p, "on_request")), None)
        self._prefetch = [p for i, p in indexed if overrides(p, "prefetch") and first is not None and i > first]
        self._request = [(i, p) for i, p in indexed if overrides(p, "on_request")]
        self._response = [(i, p) for i, p in reversed(indexed) if overrides(p, "on_response")]
        self._stream = [(i, p) for i, p in reversed(indexed) if overrides(p, "on_stream_chunk")]
        self._stream_tail = [
            (i, p) for i, p in reversed(indexed) if overrides(p, "on_stream_chunk") or overrides(p, "on_stream_end")
        ]
        self._end = [p for p in plugins if overrides(p, "on_end")]

    @property
    def inspects_stream(self) -> bool:
        return bool(self._stream_tail)

    async def request(self, ctx: RequestContext) -> tuple[Respond | None, int]:
        """Run the request phase; (the early answer or None, how many plugins ran before it)."""
        for early in self._prefetch:
            try:
                early.prefetch(ctx)
            except Exception:  # an optimisation only: on_request does the work itself
                log.exception("plugin %s failed in prefetch (request %s)", early.name, ctx.request_id)
        trace = ctx.get(RequestTrace)
        traced = trace is not None and trace.recording
        for i, plugin in self._request:
            if traced:
                assert trace is not None
                with trace.step(plugin.name, "request") as span:
                    decision = await plugin.on_request(ctx)
                    _note(span, decision)
            else:
                decision = await plugin.on_request(ctx)
            if isinstance(decision, Respond):
                return decision, i
        return None, len(self.plugins)

    async def response(self, ctx: RequestContext, completion: dict[str, Any], upto: int) -> Respond | None:
        trace = ctx.get(RequestTrace)
        traced = trace is not None and trace.recording
        for i, plugin in self._response:
            if i < upto:
                if traced:
                    assert trace is not None
                    with trace.step(plugin.name, "response") as span:
                        decision = await plugin.on_response(ctx, completion)
                        _note(span, decision)
                else:
                    decision = await plugin.on_response(ctx, completion)
                if isinstance(decision, Respond):
                    return decision
        return None

    async def chunk(self, ctx: RequestContext, chunk: dict[str, Any], upto: int) -> list[dict[str, Any]] | Respond:
        """Pass one upstream chunk through the stream phase; the chunks to send (maybe none)."""
        pending = [chunk]
        for i, plugin in self._stream:
            if i >= upto:
                continue
            out: list[dict[str, Any]] = []
            for item in pending:
                decision = await plugin.on_stream_chunk(ctx, item)
                if isinstance(decision, Respond):
                    return decision
                out.extend((item,) if isinstance(decision, Continue) else decision.chunks)
            pending = out
            if not pending:
                break
        return pending

    async def stream_end(self, ctx: RequestContext, upto: int) -> list[dict[str, Any]] | Respond:
        """Let plugins flush what they held back; flushed chunks pass through the plugins after them."""
        flushed: list[dict[str, Any]] = []
        for i, plugin in self._stream_tail:
            if i >= upto:
                continue
            if flushed and overrides(plugin, "on_stream_chunk"):
                processed: list[dict[str, Any]] = []
                for item in flushed:
                    decision = await plugin.on_stream_chunk(ctx, item)
                    if isinstance(decision, Respond):
                        return decision
                    processed.extend((item,) if isinstance(decision, Continue) else decision.chunks)
                flushed = processed
            if overrides(plugin, "on_stream_end"):
                end = await plugin.on_stream_end(ctx)
                if isinstance(end, Respond):
                    return end
                if isinstance(end, Emit):
                    flushed.extend(end.chunks)
        return flushed

    async def end(self, ctx: RequestContext) -> None:
        """Every end hook runs, even if an earlier one fails: they record, they do not decide."""
        for plugin in self._end:
            try:
                await plugin.on_end(ctx)
            except Exception:
                log.exception("plugin %s failed in on_end (request %s)", plugin.name, ctx.request_id)


def _note(span: Any, decision: RequestDecision) -> None:
    if span is not None and isinstance(decision, Respond):
        span.set_attribute("gateway.plugin.decision", "respond")
        span.set_attribute("gateway.plugin.status", decision.status)
