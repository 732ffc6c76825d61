"""A Redis connection that fails fast and recovers by itself.

Plugins that keep state in Redis (caches, limits) must never make a request slower than their
timeout, nor fail it because Redis blinked. Every command runs under `timeout_s`; after a failure
the link is *down* and refuses commands at once for `retry_after_s`; after that, commands go to Redis
again and the first success marks it up. `state()` describes the link for admin views.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

T = TypeVar("T")


class RedisUnavailable(Exception):
    """Redis did not answer in time or at all; the caller decides whether to fail open."""


class RedisLink:
    def __init__(self, url: str, *, timeout_s: float, retry_after_s: float) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry_on_timeout=False
        )
        self._down_until = 0.0
        self.last_error: str | None = None
        self.failures = 0

    @property
    def up(self) -> bool:
        return self.last_error is None

    async def run(self, op: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        if self.last_error is not None and time.monotonic() < self._down_until:
            raise RedisUnavailable(self.last_error)
        try:
            async with asyncio.timeout(self.timeout_s):
                try:
                    result = await op(self.client)
                except (RedisConnectionError, OSError):
                    # A pooled connection to a Redis that restarted fails once, at once: retry on a fresh one.
                    result = await op(self.client)
        except (RedisError, OSError, TimeoutError) as exc:
            self.mark_down(exc)
            raise RedisUnavailable(self.last_error) from None
        self.last_error = None
        return result

    def mark_down(self, exc: BaseException) -> None:
        """Record a failure seen here or by another connection to the same Redis (a background reader)."""
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        self._down_until = time.monotonic() + self.retry_after_s

    async def ping(self) -> bool:
        try:
            await self.run(lambda r: r.ping())
        except RedisUnavailable:
            return False
        return True

    def state(self) -> dict[str, Any]:
        return {"url": _redact(self.url), "up": self.up, "last_error": self.last_error, "failures": self.failures}

    async def close(self) -> None:
        await self.client.aclose()


def _redact(url: str) -> str:
    """redis://user:secret@host -> redis://user:***@host (URLs may carry passwords)."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"
