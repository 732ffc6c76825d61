"""Routing building blocks: backend load from vLLM's metrics, passive target health, target ordering, backoff.

    vllm_metrics  VLLMStats, parse_vllm_metrics, metrics_url_for, MetricsScraper (background /metrics scrapes)
    health        CircuitBreaker, TargetHealth (breaker + in-flight + latency EWMAs), circuit_gauge_value
    strategies    Candidate, SpeculativeLimits, Strategy, load, order (all targets, best first)
    backoff       backoff_s (full-jitter exponential, honouring Retry-After)

Each piece is pure or owns only its own state; the request path composes them: for a route it builds
one Candidate per target (health + fresh stats), filters by `breaker.allow()`, walks `order(...)`,
and waits `backoff_s(...)` between attempts.
"""

from gateway.routing.backoff import backoff_s, parse_retry_after
from gateway.routing.health import CIRCUIT_STATE, BreakerState, CircuitBreaker, TargetHealth, circuit_gauge_value
from gateway.routing.strategies import Candidate, SpeculativeLimits, Strategy, lightly_loaded, load, order
from gateway.routing.vllm_metrics import MetricsScraper, VLLMStats, metrics_url_for, parse_vllm_metrics

__all__ = [
    "CIRCUIT_STATE",
    "BreakerState",
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
