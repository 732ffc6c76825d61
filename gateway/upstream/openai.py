"""Transport for OpenAI-compatible servers (OpenAI, vLLM, llama.cpp, ...)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec

from gateway.errors import BadUpstreamResponse
from gateway.policy import OpenAIBackend, VLLMBackend
from gateway.upstream.base import (
    StreamBroken,
    UpstreamCall,
    make_session,
    post,
    raise_for_status,
    read_json,
    upstream_errors,
)
from gateway.upstream.sse import SSEDecodeError, SSEDecoder

PATHS = {"chat": "/chat/completions", "completions": "/completions", "embeddings": "/embeddings"}
EXPECTED_KEY = {"chat": "choices", "completions": "choices", "embeddings": "data"}


class OpenAITransport:
    def __init__(self, config: OpenAIBackend | VLLMBackend) -> None:
        self.config = config
        self.backend = config.name
        self._base = config.base_url.rstrip("/")
        self._headers = {"content-type": "application/json", **config.headers}
        if config.api_key is not None:
            self._headers["authorization"] = f"Bearer {config.api_key.get_secret_value()}"
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = make_session(self.config.max_connections)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _send(self, call: UpstreamCall, *, stream: bool) -> aiohttp.ClientResponse:
        assert self._session is not None, "transport used before start()"
        headers = {**self._headers, **call.headers} if call.headers else self._headers
        body = msgspec.json.encode(call.body)
        url = self._base + PATHS[call.endpoint]
        resp = await post(self._session, url, body, headers, self.config.timeouts, stream=stream)
        await raise_for_status(resp, self.backend)
        return resp

    async def complete(self, call: UpstreamCall) -> dict[str, Any]:
        with upstream_errors(self.backend, self.config.timeouts):
            resp = await self._send(call, stream=False)
            try:
                answer = await read_json(resp, self.backend, self.config.timeouts)
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

    def __init__(self, resp: aiohttp.ClientResponse, backend: str, config: OpenAIBackend | VLLMBackend) -> None:
        self._resp = resp
        self._backend = backend
        self._timeouts = config.timeouts

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[dict[str, Any]]:
        decoder = SSEDecoder()
        reader = self._resp.content
        idle = self._timeouts.idle_s
        try:
            with upstream_errors(self._backend, self._timeouts):
                while True:
                    async with asyncio.timeout(idle):
                        raw = await reader.readany()
                    if not raw:
                        break
                    for event in decoder.feed(raw):
                        if event.data == "[DONE]":
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
        # close(), not release(): an unfinished stream must drop the connection so the upstream
        # notices and stops generating.
        self._resp.close()


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
