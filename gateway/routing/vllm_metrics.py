"""vLLM's Prometheus metrics: parse one scrape, and scrape a backend in the background.

The router reads `MetricsScraper.latest()` on every request, so a scrape never blocks a request:
it runs on its own task and only swaps in a new immutable `VLLMStats` when it succeeds. A failing
scrape is counted and retried at the next interval; once the last good one is older than
`3 * interval_s`, `latest()` answers None and the router falls back to the gateway's own counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import counter, gauge
from gateway.upstream.base import make_session

log = logging.getLogger(__name__)

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_CACHE = "vllm:kv_cache_usage_perc"
KV_CACHE_OLD = "vllm:gpu_cache_usage_perc"  # vLLM before v0.10 (V0 engine)
DRAFT_TOKENS = "vllm:spec_decode_num_draft_tokens_total"
ACCEPTED_TOKENS = "vllm:spec_decode_num_accepted_tokens_total"
_WANTED = frozenset({RUNNING, WAITING, KV_CACHE, KV_CACHE_OLD, DRAFT_TOKENS, ACCEPTED_TOKENS})
MAX_METRICS_BYTES = 4 * 1024 * 1024  # a vLLM page is ~100 KB; anything far larger is not one
# The shape of a sample line (name, optional labels, value, optional timestamp). Lines of series
# the router does not use are only checked against it: the full parser takes ~35 ms for a
# 100 KB page, which the event loop would pay on every scrape of every backend.
_SAMPLE_LINE = re.compile(
    r"[a-zA-Z_:][a-zA-Z0-9_:]*(?:\{.*\})?[ \t]+[-+]?(?:[0-9.]+(?:[eE][-+]?[0-9]+)?|NaN|Inf|inf|nan)(?:[ \t]+-?[0-9]+)?"
)
_NAME_END = re.compile(r"[{ \t]")

_RUNNING_GAUGE = gauge(
    "gateway_backend_requests_running", "Requests a vLLM backend is running (scraped).", ("backend",)
)
_WAITING_GAUGE = gauge("gateway_backend_requests_waiting", "Requests queued in a vLLM backend (scraped).", ("backend",))
_KV_GAUGE = gauge("gateway_backend_kv_cache_usage", "KV-cache usage of a vLLM backend, 0..1 (scraped).", ("backend",))
_ACCEPTANCE_GAUGE = gauge(
    "gateway_backend_spec_acceptance_rate",
    "Accepted / draft tokens of a vLLM backend's speculative decoding since it started (scraped).",
    ("backend",),
)
_SCRAPE_ERRORS = counter("gateway_backend_scrape_errors_total", "Failed scrapes of a backend's /metrics.", ("backend",))


@dataclass(frozen=True, slots=True)
class VLLMStats:
    """One scrape of one vLLM server, summed over the models (and engines) it serves."""

    running: float
    waiting: float
    kv_cache: float  # 0..1: the fullest engine's share of KV-cache blocks in use
    draft_tokens: float | None  # counter since the server started; None without speculative decoding
    accepted_tokens: float | None
    scraped_at: float  # time.monotonic()

    @property
    def acceptance_rate(self) -> float | None:
        """Share of draft tokens the target model accepted, over the server's lifetime."""
        if self.draft_tokens is None or self.accepted_tokens is None or self.draft_tokens == 0:
            return None
        return self.accepted_tokens / self.draft_tokens


def parse_vllm_metrics(text: str) -> VLLMStats:
    """Parse Prometheus text exposition; ValueError when it is not valid exposition text.

    Series are matched by sample name, so counters parse with or without their `# TYPE` line.
    running, waiting and the spec-decoding counters are summed over label sets (one per served
    model or data-parallel engine). KV-cache usage is a share, so the largest one is kept: a sum
    could pass 1, and one full engine already means preemptions. The newer `kv_cache_usage_perc`
    wins over the old `gpu_cache_usage_perc` when a server exposes both.
    """
    sums: dict[str, float] = {}
    peaks: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(_wanted_lines(text)):
            for sample in family.samples:
                if sample.name not in _WANTED:
                    continue
                value = float(sample.value)
                if math.isnan(value):
                    continue
                sums[sample.name] = sums.get(sample.name, 0.0) + value
                peaks[sample.name] = max(peaks.get(sample.name, value), value)
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise ValueError(f"not Prometheus text exposition: {exc}") from None
    kv_cache = peaks.get(KV_CACHE, peaks.get(KV_CACHE_OLD, 0.0))
    return VLLMStats(
        running=sums.get(RUNNING, 0.0),
        waiting=sums.get(WAITING, 0.0),
        kv_cache=kv_cache,
        draft_tokens=sums.get(DRAFT_TOKENS),
        accepted_tokens=sums.get(ACCEPTED_TOKENS),
        scraped_at=time.monotonic(),
    )


def _wanted_lines(text: str) -> str:
    """The sample lines of the series in _WANTED; every other line only has its shape checked."""
    kept: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        end = _NAME_END.search(line)
        if end is not None and line[: end.start()] in _WANTED:
            kept.append(line)
        elif _SAMPLE_LINE.fullmatch(line) is None:
            raise ValueError(f"not Prometheus text exposition: bad line {line[:80]!r}")
    return "\n".join(kept) + "\n"


def metrics_url_for(base_url: str, explicit: str | None) -> str:
    """The configured metrics URL, else the server root of an OpenAI base URL plus /metrics."""
    if explicit:
        return explicit
    root = base_url.rstrip("/")
    if root.endswith("/v1"):
        root = root[: -len("/v1")]
    return root.rstrip("/") + "/metrics"


class MetricsScraper:
    """Scrapes one backend's /metrics every `interval_s` in a background task."""

    def __init__(self, backend: str, url: str, *, interval_s: float = 1.0, timeout_s: float = 0.5) -> None:
        if interval_s <= 0 or timeout_s <= 0:
            raise ValueError("interval_s and timeout_s must be above 0")
        self.backend = backend
        self.url = url
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.failures = 0
        self.last_error: str | None = None
        self._latest: VLLMStats | None = None
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError(f"the metrics scraper for {self.backend!r} is already running")
        self._session = make_session(max_connections=1)
        self._task = asyncio.create_task(self._run(), name=f"scrape-metrics:{self.backend}")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def latest(self, max_age_s: float | None = None) -> VLLMStats | None:
        """The last good scrape, or None if there is none younger than max_age_s (default 3 intervals)."""
        stats = self._latest
        if stats is None:
            return None
        limit = 3 * self.interval_s if max_age_s is None else max_age_s
        return stats if time.monotonic() - stats.scraped_at <= limit else None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            await self.scrape_once()
            # A fixed cadence, not a fixed pause: a slow scrape must not stretch the interval.
            next_at = max(next_at + self.interval_s, loop.time())
            await asyncio.sleep(next_at - loop.time())

    async def scrape_once(self) -> bool:
        """One scrape; True when it succeeded. Never raises (except cancellation)."""
        try:
            stats = await self._fetch()
        except Exception as exc:  # any failure is the backend's; the next interval retries
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            _SCRAPE_ERRORS.labels(self.backend).inc()
            log.debug("scraping %s for backend %r failed: %s", self.url, self.backend, self.last_error)
            return False
        self._latest = stats
        self._export(stats)
        return True

    async def _fetch(self) -> VLLMStats:
        if self._session is None:
            raise RuntimeError("the scraper is not started")
        async with asyncio.timeout(self.timeout_s), self._session.get(self.url) as resp:
            if resp.status != 200:
                raise ValueError(f"HTTP {resp.status}")
            parts: list[bytes] = []
            size = 0
            async for part in resp.content.iter_any():
                size += len(part)
                if size > MAX_METRICS_BYTES:
                    raise ValueError(f"metrics page over {MAX_METRICS_BYTES} bytes")
                parts.append(part)
        return parse_vllm_metrics(b"".join(parts).decode("utf-8", errors="replace"))

    def _export(self, stats: VLLMStats) -> None:
        _RUNNING_GAUGE.labels(self.backend).set(stats.running)
        _WAITING_GAUGE.labels(self.backend).set(stats.waiting)
        _KV_GAUGE.labels(self.backend).set(stats.kv_cache)
        rate = stats.acceptance_rate
        if rate is not None:
            _ACCEPTANCE_GAUGE.labels(self.backend).set(rate)
