"""Per-key limits: requests per minute, tokens per minute, and a money budget.

A request first *reserves* (one request, plus an estimate of its tokens) and, once its usage is
known, *settles* (the estimate is replaced by the real token count and its cost is added to the
key's spend). Both happen atomically, in this process (`MemoryLimiter`) or in Redis
(`RedisLimiter`, one Lua script each), so the limits hold across gateway replicas.

- Windows are fixed minutes, `int(clock() // 60)`, from the gateway's wall clock (replicas are
  NTP-synced; a few ms of skew only matter at a boundary, where fixed windows allow bursts anyway).
  A request that settles after its window is over adjusts nothing: that window no longer limits.
- Spend is lifetime spend: it never expires (reset it by deleting `<ns>:spend:<key name>`). The
  budget is checked at reserve time, so requests already in flight may take spend past it.
- Keys are identified by their *name* (never the secret): `<ns>:rl:<name>:<window>:req|tok`.
- Header resets are durations in OpenAI's (Go's) style: "20ms", "7.66s", "1m0s".
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast

import redis.asyncio as aioredis

from gateway.metrics import counter
from gateway.redis_link import RedisLink, RedisUnavailable

Kind = Literal["requests", "tokens", "budget"]
Clock = Callable[[], float]
WINDOW_S = 60
REJECTED = counter("gateway_limit_rejections_total", "Requests refused by per-key limits, by kind.", ("kind",))


@dataclass(frozen=True, slots=True)
class KeyLimits:
    rpm: int | None = None
    """Requests per minute; None: unlimited."""
    tpm: int | None = None
    """Tokens (prompt + completion estimate, then actual) per minute; None: unlimited."""
    budget_usd: float | None = None
    """Lifetime spend in USD after which requests are refused; None: unlimited."""


@dataclass(frozen=True, slots=True)
class Price:
    input_per_mtok: float
    """USD per 1M prompt tokens."""
    output_per_mtok: float
    """USD per 1M completion tokens."""

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok) / 1_000_000


@dataclass(slots=True)
class Reservation:
    key: str
    tokens: int
    window: int
    headers: dict[str, str]


class LimitExceeded(Exception):
    """A limit refused the request; nothing was counted. `retry_after_s` is 0 for a budget (not time-bound)."""

    def __init__(self, kind: Kind, message: str, retry_after_s: float, headers: Mapping[str, str]) -> None:
        super().__init__(message)
        self.kind: Kind = kind
        self.message = message
        self.retry_after_s = retry_after_s
        self.headers = dict(headers)

    @property
    def code(self) -> str:
        """OpenAI's error code for this refusal."""
        return "insufficient_quota" if self.kind == "budget" else "rate_limit_exceeded"


class LimitStoreUnavailable(Exception):
    """The shared store did not answer; the caller decides whether to fail open or closed."""


class Limiter(Protocol):
    async def reserve(self, key: str, limits: KeyLimits, tokens: int) -> Reservation: ...

    async def settle(self, reservation: Reservation, actual_tokens: int, cost_usd: float) -> None: ...

    async def spent(self, key: str) -> float: ...

    async def close(self) -> None: ...


def estimate_tokens(prompt_tokens: int, body: Mapping[str, Any], default_completion: int = 256) -> int:
    """Prompt plus the most the answer may use: max_completion_tokens, max_tokens or max_output_tokens, times n."""
    fields = ("max_completion_tokens", "max_tokens", "max_output_tokens")
    completion = next((c for f in fields if (c := _count(body.get(f))) is not None), default_completion)
    return prompt_tokens + completion * (_count(body.get("n")) or 1)


def _count(value: Any) -> int | None:
    """A positive int from a client's JSON, else None (bools, strings and floats are ignored)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def format_duration(seconds: float) -> str:
    """Go's time.Duration style, as OpenAI's x-ratelimit-reset-* headers use: 20ms, 7.66s, 1m0s."""
    ms = max(0, math.ceil(round(seconds * 1000, 6)))  # round first: 7.66 s must not become 7.661 s
    if ms < 1000:
        return f"{ms}ms"
    minutes, rest = divmod(ms, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{minutes}m{secs}" if minutes else secs


def _headers(limits: KeyLimits, requests: int, tokens: int, reset_s: float) -> dict[str, str]:
    headers: dict[str, str] = {}
    for kind, limit, used in (("requests", limits.rpm, requests), ("tokens", limits.tpm, tokens)):
        if limit is not None:
            headers[f"x-ratelimit-limit-{kind}"] = str(limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, limit - used))
            headers[f"x-ratelimit-reset-{kind}"] = format_duration(reset_s)
    return headers


def _check(limits: KeyLimits, requests: int, tokens: int, spent: float, asked: int) -> Kind | None:
    """The limit this request would break, given the window's counts before it; the order matters."""
    if limits.budget_usd is not None and spent >= limits.budget_usd:
        return "budget"
    if limits.rpm is not None and requests + 1 > limits.rpm:
        return "requests"
    if limits.tpm is not None and tokens + asked > limits.tpm:
        return "tokens"
    return None


def _exceeded(
    kind: Kind, limits: KeyLimits, requests: int, tokens: int, spent: float, asked: int, reset_s: float
) -> LimitExceeded:
    REJECTED.labels(kind).inc()
    headers = _headers(limits, requests, tokens, reset_s)
    wait = format_duration(reset_s)
    if kind == "budget":
        message = f"Budget exceeded for this API key: spent ${spent:.2f} of ${limits.budget_usd:.2f}."
        return LimitExceeded(kind, message, 0.0, headers)
    if kind == "requests":
        message = f"Rate limit reached for requests per minute (limit {limits.rpm}). Try again in {wait}."
    elif limits.tpm is not None and asked > limits.tpm:
        message = (
            f"Request too large for tokens per minute (limit {limits.tpm}, requested {asked}). "
            "Send fewer tokens or a lower max_tokens."
        )
    else:
        message = (
            f"Rate limit reached for tokens per minute (limit {limits.tpm}, used {tokens}, requested {asked}). "
            f"Try again in {wait}."
        )
    headers["retry-after"] = str(max(1, math.ceil(reset_s)))
    return LimitExceeded(kind, message, reset_s, headers)


def _window(now: float) -> tuple[int, float]:
    """The minute bucket of `now`, and the seconds until it ends."""
    window = int(now // WINDOW_S)
    return window, (window + 1) * WINDOW_S - now


def _check_args(tokens: int, cost_usd: float = 0.0) -> None:
    if tokens < 0:
        raise ValueError(f"token counts cannot be negative: {tokens}")
    if not math.isfinite(cost_usd) or cost_usd < 0:
        raise ValueError(f"a cost must be a finite amount of at least 0: {cost_usd}")


class MemoryLimiter:
    """Limits for one process. Only the current and previous minute are kept; spend is kept per key name."""

    def __init__(self, clock: Clock = time.time) -> None:
        self.clock = clock
        self._windows: dict[int, dict[str, list[int]]] = {}  # window -> key -> [requests, tokens]
        self._spend: dict[str, float] = {}

    async def reserve(self, key: str, limits: KeyLimits, tokens: int) -> Reservation:
        _check_args(tokens)
        window, reset_s = _window(self.clock())
        for old in [w for w in self._windows if w < window - 1]:
            del self._windows[old]
        counts = self._windows.setdefault(window, {}).get(key, [0, 0])
        spent = self._spend.get(key, 0.0)
        kind = _check(limits, counts[0], counts[1], spent, tokens)
        if kind is not None:
            raise _exceeded(kind, limits, counts[0], counts[1], spent, tokens, reset_s)
        counts = self._windows[window].setdefault(key, [0, 0])
        counts[0] += 1
        counts[1] += tokens
        return Reservation(key, tokens, window, _headers(limits, counts[0], counts[1], reset_s))

    async def settle(self, reservation: Reservation, actual_tokens: int, cost_usd: float) -> None:
        _check_args(actual_tokens, cost_usd)
        counts = self._windows.get(reservation.window, {}).get(reservation.key)
        if counts is not None:
            counts[1] = max(0, counts[1] + actual_tokens - reservation.tokens)
        if cost_usd:
            self._spend[reservation.key] = self._spend.get(reservation.key, 0.0) + cost_usd

    async def spent(self, key: str) -> float:
        return self._spend.get(key, 0.0)

    async def close(self) -> None:
        self._windows.clear()


# KEYS: req, tok, spend. ARGV: rpm, tpm, budget ("" = unlimited), tokens, ttl_s.
# Returns {status, requests, tokens, spend}: counts after this request when "ok", else as found.
_RESERVE = """
local req = tonumber(redis.call('GET', KEYS[1]) or '0')
local tok = tonumber(redis.call('GET', KEYS[2]) or '0')
local spend = redis.call('GET', KEYS[3]) or '0'
local rpm, tpm, budget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local asked, ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
if budget and tonumber(spend) >= budget then return {'budget', req, tok, spend} end
if rpm and req + 1 > rpm then return {'requests', req, tok, spend} end
if tpm and tok + asked > tpm then return {'tokens', req, tok, spend} end
req = redis.call('INCR', KEYS[1])
if req == 1 then redis.call('EXPIRE', KEYS[1], ttl) end
tok = redis.call('INCRBY', KEYS[2], asked)
if tok == asked then redis.call('EXPIRE', KEYS[2], ttl) end
return {'ok', req, tok, spend}
"""

# KEYS: tok, spend. ARGV: token delta, cost. A window that has expired is not recreated.
_SETTLE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  local tok = redis.call('INCRBY', KEYS[1], ARGV[1])
  if tok < 0 then redis.call('INCRBY', KEYS[1], -tok) end
end
if tonumber(ARGV[2]) > 0 then redis.call('INCRBYFLOAT', KEYS[2], ARGV[2]) end
return 1
"""


class RedisLimiter:
    """Limits shared by every replica using the same Redis and namespace. The limiter owns `link` and closes it."""

    def __init__(self, link: RedisLink, namespace: str, *, clock: Clock = time.time) -> None:
        self.link = link
        self.namespace = namespace
        self.clock = clock
        self._reserve = link.client.register_script(_RESERVE)
        self._settle = link.client.register_script(_SETTLE)

    def _keys(self, key: str, window: int) -> tuple[str, str, str]:
        base = f"{self.namespace}:rl:{key}:{window}"
        return f"{base}:req", f"{base}:tok", self._spend_key(key)

    def _spend_key(self, key: str) -> str:
        return f"{self.namespace}:spend:{key}"

    async def _run(self, op: Callable[[aioredis.Redis], Awaitable[Any]]) -> Any:
        try:
            return await self.link.run(op)
        except RedisUnavailable as exc:
            raise LimitStoreUnavailable(f"the limit store is unavailable: {exc}") from None

    async def reserve(self, key: str, limits: KeyLimits, tokens: int) -> Reservation:
        _check_args(tokens)
        window, reset_s = _window(self.clock())
        args: list[str | int] = [_arg(limits.rpm), _arg(limits.tpm), _arg(limits.budget_usd), tokens, 2 * WINDOW_S]
        keys = self._keys(key, window)
        reply = await self._run(lambda r: self._reserve(keys=keys, args=args, client=r))
        status, requests, used, spend = _text(reply[0]), int(reply[1]), int(reply[2]), float(reply[3])
        if status != "ok":
            raise _exceeded(cast(Kind, status), limits, requests, used, spend, tokens, reset_s)
        return Reservation(key, tokens, window, _headers(limits, requests, used, reset_s))

    async def settle(self, reservation: Reservation, actual_tokens: int, cost_usd: float) -> None:
        _check_args(actual_tokens, cost_usd)
        _, tok, spend = self._keys(reservation.key, reservation.window)
        args: list[str | int] = [actual_tokens - reservation.tokens, repr(cost_usd)]
        await self._run(lambda r: self._settle(keys=[tok, spend], args=args, client=r))

    async def spent(self, key: str) -> float:
        value = await self._run(lambda r: r.get(self._spend_key(key)))
        return float(value) if value is not None else 0.0

    async def close(self) -> None:
        await self.link.close()


def _arg(limit: float | None) -> str:
    return "" if limit is None else repr(limit)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
