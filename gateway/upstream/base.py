"""The transport interface and the HTTP plumbing shared by every backend type.

A transport turns an OpenAI-shaped call into whatever its backend speaks and back:

    complete(call) -> dict                 a whole answer (chat.completion, text_completion, list)
    open_stream(call) -> UpstreamStream    status checked; iterate chunk dicts, then aclose()
    close()

Backends are called through `gateway.upstream.h1` (asyncio protocols around httptools' parser): aiohttp's
client, used before, cost a third of a millisecond of every stream's time to first token (docs/benchmarks.md).
Failures are converted to the gateway's errors in one place, `upstream_errors`, which also wraps stream
iteration. aiohttp's client stays for what is not on a request's path (`make_session`: vLLM metrics scrapes).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

import aiohttp
import msgspec

from gateway.errors import (
    BadUpstreamResponse,
    GatewayError,
    InvalidRequest,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    summarise_upstream_error,
)
from gateway.plugin import Endpoint
from gateway.policy import Timeouts
from gateway.upstream.h1 import ConnectFailed, Disconnected, H1Error, InvalidResponse, Pool, Response

MAX_ERROR_BODY = 64 * 1024
MAX_RESPONSE_BODY = 64 * 1024 * 1024


@dataclass(slots=True)
class UpstreamCall:
    endpoint: Endpoint
    body: dict[str, Any]  # OpenAI-shaped, `model` already set to the target's model
    headers: dict[str, str] = field(default_factory=dict)  # x-request-id, traceparent, ...


class StreamBroken(GatewayError):
    """The upstream stream ended or failed before it finished; headers were already sent."""

    status = 502
    type = "upstream_error"
    code = "stream_interrupted"
    retry_kind = "5xx"  # retried only if it happens before the first chunk reached the client
    cause: GatewayError | None = None  # the failure as it would be reported before any byte was sent

    @classmethod
    def wrapping(cls, exc: Exception) -> StreamBroken:
        broken = cls(getattr(exc, "message", None) or str(exc) or type(exc).__name__)
        if isinstance(exc, GatewayError):
            broken.cause = exc
            broken.retry_kind = exc.retry_kind or "5xx"
        return broken


class UpstreamStream(Protocol):
    def __aiter__(self) -> AsyncIterator[dict[str, Any]]: ...

    async def aclose(self) -> None: ...


class Transport(Protocol):
    backend: str

    async def complete(self, call: UpstreamCall) -> dict[str, Any]: ...

    async def open_stream(self, call: UpstreamCall) -> UpstreamStream: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class upstream_errors:
    """Convert h1 / socket / decoding failures into the gateway's error types (`with upstream_errors(...)`).

    A class rather than a @contextmanager generator: it is entered twice per upstream call, on a stream's
    first-token path among others, and this way costs two Python calls instead of five or six.
    """

    __slots__ = ("backend", "timeouts")

    def __init__(self, backend: str, timeouts: Timeouts) -> None:
        self.backend = backend
        self.timeouts = timeouts

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is None or isinstance(exc, GatewayError) or not isinstance(exc, Exception):
            return  # nothing happened, already ours, or not an error (cancellation): goes on as it is
        backend, timeouts = self.backend, self.timeouts
        if isinstance(exc, TimeoutError):
            raise UpstreamTimeout(
                f"backend {backend!r} did not answer in time (connect {timeouts.connect_s:g}s, first byte "
                f"{timeouts.first_byte_s:g}s, idle {timeouts.idle_s:g}s, total {timeouts.total_s:g}s)"
            ) from None
        if isinstance(exc, ConnectFailed):
            raise UpstreamUnavailable(f"backend {backend!r} is unreachable ({exc.message})") from None
        if isinstance(exc, (Disconnected, ConnectionResetError)):
            raise BadUpstreamResponse(f"backend {backend!r} closed the connection mid-response") from None
        if isinstance(exc, InvalidResponse):
            raise BadUpstreamResponse(f"backend {backend!r} sent an invalid HTTP response ({exc.message})") from None
        if isinstance(exc, H1Error):
            raise UpstreamUnavailable(f"backend {backend!r} failed: {exc.message}") from None
        if isinstance(exc, OSError):
            raise UpstreamUnavailable(f"backend {backend!r} failed: {exc.strerror or type(exc).__name__}") from None
        if isinstance(exc, (msgspec.DecodeError, UnicodeDecodeError)):
            raise BadUpstreamResponse(f"backend {backend!r} sent a response that is not valid JSON") from None


def make_session(max_connections: int) -> aiohttp.ClientSession:
    """An aiohttp session for calls off the request path (vLLM metrics scrapes)."""
    connector = aiohttp.TCPConnector(
        limit=max_connections, limit_per_host=max_connections, ttl_dns_cache=300, keepalive_timeout=30
    )
    # Per-request timeouts are set in `request_timeout`; the session itself never times out.
    # No cookie jar: one session serves every caller, so a cookie an upstream sets (a load balancer's, say)
    # would otherwise go back with other callers' requests. It also spares each call a jar lookup.
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None),
        auto_decompress=True,
        json_serialize=lambda obj: msgspec.json.encode(obj).decode(),
        skip_auto_headers=("User-Agent",),
    )


async def post(
    pool: Pool, path: str, body: bytes, headers: Mapping[str, str], timeouts: Timeouts, *, stream: bool
) -> Response:
    """Send and wait for the status line and headers.

    A stream's headers come when generation starts, so first_byte_s bounds its time to first token; once
    they are in, idle_s bounds each silence between two chunks. A whole answer's headers come when
    generation ends, so only total_s bounds them, and idle_s its body. total_s bounds the whole call.
    """
    return await pool.request(
        path,
        body,
        headers,
        connect_s=timeouts.connect_s,
        total_s=timeouts.total_s,
        first_byte_s=timeouts.first_byte_s,
        idle_s=timeouts.idle_s,
        stream=stream,
    )


async def read_json(resp: Response, backend: str) -> Any:
    raw = await _read_limited(resp, MAX_RESPONSE_BODY)
    if raw is None:
        raise BadUpstreamResponse(f"backend {backend!r} sent a response over {MAX_RESPONSE_BODY} bytes")
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError:
        kind = resp.headers.get("content-type", "unknown content type")
        raise BadUpstreamResponse(f"backend {backend!r} sent a response that is not valid JSON ({kind})") from None


async def _read_limited(resp: Response, limit: int) -> bytes | None:
    if resp.content_length is not None and resp.content_length > limit:
        return None
    parts: list[bytes] = []
    size = 0
    while part := await resp.readany():
        size += len(part)
        if size > limit:
            return None
        parts.append(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def raise_for_status(resp: Response, backend: str, summarise: Any = summarise_upstream_error) -> None:
    """Turn an upstream error status into the error the client should see."""
    status = resp.status
    if status < 400:
        return
    try:
        async with asyncio.timeout(5):
            raw = await _read_limited(resp, MAX_ERROR_BODY) or b""
        body: Any = msgspec.json.decode(raw) if raw else None
    except (msgspec.DecodeError, TimeoutError, H1Error):
        body = None
    finally:
        resp.release()  # reused if the whole error body was read
    detail = summarise(body)
    if status == 429:
        headers = {"retry-after": resp.headers["retry-after"]} if "retry-after" in resp.headers else {}
        raise RateLimited(f"backend {backend!r} is rate limited: {detail}", headers=headers)
    if status in (401, 403):
        raise UpstreamError(f"backend {backend!r} rejected the gateway's credentials (HTTP {status}): {detail}")
    if status == 404:
        raise UpstreamError(f"backend {backend!r} answered 404 (is the target model right?): {detail}")
    if status < 500:
        error = body.get("error") if isinstance(body, dict) else None
        param = error.get("param") if isinstance(error, dict) else None
        raise InvalidRequest(detail, status=status, param=param if isinstance(param, str) else None)
    if status == 503:
        raise UpstreamUnavailable(f"backend {backend!r} is unavailable (HTTP 503): {detail}", retry_kind="5xx")
    raise UpstreamError(f"backend {backend!r} failed (HTTP {status}): {detail}")
