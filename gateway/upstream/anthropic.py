"""Transport for Anthropic's Messages API: OpenAI chat in, OpenAI chat out.

The protocol mapping itself is pure and lives in `anthropic_translate`; this module only moves
bytes and converts errors.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from gateway.errors import BadUpstreamResponse, InvalidRequest
from gateway.policy import AnthropicBackend
from gateway.upstream.anthropic_translate import (
    AnthropicStreamError,
    AnthropicStreamTranslator,
    TranslationError,
    error_from_anthropic,
    from_anthropic_response,
    to_anthropic_request,
)
from gateway.upstream.base import (
    StreamBroken,
    UpstreamCall,
    post,
    raise_for_status,
    read_json,
    upstream_errors,
)
from gateway.upstream.h1 import Pool, Response
from gateway.upstream.sse import SSEDecodeError, SSEDecoder


def _summarise(body: Any) -> str:
    return error_from_anthropic(0, body)[0]


class AnthropicTransport:
    def __init__(self, config: AnthropicBackend) -> None:
        self.config = config
        self.backend = config.name
        self._base = config.base_url.rstrip("/").removesuffix("/v1")
        self._path = "/v1/messages"
        self._headers = {
            "content-type": "application/json",
            "anthropic-version": config.anthropic_version,
            **config.headers,
        }
        if config.api_key is not None:
            self._headers["x-api-key"] = config.api_key.get_secret_value()
        self._pool: Pool | None = None

    async def start(self) -> None:
        self._pool = Pool(self._base, self.config.max_connections)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    async def _send(self, call: UpstreamCall, stream: bool) -> Response:
        assert self._pool is not None, "transport used before start()"
        if call.endpoint != "chat":
            raise InvalidRequest(
                f"backend {self.backend!r} is an Anthropic backend, which only serves chat completions"
            )
        try:
            body = to_anthropic_request(
                call.body, call.body["model"], default_max_tokens=self.config.default_max_tokens
            )
        except TranslationError as exc:
            raise InvalidRequest(exc.message, param=exc.param) from None
        body["stream"] = stream
        headers = {**self._headers, **call.headers}
        resp = await post(
            self._pool, self._path, msgspec.json.encode(body), headers, self.config.timeouts, stream=stream
        )
        await raise_for_status(resp, self.backend, summarise=_summarise)
        return resp

    async def complete(self, call: UpstreamCall) -> dict[str, Any]:
        with upstream_errors(self.backend, self.config.timeouts):
            resp = await self._send(call, stream=False)
            try:
                answer = await read_json(resp, self.backend)
            finally:
                resp.release()
        if not isinstance(answer, dict) or not isinstance(answer.get("content"), list):
            raise BadUpstreamResponse(f"backend {self.backend!r} sent JSON that is not an Anthropic message")
        return from_anthropic_response(answer, created=int(time.time()))

    async def open_stream(self, call: UpstreamCall) -> AnthropicStream:
        with upstream_errors(self.backend, self.config.timeouts):
            resp = await self._send(call, stream=True)
        content_type = resp.headers.get("content-type", "")
        if "text/event-stream" not in content_type:
            resp.close()
            raise BadUpstreamResponse(
                f"backend {self.backend!r} answered a stream request with {content_type or 'no content type'}"
            )
        options = call.body.get("stream_options") or {}
        include_usage = bool(options.get("include_usage")) if isinstance(options, dict) else False
        return AnthropicStream(
            resp, self, AnthropicStreamTranslator(include_usage=include_usage, created=int(time.time()))
        )


class AnthropicStream:
    def __init__(
        self,
        resp: Response,
        transport: AnthropicTransport,
        translator: AnthropicStreamTranslator,
    ) -> None:
        self._resp = resp
        self._transport = transport
        self._translator = translator

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[dict[str, Any]]:
        backend, timeouts = self._transport.backend, self._transport.config.timeouts
        decoder = SSEDecoder()
        try:
            with upstream_errors(backend, timeouts):
                while not self._translator.finished:
                    raw = await self._resp.readany()  # within idle_s (base.post)
                    if not raw:
                        break
                    for event in decoder.feed(raw):
                        data = msgspec.json.decode(event.data) if event.data else {}
                        for chunk in self._translator.feed(event.event, data):
                            yield chunk
        except AnthropicStreamError as exc:
            raise StreamBroken(f"backend {backend!r} reported an error mid-stream: {exc.message}") from None
        except SSEDecodeError as exc:
            raise StreamBroken(f"backend {backend!r}: {exc}") from None
        except StreamBroken:
            raise
        except Exception as exc:
            raise StreamBroken.wrapping(exc) from None
        if not self._translator.finished:
            raise StreamBroken(f"backend {backend!r} ended the stream before it finished")

    async def aclose(self) -> None:
        self._resp.close()
