"""Semantic cache entries in Redis, so every replica serves them and can rebuild its index.

    <ns>:sem:log          a Redis stream of entries (scope, id, text, vector, expiry), capped at
                          about max_entries; each replica replays it at start and then tails it
    <ns>:sem:ans:<id>     the answer, with the entry's TTL

Request-time calls (fetching an answer, publishing one) go through the fail-fast RedisLink; the
tail runs in the background on its own connection and reconnects by itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.embeddings import Vector
from gateway.redis_link import RedisLink
from plugins.semantic_cache.index import Entry

log = logging.getLogger("gateway.semantic_cache")


class SharedEntries:
    def __init__(self, link: RedisLink, namespace: str, max_entries: int) -> None:
        self.link = link
        self.log_key = f"{namespace}:sem:log"
        self.answer_prefix = f"{namespace}:sem:ans:"
        self.max_entries = max_entries
        self.synced = asyncio.Event()  # set once the backlog has been replayed

    async def publish(self, entry: Entry, vector: Vector, answer: bytes, ttl_s: float) -> None:
        fields: dict[str, bytes | str | float | int] = {
            "id": entry.id,
            "scope": entry.scope,
            "text": entry.text,
            "expires": entry.expires,
            "vector": vector.astype(np.float32).tobytes(),
        }

        async def write(r: aioredis.Redis) -> None:
            async with r.pipeline(transaction=False) as pipe:
                pipe.set(self.answer_prefix + str(entry.id), answer, px=max(1, int(ttl_s * 1000)))
                pipe.xadd(self.log_key, fields, maxlen=self.max_entries, approximate=True)  # type: ignore[arg-type]
                await pipe.execute()

        await self.link.run(write)

    async def answer(self, entry_id: int) -> bytes | None:
        value = await self.link.run(lambda r: r.get(self.answer_prefix + str(entry_id)))
        return value if isinstance(value, bytes) else None

    async def follow(self, on_entry: Callable[[Entry, Vector], None], retry_after_s: float) -> None:
        """Replay the log, then tail it for ever (until cancelled), reconnecting on failure."""
        client = aioredis.Redis.from_url(self.link.url, socket_connect_timeout=2)
        last = "0-0"
        try:
            while True:
                try:
                    if not self.synced.is_set():
                        last = await self._replay(client, last, on_entry)
                        self.synced.set()
                    reply: Any = await client.xread({self.log_key: last}, block=1000, count=500)
                    for _, messages in reply or []:
                        for message_id, fields in messages:
                            last = _text(message_id)
                            _deliver(fields, on_entry)
                except (RedisError, OSError) as exc:
                    self.link.mark_down(exc)  # requests learn of the outage now, not on their own failure
                    log.warning("semantic cache: following Redis failed (%s); retrying", exc)
                    await asyncio.sleep(retry_after_s)
        finally:
            await client.aclose()

    async def _replay(self, client: aioredis.Redis, last: str, on_entry: Callable[[Entry, Vector], None]) -> str:
        while True:
            batch: Any = await client.xrange(self.log_key, min=f"({last}" if last != "0-0" else "-", count=1000)
            if not batch:
                return last
            for message_id, fields in batch:
                last = _text(message_id)
                _deliver(fields, on_entry)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _deliver(fields: dict[bytes, bytes], on_entry: Callable[[Entry, Vector], None]) -> None:
    try:
        entry = Entry(
            id=int(fields[b"id"]),
            scope=fields[b"scope"].decode(),
            text=fields[b"text"].decode(),
            expires=float(fields[b"expires"]),
        )
        vector = np.frombuffer(fields[b"vector"], dtype=np.float32)
    except (KeyError, ValueError, UnicodeDecodeError):
        log.warning("semantic cache: skipping a malformed entry in the Redis log")
        return
    on_entry(entry, vector)
