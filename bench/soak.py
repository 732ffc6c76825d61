"""Soak: the typical chain under steady load for `--minutes`, resident memory sampled all along.

    python -m bench.soak --minutes 10        # `make soak`: the full soak (RSS growth <= 10% after warm-up)
    python -m bench.soak --minutes 2 --output docs/benchmarks.md   # what `make bench` adds (SOAK_MINUTES)

One `gateway serve` (exact_cache in memory + rules + access log, tracing to a local OTLP sink when this build
has it) in front of nginx, wrk with `--connections` sending unique prompts for the whole time, so the exact
cache fills to its bound and keeps evicting. Writes the "Soak" section of `--output` (docs/reliability.md by
default; replaced if there, appended if not) and its chart (docs/soak.png; `<stem>-soak.png` beside another
output, so a short `make bench` soak never replaces the 10-minute one). Exits 1 if growth after warm-up is over 10%.
"""

from __future__ import annotations

import argparse
import datetime
import re
import statistics
import sys
import tempfile
from pathlib import Path

from bench import chart, run
from bench.load import wrk
from bench.procs import ROOT, RssSampler, free_port, start_gateway, start_module, start_nginx, stop, wait_http

LIMIT = 0.10
MARK = "## Soak"
SAMPLE_S = 2.0


def soak(minutes: float, connections: int) -> tuple[list[tuple[float, float]], dict[str, float], dict[str, float]]:
    workdir = Path(tempfile.mkdtemp(prefix="gw-soak-"))
    ports = {name: free_port() for name in ("nginx", "sink", "gateway")}
    url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    procs = [start_nginx(workdir, ports["nginx"]), start_module("bench.otlp_sink", "--port", str(ports["sink"]))]
    variant = next(v for v in run.variants() if v.typical)
    policy = workdir / "policy.yaml"
    policy.write_text(run.gateway_policy(url["nginx"], url["nginx"], variant, url["sink"]))
    gateway = start_gateway(policy, ports["gateway"], log=workdir / "gateway.log")
    procs.append(gateway)
    try:
        wait_http(url["gateway"] + "/health", timeout=180)
        wait_http(url["sink"] + "/")
        seconds = max(10, round(minutes * 60))
        with RssSampler(gateway.pid, every_s=SAMPLE_S) as sampler:
            load = wrk(url["gateway"], connections, seconds)
        samples = sampler.samples
        metrics = _metrics(url["gateway"])
        from bench import otlp_sink

        received = otlp_sink.stats(url["sink"])
        metrics["OTLP export requests received by the sink"] = received["requests"]
        metrics["OTLP bytes received by the sink"] = received["bytes"]
    finally:
        for proc in procs:
            stop(proc, timeout=40)
    return samples, load, metrics


def _metrics(url: str) -> dict[str, float]:
    import urllib.request

    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    found: dict[str, float] = {}
    for name in (
        "gateway_telemetry_spans_exported_total",
        "gateway_telemetry_spans_dropped_total",
        "process_open_fds",
    ):
        values = re.findall(rf"^{name}(?:\{{[^}}]*\}})? ([\d.e+-]+)$", text, re.M)
        if values:
            found[name] = sum(float(v) for v in values)
    return found


def growth(samples: list[tuple[float, float]], warmup_s: float) -> dict[str, float]:
    """RSS at the end of warm-up vs at the end (medians of 5 samples each), and the peak after warm-up."""
    after = [mib for t, mib in samples if t >= warmup_s]
    if len(after) < 10:
        raise RuntimeError("too few samples after warm-up: run longer")
    start, end = statistics.median(after[:5]), statistics.median(after[-5:])
    return {"start": start, "end": end, "peak": max(after), "growth": (end - start) / start}


AUDIT = "| what | bound |\n| --- | --- |\n" + "\n".join(
    f"| {what} | {bound} |"
    for what, bound in (
        ("`exact_cache` memory store", "`max_entries` (10,000) and `max_bytes` (64 MiB), LRU"),
        ("`semantic_cache` index", "`max_entries` / `max_bytes`, oldest out; its Redis log `XADD MAXLEN ~max_entries`"),
        ("semantic verifier features", "`lru_cache(maxsize=8192)`"),
        ("`embedding_guard` embedded presets", "8 matrices, LRU"),
        (
            "span export queue (tracing)",
            "`max_queue`; past it spans are dropped and counted (`gateway_telemetry_spans_dropped_total`)",
        ),
        ("request log queue", "`queue_size`"),
        ("per-key limits in memory", "the current and previous minute's windows only; keys come from the policy"),
        ("metrics label sets", "model x backend x status (and plugin names): fixed by the policy"),
        ("router health, circuit breakers, `/ready` probe cache", "one entry per target / backend host"),
        ("retired runtimes after a reload", "dropped when their drain finishes"),
        ("upstream connection pools", "`max_connections` per backend"),
        (
            "embedding queue",
            "unbounded as a queue, but each entry is a request awaiting its vector: at most one per request in flight",
        ),
        (
            "requests in flight",
            "one per client connection; uvicorn's `limit_concurrency` is not set (a load balancer in front bounds "
            "connections)",
        ),
    )
)


def section(
    samples: list[tuple[float, float]],
    warmup_s: float,
    load: dict[str, float],
    minutes: float,
    connections: int,
    metrics: dict[str, float],
    png: str = "soak.png",
) -> str:
    g = growth(samples, warmup_s)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    every = max(1, len(samples) // 10)
    rows = "\n".join(f"| {t / 60:.1f} | {mib:.1f} |" for t, mib in samples[::every])
    verdict = "within" if g["growth"] <= LIMIT else "**over**"
    extra = ", ".join(f"`{k}` {v:,.0f}" for k, v in metrics.items()) or "none exposed"
    return f"""{MARK}

`python -m bench.soak --minutes {minutes:g}` ({stamp}): one `gateway serve` with the typical chain
(`exact_cache` in memory, `rules`, access log, tracing to a local OTLP sink when built in) in front of nginx,
wrk with {connections} connections sending a unique prompt per request for {minutes:g} minutes:
{load["requests"]:,.0f} requests ({load["rps"]:,.0f} req/s, p99 {load["p99"]:.1f} ms, {load["errors"]:.0f} errors).
RSS sampled every {SAMPLE_S:g} s; warm-up is the first {warmup_s / 60:.1f} minutes (allocator pools, the exact
cache filling to its 10,000-entry bound). `make soak` runs the 10-minute soak into docs/reliability.md;
`make bench` adds a `SOAK_MINUTES`-minute one (default 2) to docs/benchmarks.md.

![RSS over the soak]({png})

RSS after warm-up: {g["start"]:.1f} MiB, at the end {g["end"]:.1f} MiB, peak {g["peak"]:.1f} MiB: growth
**{g["growth"] * 100:+.1f}%** ({verdict} the 10% budget).
At the end (gateway metrics, then what the sink received): {extra}.

| minute | RSS MiB |
| --- | --- |
{rows}

What bounds memory (audited in the code; each is a fixed size or shrinks on its own):

{AUDIT}
"""


def _default_minutes() -> float:
    import os

    return float(os.environ.get("SOAK_MINUTES", "2"))


def write_section(path: Path, text: str) -> None:
    """Replace the Soak section (up to the next `## ` heading) or append it."""
    doc = path.read_text() if path.exists() else "# Reliability\n"
    start = doc.find(MARK + "\n")
    if start < 0:
        path.write_text(doc.rstrip("\n") + "\n\n" + text)
        return
    end = doc.find("\n## ", start + len(MARK))
    path.write_text(doc[:start] + text + (doc[end + 1 :] if end >= 0 else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=_default_minutes())
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--output", default=str(ROOT / "docs" / "reliability.md"))
    args = parser.parse_args()
    warmup_s = min(120.0, args.minutes * 60 * 0.2)
    samples, load, metrics = soak(args.minutes, args.connections)
    g = growth(samples, warmup_s)
    output = Path(args.output)
    png = output.parent / ("soak.png" if output.name == "reliability.md" else f"{output.stem}-soak.png")
    title = f"gateway RSS, typical chain, {args.minutes:g} min at {args.connections} connections"
    chart.soak(samples, warmup_s, png, title)
    write_section(output, section(samples, warmup_s, load, args.minutes, args.connections, metrics, png.name))
    print(f"soak: RSS {g['start']:.1f} -> {g['end']:.1f} MiB ({g['growth'] * 100:+.1f}%), wrote {args.output}")
    return 0 if g["growth"] <= LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
