"""The transport interface and the HTTP plumbing shared by every backend type.

A transport turns an OpenAI-shaped call into whatever its backend speaks and back:

    complete(call) -> dict                 a whole answer (chat.completion, text_completion, list)
    open_stream(call) -> UpstreamStream    status checked; iterate chunk dicts, then aclose()
    close()

aiohttp is the client: on this machine it holds ~7k req/s through a proxy where httpx's own pool
collapses under concurrency (see docs/benchmarks.md). Its exceptions are converted to the
gateway's errors in one place, `upstream_errors`, which also wraps stream iteration.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
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


@contextlib.contextmanager
def upstream_errors(backend: str, timeouts: Timeouts) -> Iterator[None]:
    """Convert aiohttp / socket / decoding failures into the gateway's error types."""
    try:
        yield
    except GatewayError:
        raise
    except TimeoutError:
        raise UpstreamTimeout(
            f"backend {backend!r} did not answer in time (first byte {timeouts.first_byte_s:g}s, "
            f"idle {timeouts.idle_s:g}s, total {timeouts.total_s:g}s)"
        ) from None
    except aiohttp.ClientConnectorError as exc:
        raise UpstreamUnavailable(f"backend {backend!r} is unreachable ({_reason(exc)})") from None
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, ConnectionResetError):
        raise BadUpstreamResponse(f"backend {backend!r} closed the connection mid-response") from None
    except aiohttp.ClientResponseError as exc:
        raise BadUpstreamResponse(f"backend {backend!r} sent an invalid HTTP response ({exc.message})") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise UpstreamUnavailable(f"backend {backend!r} failed: {_reason(exc)}") from None
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise BadUpstreamResponse(f"backend {backend!r} sent a response that is not valid JSON") from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return exc.os_error.strerror or type(exc.os_error).__name__
    return str(exc) or type(exc).__name__


def make_session(max_connections: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=max_connections, limit_per_host=max_connections, ttl_dns_cache=300, keepalive_timeout=30
    )
    # Per-request timeouts are set in `request_timeout`; the session itself never times out.
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None),
        auto_decompress=True,
        json_serialize=lambda obj: msgspec.json.encode(obj).decode(),
        skip_auto_headers=("User-Agent",),
    )


def request_timeout(timeouts: Timeouts) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=timeouts.total_s, connect=timeouts.connect_s, sock_connect=timeouts.connect_s)


async def post(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    timeouts: Timeouts,
    *,
    stream: bool,
) -> aiohttp.ClientResponse:
    """Send and wait for the status line and headers.

    A stream's headers come when generation starts, so first_byte_s bounds its time to first token;
    a whole answer's headers come when generation ends, so only total_s bounds it.
    """
    if not stream:  # aiohttp's own total timeout (request_timeout) already bounds it
        return await session.post(url, data=body, headers=headers, timeout=request_timeout(timeouts))
    async with asyncio.timeout(timeouts.first_byte_s):
        return await session.post(url, data=body, headers=headers, timeout=request_timeout(timeouts))


async def read_json(resp: aiohttp.ClientResponse, backend: str, timeouts: Timeouts) -> Any:
    async with asyncio.timeout(timeouts.idle_s):
        raw = await _read_limited(resp, MAX_RESPONSE_BODY)
    if raw is None:
        raise BadUpstreamResponse(f"backend {backend!r} sent a response over {MAX_RESPONSE_BODY} bytes")
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError:
        kind = resp.headers.get("content-type", "unknown content type")
        raise BadUpstreamResponse(f"backend {backend!r} sent a response that is not valid JSON ({kind})") from None


async def _read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes | None:
    if resp.content_length is not None and resp.content_length > limit:
        return None
    parts: list[bytes] = []
    size = 0
    async for part in resp.content.iter_any():
        size += len(part)
        if size > limit:
            return None
        parts.append(part)
    return b"".join(parts)


async def raise_for_status(
    resp: aiohttp.ClientResponse, backend: str, summarise: Any = summarise_upstream_error
) -> None:
    """Turn an upstream error status into the error the client should see."""
    status = resp.status
    if status < 400:
        return
    try:
        async with asyncio.timeout(5):
            raw = await _read_limited(resp, MAX_ERROR_BODY) or b""
        body: Any = msgspec.json.decode(raw) if raw else None
    except (msgspec.DecodeError, TimeoutError, aiohttp.ClientError):
        body = None
    finally:
        resp.release()
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
