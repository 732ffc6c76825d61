"""Ordering the targets of a route: best first, so the caller can fall through on failure.

`order` is pure: it reads the candidates and the rng, and changes nothing. It never calls
`breaker.allow()`, because `allow()` hands out a half-open target's single probe: calling it for
every target up front would claim probes that are then never sent. The caller filters out the
targets whose `breaker.state` is "open" (a read without side effects), orders the rest, and calls
`allow()` on each in turn right before sending to it, skipping one that refuses.

Every strategy starts from the weighted random permutation and then sorts it stably, so ties
always break by weight, and a zero-weight target comes after positive-weight ones it ties with.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from gateway.routing.health import TargetHealth
from gateway.routing.vllm_metrics import VLLMStats

Strategy = Literal["weighted", "least_busy", "latency", "speculative_aware"]

# Load is counted in "running-request equivalents".
# A waiting request means the scheduler has no batch slot or KV room left: a new request queues
# behind every one of them before its first token, so each weighs as much as several running ones.
WAITING_WEIGHT = 4.0
# A full KV cache means vLLM is about to preempt (and recompute) running requests; at 100 % it
# counts like two more running requests, so of two equally busy servers the one with room wins.
KV_CACHE_WEIGHT = 2.0
# vLLM: a busy speculative server is 1.4-1.8x slower than a plain one.
SPECULATIVE_BUSY_PENALTY = 1.5


@dataclass(slots=True)
class Candidate:
    key: str  # "<backend>/<model>", unique within a route
    weight: float
    speculative: bool  # the backend runs vLLM with speculative decoding
    health: TargetHealth
    stats: VLLMStats | None  # fresh scraped stats, or None (not vllm / stale)


@dataclass(frozen=True, slots=True)
class SpeculativeLimits:
    """Up to where a speculative backend counts as lightly loaded: all three must hold."""

    max_running: float = 4  # without scraped stats, compared with the gateway's own in-flight count
    max_waiting: float = 0
    max_kv_cache: float = 0.8


def load(c: Candidate) -> float:
    """waiting * 4 + running + kv_cache * 2 from scraped stats, else the gateway's own in-flight count.

    Both are in running-request equivalents, so scraped and unscraped targets compare roughly.
    The in-flight count only sees this gateway's share; scraped stats see every client's.
    """
    if c.stats is None:
        return float(c.health.in_flight)
    scraped = c.stats.waiting * WAITING_WEIGHT + c.stats.running + c.stats.kv_cache * KV_CACHE_WEIGHT
    # Requests this gateway sent since the scrape are not in it yet: without them every request
    # between two scrapes would see the same numbers and pile onto the same server.
    return scraped + c.health.started_since(c.stats.scraped_at)


def lightly_loaded(c: Candidate, limits: SpeculativeLimits) -> bool:
    stats = c.stats
    if stats is None:
        return c.health.in_flight <= limits.max_running
    return (
        stats.running + c.health.started_since(stats.scraped_at) <= limits.max_running
        and stats.waiting <= limits.max_waiting
        and stats.kv_cache <= limits.max_kv_cache
    )


def order(
    strategy: Strategy,
    candidates: list[Candidate],
    rng: random.Random,
    limits: SpeculativeLimits = SpeculativeLimits(),  # frozen, so one shared default is safe
) -> list[Candidate]:
    """All candidates, best first, under `strategy`. Never calls `breaker.allow()` (see the module doc).

    - weighted: a weighted random permutation; zero-weight candidates last.
    - least_busy: ascending `load()`.
    - latency: candidates never measured first (exploration), then ascending EWMA of time to
      first token where known, else of total latency.
    - speculative_aware: lightly loaded speculative candidates by load, then all others by load
      (a busy speculative candidate's load counted 1.5x). vLLM measured speculative decoding up to 2.8x faster
      at QPS 1 but 1.4-1.8x slower at high QPS: drafting and verifying spend compute that a full
      batch needs for other requests. So a speculative server is best while it is nearly idle,
      and worst once it is busy.
    """
    if strategy not in _KEYS:
        raise ValueError(f"unknown routing strategy {strategy!r}")
    shuffled = _weighted_permutation(candidates, rng)
    key = _KEYS[strategy]
    return shuffled if key is None else sorted(shuffled, key=lambda c: key(c, limits))


def _weighted_permutation(candidates: list[Candidate], rng: random.Random) -> list[Candidate]:
    """Weighted sampling without replacement (an exponential race: the smallest Exp(weight) wins).

    The first is candidate i with probability weight_i / total, the next likewise among the rest.
    """
    positive = [(rng.expovariate(c.weight), i, c) for i, c in enumerate(candidates) if c.weight > 0]
    zero = [c for c in candidates if c.weight <= 0]
    rng.shuffle(zero)
    return [c for _, _, c in sorted(positive)] + zero


def _latency_key(c: Candidate, limits: SpeculativeLimits) -> tuple[int, float]:
    health = c.health
    measured = health.ewma_ttft_s if health.ewma_ttft_s is not None else health.ewma_total_s
    return (0, 0.0) if measured is None else (1, measured)


def _speculative_key(c: Candidate, limits: SpeculativeLimits) -> tuple[int, float]:
    if c.speculative and lightly_loaded(c, limits):
        return 0, load(c)
    # Past light load, compare everyone by load, a busy speculative server's counted as heavier
    # (it is slower than a plain one when busy) but never starved behind a deep plain queue.
    return 1, load(c) * (SPECULATIVE_BUSY_PENALTY if c.speculative else 1.0)


_KEYS: dict[Strategy, Callable[[Candidate, SpeculativeLimits], tuple[int, float]] | None] = {
    "weighted": None,
    "least_busy": lambda c, _limits: (0, load(c)),
    "latency": _latency_key,
    "speculative_aware": _speculative_key,
}
