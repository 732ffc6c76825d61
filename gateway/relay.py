"""Relaying one SSE stream: upstream chunks -> plugins -> client, one event at a time.

Guarantees: nothing is buffered beyond what a plugin holds back; the ending is never invented
(a stream that breaks ends with an error event and no [DONE]); usage is always known at the end
(from the upstream, which is always asked for it, or counted), and sent only if the client asked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from gateway import tokens
from gateway.chain import Chain
from gateway.errors import GatewayError
from gateway.plugin import RequestContext, Respond
from gateway.upstream.base import StreamBroken, UpstreamStream
from gateway.upstream.sse import DONE, encode_data

log = logging.getLogger("gateway")
CLIENT_CLOSED = 499  # nginx's status for "the client went away"; only ever logged


class StreamRelay:
    def __init__(
        self,
        chain: Chain,
        ctx: RequestContext,
        stream: UpstreamStream,
        upto: int,
        finish: Callable[[int], Awaitable[None]],
    ) -> None:
        self._chain = chain
        self._ctx = ctx
        self._stream = stream
        self._upto = upto
        self._finish = finish
        self._include_usage = wants_usage(ctx.body)
        self._closed = False
        self._generated: list[str] = []  # text sent so far, to count usage the upstream never reported
        self.captured: list[str] | None = None  # set to a list to keep the upstream's text (content capture)
        self.status = 200

    def disconnected(self) -> None:
        self.status = CLIENT_CLOSED
        self._ctx.error = "client disconnected"

    async def close(self) -> None:
        """Close the upstream (cancelling it if unfinished) and run the end phase, exactly once."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._stream.aclose()
            if self._ctx.usage is None and self._ctx.target is not None:
                # Cut short (client gone, upstream broke): what was generated still counts against limits.
                await self._count_usage()
        finally:
            await self._finish(self.status)

    async def _count_usage(self) -> None:
        ctx = self._ctx
        prompt = await tokens.count_prompt(ctx.endpoint, ctx.body)
        ctx.usage = tokens.usage(prompt, await tokens.count_async("".join(self._generated)))

    async def events(self) -> AsyncGenerator[bytes, None]:
        ctx, chain, upto = self._ctx, self._chain, self._upto
        usage_chunk: dict[str, Any] | None = None
        generated = self._generated
        captured = self.captured
        try:
            async for chunk in self._stream:
                if chunk.get("usage"):
                    ctx.usage = chunk["usage"]
                if not chunk.get("choices"):
                    if "usage" in chunk:
                        usage_chunk = chunk  # sent last, after anything plugins flush at the end
                    continue
                for choice in chunk["choices"]:
                    if choice.get("finish_reason"):
                        ctx.finish_reasons.append(choice["finish_reason"])
                if not self._include_usage:
                    chunk.pop("usage", None)
                if ctx.usage is None:
                    generated.append(tokens.completion_text(chunk))
                if captured is not None:
                    captured.append(tokens.completion_text(chunk))
                out = await chain.chunk(ctx, chunk, upto)
                if isinstance(out, Respond):
                    yield self._respond(out)
                    return
                for item in out:
                    yield encode_data(item)
            if ctx.usage is None:  # before the end phase, so plugins there (a cache) see the usage
                await self._count_usage()
            tail = await chain.stream_end(ctx, upto)
            if isinstance(tail, Respond):
                yield self._respond(tail)
                return
            for item in tail:
                yield encode_data(item)
            if self._include_usage:
                usage_chunk = usage_chunk or self._usage_chunk()
                usage_chunk["usage"] = ctx.usage
                yield encode_data(usage_chunk)
            yield DONE
        except StreamBroken as exc:
            self.status = exc.status
            ctx.error = exc.message
            log.warning("request %s: upstream stream broke: %s", ctx.request_id, exc.message)
            yield encode_data(exc.body())
        except Exception:
            # A plugin failed mid-stream. Headers are sent: say so in-band rather than cut the body.
            log.exception("request %s failed inside the gateway mid-stream", ctx.request_id)
            self.status, ctx.error = 500, "internal gateway error mid-stream"
            yield encode_data(GatewayError(f"Internal gateway error (request {ctx.request_id}).").body())

    def _respond(self, decision: Respond) -> bytes:
        """A plugin ended the stream: its body is the last event; [DONE] only if it is not an error."""
        self.status = decision.status
        error = decision.body.get("error")
        if isinstance(error, dict):
            self._ctx.error = str(error.get("message"))
        event = encode_data(decision.body)
        return event + DONE if decision.status < 400 and "error" not in decision.body else event

    def _usage_chunk(self) -> dict[str, Any]:
        ctx = self._ctx
        kind = "chat.completion.chunk" if ctx.endpoint == "chat" else "text_completion"
        return {"id": f"gw-{ctx.request_id}", "object": kind, "created": int(time.time()), "choices": []}


def wants_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))
