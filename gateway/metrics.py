"""Prometheus metrics: get-or-create helpers, so plugins re-created by a policy reload reuse theirs."""

from __future__ import annotations

from typing import Any, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created series double the output and no dashboard uses them

M = TypeVar("M", Counter, Gauge, Histogram)
_made: dict[str, Any] = {}


def _get(kind: type[M], name: str, doc: str, labels: tuple[str, ...], **kwargs: Any) -> M:
    existing = _made.get(name)
    if existing is not None:
        if not isinstance(existing, kind) or tuple(existing._labelnames) != labels:
            raise ValueError(f"metric {name} already exists with another type or labels")
        return existing
    metric = kind(name, doc, labels, **kwargs)
    _made[name] = metric
    return metric


def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
    return _get(Counter, name, doc, labels)


def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
    return _get(Gauge, name, doc, labels)


def histogram(name: str, doc: str, labels: tuple[str, ...] = (), buckets: tuple[float, ...] | None = None) -> Histogram:
    return _get(Histogram, name, doc, labels, **({"buckets": buckets} if buckets else {}))


def exposition() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


REQUESTS = counter(
    "gateway_requests_total", "Requests answered, by model, backend and status.", ("model", "backend", "status")
)
