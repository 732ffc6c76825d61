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
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import msgspec

from gateway import intake, replay, tokens
from gateway.chain import Chain
from gateway.errors import GatewayError, InvalidRequest, ModelNotFound
from gateway.plugin import Endpoint, RequestContext, Respond
from gateway.policy import did_you_mean
from gateway.responses import JSONResponse, SSEResponse, error_response, json_response
from gateway.runtime import Runtime, RuntimeHolder
from gateway.upstream.base import StreamBroken, UpstreamCall, UpstreamStream
from gateway.upstream.sse import DONE, encode_data

log = logging.getLogger("gateway")
access_log = logging.getLogger("gateway.access")
BodyStream = Any  # an async iterator of the request body's bytes


class Proxy:
    def __init__(self, holder: RuntimeHolder) -> None:
        self.holder = holder

    async def handle(
        self, endpoint: Endpoint, headers: Mapping[str, str], body_stream: BodyStream
    ) -> JSONResponse | SSEResponse:
        runtime = self.holder.current
        runtime.enter()
        request_id = intake.request_id(headers)
        out_headers = {"x-request-id": request_id}
        ctx: RequestContext | None = None
        chain: Chain | None = None
        try:
            caller = intake.identify(runtime, headers)
            raw = await intake.read_body(body_stream, headers, runtime.policy.limits)
            body = intake.parse(endpoint, raw, runtime.policy.limits)
            route = runtime.routes.get(body["model"])
            if route is None:
                raise ModelNotFound(
                    f"The model {body['model']!r} does not exist{did_you_mean(body['model'], runtime.routes.keys())}.",
                    param="model",
                )
            ctx = RequestContext(request_id, endpoint, body, headers, caller, route, bool(body.get("stream")))
            chain = runtime.chains[route.name]
            response = await self._serve(runtime, chain, ctx, out_headers)
        except GatewayError as exc:
            response = self._fail(ctx, exc, out_headers)
        except Exception:
            log.exception("request %s failed inside the gateway", request_id)
            response = self._fail(ctx, GatewayError(f"Internal gateway error (request {request_id})."), out_headers)
        if isinstance(response, JSONResponse):
            await self._finish(runtime, chain, ctx, response.status)
        return response

    def _fail(self, ctx: RequestContext | None, exc: GatewayError, headers: dict[str, str]) -> JSONResponse:
        if ctx is not None:
            ctx.error = exc.message
            headers.update(ctx.response_headers)
        return error_response(exc, headers)

    async def _finish(self, runtime: Runtime, chain: Chain | None, ctx: RequestContext | None, status: int) -> None:
        try:
            if ctx is not None:
                ctx.status = status
                if chain is not None:
                    await chain.end(ctx)
                _log_access(ctx, runtime)
        except Exception:
            log.exception("an end-phase plugin failed")
        finally:
            runtime.leave()

    async def _serve(
        self, runtime: Runtime, chain: Chain, ctx: RequestContext, headers: dict[str, str]
    ) -> JSONResponse | SSEResponse:
        early, upto = await chain.request(ctx)
        if early is not None:
            headers["x-gateway-backend"] = f"plugin:{chain.plugins[upto].name}"
            return await self._answer_early(runtime, chain, ctx, early, upto, headers)
        await _check_context_window(ctx)
        target = runtime.choosers[ctx.route.name].choose()
        ctx.target = target
        headers["x-gateway-backend"] = target.backend
        transport = runtime.transports[target.backend]
        body = {**ctx.body, "model": target.model}
        if ctx.stream and ctx.endpoint != "embeddings":
            # Always ask for usage upstream, so accounting works even when the client did not.
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
            stream = await transport.open_stream(UpstreamCall(ctx.endpoint, body, {"x-request-id": ctx.request_id}))
            headers.update(ctx.response_headers)
            return SSEResponse(self._relay(runtime, chain, ctx, stream, len(chain.plugins)), headers)
        answer = await transport.complete(UpstreamCall(ctx.endpoint, body, {"x-request-id": ctx.request_id}))
        await _fill_usage(ctx, answer)
        replaced = await chain.response(ctx, answer, len(chain.plugins))
        headers.update(ctx.response_headers)
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
        if early.status == 200 and ctx.endpoint != "embeddings":
            replaced = await chain.response(ctx, answer, upto) if not ctx.stream else None
            if replaced is not None:
                early, answer = replaced, replaced.body
        headers.update(ctx.response_headers)
        headers.update(early.headers)
        if early.status != 200 or not ctx.stream or "choices" not in answer:
            return json_response(early.status, answer, headers)
        include_usage = _wants_usage(ctx.body)
        make = replay.chat_chunks if ctx.endpoint == "chat" else replay.text_chunks
        return SSEResponse(self._relay(runtime, chain, ctx, _Replay(make(answer, True)), upto, include_usage), headers)

    async def _relay(
        self,
        runtime: Runtime,
        chain: Chain,
        ctx: RequestContext,
        stream: UpstreamStream,
        upto: int,
        include_usage: bool | None = None,
    ) -> AsyncGenerator[bytes, None]:
        """Upstream chunks -> plugins -> SSE bytes, one event at a time; never invents an ending."""
        include_usage = _wants_usage(ctx.body) if include_usage is None else include_usage
        usage_chunk: dict[str, Any] | None = None
        generated: list[str] = []
        status = 200
        try:
            async for chunk in stream:
                choices = chunk.get("choices")
                if chunk.get("usage"):
                    ctx.usage = chunk["usage"]
                if not choices:
                    if "usage" in chunk:
                        usage_chunk = chunk  # sent last, after anything plugins flush at the end
                    continue
                for choice in choices:
                    if choice.get("finish_reason"):
                        ctx.finish_reasons.append(choice["finish_reason"])
                if not include_usage:
                    chunk.pop("usage", None)
                if ctx.usage is None:
                    generated.append(tokens.completion_text(chunk))
                out = await chain.chunk(ctx, chunk, upto)
                if isinstance(out, Respond):
                    status = out.status
                    yield encode_data(out.body)
                    return
                for item in out:
                    yield encode_data(item)
            tail = await chain.stream_end(ctx, upto)
            if isinstance(tail, Respond):
                status = tail.status
                yield encode_data(tail.body)
                return
            for item in tail:
                yield encode_data(item)
            if ctx.usage is None:
                prompt = await tokens.count_prompt(ctx.endpoint, ctx.body)
                ctx.usage = tokens.usage(prompt, await tokens.count_async("".join(generated)))
            if include_usage:
                usage_chunk = usage_chunk or _usage_chunk(ctx)
                usage_chunk["usage"] = ctx.usage
                yield encode_data(usage_chunk)
            yield DONE
        except StreamBroken as exc:
            status = exc.status
            ctx.error = exc.message
            log.warning("request %s: upstream stream broke: %s", ctx.request_id, exc.message)
            yield encode_data(exc.body())
        except asyncio.CancelledError:
            status, ctx.error = (
                499,
                "client disconnected",
            )  # nginx's code for it; the upstream is closed below
            raise
        finally:
            await stream.aclose()
            await self._finish(runtime, chain, ctx, status)


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


def _wants_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def _usage_chunk(ctx: RequestContext) -> dict[str, Any]:
    kind = "chat.completion.chunk" if ctx.endpoint == "chat" else "text_completion"
    return {"id": f"gw-{ctx.request_id}", "object": kind, "created": int(time.time()), "choices": []}


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
        "cache": ctx.response_headers.get("x-gateway-cache"),
        "error": ctx.error,
    }
    access_log.info(msgspec.json.encode(record).decode())
