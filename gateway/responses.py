"""Minimal ASGI responses for the hot path: a JSON body, and an SSE stream that is never buffered.

`SSEResponse` sends each event as its own ASGI message the moment it is produced, watches for the
client going away, and always closes its source (which cancels the upstream call).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import Any

import msgspec
from litestar.types import HTTPResponseBodyEvent, HTTPResponseStartEvent, Receive, Scope, Send

from gateway.errors import GatewayError

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # tell nginx-style proxies in front of us not to buffer either
]


def _raw(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1", "replace")) for k, v in headers.items()]


class JSONResponse:
    """`on_close`, when set, runs after the body is sent (end-phase work adds no latency)."""

    __slots__ = ("body", "content_type", "headers", "on_close", "status")

    def __init__(
        self, status: int, body: bytes, headers: Mapping[str, str], content_type: str = "application/json"
    ) -> None:
        self.status = status
        self.body = body
        self.headers = headers
        self.content_type = content_type
        self.on_close: Callable[[], Awaitable[None]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = _raw(self.headers)
        raw.append((b"content-type", self.content_type.encode("latin-1")))
        raw.append((b"content-length", str(len(self.body)).encode()))
        start: HTTPResponseStartEvent = {"type": "http.response.start", "status": self.status, "headers": raw}
        body: HTTPResponseBodyEvent = {"type": "http.response.body", "body": self.body, "more_body": False}
        try:
            await send(start)
            await send(body)
        finally:
            if self.on_close is not None:
                await self.on_close()


def json_response(status: int, payload: Any, headers: Mapping[str, str]) -> JSONResponse:
    return JSONResponse(status, msgspec.json.encode(payload), headers)


def error_response(error: GatewayError, headers: Mapping[str, str]) -> JSONResponse:
    return json_response(error.status, error.body(), {**headers, **error.headers})


class SSEResponse:
    """`on_close` always runs once the response is over, even if the body was never started."""

    __slots__ = ("events", "headers", "on_close", "on_disconnect")

    def __init__(
        self,
        events: AsyncGenerator[bytes, None],
        headers: Mapping[str, str],
        on_disconnect: Callable[[], None],
        on_close: Callable[[], Awaitable[None]],
    ) -> None:
        self.events = events
        self.headers = headers
        self.on_disconnect = on_disconnect
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streaming = asyncio.current_task()
        assert streaming is not None
        disconnected = False

        async def watch() -> None:
            nonlocal disconnected
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    disconnected = True
                    streaming.cancel()
                    return

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": _raw(self.headers) + _SSE_HEADERS})
            async for event in self.events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not disconnected:
                raise
            self.on_disconnect()
            streaming.uncancel()
        except OSError:
            # The socket died under us before the disconnect message arrived: same thing.
            self.on_disconnect()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            try:
                await self.events.aclose()
            finally:
                await self.on_close()
