"""Circuit breaker transitions on a fake clock, and the latency averages of TargetHealth."""

from __future__ import annotations

import time

import pytest

from gateway.routing.health import CIRCUIT_STATE, CircuitBreaker, TargetHealth, circuit_gauge_value


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def state(breaker: CircuitBreaker) -> str:
    """The state, read afresh: mypy would otherwise narrow `breaker.state` across the calls that change it."""
    return breaker.state


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def opened(clock: FakeClock, failures: int = 3, cooldown_s: float = 10.0) -> CircuitBreaker:
    breaker = CircuitBreaker(failures=failures, cooldown_s=cooldown_s, clock=clock)
    for _ in range(failures):
        breaker.record_failure()
    assert state(breaker) == "open"
    return breaker


def half_open(clock: FakeClock) -> CircuitBreaker:
    breaker = opened(clock)
    clock.now += 10
    assert state(breaker) == "half_open"
    return breaker


# --- the breaker -------------------------------------------------------------------


def test_starts_closed_and_allows(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock)
    assert state(breaker) == "closed"
    assert all(breaker.allow() for _ in range(100))


def test_opens_after_consecutive_failures(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failures=3, cooldown_s=10, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    assert state(breaker) == "closed"
    assert breaker.allow()
    breaker.record_failure()
    assert state(breaker) == "open"
    assert not breaker.allow()


def test_a_success_resets_the_consecutive_count(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failures=3, cooldown_s=10, clock=clock)
    for _ in range(5):
        breaker.record_failure()
        breaker.record_failure()
        breaker.record_success()
    assert state(breaker) == "closed"
    breaker.record_failure()
    breaker.record_failure()
    assert state(breaker) == "closed"


def test_stays_open_for_the_cooldown(clock: FakeClock) -> None:
    breaker = opened(clock)
    clock.now += 9.999
    assert state(breaker) == "open"
    assert not breaker.allow()
    clock.now += 0.001
    assert state(breaker) == "half_open"


def test_half_open_lets_exactly_one_probe_through(clock: FakeClock) -> None:
    breaker = opened(clock)
    clock.now += 10
    assert breaker.allow()  # the probe; allow() itself moves open to half open
    assert state(breaker) == "half_open"
    assert not breaker.allow()
    clock.now += 5
    assert not breaker.allow()


def test_probe_success_closes(clock: FakeClock) -> None:
    breaker = half_open(clock)
    assert breaker.allow()
    breaker.record_success()
    assert state(breaker) == "closed"
    assert breaker.allow()
    assert breaker.allow()
    # The consecutive count starts over: it takes `failures` more to open again.
    breaker.record_failure()
    breaker.record_failure()
    assert state(breaker) == "closed"
    breaker.record_failure()
    assert state(breaker) == "open"


def test_probe_failure_reopens_for_a_full_cooldown(clock: FakeClock) -> None:
    breaker = half_open(clock)
    assert breaker.allow()
    clock.now += 3
    breaker.record_failure()  # one failure is enough in half open
    assert state(breaker) == "open"
    assert not breaker.allow()
    clock.now += 9.9
    assert state(breaker) == "open"
    clock.now += 0.1
    assert state(breaker) == "half_open"
    assert breaker.allow()  # a fresh probe


def test_a_lost_probe_is_replaced_after_a_cooldown(clock: FakeClock) -> None:
    breaker = half_open(clock)
    assert breaker.allow()
    clock.now += 9.9
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.allow()
    assert not breaker.allow()


def test_results_while_open_are_ignored(clock: FakeClock) -> None:
    breaker = opened(clock)
    clock.now += 5
    breaker.record_success()  # a call started before the breaker opened
    assert state(breaker) == "open"
    breaker.record_failure()  # must not restart the cooldown
    clock.now += 5
    assert state(breaker) == "half_open"


def test_zero_cooldown_goes_straight_to_half_open(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failures=1, cooldown_s=0, clock=clock)
    breaker.record_failure()
    assert state(breaker) == "half_open"
    assert breaker.allow()


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(failures=0)
    with pytest.raises(ValueError):
        CircuitBreaker(cooldown_s=-1)


def test_circuit_gauge_values() -> None:
    assert [circuit_gauge_value(s) for s in ("closed", "half_open", "open")] == [0, 1, 2]
    CIRCUIT_STATE.labels("test-target").set(circuit_gauge_value("open"))


# --- TargetHealth ------------------------------------------------------------------


def test_in_flight_counts(clock: FakeClock) -> None:
    health = TargetHealth(CircuitBreaker(clock=clock))
    health.started()
    health.started()
    assert health.in_flight == 2
    health.finished(ok=True, ttft_s=None, total_s=None)
    health.finished(ok=False, ttft_s=None, total_s=None)
    assert health.in_flight == 0
    assert (health.successes, health.failures) == (1, 1)
    health.finished(ok=True, ttft_s=None, total_s=None)  # an unmatched finish never goes negative
    assert health.in_flight == 0


def test_ewma_math(clock: FakeClock) -> None:
    health = TargetHealth(CircuitBreaker(clock=clock), alpha=0.5)
    assert (health.ewma_ttft_s, health.ewma_total_s) == (None, None)
    health.started()
    health.finished(ok=True, ttft_s=0.2, total_s=2.0)
    assert (health.ewma_ttft_s, health.ewma_total_s) == (0.2, 2.0)  # the first sample is the average
    health.started()
    health.finished(ok=True, ttft_s=0.4, total_s=4.0)
    assert health.ewma_ttft_s == pytest.approx(0.3)
    assert health.ewma_total_s == pytest.approx(3.0)
    health.started()
    health.finished(ok=True, ttft_s=None, total_s=1.0)  # a whole answer: no time to first token
    assert health.ewma_ttft_s == pytest.approx(0.3)
    assert health.ewma_total_s == pytest.approx(2.0)


def test_default_alpha_weights_the_newest_sample_by_0_3(clock: FakeClock) -> None:
    health = TargetHealth(CircuitBreaker(clock=clock))
    for total in (1.0, 2.0, 3.0):
        health.started()
        health.finished(ok=True, ttft_s=None, total_s=total)
    # 1.0 → 0.3*2 + 0.7*1 = 1.3 → 0.3*3 + 0.7*1.3 = 1.81
    assert health.ewma_total_s == pytest.approx(1.81)


def test_failures_do_not_move_the_averages(clock: FakeClock) -> None:
    health = TargetHealth(CircuitBreaker(clock=clock))
    health.started()
    health.finished(ok=True, ttft_s=0.5, total_s=5.0)
    health.started()
    health.finished(ok=False, ttft_s=0.01, total_s=0.02)
    assert (health.ewma_ttft_s, health.ewma_total_s) == (0.5, 5.0)


def test_finished_drives_the_breaker(clock: FakeClock) -> None:
    health = TargetHealth(CircuitBreaker(failures=2, cooldown_s=10, clock=clock))
    for _ in range(2):
        health.started()
        health.finished(ok=False, ttft_s=None, total_s=None)
    assert state(health.breaker) == "open"
    clock.now += 10
    assert health.breaker.allow()
    health.started()
    health.finished(ok=True, ttft_s=0.1, total_s=0.5)
    assert state(health.breaker) == "closed"


def test_rejects_bad_alpha(clock: FakeClock) -> None:
    for alpha in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            TargetHealth(CircuitBreaker(clock=clock), alpha=alpha)


def test_started_since_counts_calls_in_flight_that_a_scrape_could_not_see() -> None:
    health = TargetHealth(CircuitBreaker())
    health.started()
    scraped_at = time.monotonic()
    health.started()
    health.started()
    assert health.started_since(scraped_at) == 2  # the first call was running when the scrape was taken
    health.finished(ok=True, ttft_s=None, total_s=0.1)
    health.abandoned()
    assert health.in_flight == 1
    assert health.started_since(scraped_at) == 1
