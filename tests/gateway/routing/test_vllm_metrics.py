"""Parsing vLLM's /metrics page, and scraping it from a real (fake) vLLM server."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterable, Iterator

import pytest
from prometheus_client import REGISTRY, Metric
from prometheus_client.parser import text_string_to_metric_families

from gateway.routing import vllm_metrics
from gateway.routing.vllm_metrics import MetricsScraper, VLLMStats, metrics_url_for, parse_vllm_metrics
from tests.fakes.upstream import DEFAULT_METRICS, FakeUpstream

# Trimmed from a real vLLM 0.11 server running two engines (data parallel) with speculative decoding.
VLLM_PAGE = """\
# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 12011.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
vllm:num_requests_running{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1.0
vllm:num_requests_waiting{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.5
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 5122.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="meta-llama/Llama-3.1-8B-Instruct"} 9.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 9.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.42
# HELP vllm:spec_decode_num_drafts_total Number of spec decoding drafts.
# TYPE vllm:spec_decode_num_drafts_total counter
vllm:spec_decode_num_drafts_total{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 40.0
# HELP vllm:spec_decode_num_draft_tokens_total Number of draft tokens.
# TYPE vllm:spec_decode_num_draft_tokens_total counter
vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 120.0
vllm:spec_decode_num_draft_tokens_total{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 80.0
# HELP vllm:spec_decode_num_accepted_tokens_total Number of accepted tokens.
# TYPE vllm:spec_decode_num_accepted_tokens_total counter
vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 90.0
vllm:spec_decode_num_accepted_tokens_total{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 60.0
"""

# An older (V0 engine) server serving two models behind one port: gpu_cache_usage_perc, no spec decoding.
OLD_TWO_MODEL_PAGE = """\
# HELP vllm:num_requests_running Number of requests currently running on GPU.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="qwen"} 4.0
vllm:num_requests_running{model_name="gemma"} 1.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="qwen"} 2.0
vllm:num_requests_waiting{model_name="gemma"} 3.0
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="qwen"} 0.9
vllm:gpu_cache_usage_perc{model_name="gemma"} 0.1
"""


def stats(draft: float | None = None, accepted: float | None = None) -> VLLMStats:
    return VLLMStats(running=0, waiting=0, kv_cache=0, draft_tokens=draft, accepted_tokens=accepted, scraped_at=0)


# --- parsing -----------------------------------------------------------------------


def test_parses_a_real_page_summing_label_sets() -> None:
    before = time.monotonic()
    parsed = parse_vllm_metrics(VLLM_PAGE)
    assert (parsed.running, parsed.waiting) == (5.0, 1.0)
    assert parsed.kv_cache == 0.5  # the fullest engine, not the sum
    assert (parsed.draft_tokens, parsed.accepted_tokens) == (200.0, 150.0)
    assert parsed.acceptance_rate == 0.75
    assert before <= parsed.scraped_at <= time.monotonic()


def test_old_gauge_name_and_several_models() -> None:
    parsed = parse_vllm_metrics(OLD_TWO_MODEL_PAGE)
    assert (parsed.running, parsed.waiting, parsed.kv_cache) == (5.0, 5.0, 0.9)
    assert parsed.draft_tokens is None
    assert parsed.accepted_tokens is None
    assert parsed.acceptance_rate is None


def test_new_kv_gauge_wins_when_both_are_exposed() -> None:
    page = "vllm:gpu_cache_usage_perc 0.9\nvllm:kv_cache_usage_perc 0.3\n"
    assert parse_vllm_metrics(page).kv_cache == 0.3


def test_missing_gauges_are_zero_and_missing_counters_none() -> None:
    parsed = parse_vllm_metrics("# HELP process_cpu_seconds_total CPU.\nprocess_cpu_seconds_total 3.5\n")
    assert (parsed.running, parsed.waiting, parsed.kv_cache) == (0.0, 0.0, 0.0)
    assert (parsed.draft_tokens, parsed.accepted_tokens) == (None, None)
    assert parse_vllm_metrics("").running == 0.0


def test_counters_without_type_lines_still_count() -> None:
    page = "vllm:spec_decode_num_draft_tokens_total 10\nvllm:spec_decode_num_accepted_tokens_total 4\n"
    assert parse_vllm_metrics(page).acceptance_rate == 0.4


def test_other_series_of_any_shape_are_accepted() -> None:
    page = (
        'python_info{implementation="CPython",version="3.11 final"} 1.0\n'
        "process_start_time_seconds 1.7e+09 1712345678000\n"
        'vllm:e2e_request_latency_seconds_bucket{le="+Inf"} -Inf\n'
        "vllm:num_requests_running 2 1712345678000\n"
    )
    assert parse_vllm_metrics(page).running == 2.0


def test_only_the_wanted_series_reach_the_full_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """The full parser takes ~35 ms on a 100 KB page, and scrapes run on the event loop."""
    seen: list[str] = []

    def spy(text: str) -> Iterable[Metric]:
        seen.append(text)
        return text_string_to_metric_families(text)

    monkeypatch.setattr(vllm_metrics, "text_string_to_metric_families", spy)
    assert parse_vllm_metrics(VLLM_PAGE).running == 5.0
    (parsed_text,) = seen
    names = {line.split("{")[0] for line in parsed_text.splitlines()}
    assert names == {
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:spec_decode_num_draft_tokens_total",
        "vllm:spec_decode_num_accepted_tokens_total",
    }


def test_nan_samples_are_skipped() -> None:
    page = 'vllm:num_requests_running{e="0"} NaN\nvllm:num_requests_running{e="1"} 2\n'
    assert parse_vllm_metrics(page).running == 2.0


@pytest.mark.parametrize(
    "text",
    [
        "vllm:num_requests_running{model_name=qwen} 1",  # unquoted label value
        "vllm:num_requests_running not-a-number",
        '{"object": "list", "data": []}',
        "<html><body>Not Found</body></html>",
        "vllm:num_requests_running{",
        "process_open_fds garbage",  # a series the router ignores is still checked
    ],
)
def test_malformed_text_raises_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="not Prometheus text exposition"):
        parse_vllm_metrics(text)


@pytest.mark.parametrize(
    ("draft", "accepted", "rate"),
    [(None, None, None), (None, 3.0, None), (10.0, None, None), (0.0, 0.0, None), (8.0, 2.0, 0.25)],
)
def test_acceptance_rate(draft: float | None, accepted: float | None, rate: float | None) -> None:
    assert stats(draft, accepted).acceptance_rate == rate


@pytest.mark.parametrize(
    ("base_url", "explicit", "expected"),
    [
        ("http://vllm:8000/v1", None, "http://vllm:8000/metrics"),
        ("http://vllm:8000/v1/", None, "http://vllm:8000/metrics"),
        ("http://vllm:8000", None, "http://vllm:8000/metrics"),
        ("http://vllm:8000/", None, "http://vllm:8000/metrics"),
        ("https://lb.example/team-a/v1", None, "https://lb.example/team-a/metrics"),
        ("http://vllm:8000/v1", "http://vllm:9100/prom", "http://vllm:9100/prom"),
        ("http://vllm:8000/v1", "", "http://vllm:8000/metrics"),
    ],
)
def test_metrics_url_for(base_url: str, explicit: str | None, expected: str) -> None:
    assert metrics_url_for(base_url, explicit) == expected


# --- scraping ----------------------------------------------------------------------


@pytest.fixture
def fake_metrics(upstream: FakeUpstream) -> Iterator[dict[str, float]]:
    """The shared fake upstream's metrics, restored afterwards."""
    yield upstream.metrics
    upstream.metrics.clear()
    upstream.metrics.update(DEFAULT_METRICS)


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Poll the scraper's state, which its own task changes between our sleeps (5 s at most)."""
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out waiting for the scraper")


def gauge_value(name: str, backend: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"backend": backend})


def dead_url() -> str:
    with socket.socket() as sock:  # a port that was free a moment ago: connections are refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/metrics"


async def test_scraper_follows_the_backend(upstream: FakeUpstream, fake_metrics: dict[str, float]) -> None:
    fake_metrics.update(
        {
            "vllm:num_requests_running": 3,
            "vllm:num_requests_waiting": 2,
            "vllm:kv_cache_usage_perc": 0.4,
            "vllm:spec_decode_num_draft_tokens_total": 50,
            "vllm:spec_decode_num_accepted_tokens_total": 40,
        }
    )
    scraper = MetricsScraper("scrape-follow", metrics_url_for(upstream.url + "/v1", None), interval_s=0.05)
    assert scraper.latest() is None
    await scraper.start()
    try:
        await wait_until(lambda: (s := scraper.latest()) is not None and s.running == 3)
        first = scraper.latest()
        assert first is not None
        assert (first.waiting, first.kv_cache, first.acceptance_rate) == (2.0, 0.4, 0.8)
        assert gauge_value("gateway_backend_requests_running", "scrape-follow") == 3.0
        assert gauge_value("gateway_backend_requests_waiting", "scrape-follow") == 2.0
        assert gauge_value("gateway_backend_kv_cache_usage", "scrape-follow") == 0.4
        assert gauge_value("gateway_backend_spec_acceptance_rate", "scrape-follow") == 0.8

        fake_metrics.update({"vllm:num_requests_running": 7, "vllm:kv_cache_usage_perc": 0.9})
        await wait_until(lambda: (s := scraper.latest()) is not None and s.running == 7)
        second = scraper.latest()
        assert second is not None
        assert second.kv_cache == 0.9
        assert second.scraped_at > first.scraped_at
        assert gauge_value("gateway_backend_requests_running", "scrape-follow") == 7.0
        assert scraper.failures == 0
        assert scraper.last_error is None
    finally:
        await scraper.close()


async def test_acceptance_gauge_is_only_set_when_known(upstream: FakeUpstream) -> None:
    scraper = MetricsScraper("scrape-no-spec", upstream.url + "/metrics", interval_s=0.05)
    await scraper.start()
    try:
        await wait_until(lambda: scraper.latest() is not None)
    finally:
        await scraper.close()
    assert gauge_value("gateway_backend_requests_running", "scrape-no-spec") == 0.0
    assert gauge_value("gateway_backend_spec_acceptance_rate", "scrape-no-spec") is None


async def test_dead_url_counts_failures_and_never_yields_stats() -> None:
    scraper = MetricsScraper("scrape-dead", dead_url(), interval_s=0.05, timeout_s=0.5)
    await scraper.start()
    try:
        await wait_until(lambda: scraper.failures >= 3)
        assert scraper.latest() is None
        assert scraper.last_error is not None
        assert "Connect" in scraper.last_error
        errors = REGISTRY.get_sample_value("gateway_backend_scrape_errors_total", {"backend": "scrape-dead"})
        assert errors is not None
        assert errors >= 3
    finally:
        await scraper.close()


async def test_stats_go_stale_when_the_backend_dies() -> None:
    own = FakeUpstream().start()
    own.metrics["vllm:num_requests_running"] = 2
    scraper = MetricsScraper("scrape-dies", own.url + "/metrics", interval_s=0.05)
    await scraper.start()
    try:
        await wait_until(lambda: scraper.latest() is not None)
        await asyncio.to_thread(own.stop)
        await wait_until(lambda: scraper.failures >= 1)
        last = scraper.latest(max_age_s=60)  # still there for whoever accepts old data
        assert last is not None
        assert last.running == 2
        await wait_until(lambda: scraper.latest() is None)  # 3 intervals without a good scrape
        assert time.monotonic() - last.scraped_at > 3 * 0.05
    finally:
        await scraper.close()
        own.stop()


@pytest.mark.parametrize(("path", "error"), [("/v1/models", "not Prometheus"), ("/nowhere", "HTTP 404")])
async def test_bad_answers_are_failures(upstream: FakeUpstream, path: str, error: str) -> None:
    scraper = MetricsScraper("scrape-bad", upstream.url + path, interval_s=0.05)
    await scraper.start()
    try:
        await wait_until(lambda: scraper.failures >= 1)
        assert scraper.last_error is not None
        assert error in scraper.last_error
        assert scraper.latest() is None
    finally:
        await scraper.close()


async def test_a_slow_backend_times_out(upstream: FakeUpstream) -> None:
    """A scrape that hangs is cut at timeout_s and does not stop the loop."""
    hung: asyncio.Event = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hung.wait()
        writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    scraper = MetricsScraper("scrape-slow", f"http://127.0.0.1:{port}/metrics", interval_s=0.05, timeout_s=0.05)
    await scraper.start()
    try:
        await wait_until(lambda: scraper.failures >= 2)
        assert scraper.last_error == "TimeoutError"
    finally:
        await scraper.close()
        hung.set()
        server.close()
        await server.wait_closed()


async def test_latest_max_age(upstream: FakeUpstream) -> None:
    scraper = MetricsScraper("scrape-age", upstream.url + "/metrics", interval_s=10)
    await scraper.start()
    try:
        await wait_until(lambda: scraper.latest() is not None)  # the first scrape does not wait an interval
        assert scraper.latest(max_age_s=0) is None
        assert scraper.latest(max_age_s=5) is not None
    finally:
        await scraper.close()


async def test_close_is_idempotent_and_start_twice_fails(upstream: FakeUpstream) -> None:
    scraper = MetricsScraper("scrape-close", upstream.url + "/metrics", interval_s=0.05)
    await scraper.close()
    await scraper.start()
    with pytest.raises(RuntimeError, match="already running"):
        await scraper.start()
    await scraper.close()
    await scraper.close()


def test_rejects_bad_intervals() -> None:
    with pytest.raises(ValueError):
        MetricsScraper("b", "http://x/metrics", interval_s=0)
    with pytest.raises(ValueError):
        MetricsScraper("b", "http://x/metrics", timeout_s=-1)
