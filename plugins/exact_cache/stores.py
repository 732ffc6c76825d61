"""Where exact_cache keeps answers: this process's memory (LRU, bounded) or Redis (shared, TTL)."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Protocol

from gateway.redis_link import RedisLink


class AnswerStore(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes, ttl_s: float) -> None: ...

    async def clear(self) -> None: ...


class MemoryStore:
    """LRU bounded by entry count and total bytes; expired entries are dropped when touched."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    async def get(self, key: str) -> bytes | None:
        item = self._items.get(key)
        if item is None:
            return None
        expires, value = item
        if expires < time.monotonic():
            self._drop(key)
            return None
        self._items.move_to_end(key)
        return value

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        if len(value) > self.max_bytes:
            return  # one answer larger than the whole cache: not worth evicting everything for
        if key in self._items:
            self._drop(key)
        self._items[key] = (time.monotonic() + ttl_s, value)
        self.bytes += len(value)
        while len(self._items) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self._items)))

    async def clear(self) -> None:
        self._items.clear()
        self.bytes = 0

    def _drop(self, key: str) -> None:
        _, value = self._items.pop(key)
        self.bytes -= len(value)


class RedisStore:
    """Answers under `<namespace>:exact:<sha256>` with a TTL; raises RedisUnavailable when Redis is."""

    def __init__(self, link: RedisLink, namespace: str) -> None:
        self.link = link
        self.prefix = f"{namespace}:exact:"

    async def get(self, key: str) -> bytes | None:
        value = await self.link.run(lambda r: r.get(self.prefix + key))
        return value if isinstance(value, bytes) else None

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        await self.link.run(lambda r: r.set(self.prefix + key, value, px=max(1, int(ttl_s * 1000))))

    async def clear(self) -> None:
        # An operator's action, not a request's: no fail-fast timeout here.
        async for name in self.link.client.scan_iter(match=self.prefix + "*", count=500):
            await self.link.client.delete(name)
