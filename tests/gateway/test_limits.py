"""Per-key limits: the same behaviours in memory and in a private Redis, then Redis's own (replicas, outages)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis as sync_redis

from gateway.limits import (
    KeyLimits,
    Limiter,
    LimitExceeded,
    LimitStoreUnavailable,
    MemoryLimiter,
    Price,
    RedisLimiter,
    Reservation,
    estimate_tokens,
    format_duration,
)
from gateway.redis_link import RedisLink
from tests.redis_server import RedisServer

WINDOW = 1_000_000  # a minute bucket far from today's, so Redis keys never collide with real ones
START = WINDOW * 60 + 48.0  # 12 s before the window ends


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


MakeLimiter = Callable[[FakeClock], Awaitable[Limiter]]


@pytest.fixture(params=["memory", "redis"])
async def make_limiter(request: pytest.FixtureRequest) -> AsyncIterator[MakeLimiter]:
    made: list[Limiter] = []

    async def make(clock: FakeClock) -> Limiter:
        if request.param == "memory":
            limiter: Limiter = MemoryLimiter(clock)
        else:
            server: RedisServer = request.getfixturevalue("redis_server")
            link = RedisLink(server.url, timeout_s=1.0, retry_after_s=0.1)
            limiter = RedisLimiter(link, f"t{uuid.uuid4().hex[:8]}", clock=clock)
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.close()


# --- pure helpers ------------------------------------------------------------------------------------


def test_estimate_tokens() -> None:
    assert estimate_tokens(100, {}) == 356
    assert estimate_tokens(100, {}, default_completion=10) == 110
    assert estimate_tokens(100, {"max_tokens": 50}) == 150
    assert estimate_tokens(100, {"max_tokens": 50, "max_completion_tokens": 20}) == 120
    assert estimate_tokens(100, {"max_output_tokens": 30}) == 130
    assert estimate_tokens(100, {"max_tokens": 50, "n": 3}) == 250
    # junk from a client falls back to the defaults
    assert estimate_tokens(100, {"max_tokens": "50", "n": True}) == 356
    assert estimate_tokens(100, {"max_tokens": 0, "n": -2}) == 356
    assert estimate_tokens(100, {"max_tokens": None, "n": None}) == 356


def test_price_cost() -> None:
    price = Price(input_per_mtok=2.5, output_per_mtok=10.0)
    assert price.cost(1_000_000, 0) == pytest.approx(2.5)
    assert price.cost(1000, 500) == pytest.approx(0.0025 + 0.005)
    assert price.cost(0, 0) == 0


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0ms"),
        (0.0204, "21ms"),
        (1, "1s"),
        (7.66, "7.66s"),
        (12, "12s"),
        (59.9991, "1m0s"),
        (60, "1m0s"),
        (90.5, "1m30.5s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# --- behaviours shared by both limiters ------------------------------------------------------------------


async def test_rpm_allows_exactly_n_then_refuses_until_the_window_ends(make_limiter: MakeLimiter) -> None:
    clock = FakeClock()
    limiter = await make_limiter(clock)
    limits = KeyLimits(rpm=3)
    for i in range(3):
        reservation = await limiter.reserve("team-a", limits, 10)
        assert reservation.window == WINDOW
        assert reservation.headers == {
            "x-ratelimit-limit-requests": "3",
            "x-ratelimit-remaining-requests": str(2 - i),
            "x-ratelimit-reset-requests": "12s",
        }
    clock.now += 0.5
    with pytest.raises(LimitExceeded) as caught:
        await limiter.reserve("team-a", limits, 10)
    exc = caught.value
    assert exc.kind == "requests"
    assert exc.code == "rate_limit_exceeded"
    assert exc.retry_after_s == pytest.approx(11.5)
    assert exc.message == "Rate limit reached for requests per minute (limit 3). Try again in 11.5s."
    assert str(exc) == exc.message
    assert exc.headers["x-ratelimit-remaining-requests"] == "0"
    assert exc.headers["retry-after"] == "12"
    assert "team-a" not in exc.message
    # another key has its own window
    await limiter.reserve("team-b", limits, 10)
    # the next minute starts afresh
    clock.now = (WINDOW + 1) * 60
    reservation = await limiter.reserve("team-a", limits, 10)
    assert reservation.window == WINDOW + 1
    assert reservation.headers["x-ratelimit-remaining-requests"] == "2"
    assert reservation.headers["x-ratelimit-reset-requests"] == "1m0s"


async def test_tpm_reserve_then_settle_down_and_up(make_limiter: MakeLimiter) -> None:
    clock = FakeClock()
    limiter = await make_limiter(clock)
    limits = KeyLimits(tpm=1000)
    first = await limiter.reserve("k", limits, 600)
    assert first.headers == {
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "400",
        "x-ratelimit-reset-tokens": "12s",
    }
    with pytest.raises(LimitExceeded) as caught:
        await limiter.reserve("k", limits, 500)
    assert caught.value.kind == "tokens"
    assert caught.value.retry_after_s == pytest.approx(12)
    assert caught.value.message == (
        "Rate limit reached for tokens per minute (limit 1000, used 600, requested 500). Try again in 12s."
    )
    await limiter.settle(first, actual_tokens=200, cost_usd=0)  # the answer was shorter than its estimate
    second = await limiter.reserve("k", limits, 500)
    assert second.headers["x-ratelimit-remaining-tokens"] == "300"
    await limiter.settle(second, actual_tokens=800, cost_usd=0)  # and this one longer
    with pytest.raises(LimitExceeded):
        await limiter.reserve("k", limits, 1)
    # never below zero, even when a settlement gives back more than the window holds
    await limiter.settle(Reservation("k", 5000, WINDOW, {}), actual_tokens=0, cost_usd=0)
    third = await limiter.reserve("k", limits, 0)
    assert third.headers["x-ratelimit-remaining-tokens"] == "1000"


async def test_a_request_larger_than_the_tpm_is_refused_outright(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter(FakeClock())
    with pytest.raises(LimitExceeded) as caught:
        await limiter.reserve("k", KeyLimits(tpm=100), 101)
    assert caught.value.kind == "tokens"
    assert caught.value.message.startswith("Request too large for tokens per minute (limit 100, requested 101).")


async def test_a_refused_request_counts_nothing(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter(FakeClock())
    limits = KeyLimits(rpm=3, tpm=100)
    await limiter.reserve("k", limits, 90)
    for _ in range(5):  # refused by tpm: no request is counted
        with pytest.raises(LimitExceeded):
            await limiter.reserve("k", limits, 20)
    second = await limiter.reserve("k", limits, 5)
    assert second.headers["x-ratelimit-remaining-requests"] == "1"
    assert second.headers["x-ratelimit-remaining-tokens"] == "5"
    await limiter.reserve("k", limits, 0)
    with pytest.raises(LimitExceeded) as caught:  # refused by rpm: its tokens are not counted
        await limiter.reserve("k", limits, 5)
    assert caught.value.kind == "requests"
    assert caught.value.headers["x-ratelimit-remaining-tokens"] == "5"


async def test_budget_blocks_once_spent_reaches_it(make_limiter: MakeLimiter) -> None:
    clock = FakeClock()
    limiter = await make_limiter(clock)
    limits = KeyLimits(rpm=100, budget_usd=1.0)
    first = await limiter.reserve("k", limits, 10)
    await limiter.settle(first, 10, cost_usd=0.6)
    second = await limiter.reserve("k", limits, 10)
    await limiter.settle(second, 10, cost_usd=0.4)
    assert await limiter.spent("k") == pytest.approx(1.0)
    assert await limiter.spent("someone-else") == 0
    clock.now += 3600  # spend is lifetime spend: a later hour does not reset it
    with pytest.raises(LimitExceeded) as caught:
        await limiter.reserve("k", limits, 10)
    exc = caught.value
    assert exc.kind == "budget"
    assert exc.code == "insufficient_quota"
    assert exc.retry_after_s == 0
    assert exc.message == "Budget exceeded for this API key: spent $1.00 of $1.00."
    assert "retry-after" not in exc.headers
    # tiny costs add up exactly enough
    await limiter.settle(Reservation("cheap", 0, WINDOW, {}), 0, cost_usd=1e-05)
    await limiter.settle(Reservation("cheap", 0, WINDOW, {}), 0, cost_usd=2e-05)
    assert await limiter.spent("cheap") == pytest.approx(3e-05)


async def test_budget_is_checked_before_the_rate_limits(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter(FakeClock())
    with pytest.raises(LimitExceeded) as caught:
        await limiter.reserve("k", KeyLimits(rpm=0, tpm=0, budget_usd=0), 10)
    assert caught.value.kind == "budget"


async def test_no_limits_means_no_headers(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter(FakeClock())
    reservation = await limiter.reserve("k", KeyLimits(), 10_000_000)
    assert reservation.headers == {}
    assert reservation.tokens == 10_000_000


async def test_settling_after_the_window_is_gone_changes_nothing(make_limiter: MakeLimiter) -> None:
    clock = FakeClock()
    limiter = await make_limiter(clock)
    limits = KeyLimits(tpm=100)
    old = await limiter.reserve("k", limits, 50)
    clock.now += 60
    current = await limiter.reserve("k", limits, 50)
    await limiter.settle(old, actual_tokens=100, cost_usd=0.01)
    assert await limiter.spent("k") == pytest.approx(0.01)
    await limiter.settle(current, actual_tokens=50, cost_usd=0)
    assert (await limiter.reserve("k", limits, 50)).headers["x-ratelimit-remaining-tokens"] == "0"


async def test_bad_numbers_are_rejected(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter(FakeClock())
    with pytest.raises(ValueError):
        await limiter.reserve("k", KeyLimits(), -1)
    reservation = await limiter.reserve("k", KeyLimits(), 1)
    for cost in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            await limiter.settle(reservation, 1, cost)


# --- MemoryLimiter only -------------------------------------------------------------------------------


async def test_memory_keeps_only_recent_windows() -> None:
    clock = FakeClock()
    limiter = MemoryLimiter(clock)
    for _ in range(10):
        await limiter.reserve("k", KeyLimits(rpm=5), 1)
        clock.now += 60
    assert sorted(limiter._windows) == [WINDOW + 8, WINDOW + 9]


# --- RedisLimiter only ------------------------------------------------------------------------------


@pytest.fixture
async def link(redis_server: RedisServer) -> AsyncIterator[RedisLink]:
    made = RedisLink(redis_server.url, timeout_s=0.2, retry_after_s=0.1)
    yield made
    await made.close()


def raw_redis(server: RedisServer) -> sync_redis.Redis:
    return sync_redis.Redis.from_url(server.url, socket_timeout=1)


async def test_redis_keys_names_and_expiry(link: RedisLink, redis_server: RedisServer) -> None:
    ns = f"k{uuid.uuid4().hex[:8]}"
    limiter = RedisLimiter(link, ns, clock=FakeClock())
    reservation = await limiter.reserve("team-a", KeyLimits(rpm=5, tpm=100), 30)
    await limiter.settle(reservation, 20, cost_usd=0.25)
    with raw_redis(redis_server) as r:
        assert sorted(r.keys(f"{ns}:*")) == [
            f"{ns}:rl:team-a:{WINDOW}:req".encode(),
            f"{ns}:rl:team-a:{WINDOW}:tok".encode(),
            f"{ns}:spend:team-a".encode(),
        ]
        assert r.get(f"{ns}:rl:team-a:{WINDOW}:req") == b"1"
        assert r.get(f"{ns}:rl:team-a:{WINDOW}:tok") == b"20"
        assert 110 <= r.ttl(f"{ns}:rl:team-a:{WINDOW}:req") <= 120
        assert 110 <= r.ttl(f"{ns}:rl:team-a:{WINDOW}:tok") <= 120
        assert r.ttl(f"{ns}:spend:team-a") == -1  # lifetime spend
        r.delete(f"{ns}:rl:team-a:{WINDOW}:tok")
    await limiter.settle(reservation, 20, cost_usd=0)  # an expired window is not recreated
    with raw_redis(redis_server) as r:
        assert r.exists(f"{ns}:rl:team-a:{WINDOW}:tok") == 0


async def test_redis_replicas_admit_exactly_the_limit(redis_server: RedisServer) -> None:
    ns = f"a{uuid.uuid4().hex[:8]}"
    clock = FakeClock()
    links = [RedisLink(redis_server.url, timeout_s=2.0, retry_after_s=0.1) for _ in range(2)]
    replicas = [RedisLimiter(link, ns, clock=clock) for link in links]
    try:

        async def attempt(i: int, limits: KeyLimits, tokens: int) -> bool:
            try:
                await replicas[i % 2].reserve("shared", limits, tokens)
            except LimitExceeded:
                return False
            return True

        admitted = await asyncio.gather(*(attempt(i, KeyLimits(rpm=50), 1) for i in range(200)))
        assert sum(admitted) == 50
        clock.now += 60
        admitted = await asyncio.gather(*(attempt(i, KeyLimits(tpm=1000), 10) for i in range(200)))
        assert sum(admitted) == 100
        with raw_redis(redis_server) as r:
            assert r.get(f"{ns}:rl:shared:{WINDOW}:req") == b"50"
            assert r.get(f"{ns}:rl:shared:{WINDOW + 1}:req") == b"100"
            assert r.get(f"{ns}:rl:shared:{WINDOW + 1}:tok") == b"1000"
    finally:
        for replica in replicas:
            await replica.close()


async def test_redis_down_fails_fast_then_recovers(link: RedisLink, redis_server: RedisServer) -> None:
    limiter = RedisLimiter(link, f"d{uuid.uuid4().hex[:8]}", clock=FakeClock())
    limits = KeyLimits(rpm=10)
    reservation = await limiter.reserve("k", limits, 1)
    redis_server.kill()
    try:
        for call in (
            lambda: limiter.reserve("k", limits, 1),
            lambda: limiter.settle(reservation, 1, 0.1),
            lambda: limiter.spent("k"),
        ):
            started = time.perf_counter()
            with pytest.raises(LimitStoreUnavailable) as caught:
                await call()
            assert time.perf_counter() - started < 0.5
            assert "unavailable" in str(caught.value)
    finally:
        redis_server.start()
    await asyncio.sleep(link.retry_after_s + 0.05)
    # a fresh Redis knows no scripts: they are loaded again, and the counts start from nothing
    again = await limiter.reserve("k", limits, 1)
    assert again.headers["x-ratelimit-remaining-requests"] == "9"
    await limiter.settle(again, 1, 0.5)
    assert await limiter.spent("k") == pytest.approx(0.5)
