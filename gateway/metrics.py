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

_made: dict[str, Any] = {}


class _RememberedChildren:
    """`labels(...)` remembered per tuple of values.

    prometheus_client validates, converts and locks on every `labels` call (about 2 us); the request path
    makes several per request with the same few value tuples. Children are created by `self.__class__`, so
    they are instances of the subclass too (and never call `labels`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._remembered: dict[tuple[object, ...], Any] = {}

    def labels(self, *values: object, **by_name: object) -> Any:
        if by_name:
            return super().labels(*values, **by_name)  # type: ignore[misc]
        child = self._remembered.get(values)
        if child is None:
            child = self._remembered[values] = super().labels(*values)  # type: ignore[misc]
        return child

    def remove(self, *values: Any) -> None:
        self._remembered.clear()
        super().remove(*values)  # type: ignore[misc]

    def clear(self) -> None:
        self._remembered.clear()
        super().clear()  # type: ignore[misc]


class _Counter(_RememberedChildren, Counter):
    pass


class _Gauge(_RememberedChildren, Gauge):
    pass


class _Histogram(_RememberedChildren, Histogram):
    pass


M = TypeVar("M", Counter, Gauge, Histogram)


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
    return _get(_Counter, name, doc, labels)


def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
    return _get(_Gauge, name, doc, labels)


def histogram(name: str, doc: str, labels: tuple[str, ...] = (), buckets: tuple[float, ...] | None = None) -> Histogram:
    return _get(_Histogram, name, doc, labels, **({"buckets": buckets} if buckets else {}))


def exposition() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


REQUESTS = counter(
    "gateway_requests_total", "Requests answered, by model, backend and status.", ("model", "backend", "status")
)
