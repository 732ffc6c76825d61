"""The request path: intake -> chain (request) -> router -> upstream -> chain (response) -> client.

client ─► intake (id, caller, body, schema) ─► route lookup ─► plugins.on_request ──┐
                                                                  Respond ◄──────┤ (cache hit, block)
                                    context-window check ◄────────────────────────┘
upstream ◄─ transport ◄─ router (target) ◄───────────────┘
   │ whole answer ─► usage filled ─► plugins.on_response (reverse) ─► JSON
   └ SSE stream ──► each chunk ─► plugins.on_stream_chunk (reverse) ─► client, as it arrives
                     end ─► plugins.on_stream_end ─► usage chunk ─► [DONE]   (break: error event)
always: plugins.on_end, access log
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any

import msgspec

from gateway import intake, metrics, quota, replay, tokens
from gateway.chain import Chain
from gateway.dispatch import CallRecord, PeekedStream, dispatch
from gateway.errors import GatewayError, InvalidRequest, ModelNotFound
from gateway.guarding import ContentRedactor
from gateway.plugin import Endpoint, RequestContext, Respond
from gateway.policy import did_you_mean
from gateway.relay import StreamRelay
from gateway.responses import JSONResponse, SSEResponse, error_response, json_response
from gateway.router import Attempt
from gateway.runtime import Runtime, RuntimeHolder
from gateway.telemetry import RequestTrace, genai
from gateway.upstream.base import UpstreamStream
from gateway.vetoes import with_vetoes

log = logging.getLogger("gateway")
PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "embeddings": "/v1/embeddings"}
access_log = logging.getLogger("gateway.access")


class Proxy:
    def __init__(self, holder: RuntimeHolder) -> None:
        self.holder = holder

    async def handle(self, endpoint: Endpoint, headers: Mapping[str, str], receive: Any) -> JSONResponse | SSEResponse:
        """`receive`: the request's ASGI receive callable, for its body."""
        runtime = self.holder.current
        runtime.enter()
        started = time.perf_counter()
        trace = runtime.telemetry.start_request("POST", PATHS[endpoint], headers) if runtime.telemetry.enabled else None
        request_id = intake.request_id(headers)
        out_headers = {"x-request-id": request_id}
        ctx: RequestContext | None = None
        chain: Chain | None = None
        rejected: str | None = None
        try:
            caller = intake.identify(runtime, headers)
            raw = await intake.read_body(receive, headers, runtime.policy.limits)
            body = intake.parse(endpoint, raw, runtime.policy.limits)
            route = runtime.routes.get(body["model"])
            if route is None:
                raise ModelNotFound(
                    f"The model {body['model']!r} does not exist{did_you_mean(body['model'], runtime.routes.keys())}.",
                    param="model",
                )
            quota.check_model_allowed(caller, route)
            ctx = RequestContext(
                request_id, endpoint, body, headers, caller, route, bool(body.get("stream")), started=started
            )
            if trace is not None:
                trace.bind(ctx)
            chain = runtime.chains[route.name]
            response = await self._serve(runtime, chain, ctx, out_headers)
        except Exception as exc:
            if not isinstance(exc, GatewayError):
                log.exception("request %s failed inside the gateway", request_id)
                exc = GatewayError(f"Internal gateway error (request {request_id}).")
            rejected = exc.message
            response = self._fail(ctx, exc, out_headers)
        if isinstance(response, JSONResponse):
            status = response.status

            async def finish() -> None:
                await self._finish(runtime, chain, ctx, status, request_id, rejected, trace)

            response.on_close = finish
        return response

    def _fail(self, ctx: RequestContext | None, exc: GatewayError, headers: dict[str, str]) -> JSONResponse:
        if ctx is not None:
            ctx.error = exc.message
            headers.update(ctx.response_headers)
        return error_response(exc, headers)

    async def _finish(
        self,
        runtime: Runtime,
        chain: Chain | None,
        ctx: RequestContext | None,
        status: int,
        request_id: str,
        rejected: str | None = None,
        trace: RequestTrace | None = None,
        overhead_s: float | None = None,
    ) -> None:
        try:
            if ctx is None:  # turned away before a model was known
                if trace is not None:
                    trace.finish(status, {"error.type": str(status)} if status >= 400 else None)
                _log(runtime, {"request_id": request_id, "status": status, "error": rejected})
                runtime.request_log.rejected(request_id, status, rejected)
                return
            ctx.status = status
            await quota.settle(runtime, ctx)
            metrics.REQUESTS.labels(ctx.route.name, ctx.target.backend if ctx.target else "-", str(status)).inc()
            if chain is not None:
                await chain.end(ctx)
            _log_access(ctx, runtime)
            _observe(runtime, ctx, status, overhead_s)
            runtime.request_log.record(ctx)
        finally:
            runtime.leave()

    async def _serve(
        self, runtime: Runtime, chain: Chain, ctx: RequestContext, headers: dict[str, str]
    ) -> JSONResponse | SSEResponse:
        early, upto = await chain.request(ctx)
        if early is not None and ctx.vetoes:
            early = await _settle_vetoes(ctx, early)
        if early is not None:
            headers["x-gateway-backend"] = f"plugin:{chain.plugins[upto].name}"
            return await self._answer_early(runtime, chain, ctx, early, upto, headers)
        await _check_context_window(ctx)
        await quota.reserve(runtime, ctx, headers)
        if ctx.stream and ctx.endpoint != "embeddings":
            # Always ask for usage upstream, so accounting works even when the client did not.
            options = ctx.body.get("stream_options")
            ctx.body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
            try:
                outcome = await with_vetoes(ctx, dispatch(runtime, ctx, headers, stream=True))
            finally:
                ctx.body["stream_options"] = options
                if options is None:
                    del ctx.body["stream_options"]
            if isinstance(outcome, Respond):
                return json_response(outcome.status, outcome.body, {**headers, **ctx.response_headers})
            attempt, stream, ttft = outcome
            assert isinstance(stream, PeekedStream)
            headers.update(ctx.response_headers)
            return self._stream_response(runtime, chain, ctx, stream, len(chain.plugins), headers, (attempt, ttft))
        outcome = await with_vetoes(ctx, dispatch(runtime, ctx, headers, stream=False))
        if isinstance(outcome, Respond):
            return json_response(outcome.status, outcome.body, {**headers, **ctx.response_headers})
        attempt, answer, _ = outcome
        assert isinstance(answer, dict)
        await _fill_usage(ctx, answer)
        trace = ctx.get(RequestTrace)
        if trace is not None:
            await _trace_answer(trace, ctx, answer)
        runtime.request_log.keep_answer(ctx, answer)  # as the upstream sent it, before the response chain
        replaced = await chain.response(ctx, answer, len(chain.plugins))
        headers.update(ctx.response_headers)
        _overhead_header(runtime, ctx, headers)
        if replaced is not None:
            return json_response(replaced.status, replaced.body, {**headers, **replaced.headers})
        return json_response(200, answer, headers)

    async def _answer_early(
        self,
        runtime: Runtime,
        chain: Chain,
        ctx: RequestContext,
        early: Respond,
        upto: int,
        headers: dict[str, str],
    ) -> JSONResponse | SSEResponse:
        answer = early.body
        if early.status == 200 and isinstance(answer.get("usage"), dict):
            ctx.usage = answer["usage"]  # what the answer cost when it was made (for the access log)
        if early.status == 200 and ctx.endpoint != "embeddings":
            replaced = await chain.response(ctx, answer, upto) if not ctx.stream else None
            if replaced is not None:
                early, answer = replaced, replaced.body
        headers.update(ctx.response_headers)
        headers.update(early.headers)
        error = answer.get("error") if early.status >= 400 else None
        if isinstance(error, dict):
            ctx.error = str(error.get("message"))  # a block or a plugin's error, for the access log
        if early.status != 200 or not ctx.stream or "choices" not in answer:
            return json_response(early.status, answer, headers)
        make = replay.chat_chunks if ctx.endpoint == "chat" else replay.text_chunks
        return self._stream_response(runtime, chain, ctx, _Replay(make(answer, True)), upto, headers)

    def _stream_response(
        self,
        runtime: Runtime,
        chain: Chain,
        ctx: RequestContext,
        stream: UpstreamStream,
        upto: int,
        headers: dict[str, str],
        upstream: tuple[Attempt, float | None] | None = None,
    ) -> SSEResponse:
        started = time.perf_counter()
        overhead_s = _overhead_header(runtime, ctx, headers)
        first = stream.first if isinstance(stream, PeekedStream) else None

        async def finish(status: int) -> None:
            try:
                if upstream is not None:
                    attempt, ttft = upstream
                    total = time.perf_counter() - started + (ttft or 0)
                    attempt.record(ok=status < 500, ttft_s=ttft, total_s=total if status < 500 else None)
                    text = "".join(relay.captured) if relay.captured is not None else None
                    if text is not None:
                        runtime.request_log.keep_answer(ctx, {"choices": [{"message": {"content": text}}]})
                    await _end_stream_call(runtime, ctx, first, status, total, text)
            finally:  # whatever happened above, the request is settled and leaves the runtime
                await self._finish(runtime, chain, ctx, status, ctx.request_id, overhead_s=overhead_s)

        relay = StreamRelay(chain, ctx, stream, upto, finish)
        trace = ctx.get(RequestTrace)
        if upstream is not None and ((trace is not None and trace.capture) or runtime.request_log.capture_content):
            relay.captured = []
        return SSEResponse(relay.events(), headers, on_disconnect=relay.disconnected, on_close=relay.close)


class _Replay:
    """A finished answer presented as an upstream stream."""

    def __init__(self, chunks: Any) -> None:
        self._chunks = chunks

    async def _iterate(self) -> AsyncGenerator[dict[str, Any], None]:
        for chunk in self._chunks:
            yield chunk

    def __aiter__(self) -> AsyncGenerator[dict[str, Any], None]:
        return self._iterate()

    async def aclose(self) -> None:
        return None


async def _settle_vetoes(ctx: RequestContext, early: Respond) -> Respond:
    """An early answer (a cache hit) still waits for every veto; an early error needs none of them."""
    if early.status >= 400:
        for veto in ctx.vetoes:
            veto.cancel()
        return early
    verdict = await with_vetoes(ctx, asyncio.sleep(0))
    return verdict if isinstance(verdict, Respond) else early


async def _fill_usage(ctx: RequestContext, answer: dict[str, Any]) -> None:
    if not isinstance(answer.get("usage"), dict):
        prompt = await tokens.count_prompt(ctx.endpoint, ctx.body)
        completion = 0 if ctx.endpoint == "embeddings" else await tokens.count_async(tokens.completion_text(answer))
        answer["usage"] = tokens.usage(prompt, completion)
        if ctx.endpoint == "embeddings":
            answer["usage"].pop("completion_tokens")
    ctx.usage = answer["usage"]
    for choice in answer.get("choices") or []:
        if isinstance(choice, dict) and choice.get("finish_reason"):
            ctx.finish_reasons.append(choice["finish_reason"])


async def _check_context_window(ctx: RequestContext) -> None:
    window = ctx.route.context_window
    if window is None or ctx.endpoint == "embeddings":
        return
    prompt = await tokens.count_prompt(ctx.endpoint, ctx.body)
    requested = ctx.body.get("max_completion_tokens") or ctx.body.get("max_tokens") or 0
    if prompt + requested > window:
        raise InvalidRequest(
            f"This model's maximum context length is {window} tokens. However, you requested "
            f"{prompt + requested} tokens ({prompt} in the messages, {requested} in the completion). "
            "Please reduce the length of the messages or completion.",
            param="messages",
            code="context_length_exceeded",
        )


def _log(runtime: Runtime, record: dict[str, Any]) -> None:
    if runtime.policy.telemetry.access_log and access_log.isEnabledFor(logging.INFO):
        access_log.info(msgspec.json.encode(record).decode())


def _log_access(ctx: RequestContext, runtime: Runtime) -> None:
    if not runtime.policy.telemetry.access_log or not access_log.isEnabledFor(logging.INFO):
        return
    usage = ctx.usage or {}
    record = {
        "request_id": ctx.request_id,
        "caller": ctx.caller.name,
        "model": ctx.route.name,
        "backend": ctx.target.backend if ctx.target else None,
        "endpoint": ctx.endpoint,
        "stream": ctx.stream,
        "status": ctx.status,
        "ms": round((time.perf_counter() - ctx.started) * 1000, 2),
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "cost_usd": quota.cost(ctx),
        "fallback": ctx.route.name != attempt.route.name if (attempt := ctx.get(Attempt)) else None,
        "cache": ctx.response_headers.get("x-gateway-cache"),
        "error": ctx.error,
    }
    _log(runtime, record)


def _overhead_header(runtime: Runtime, ctx: RequestContext, headers: dict[str, str]) -> float:
    """Time so far outside upstream calls; as x-gateway-overhead-ms when the policy asks for it."""
    overhead = time.perf_counter() - ctx.started - ctx.upstream_s
    if runtime.policy.telemetry.overhead_header:
        headers["x-gateway-overhead-ms"] = f"{overhead * 1000:.3f}"
    return overhead


def _redactor(ctx: RequestContext) -> Callable[[str], str]:
    found = ctx.get(ContentRedactor)
    return found.redact if found is not None else _same


def _same(text: str) -> str:
    return text


async def _trace_answer(trace: RequestTrace, ctx: RequestContext, answer: dict[str, Any]) -> None:
    """Close the client span of a whole answer (content recorded only when the policy opts in)."""
    if trace.client is None:  # not sampled, or a cache answered
        return
    if trace.capture:
        redact = _redactor(ctx)
        await trace.capture_input(ctx.endpoint, ctx.body, redact)
        await trace.capture_output(genai.answer_texts(answer), redact)
    trace.end_client(genai.response_attributes(answer, ctx.usage, ctx.finish_reasons))


async def _end_stream_call(
    runtime: Runtime, ctx: RequestContext, first: dict[str, Any] | None, status: int, total_s: float, text: str | None
) -> None:
    error = None if status < 500 else ("cancelled" if status == 499 else ctx.error and "stream_interrupted")
    record = ctx.get(CallRecord)
    if record is not None:
        genai.record_call(runtime.telemetry.otlp, record.series, total_s, error)
        backend = ctx.target.backend if ctx.target else "-"
        genai.record_ttft(runtime.telemetry.otlp, ctx.route.name, backend, ctx.ttft_s or 0)
    trace = ctx.get(RequestTrace)
    if trace is None or trace.client is None:
        return
    if trace.capture:
        redact = _redactor(ctx)
        await trace.capture_input(ctx.endpoint, ctx.body, redact)
        reason = ctx.finish_reasons[-1] if ctx.finish_reasons else None
        await trace.capture_output([(text or "", reason)], redact)
    trace.end_client(genai.response_attributes(first, ctx.usage, ctx.finish_reasons), error=error)


def _observe(runtime: Runtime, ctx: RequestContext, status: int, overhead_s: float | None) -> None:
    """Token usage and overhead metrics, and the end of the server span."""
    record = ctx.get(CallRecord)
    if record is not None and ctx.usage and status < 400:
        genai.record_tokens(runtime.telemetry.otlp, record.series, ctx.usage)
    if overhead_s is None:
        overhead_s = time.perf_counter() - ctx.started - ctx.upstream_s
    genai.record_overhead(runtime.telemetry.otlp, ctx.route.name, ctx.stream, max(overhead_s, 0.0))
    trace = ctx.get(RequestTrace)
    if trace is None or not trace.recording:  # not sampled: none of the request's spans records anything
        return
    attributes: dict[str, Any] = {"gateway.backend": ctx.target.backend if ctx.target else ""}
    cache = ctx.response_headers.get("x-gateway-cache")
    if cache:
        attributes["gateway.cache"] = cache
    if ctx.usage:
        attributes.update(genai.response_attributes(None, ctx.usage, []))
    if status >= 400:
        attributes["error.type"] = str(status)
    trace.finish(status, attributes)
