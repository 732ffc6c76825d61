"""Full-jitter exponential backoff and Retry-After handling."""

from __future__ import annotations

import math
import random
import time
from email.utils import formatdate

import pytest

from gateway.routing.backoff import backoff_s, parse_retry_after


class FixedRandom(random.Random):
    """uniform(a, b) returns the point `fraction` of the way from a to b."""

    def __init__(self, fraction: float) -> None:
        super().__init__(0)
        self.fraction = fraction

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.fraction


@pytest.mark.parametrize(("attempt", "bound"), [(0, 0.25), (1, 0.5), (2, 1.0), (4, 4.0), (5, 8.0), (6, 8.0), (50, 8.0)])
def test_bound_doubles_up_to_the_cap(attempt: int, bound: float) -> None:
    assert backoff_s(attempt, rng=FixedRandom(1.0)) == bound
    assert backoff_s(attempt, rng=FixedRandom(0.0)) == 0.0


def test_full_jitter_spreads_over_the_whole_range() -> None:
    rng = random.Random(1)
    draws = [backoff_s(3, rng=rng) for _ in range(10_000)]
    assert all(0 <= d <= 2.0 for d in draws)
    assert abs(sum(draws) / len(draws) - 1.0) < 0.05  # uniform(0, 2) has mean 1
    assert min(draws) < 0.01
    assert max(draws) > 1.99


def test_huge_attempts_do_not_overflow() -> None:
    assert backoff_s(10**6, rng=FixedRandom(1.0)) == 8.0


def test_custom_base_and_cap() -> None:
    assert backoff_s(3, base_s=1.0, cap_s=5.0, rng=FixedRandom(1.0)) == 5.0
    assert backoff_s(2, base_s=1.0, cap_s=5.0, rng=FixedRandom(0.5)) == 2.0


def test_retry_after_seconds_is_a_floor() -> None:
    assert backoff_s(0, retry_after="3", rng=FixedRandom(1.0)) == 3.0
    assert backoff_s(5, retry_after="3", rng=FixedRandom(0.5)) == 4.0  # the jitter is longer: keep it
    assert backoff_s(0, retry_after=" 1.5 ", rng=FixedRandom(0.0)) == 1.5
    assert backoff_s(0, retry_after="0", rng=FixedRandom(0.5)) == 0.125


def test_retry_after_up_to_the_cap_is_honoured() -> None:
    assert backoff_s(0, retry_after="8", rng=FixedRandom(0.0)) == 8.0


def test_retry_after_past_the_cap_means_move_on() -> None:
    assert backoff_s(0, retry_after="9", rng=FixedRandom(0.0)) == math.inf
    assert backoff_s(0, retry_after="120", cap_s=60, rng=FixedRandom(0.0)) == math.inf


def test_retry_after_http_date() -> None:
    soon = formatdate(time.time() + 5, usegmt=True)  # whole seconds: 4 to 5 s from now
    assert 4.0 <= backoff_s(0, retry_after=soon, rng=FixedRandom(0.0)) <= 5.0
    later = formatdate(time.time() + 3600, usegmt=True)
    assert backoff_s(0, retry_after=later, rng=FixedRandom(0.0)) == math.inf
    past = formatdate(time.time() - 3600, usegmt=True)
    assert backoff_s(1, retry_after=past, rng=FixedRandom(1.0)) == 0.5


@pytest.mark.parametrize("value", ["soon", "-1", "1e3", "inf", "NaN", "", "Wed, 99 Foo 2015 07:28:00 GMT"])
def test_unparseable_retry_after_is_ignored(value: str) -> None:
    assert parse_retry_after(value) is None
    assert backoff_s(1, retry_after=value, rng=FixedRandom(1.0)) == 0.5


def test_parse_retry_after_date_forms() -> None:
    now = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now=now) == 30.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 -0000", now=now) == 30.0  # parses naive: read as GMT
    assert parse_retry_after("Wed, 21 Oct 2015 09:28:30 +0200", now=now) == 30.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now=now) == 0.0
    assert parse_retry_after("120") == 120.0


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        backoff_s(-1)
    with pytest.raises(ValueError):
        backoff_s(0, base_s=-1)


def test_uses_the_module_random_without_an_rng() -> None:
    state = random.getstate()
    try:
        random.seed(0)
        first = backoff_s(2)
        random.seed(0)
        assert backoff_s(2) == first
        assert 0 <= first <= 1.0
    finally:
        random.setstate(state)
