"""The gateway's own OTLP histograms: OTLP bucket semantics, cumulative points, and an exporter that fails."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from opentelemetry.sdk.metrics.export import HistogramDataPoint, MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from gateway.telemetry.histograms import Histograms, Spec

SPEC = Spec("h", "s", "a histogram", (1.0, 2.0, 5.0))


class Collected(MetricExporter):
    """Keeps what it is handed; fails the first `failures` exports by raising."""

    def __init__(self, failures: int = 0) -> None:
        super().__init__()
        self.batches: list[MetricsData] = []
        self.failures = failures
        self.exported = threading.Event()

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: object) -> MetricExportResult:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("collector down")
        self.batches.append(metrics_data)
        self.exported.set()
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: object) -> None:
        return None


def points(data: MetricsData) -> Sequence[HistogramDataPoint]:
    (metric,) = data.resource_metrics[0].scope_metrics[0].metrics
    return metric.data.data_points  # type: ignore[return-value]


def histograms(exporter: MetricExporter, interval_s: float = 3600) -> Histograms:
    return Histograms([SPEC], exporter, Resource.create({"service.name": "t"}), InstrumentationScope("t"), interval_s)


def test_values_on_a_bound_fall_in_that_bucket_and_the_last_bucket_takes_the_rest() -> None:
    exporter = Collected()
    h = histograms(exporter)
    for value in (0.5, 1.0, 1.5, 2.0, 5.0, 9.0):
        h.record("h", value, {"model": "m"})
    h.force_flush()
    (point,) = points(exporter.batches[-1])
    assert list(point.bucket_counts) == [2, 2, 1, 1]
    assert list(point.explicit_bounds) == [1.0, 2.0, 5.0]
    assert (point.count, point.sum, point.min, point.max) == (6, 19.0, 0.5, 9.0)
    assert dict(point.attributes or {}) == {"model": "m"}
    h.shutdown()


def test_points_are_cumulative_and_kept_apart_by_attributes() -> None:
    exporter = Collected()
    h = histograms(exporter)
    h.record("h", 1.0, {"model": "a"})
    h.force_flush()
    h.record("h", 3.0, {"model": "a"})
    h.record("h", 3.0, {"model": "b"})
    h.force_flush()
    first, second = (points(b) for b in exporter.batches)
    assert [p.count for p in first] == [1]
    by_model = {dict(p.attributes or {})["model"]: p for p in second}
    assert by_model["a"].count == 2 and by_model["a"].sum == 4.0 and by_model["b"].count == 1
    assert by_model["a"].start_time_unix_nano == first[0].start_time_unix_nano < by_model["a"].time_unix_nano
    h.shutdown()


def test_nothing_recorded_exports_nothing() -> None:
    exporter = Collected()
    h = histograms(exporter)
    h.force_flush()
    h.shutdown()
    assert exporter.batches == []


def test_a_failing_exporter_does_not_stop_the_periodic_thread() -> None:
    exporter = Collected(failures=2)
    h = histograms(exporter, interval_s=0.05)
    h.record("h", 1.0, {})
    assert exporter.exported.wait(5), "the thread gave up after the collector failed"
    assert points(exporter.batches[0])[0].count == 1
    h.shutdown()


def test_genai_call_series_are_built_once_and_record_each_outcome_and_token_type_apart() -> None:
    from gateway.telemetry import genai

    exporter = Collected()
    h = Histograms(genai.OTLP_SPECS, exporter, Resource.create({"service.name": "t"}), InstrumentationScope("t"), 3600)
    attributes = genai.request_attributes("chat", "openai", "http://up:8000/v1", {"model": "m", "temperature": 0.1})
    series = genai.call_series(attributes)
    assert genai.call_series(dict(attributes)) is series  # equal attributes: the same series
    assert genai.call_series({**attributes, "gen_ai.request.model": "other"}) is not series
    assert series.labels == ("chat", "openai", "m")
    genai.record_call(h, series, 0.03, None)
    genai.record_call(h, series, 0.05, None)
    genai.record_call(h, series, 0.5, "timeout")
    genai.record_tokens(h, series, {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10})
    h.force_flush()
    found = {
        metric.name: {tuple(sorted((p.attributes or {}).items())): p.count for p in metric.data.data_points}  # type: ignore[attr-defined]
        for metric in exporter.batches[-1].resource_metrics[0].scope_metrics[0].metrics
    }
    base = (
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.provider.name", "openai"),
        ("gen_ai.request.model", "m"),
        ("server.address", "up"),
        ("server.port", 8000),
    )
    assert found[genai.DURATION_OTLP] == {base: 2, tuple(sorted((*base, ("error.type", "timeout")))): 1}
    assert found[genai.TOKEN_USAGE_OTLP] == {
        tuple(sorted((*base, ("gen_ai.token.type", kind)))): 1 for kind in ("input", "output")
    }
    h.shutdown()
