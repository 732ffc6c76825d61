"""Which target serves a request, and where to go next when it fails.

The `Router` lives as long as one loaded policy. It owns the passive health of every target (circuit
breaker, in-flight count, latency averages) and a metrics scraper per vLLM backend. `attempts(route)`
yields (model, target) pairs in the order to try them: the model's targets ordered by its strategy,
retried up to `retries` more times, then each fallback model the same way. Open circuits are
skipped without waiting; `breaker.allow()` is called only for the target about to be tried.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from gateway.policy import ModelRoute, Policy, Target, VLLMBackend
from gateway.routing.health import CIRCUIT_STATE, CircuitBreaker, TargetHealth, circuit_gauge_value
from gateway.routing.strategies import Candidate, SpeculativeLimits, order
from gateway.routing.vllm_metrics import MetricsScraper, metrics_url_for


@dataclass(slots=True)
class Attempt:
    route: ModelRoute
    target: Target
    health: TargetHealth
    key: str

    def record(self, *, ok: bool, ttft_s: float | None, total_s: float | None) -> None:
        self.health.finished(ok=ok, ttft_s=ttft_s, total_s=total_s)
        CIRCUIT_STATE.labels(self.key).set(circuit_gauge_value(self.health.breaker.state))


class Router:
    def __init__(self, policy: Policy, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._routes = {route.name: route for route in policy.models}
        self._speculative = {b.name for b in policy.backends if isinstance(b, VLLMBackend) and b.speculative}
        self.health: dict[str, TargetHealth] = {}
        for route in policy.models:
            for target in route.targets:
                key = target_key(target)
                if key not in self.health:  # shared by every route that sends to it
                    breaker = CircuitBreaker(route.circuit.failures, route.circuit.cooldown_s)
                    self.health[key] = TargetHealth(breaker)
        self.scrapers = {
            b.name: MetricsScraper(b.name, metrics_url_for(b.base_url, b.metrics_url), interval_s=b.scrape_interval_s)
            for b in policy.backends
            if isinstance(b, VLLMBackend)
        }

    async def start(self) -> None:
        for scraper in self.scrapers.values():
            await scraper.start()

    async def close(self) -> None:
        for scraper in self.scrapers.values():
            await scraper.close()

    def candidates(self, route: ModelRoute) -> dict[str, tuple[Candidate, Target]]:
        out: dict[str, tuple[Candidate, Target]] = {}
        for target in route.targets:
            key = target_key(target)
            scraper = self.scrapers.get(target.backend)
            stats = scraper.latest() if scraper is not None else None
            health = self.health[key]
            out[key] = (Candidate(key, target.weight, target.backend in self._speculative, health, stats), target)
        return out

    def attempts(self, route: ModelRoute) -> Iterator[Attempt]:
        for model in [route, *(self._routes[name] for name in route.fallbacks)]:
            yield from self._model_attempts(model)

    def _model_attempts(self, route: ModelRoute) -> Iterator[Attempt]:
        pool = self.candidates(route)
        usable = [c for c, _ in pool.values() if c.health.breaker.state != "open"]
        if len(usable) > 1:
            limits = SpeculativeLimits(
                route.speculative.max_running, route.speculative.max_waiting, route.speculative.max_kv_cache
            )
            ranked = order(route.strategy, usable, self._rng, limits)
        else:  # one target (the common case) or none: nothing to order
            ranked = usable
        tries = 0
        position = 0
        while tries <= route.retries and ranked:
            refused = 0
            while refused < len(ranked):  # find the next target whose circuit lets a call through
                candidate = ranked[position % len(ranked)]
                position += 1
                if candidate.health.breaker.allow():
                    break
                refused += 1
            else:
                return  # every circuit refused: on to the fallbacks
            tries += 1
            if candidate.health.breaker.state == "half_open":
                CIRCUIT_STATE.labels(candidate.key).set(circuit_gauge_value("half_open"))  # this call is the probe
            yield Attempt(route, pool[candidate.key][1], candidate.health, candidate.key)


def target_key(target: Target) -> str:
    return f"{target.backend}/{target.model}"
