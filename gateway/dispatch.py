"""Sending one request upstream: try targets in the router's order until one answers.

A failure moves on (after a jittered backoff that honours Retry-After) only if its kind is in the
failing model's `retry_on`; anything else, such as a 400 the client caused, is the answer. A stream
counts as answered once its first chunk has arrived: before that a broken stream is retried like
any failure; after it, the break is reported to the client (gateway/relay.py). `timeout_s` on the
model bounds the whole search, up to the answer or the first chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from typing import Any

from gateway.errors import GatewayError, UpstreamTimeout, UpstreamUnavailable
from gateway.plugin import RequestContext
from gateway.router import Attempt
from gateway.routing.backoff import backoff_s
from gateway.runtime import Runtime
from gateway.telemetry import genai
from gateway.telemetry.request import RequestTrace, passthrough_headers
from gateway.upstream.base import StreamBroken, UpstreamCall, UpstreamStream


class CallRecord:
    """The upstream call that answered: its metric series, for its metrics once the answer is done."""

    __slots__ = ("series",)

    def __init__(self, series: genai.CallSeries) -> None:
        self.series = series


class PeekedStream:
    """An upstream stream whose first chunk has already been read (to know the target answered)."""

    def __init__(self, stream: UpstreamStream, iterator: AsyncIterator[dict[str, Any]], first: dict[str, Any] | None):
        self._stream = stream
        self._iterator = iterator
        self._first = first

    async def _chunks(self) -> AsyncIterator[dict[str, Any]]:
        if self._first is not None:
            yield self._first
            async for chunk in self._iterator:
                yield chunk

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._chunks()

    @property
    def first(self) -> dict[str, Any] | None:
        return self._first

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            closer = getattr(self._iterator, "aclose", None)
            if closer is not None:
                await closer()


_NO_DEADLINE = contextlib.nullcontext()  # a route without timeout_s: no timer to arm and cancel per call


async def dispatch(
    runtime: Runtime, ctx: RequestContext, headers: dict[str, str], *, stream: bool
) -> tuple[Attempt, dict[str, Any] | PeekedStream, float | None]:
    """(the attempt that answered, its answer or open stream, time to first chunk in seconds)."""
    trace = ctx.get(RequestTrace)
    if trace is not None:
        trace.start_route(ctx.route.name, ctx.route.strategy)
    waited = time.perf_counter()
    try:
        return await _attempts(runtime, ctx, headers, stream, trace)
    except BaseException as exc:
        if trace is not None:
            trace.end_route(None, 0, _error_type(exc))
        raise
    finally:
        ctx.upstream_s += time.perf_counter() - waited


async def _attempts(
    runtime: Runtime, ctx: RequestContext, headers: dict[str, str], stream: bool, trace: RequestTrace | None
) -> tuple[Attempt, dict[str, Any] | PeekedStream, float | None]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ctx.route.timeout_s if ctx.route.timeout_s else None
    last: GatewayError | None = None
    last_key: str | None = None
    otlp = runtime.telemetry.otlp
    for number, attempt in enumerate(runtime.router.attempts(ctx.route)):
        if last is not None and attempt.key == last_key:  # the same target again: back off first
            wait = backoff_s(number - 1, retry_after=last.headers.get("retry-after"))
            if deadline is not None and loop.time() + (0 if math.isinf(wait) else wait) >= deadline:
                break
            if math.isinf(wait):  # it asked for longer than we ever wait: skip it, try what comes next
                continue
            await asyncio.sleep(wait)
        ctx.target = attempt.target
        headers["x-gateway-backend"] = attempt.target.backend
        if attempt.route is not ctx.route:
            headers["x-gateway-fallback"] = attempt.route.name
        ctx.put(attempt)
        body = {**ctx.body, "model": attempt.target.model}
        backend = runtime.policy.backend(attempt.target.backend)
        attributes = genai.request_attributes(ctx.endpoint, backend.type, backend.base_url, body)
        call_headers = {"x-request-id": ctx.request_id}
        if trace is not None:
            call_headers.update(
                trace.start_client(genai.span_name(ctx.endpoint, attempt.target.model), attributes, backend.name)
            )
        else:
            call_headers.update(passthrough_headers(ctx.headers))
        call = UpstreamCall(ctx.endpoint, body, call_headers)
        transport = runtime.transports[attempt.target.backend]
        attempt.health.started()
        started = time.perf_counter()
        series = genai.call_series(attributes)
        ctx.put(CallRecord(series))
        try:
            async with asyncio.timeout_at(deadline) if deadline is not None else _NO_DEADLINE:
                if stream:
                    opened = await transport.open_stream(call)
                    peeked = await _peek(opened)
                    ctx.ttft_s = time.perf_counter() - started
                    if trace is not None:
                        trace.first_chunk(ctx.ttft_s)
                        trace.end_route(attempt.target.backend, number + 1)
                    return attempt, peeked, ctx.ttft_s
                answer = await transport.complete(call)
        except BaseException as exc:
            error = _error_type(exc)
            if trace is not None:
                trace.end_client(error=error)
            if not isinstance(exc, asyncio.CancelledError):
                genai.record_call(otlp, series, time.perf_counter() - started, error)
            if isinstance(exc, TimeoutError):
                attempt.record(ok=False, ttft_s=None, total_s=None)
                last = UpstreamTimeout(
                    f"model {ctx.route.name!r} found no answer within timeout_s={ctx.route.timeout_s:g}"
                )
                break
            if isinstance(exc, asyncio.CancelledError):
                attempt.health.abandoned()  # the client went away: no verdict on the target
                raise
            if not isinstance(exc, GatewayError):
                raise
            retryable = exc.retry_kind is not None
            attempt.record(ok=not retryable, ttft_s=None, total_s=None)
            if not retryable or exc.retry_kind not in attempt.route.retry_on:
                raise
            last, last_key = exc, attempt.key
            continue
        elapsed = time.perf_counter() - started
        attempt.record(ok=True, ttft_s=None, total_s=elapsed)
        genai.record_call(otlp, series, elapsed, None)
        if trace is not None:
            trace.end_route(attempt.target.backend, number + 1)
        return attempt, answer, None
    if last is not None:
        raise last
    raise UpstreamUnavailable(f"no target of model {ctx.route.name!r} is available (every circuit is open)")


async def _peek(stream: UpstreamStream) -> PeekedStream:
    iterator = aiter(stream)
    try:
        first = await anext(iterator)
    except StopAsyncIteration:
        first = None
    except BaseException as exc:
        with contextlib.suppress(Exception):
            await stream.aclose()
        if isinstance(exc, StreamBroken) and exc.cause is not None:
            raise exc.cause from None  # nothing reached the client: report it as what it was (e.g. a 504)
        raise
    return PeekedStream(stream, iterator, first)


def _error_type(exc: BaseException) -> str:
    """error.type: the gateway's error code (rate_limited, timeout, ...) or the exception's class."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    if isinstance(exc, GatewayError):
        return exc.code or exc.type
    return type(exc).__name__
