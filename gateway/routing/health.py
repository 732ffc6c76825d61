"""Passive health of a target: a circuit breaker plus running averages of its latency.

Nothing here probes a backend on its own; everything is learnt from the requests the gateway
sends. The caller that owns a request calls `TargetHealth.started()` before it and `finished()`
after it, always (in a `finally`), and decides what counts as a failure: timeouts, connection
errors and 5xx say something about the target, a client's 400 does not.

    closed ──(`failures` consecutive failures)──► open ──(cooldown_s passes)──► half_open
      ▲                                             ▲                              │
      └───────────── probe succeeds ────────────────┼──────── probe fails ─────────┘
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from collections.abc import Callable
from typing import Literal

from gateway.metrics import gauge

BreakerState = Literal["closed", "open", "half_open"]

CIRCUIT_STATE = gauge(
    "gateway_circuit_state", "Circuit breaker of a target: 0 closed, 1 half open, 2 open.", ("target",)
)
_GAUGE_VALUES: dict[BreakerState, int] = {"closed": 0, "half_open": 1, "open": 2}


def circuit_gauge_value(state: BreakerState) -> int:
    """The value of gateway_circuit_state{target} for a breaker state: 0 closed, 1 half open, 2 open."""
    return _GAUGE_VALUES[state]


class CircuitBreaker:
    """closed → (`failures` consecutive failures) → open for cooldown_s → half_open: one probe allowed;
    its success closes the breaker, its failure reopens it.

    Open becomes half open lazily, when `state` or `allow()` is next read. A probe that has not
    reported back within another cooldown_s is presumed lost (its caller was cancelled before its
    `finally`), and one more probe is let through, so a lost report never blocks a target for good.
    Results that arrive while open come from calls started before it opened and are ignored.
    """

    __slots__ = ("_clock", "_consecutive", "_opened_at", "_probe_since", "_state", "cooldown_s", "failures")

    def __init__(
        self, failures: int = 5, cooldown_s: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if failures < 1:
            raise ValueError("failures must be at least 1")
        if cooldown_s < 0:
            raise ValueError("cooldown_s must not be negative")
        self.failures = failures
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._state: BreakerState = "closed"
        self._consecutive = 0
        self._opened_at = 0.0
        self._probe_since: float | None = None  # when the half-open probe was let through

    @property
    def state(self) -> BreakerState:
        if self._state == "open" and self._clock() - self._opened_at >= self.cooldown_s:
            self._state = "half_open"
            self._probe_since = None
        return self._state

    def allow(self) -> bool:
        """Whether a call may go to this target now; in half open, True hands out the one probe."""
        state = self.state
        if state == "closed":
            return True
        if state == "open":
            return False
        now = self._clock()
        if self._probe_since is not None and now - self._probe_since < self.cooldown_s:
            return False
        self._probe_since = now
        return True

    def record_success(self) -> None:
        state = self.state
        if state == "open":
            return
        self._state = "closed"
        self._consecutive = 0
        self._probe_since = None

    def record_failure(self) -> None:
        state = self.state
        if state == "open":
            return
        if state == "closed":
            self._consecutive += 1
            if self._consecutive < self.failures:
                return
        self._state = "open"
        self._opened_at = self._clock()
        self._consecutive = 0
        self._probe_since = None


class TargetHealth:
    """Passive health of one target: breaker, in-flight count, EWMA of time to first token and total latency."""

    __slots__ = ("_starts", "alpha", "breaker", "ewma_total_s", "ewma_ttft_s", "failures", "in_flight", "successes")

    def __init__(self, breaker: CircuitBreaker, alpha: float = 0.3) -> None:
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self.breaker = breaker
        self.alpha = alpha  # weight of the newest sample
        self.in_flight = 0
        self.ewma_ttft_s: float | None = None
        self.ewma_total_s: float | None = None
        self.successes = 0
        self.failures = 0
        # Start times of the calls in flight, oldest first (calls are assumed to end in about the
        # order they started: close enough for "sent since the last scrape and still running").
        self._starts: deque[float] = deque()

    def started(self) -> None:
        self.in_flight += 1
        self._starts.append(time.monotonic())

    def started_since(self, moment: float) -> int:
        """Calls in flight that started after `moment` (time.monotonic): not yet in a scrape taken then."""
        return len(self._starts) - bisect.bisect_right(self._starts, moment)

    def abandoned(self) -> None:
        """A call that ended without an outcome (cancelled): it no longer counts as in flight."""
        self.in_flight = max(0, self.in_flight - 1)
        if self._starts:
            self._starts.popleft()

    def finished(self, *, ok: bool, ttft_s: float | None, total_s: float | None) -> None:
        """Record the end of a call. Latencies are averaged only for successes: a fast failure is not speed."""
        self.in_flight = max(0, self.in_flight - 1)
        if self._starts:
            self._starts.popleft()
        if not ok:
            self.failures += 1
            self.breaker.record_failure()
            return
        self.successes += 1
        if ttft_s is not None:
            self.ewma_ttft_s = self._blend(self.ewma_ttft_s, ttft_s)
        if total_s is not None:
            self.ewma_total_s = self._blend(self.ewma_total_s, total_s)
        self.breaker.record_success()

    def _blend(self, average: float | None, sample: float) -> float:
        # The first sample is the average; seeding with 0 would make a new target look fast.
        return sample if average is None else self.alpha * sample + (1 - self.alpha) * average
