"""Each strategy's ordering, on constructed candidates."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from gateway.routing.health import CircuitBreaker, TargetHealth
from gateway.routing.strategies import Candidate, SpeculativeLimits, Strategy, lightly_loaded, load, order
from gateway.routing.vllm_metrics import VLLMStats

STRATEGIES: tuple[Strategy, ...] = ("weighted", "least_busy", "latency", "speculative_aware")


def vllm(running: float = 0, waiting: float = 0, kv_cache: float = 0) -> VLLMStats:
    return VLLMStats(running, waiting, kv_cache, draft_tokens=None, accepted_tokens=None, scraped_at=0.0)


def cand(
    key: str,
    weight: float = 1.0,
    *,
    speculative: bool = False,
    stats: VLLMStats | None = None,
    in_flight: int = 0,
    ttft: float | None = None,
    total: float | None = None,
) -> Candidate:
    health = TargetHealth(CircuitBreaker())
    health.in_flight = in_flight
    health.ewma_ttft_s, health.ewma_total_s = ttft, total
    return Candidate(key=key, weight=weight, speculative=speculative, health=health, stats=stats)


def keys(candidates: list[Candidate]) -> list[str]:
    return [c.key for c in candidates]


# --- load --------------------------------------------------------------------------


def test_load_from_scraped_stats() -> None:
    assert load(cand("a", stats=vllm(running=3, waiting=2, kv_cache=0.5), in_flight=99)) == 2 * 4 + 3 + 0.5 * 2


def test_load_without_stats_is_the_gateways_in_flight() -> None:
    assert load(cand("a", in_flight=3)) == 3.0


def test_a_waiting_request_outweighs_a_running_one() -> None:
    assert load(cand("a", stats=vllm(waiting=1))) > load(cand("b", stats=vllm(running=3, kv_cache=0.4)))


# --- common properties -------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_candidate_comes_back_once(strategy: Strategy) -> None:
    candidates = [
        cand("a", 2, stats=vllm(running=1)),
        cand("b", 0, speculative=True),
        cand("c", 1, total=0.5),
        cand("d", 1, speculative=True, stats=vllm(waiting=3)),
    ]
    result = order(strategy, candidates, random.Random(1))
    assert sorted(keys(result)) == ["a", "b", "c", "d"]
    assert keys(candidates) == ["a", "b", "c", "d"]  # the input list is left alone


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_order_never_calls_allow(strategy: Strategy) -> None:
    breaker = CircuitBreaker(failures=1, cooldown_s=0)
    breaker.record_failure()  # half open: allow() would hand out the probe
    candidates = [cand("a"), Candidate("b", 1.0, True, TargetHealth(breaker), None)]
    order(strategy, candidates, random.Random(0))
    assert breaker.allow()  # the probe is still there for the caller


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_empty_and_single(strategy: Strategy) -> None:
    assert order(strategy, [], random.Random(0)) == []
    only = cand("only", 0)
    assert order(strategy, [only], random.Random(0)) == [only]


def test_unknown_strategy() -> None:
    with pytest.raises(ValueError, match="unknown routing strategy"):
        order("round_robin", [cand("a")], random.Random(0))  # type: ignore[arg-type]


# --- weighted ----------------------------------------------------------------------


def test_weighted_first_choice_follows_the_weights() -> None:
    rng = random.Random(42)
    candidates = [cand("a", 1), cand("b", 3), cand("c", 6), cand("z", 0)]
    firsts = Counter(order("weighted", candidates, rng)[0].key for _ in range(10_000))
    assert firsts["z"] == 0
    for key, share in {"a": 0.1, "b": 0.3, "c": 0.6}.items():
        assert abs(firsts[key] / 10_000 - share) < 0.03, (key, firsts)


def test_weighted_is_sampling_without_replacement() -> None:
    rng = random.Random(7)
    candidates = [cand("a", 1), cand("b", 3), cand("c", 6)]
    seconds = Counter(order("weighted", candidates, rng)[1].key for _ in range(10_000))
    p = {"a": 0.1, "b": 0.3, "c": 0.6}
    for j in p:  # P(second = j) = sum over i != j of p_i * p_j / (1 - p_i)
        expected = sum(p[i] * p[j] / (1 - p[i]) for i in p if i != j)
        assert abs(seconds[j] / 10_000 - expected) < 0.03, (j, seconds)


def test_weighted_puts_zero_weights_last_in_random_order() -> None:
    rng = random.Random(3)
    candidates = [cand("z1", 0), cand("a", 1), cand("z2", 0), cand("b", 1)]
    tails = set()
    for _ in range(200):
        result = keys(order("weighted", candidates, rng))
        assert set(result[:2]) == {"a", "b"}
        tails.add(tuple(result[2:]))
    assert tails == {("z1", "z2"), ("z2", "z1")}


def test_weighted_is_reproducible_with_a_seed() -> None:
    candidates = [cand(str(i), i + 1) for i in range(5)]
    assert keys(order("weighted", candidates, random.Random(9))) == keys(
        order("weighted", candidates, random.Random(9))
    )


# --- least_busy --------------------------------------------------------------------


def test_least_busy_ascending_load() -> None:
    candidates = [
        cand("queued", stats=vllm(running=1, waiting=1)),  # 5
        cand("busy", stats=vllm(running=4)),  # 4
        cand("idle", stats=vllm(kv_cache=0.1)),  # 0.2
        cand("no-stats", in_flight=2),  # 2
    ]
    assert keys(order("least_busy", candidates, random.Random(0))) == ["idle", "no-stats", "busy", "queued"]


def test_least_busy_breaks_ties_by_weight() -> None:
    rng = random.Random(5)
    candidates = [cand("light", 1, in_flight=1), cand("heavy", 3, in_flight=1), cand("busy", 100, in_flight=2)]
    firsts = Counter(order("least_busy", candidates, rng)[0].key for _ in range(10_000))
    assert firsts["busy"] == 0
    assert abs(firsts["heavy"] / 10_000 - 0.75) < 0.03


# --- latency -----------------------------------------------------------------------


def test_latency_unmeasured_first_then_fastest() -> None:
    candidates = [
        cand("slow", total=3.0),
        cand("new1"),
        cand("fast-ttft", ttft=0.2, total=9.0),  # ttft wins over total when known
        cand("mid", total=1.0),
        cand("new2"),
    ]
    result = keys(order("latency", candidates, random.Random(0)))
    assert set(result[:2]) == {"new1", "new2"}
    assert result[2:] == ["fast-ttft", "mid", "slow"]


def test_latency_explores_unmeasured_in_random_order() -> None:
    rng = random.Random(11)
    candidates = [cand("new1"), cand("new2"), cand("known", total=0.01)]
    firsts = Counter(order("latency", candidates, rng)[0].key for _ in range(1000))
    assert set(firsts) == {"new1", "new2"}


# --- speculative_aware -------------------------------------------------------------


def spec_and_plain(spec: VLLMStats, plain: VLLMStats) -> list[str]:
    candidates = [cand("plain", stats=plain), cand("spec", speculative=True, stats=spec)]
    return keys(order("speculative_aware", candidates, random.Random(0)))


def test_speculative_first_while_lightly_loaded_even_if_busier() -> None:
    assert spec_and_plain(spec=vllm(running=4, kv_cache=0.8), plain=vllm(running=0)) == ["spec", "plain"]


@pytest.mark.parametrize(
    "loaded",
    [vllm(running=5), vllm(running=1, waiting=1), vllm(running=1, kv_cache=0.81)],
    ids=["running", "waiting", "kv_cache"],
)
def test_loaded_speculative_goes_after_an_equally_busy_plain(loaded: VLLMStats) -> None:
    assert spec_and_plain(spec=loaded, plain=loaded) == ["plain", "spec"]


@pytest.mark.parametrize(
    "loaded",
    [vllm(running=5), vllm(running=1, waiting=1), vllm(running=1, kv_cache=0.81)],
    ids=["running", "waiting", "kv_cache"],
)
def test_loaded_speculative_is_not_starved_behind_a_deep_plain_queue(loaded: VLLMStats) -> None:
    # Past light load everyone is compared by load (speculative counted 1.5x): a plain server with a
    # deep queue is worse than a speculative one just over its limits.
    assert spec_and_plain(spec=loaded, plain=vllm(running=30, waiting=10, kv_cache=1.0)) == ["spec", "plain"]


def test_speculative_aware_switches_as_load_rises() -> None:
    plain = vllm(running=2)
    switch = [spec_and_plain(spec=vllm(running=r), plain=plain)[0] for r in range(9)]
    assert switch == ["spec"] * 5 + ["plain"] * 4  # max_running = 4


def test_speculative_aware_groups_are_each_ordered_by_load() -> None:
    candidates = [
        cand("spec-loaded-b", speculative=True, stats=vllm(running=9)),
        cand("plain-b", stats=vllm(running=6)),
        cand("spec-light-b", speculative=True, stats=vllm(running=3)),
        cand("spec-loaded-a", speculative=True, stats=vllm(waiting=1)),
        cand("plain-a", in_flight=1),
        cand("spec-light-a", speculative=True, in_flight=0),
    ]
    # Light speculative ones by load; then the rest by load, a speculative one's counted 1.5x:
    # plain-a 1, plain-b 6, spec-loaded-a 4 * 1.5 = 6 (tie broken by the weighted shuffle), spec-loaded-b 13.5.
    ordered = keys(order("speculative_aware", candidates, random.Random(0)))
    assert ordered[:3] == ["spec-light-a", "spec-light-b", "plain-a"]
    assert set(ordered[3:5]) == {"plain-b", "spec-loaded-a"}
    assert ordered[5] == "spec-loaded-b"


def test_without_stats_in_flight_is_the_proxy() -> None:
    limits = SpeculativeLimits(max_running=2)
    assert lightly_loaded(cand("s", speculative=True, in_flight=2), limits)
    assert not lightly_loaded(cand("s", speculative=True, in_flight=3), limits)
    candidates = [cand("plain", in_flight=5), cand("spec", speculative=True, in_flight=3)]
    # spec over its limit: compared by load, 3 * 1.5 = 4.5 < 5, so it still goes first.
    assert keys(order("speculative_aware", candidates, random.Random(0), limits)) == ["spec", "plain"]
    busier = [cand("plain", in_flight=4), cand("spec", speculative=True, in_flight=3)]
    assert keys(order("speculative_aware", busier, random.Random(0), limits)) == ["plain", "spec"]
    assert keys(order("speculative_aware", candidates, random.Random(0))) == ["spec", "plain"]


def test_custom_limits() -> None:
    strict = SpeculativeLimits(max_running=0, max_waiting=0, max_kv_cache=0.1)
    assert lightly_loaded(cand("s", stats=vllm(kv_cache=0.1)), strict)
    assert not lightly_loaded(cand("s", stats=vllm(running=1)), strict)
    lenient = SpeculativeLimits(max_running=8, max_waiting=2, max_kv_cache=0.95)
    assert lightly_loaded(cand("s", stats=vllm(running=8, waiting=2, kv_cache=0.95)), lenient)


# --- the package -------------------------------------------------------------------


def test_public_names_are_pinned() -> None:
    import gateway.routing

    assert sorted(gateway.routing.__all__) == [
        "BreakerState",
        "CIRCUIT_STATE",
        "Candidate",
        "CircuitBreaker",
        "MetricsScraper",
        "SpeculativeLimits",
        "Strategy",
        "TargetHealth",
        "VLLMStats",
        "backoff_s",
        "circuit_gauge_value",
        "lightly_loaded",
        "load",
        "metrics_url_for",
        "order",
        "parse_retry_after",
        "parse_vllm_metrics",
    ]
    assert all(hasattr(gateway.routing, name) for name in gateway.routing.__all__)
