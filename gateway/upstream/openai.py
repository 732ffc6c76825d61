"""Transport for OpenAI-compatible servers (OpenAI, vLLM, llama.cpp, ...)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from gateway.errors import BadUpstreamResponse
from gateway.policy import OpenAIBackend, VLLMBackend
from gateway.upstream.base import (
    StreamBroken,
    UpstreamCall,
    post,
    raise_for_status,
    read_json,
    upstream_errors,
)
from gateway.upstream.h1 import H1Error, Pool, Response
from gateway.upstream.sse import SSEDecodeError, SSEDecoder

PATHS = {"chat": "/chat/completions", "completions": "/completions", "embeddings": "/embeddings"}
EXPECTED_KEY = {"chat": "choices", "completions": "choices", "embeddings": "data"}


class OpenAITransport:
    def __init__(self, config: OpenAIBackend | VLLMBackend) -> None:
        self.config = config
        self.backend = config.name
        self._headers = {"content-type": "application/json", **config.headers}
        if config.api_key is not None:
            self._headers["authorization"] = f"Bearer {config.api_key.get_secret_value()}"
        self._pool: Pool | None = None

    async def start(self) -> None:
        self._pool = Pool(self.config.base_url, self.config.max_connections)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    async def _send(self, call: UpstreamCall, *, stream: bool) -> Response:
        assert self._pool is not None, "transport used before start()"
        headers = {**self._headers, **call.headers} if call.headers else self._headers
        body = msgspec.json.encode(call.body)
        resp = await post(self._pool, PATHS[call.endpoint], body, headers, self.config.timeouts, stream=stream)
        await raise_for_status(resp, self.backend)
        return resp

    async def complete(self, call: UpstreamCall) -> dict[str, Any]:
        with upstream_errors(self.backend, self.config.timeouts):
            resp = await self._send(call, stream=False)
            try:
                answer = await read_json(resp, self.backend)
            finally:
                resp.release()
        if not isinstance(answer, dict) or not isinstance(answer.get(EXPECTED_KEY[call.endpoint]), list):
            raise BadUpstreamResponse(f"backend {self.backend!r} sent JSON that is not an OpenAI response")
        return answer

    async def open_stream(self, call: UpstreamCall) -> OpenAIStream:
        with upstream_errors(self.backend, self.config.timeouts):
            resp = await self._send(call, stream=True)
        content_type = resp.headers.get("content-type", "")
        if "text/event-stream" not in content_type:
            resp.close()
            raise BadUpstreamResponse(
                f"backend {self.backend!r} answered a stream request with {content_type or 'no content type'}"
            )
        return OpenAIStream(resp, self.backend, self.config)


class OpenAIStream:
    """Chunks of an OpenAI SSE stream; raises StreamBroken unless it ends with [DONE]."""

    def __init__(self, resp: Response, backend: str, config: OpenAIBackend | VLLMBackend) -> None:
        self._resp = resp
        self._backend = backend
        self._timeouts = config.timeouts
        self._finished = False  # [DONE] arrived: the connection may go back to the pool

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[dict[str, Any]]:
        decoder = SSEDecoder()
        resp = self._resp
        try:
            with upstream_errors(self._backend, self._timeouts):
                while True:
                    raw = await resp.readany()  # within idle_s (base.post)
                    if not raw:
                        break
                    for event in decoder.feed(raw):
                        if event.data == "[DONE]":
                            self._finished = True
                            return
                        yield _chunk(event.data, self._backend)
        except SSEDecodeError as exc:
            raise StreamBroken(f"backend {self._backend!r}: {exc}") from None
        except StreamBroken:
            raise
        except Exception as exc:
            raise StreamBroken.wrapping(exc) from None
        raise StreamBroken(f"backend {self._backend!r} ended the stream before it finished")

    async def aclose(self) -> None:
        # An unfinished stream must drop the connection (close(), not release()) so the upstream notices
        # and stops generating. A finished one goes back to the pool once its body has ended, so the next
        # stream skips a TCP connect (an upstream that ends the body apart from [DONE] otherwise costs one per stream).
        reuse = False
        try:
            reuse = self._finished and await _body_ended(self._resp)
        finally:
            if reuse:
                self._resp.release()
            else:
                self._resp.close()


DRAIN_TIMEOUT_S = 0.05
DRAIN_MAX_BYTES = 4096


async def _body_ended(resp: Response) -> bool:
    """After [DONE] only the end of the body should follow (usually already read): wait for it briefly."""
    if resp.at_eof():
        return True
    left = DRAIN_MAX_BYTES
    try:
        async with asyncio.timeout(DRAIN_TIMEOUT_S):
            while left > 0 and not resp.at_eof():
                part = await resp.readany()
                if not part:
                    break
                left -= len(part)
    except (TimeoutError, H1Error, OSError):
        return False
    return resp.at_eof()


def _chunk(data: str, backend: str) -> dict[str, Any]:
    try:
        chunk = msgspec.json.decode(data)
    except msgspec.DecodeError:
        raise StreamBroken(f"backend {backend!r} sent a stream event that is not JSON") from None
    if not isinstance(chunk, dict):
        raise StreamBroken(f"backend {backend!r} sent a stream event that is not a JSON object")
    if "error" in chunk and "choices" not in chunk:
        err = chunk["error"]
        message = err.get("message") if isinstance(err, dict) else str(err)
        raise StreamBroken(f"backend {backend!r} reported an error mid-stream: {message}")
    return chunk
