"""exact_cache's stores: the bounded in-memory LRU, and Redis (a private redis-server) through RedisLink."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest
import redis as sync_redis

from gateway.redis_link import RedisLink, RedisUnavailable
from plugins.exact_cache import stores
from plugins.exact_cache.stores import MemoryStore, RedisStore
from tests.redis_server import RedisServer

# --- MemoryStore -----------------------------------------------------------------------------------


class Clock:
    """Stands in for the stores module's `time`, so TTLs are tested without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(stores, "time", SimpleNamespace(monotonic=fake.monotonic))
    return fake


async def test_memory_round_trip_and_missing_key() -> None:
    store = MemoryStore(10, 1024)
    assert await store.get("k") is None
    await store.put("k", b"value", 60)
    assert await store.get("k") == b"value"
    assert len(store) == 1
    assert store.bytes == 5


async def test_memory_lru_eviction_by_count() -> None:
    store = MemoryStore(3, 1024)
    for key in ("a", "b", "c"):
        await store.put(key, key.encode(), 60)
    assert await store.get("a") == b"a"  # a is now the most recently used; b the least
    await store.put("d", b"d", 60)
    assert len(store) == 3
    assert await store.get("b") is None
    assert [await store.get(k) for k in ("a", "c", "d")] == [b"a", b"c", b"d"]
    assert store.bytes == 3


async def test_memory_lru_eviction_by_bytes() -> None:
    store = MemoryStore(100, 1024)
    await store.put("a", b"a" * 400, 60)
    await store.put("b", b"b" * 400, 60)
    await store.get("a")  # b is now the least recently used
    await store.put("c", b"c" * 400, 60)  # 1200 > 1024: evict b only
    assert await store.get("b") is None
    assert await store.get("a") == b"a" * 400
    assert await store.get("c") == b"c" * 400
    assert store.bytes == 800
    await store.put("d", b"d" * 1000, 60)  # needs everything else gone
    assert len(store) == 1
    assert store.bytes == 1000
    assert await store.get("d") == b"d" * 1000


async def test_memory_value_exactly_max_bytes_is_kept() -> None:
    store = MemoryStore(10, 1024)
    await store.put("x", b"x" * 1024, 60)
    assert await store.get("x") == b"x" * 1024
    assert store.bytes == 1024


async def test_memory_oversize_value_is_ignored() -> None:
    store = MemoryStore(10, 1024)
    await store.put("a", b"a" * 100, 60)
    await store.put("big", b"x" * 1025, 60)
    assert await store.get("big") is None
    assert await store.get("a") == b"a" * 100  # nothing was evicted for it
    assert len(store) == 1
    assert store.bytes == 100


async def test_memory_bytes_accounting_exact_after_overwrite() -> None:
    store = MemoryStore(10, 1024)
    await store.put("k", b"x" * 300, 60)
    await store.put("k", b"y" * 100, 60)
    assert store.bytes == 100
    assert len(store) == 1
    assert await store.get("k") == b"y" * 100
    await store.put("k", b"z" * 700, 60)
    await store.put("other", b"o" * 300, 60)
    assert store.bytes == 1000
    # an overwrite with a larger value evicts others only as needed, and counts its own bytes once
    await store.put("k", b"w" * 900, 60)
    assert store.bytes == 900
    assert await store.get("other") is None
    assert await store.get("k") == b"w" * 900
    assert store.bytes == sum(len(v) for _, v in store._items.values())


async def test_memory_ttl_expiry(clock: Clock) -> None:
    store = MemoryStore(10, 1024)
    await store.put("k", b"v", 10)
    clock.now += 9.9
    assert await store.get("k") == b"v"
    clock.now += 0.2
    assert await store.get("k") is None
    assert len(store) == 0  # dropped when touched
    assert store.bytes == 0


async def test_memory_overwrite_renews_ttl(clock: Clock) -> None:
    store = MemoryStore(10, 1024)
    await store.put("k", b"v1", 10)
    clock.now += 8
    await store.put("k", b"v2", 10)
    clock.now += 8
    assert await store.get("k") == b"v2"


async def test_memory_clear() -> None:
    store = MemoryStore(10, 1024)
    await store.put("a", b"aaa", 60)
    await store.put("b", b"bb", 60)
    await store.clear()
    assert len(store) == 0
    assert store.bytes == 0
    assert await store.get("a") is None


# --- RedisStore ------------------------------------------------------------------------------------

RETRY_AFTER_S = 0.2


@pytest.fixture
async def link(redis_server: RedisServer) -> AsyncIterator[RedisLink]:
    redis_server.flush()
    made = RedisLink(redis_server.url, timeout_s=0.05, retry_after_s=RETRY_AFTER_S)
    yield made
    await made.close()


def raw_redis(server: RedisServer) -> sync_redis.Redis:
    return sync_redis.Redis.from_url(server.url, socket_timeout=1)


async def test_redis_round_trip_with_ttl(link: RedisLink, redis_server: RedisServer) -> None:
    store = RedisStore(link, "testns")
    assert await store.get("abc") is None
    await store.put("abc", b'{"answer": 1}', 30)
    assert await store.get("abc") == b'{"answer": 1}'
    with raw_redis(redis_server) as r:
        assert r.get("testns:exact:abc") == b'{"answer": 1}'
        pttl = r.pttl("testns:exact:abc")
        assert 29_000 < pttl <= 30_000
        assert r.keys("*") == [b"testns:exact:abc"]


async def test_redis_sub_millisecond_ttl_still_expires(link: RedisLink, redis_server: RedisServer) -> None:
    store = RedisStore(link, "testns")
    await store.put("tiny", b"v", 0.0001)  # rounds to 1 ms, never to "no expiry"
    with raw_redis(redis_server) as r:
        assert r.pttl("testns:exact:tiny") in (-2, 0, 1)


async def test_redis_clear_only_touches_its_namespace(link: RedisLink, redis_server: RedisServer) -> None:
    mine, other = RedisStore(link, "mine"), RedisStore(link, "other")
    await mine.put("a", b"1", 30)
    await mine.put("b", b"2", 30)
    await other.put("a", b"3", 30)
    await mine.clear()
    assert await mine.get("a") is None
    assert await mine.get("b") is None
    assert await other.get("a") == b"3"


async def test_redis_unavailable_fast_then_recovers(link: RedisLink, redis_server: RedisServer) -> None:
    store = RedisStore(link, "testns")
    await store.put("k", b"v", 30)
    assert link.up
    redis_server.kill()
    try:
        started = time.perf_counter()
        with pytest.raises(RedisUnavailable):
            await store.get("k")
        assert time.perf_counter() - started < 0.5
        assert not link.up
        assert link.last_error
        failures = link.failures
        # down: refused at once, without touching Redis
        started = time.perf_counter()
        with pytest.raises(RedisUnavailable):
            await store.put("k2", b"v", 30)
        assert time.perf_counter() - started < 0.5
        assert link.failures == failures
        assert await link.ping() is False
        assert link.state()["up"] is False
    finally:
        redis_server.start()
    await asyncio.sleep(RETRY_AFTER_S + 0.05)
    # the restarted Redis is empty (no persistence); the link works again
    assert await store.get("k") is None
    assert link.up
    assert link.last_error is None
    await store.put("k", b"again", 30)
    assert await store.get("k") == b"again"
    assert await link.ping() is True


async def test_redis_slow_call_times_out_and_leaves_no_stale_reply(link: RedisLink, redis_server: RedisServer) -> None:
    store = RedisStore(link, "testns")
    await store.put("first", b"first-value", 30)
    await store.put("second", b"second-value", 30)
    with raw_redis(redis_server) as r:
        r.execute_command("CLIENT", "PAUSE", 300, "ALL")  # Redis holds every other client's commands for 0.3 s
    started = time.perf_counter()
    with pytest.raises(RedisUnavailable):
        await store.get("first")
    assert time.perf_counter() - started < 0.25  # the 50 ms timeout, not the pause
    await asyncio.sleep(0.3 + RETRY_AFTER_S)
    # the reply to the timed-out GET must not be read as the answer to a later command
    assert await store.get("second") == b"second-value"
    assert await store.get("first") == b"first-value"
    assert await store.get("missing") is None


async def test_redis_unavailable_when_never_reachable() -> None:
    from tests.gateway_server import free_port

    dead = RedisLink(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.05, retry_after_s=RETRY_AFTER_S)
    try:
        started = time.perf_counter()
        with pytest.raises(RedisUnavailable):
            await RedisStore(dead, "x").get("k")
        assert time.perf_counter() - started < 0.5
        assert dead.failures == 1
    finally:
        await dead.close()


def test_redis_link_state_redacts_passwords() -> None:
    link = RedisLink("redis://user:s3cret@127.0.0.1:1/0", timeout_s=0.05, retry_after_s=1)
    assert "s3cret" not in link.state()["url"]
    assert link.state()["url"] == "redis://user:***@127.0.0.1:1/0"
