"""Routing strategies under a load ramp: fake vLLM servers whose latency depends on their queue.

    python -m bench.routing [--output FILE] [--seconds-per-step S]

For each scenario, starts its fake vLLM servers (`bench/fake_vllm.py`), then for each strategy one
gateway (`gateway serve`, vLLM backends scraped every 0.2 s) in front of them, and drives an
open-loop ramp through it: Poisson arrivals at 1, 2, 4, 8 and 16 requests/s (exactly rate x S of
them per step), S seconds each, one after the other without a pause. Every strategy sees the same
arrival times (seeded). Latency is measured from each request's scheduled send time to its whole
answer, so a slow gateway cannot hide queueing by sending late. Which server answered comes from
the `x-gateway-backend` header.

Scenarios:
- speculative + plain: two vLLM servers of the same size, one with speculative decoding (2.5x
  faster per token when nearly idle, 1.5x slower with a full batch of 16). The baseline is
  `weighted` with equal weights (a fair coin per request: round-robin on average).
- big + small: two plain servers, one with 24 batch slots and one with 8 slots and 1.5x slower steps
  (about 14 vs 5 requests/s at most), where balancing by load matters.

`run(seconds_per_step)` returns the markdown report; `bench/run.py` can include it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import aiohttp

from bench import fake_vllm

ROOT = Path(__file__).resolve().parent.parent
RATES = (1, 2, 4, 8, 16)  # requests per second, one step each
MAX_TOKENS = 64
SCRAPE_INTERVAL_S = 0.2
REQUEST_TIMEOUT_S = 120.0
SEED = 20261123
BASELINE = "weighted"
LABELS = {
    "weighted": "round-robin (weighted 1:1)",
    "least_busy": "least_busy",
    "speculative_aware": "speculative_aware",
}


@dataclass(frozen=True)
class Server:
    name: str
    speculative: bool
    max_batch: int = 16
    base_ms: float = fake_vllm.BASE_MS

    def describe(self) -> str:
        kind = "speculative" if self.speculative else "plain"
        return f"`{self.name}`: {kind}, {self.max_batch} batch slots, {self.base_ms:g} ms base step"


@dataclass(frozen=True)
class Scenario:
    title: str
    servers: tuple[Server, ...]
    strategies: tuple[str, ...]
    watched: str  # the server whose share of traffic the table shows


SCENARIOS = (
    Scenario(
        "speculative + plain",
        (Server("spec", True), Server("plain", False)),
        ("weighted", "least_busy", "speculative_aware"),
        watched="spec",
    ),
    Scenario(
        "big + small (both plain)",
        (Server("big", False, max_batch=24), Server("small", False, max_batch=8, base_ms=fake_vllm.BASE_MS * 1.5)),
        ("weighted", "least_busy"),
        watched="small",
    ),
)


@dataclass
class Step:
    rate: float
    sent: int = 0
    latencies_s: list[float] = field(default_factory=list)
    backends: dict[str, int] = field(default_factory=dict)
    routed: list[tuple[float, str]] = field(default_factory=list)  # (scheduled send time, backend)
    errors: int = 0
    first_error: str | None = None

    def percentile_ms(self, q: float) -> float:
        return percentile(self.latencies_s, q) * 1000

    def repeats(self) -> float:
        """Share of requests (in send order) routed to the same backend as the request before them."""
        order = [backend for _, backend in sorted(self.routed)]
        pairs = list(itertools.pairwise(order))
        return sum(a == b for a, b in pairs) / len(pairs) if pairs else math.nan

    def share(self, backend: str) -> float:
        total = sum(self.backends.values())
        return self.backends.get(backend, 0) / total if total else math.nan


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def arrivals(rate: float, seconds: float, rng: random.Random) -> list[float]:
    """round(rate * seconds) arrival offsets in [0, seconds), independent and uniform: a Poisson process
    conditioned on its count, so each step carries the load its label says (an unconditioned draw of
    a 6-second step is often 20 % off)."""
    return sorted(rng.uniform(0, seconds) for _ in range(round(rate * seconds)))


def schedule(seconds_per_step: float) -> list[list[float]]:
    """The ramp's arrival offsets from its start, per step; the same for every strategy."""
    rng = random.Random(SEED)
    return [[i * seconds_per_step + at for at in arrivals(rate, seconds_per_step, rng)] for i, rate in enumerate(RATES)]


async def drive(url: str, plan: list[list[float]]) -> list[Step]:
    """Send the planned requests open-loop (each at its time, whatever the others are doing)."""
    steps = [Step(rate) for rate in RATES]
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(step: Step, number: int, at: float) -> None:
            body = {
                "model": "bench",
                "max_tokens": MAX_TOKENS,
                "messages": [{"role": "user", "content": f"Request {number}: summarise the routing benchmark."}],
            }
            try:
                async with session.post(url, json=body) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:200]}")
                    backend = resp.headers.get("x-gateway-backend", "?")
            except Exception as exc:
                step.errors += 1
                step.first_error = step.first_error or f"{type(exc).__name__}: {exc}"
                return
            step.latencies_s.append(loop.time() - at)
            step.backends[backend] = step.backends.get(backend, 0) + 1
            step.routed.append((at, backend))

        tasks: list[asyncio.Task[None]] = []
        start = loop.time() + 0.2
        number = 0
        for step, offsets in zip(steps, plan, strict=True):
            for offset in offsets:
                at = start + offset
                await asyncio.sleep(max(0.0, at - loop.time()))
                step.sent += 1
                number += 1
                tasks.append(asyncio.create_task(one(step, number, at)))
        await asyncio.gather(*tasks)
    return steps


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}: {_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up: {_tail(log)}")


def _tail(log: Path) -> str:
    with contextlib.suppress(OSError):
        return log.read_text(errors="replace")[-2000:]
    return ""


def queue_length(port: int) -> float:
    """running + waiting on a fake server, from its /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        text = resp.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(("vllm:num_requests_running", "vllm:num_requests_waiting"))
    )


class Processes:
    """Child processes, each with its output in a log file; `stop` sends SIGTERM, then waits, then kills."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, args: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.workdir / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc, log

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with contextlib.suppress(ValueError):
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in list(self.procs):
            self.stop(proc)


def gateway_policy(servers: dict[Server, int], strategy: str) -> str:
    policy = {
        "backends": [
            {
                "name": s.name,
                "type": "vllm",
                "base_url": f"http://127.0.0.1:{port}/v1",
                "speculative": s.speculative,
                "scrape_interval_s": SCRAPE_INTERVAL_S,
            }
            for s, port in servers.items()
        ],
        "models": [
            {
                "name": "bench",
                "strategy": strategy,
                "targets": [{"backend": s.name, "model": "fake", "weight": 1} for s in servers],
            }
        ],
        "telemetry": {"access_log": False, "log_level": "warning"},
    }
    return json.dumps(policy, indent=2)  # JSON is YAML


def run_scenario(scenario: Scenario, plan: list[list[float]], procs: Processes) -> dict[str, list[Step]]:
    ports: dict[Server, int] = {}
    for i, server in enumerate(scenario.servers):
        port = free_port()
        kind = "--speculative" if server.speculative else "--plain"
        args = ["-m", "bench.fake_vllm", "--port", str(port), kind, "--max-batch", str(server.max_batch)]
        args += ["--base-ms", str(server.base_ms), "--seed", str(SEED + i)]
        proc, log = procs.start(f"fake-{server.name}", args)
        wait_http(f"http://127.0.0.1:{port}/health", proc, log)
        ports[server] = port
    results: dict[str, list[Step]] = {}
    for strategy in scenario.strategies:
        deadline = time.monotonic() + 60
        for port in ports.values():  # the previous strategy's requests have all been answered
            while queue_length(port) > 0:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the fake server on port {port} is still busy after the last strategy")
                time.sleep(0.1)
        policy = procs.workdir / f"policy-{len(results)}-{strategy}.yaml"
        policy.write_text(gateway_policy(ports, strategy))
        port = free_port()
        proc, log = procs.start(
            f"gateway-{strategy}", ["-m", "gateway.cli", "serve", "--config", str(policy), "--port", str(port)]
        )
        try:
            wait_http(f"http://127.0.0.1:{port}/health", proc, log)
            time.sleep(3 * SCRAPE_INTERVAL_S)  # a first scrape of every backend
            started = time.monotonic()
            steps = asyncio.run(drive(f"http://127.0.0.1:{port}/v1/chat/completions", plan))
            results[strategy] = steps
            print(f"{scenario.title} / {strategy}: {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
            for step in steps:
                print(
                    f"  {step.rate:g} req/s: n={len(step.latencies_s)} p50={step.percentile_ms(0.5):.0f} ms "
                    f"p95={step.percentile_ms(0.95):.0f} ms {scenario.watched}={step.share(scenario.watched):.0%} "
                    f"errors={step.errors}" + (f" ({step.first_error})" if step.first_error else ""),
                    file=sys.stderr,
                    flush=True,
                )
        finally:
            procs.stop(proc)
    return results


def run(seconds_per_step: float = 6.0) -> str:
    """Run every scenario and strategy; the markdown report."""
    plan = schedule(seconds_per_step)
    results: dict[str, dict[str, list[Step]]] = {}
    with tempfile.TemporaryDirectory(prefix="gw-bench-routing-") as tmp:
        procs = Processes(Path(tmp))
        try:
            for scenario in SCENARIOS:
                results[scenario.title] = run_scenario(scenario, plan, procs)
                procs.stop_all()  # this scenario's fake servers
        finally:
            procs.stop_all()
    return report(results, seconds_per_step, [len(p) for p in plan])


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.0f}"


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0%}"


def _ratio(value: float, base: float) -> str:
    return "-" if math.isnan(value) or math.isnan(base) or base == 0 else f"{value / base:.2f}"


def report(results: dict[str, dict[str, list[Step]]], seconds_per_step: float, sent: list[int]) -> str:
    parts: list[str] = []
    for scenario in SCENARIOS:
        by_strategy = results[scenario.title]
        servers = "; ".join(s.describe() for s in scenario.servers)
        rate_cols = " | ".join(f"{r:g} req/s" for r in RATES)
        summary = [f"| strategy | {rate_cols} |", "| --- |" + " --- |" * len(RATES)]
        for strategy, steps in by_strategy.items():
            cells = " | ".join(f"{_ms(s.percentile_ms(0.5))} / {_ms(s.percentile_ms(0.95))}" for s in steps)
            summary.append(f"| {LABELS[strategy]} | {cells} |")
        detail = [
            f"| strategy | req/s | sent | p50 ms | p95 ms | p95 vs round-robin | to `{scenario.watched}` "
            "| same backend as previous | errors |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        baseline = by_strategy.get(BASELINE)
        for strategy, steps in by_strategy.items():
            for i, step in enumerate(steps):
                base = baseline[i].percentile_ms(0.95) if baseline else math.nan
                detail.append(
                    f"| {LABELS[strategy]} | {step.rate:g} | {step.sent} | {_ms(step.percentile_ms(0.5))} "
                    f"| {_ms(step.percentile_ms(0.95))} | {_ratio(step.percentile_ms(0.95), base)} "
                    f"| {_pct(step.share(scenario.watched))} | {_pct(step.repeats())} | {step.errors} |"
                )
        parts.append(
            f"### {scenario.title}\n\nServers: {servers}.\n\np50 / p95 latency in ms per load step:\n\n"
            + "\n".join(summary)
            + "\n\n"
            + "\n".join(detail)
        )
    m = fake_vllm.mean_tokens_per_step()
    f = fake_vllm
    steps = ", ".join(f"{n} at {r:g}/s" for n, r in zip(sent, RATES, strict=True))
    return f"""## Routing under a load ramp (`python -m bench.routing`)

- Servers: fake vLLM (`bench/fake_vllm.py`), continuous batching with a FIFO queue beyond the
  batch slots. With n requests running a step takes BASE x (1 + {f.K_PLAIN:g} n) for one token each, or
  with speculative decoding BASE x ({f.SPEC_FIXED:.2f} + {f.K_SPEC:.2f} n) for {m:.2f} tokens each on average
  ({f.NUM_SPEC_TOKENS} drafts, each accepted with p = {f.ACCEPT_PROB:g}). Per token the speculative server is
  {f.SPEEDUP_AT_1:g}x faster with 1 running and {f.SLOWDOWN_WHEN_FULL:g}x slower with {f.REFERENCE_BATCH} running
  (vLLM measured up to 2.8x faster at QPS 1 and 1.4-1.8x slower at high QPS).
- Load: every request asks for {MAX_TOKENS} tokens; open-loop Poisson arrivals, {seconds_per_step:g} s per step without
  a pause, the same arrival times for every strategy. Latency runs from each request's scheduled
  send time to its whole answer. Requests per step: {steps}.
- Gateway: one `gateway serve` per strategy, vLLM backends scraped every {SCRAPE_INTERVAL_S:g} s. The round-robin
  baseline is `weighted` with equal weights, which picks at random (50/50 on average, not strictly
  alternating).
- "same backend as previous": of consecutive requests (in send order), the share routed to the same
  server; a fair coin gives about 50 %. Well above that means requests arrive in runs to one server
  (for the scraped strategies: every request between two scrapes sees the same numbers).
- Small steps hold few requests, so their p95 is close to their maximum, and a run is one sample:
  between two runs the round-robin p95 at 16 req/s moved by a third. Trust only large differences.

{(chr(10) * 2).join(parts)}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", help="write the markdown here (default: print it)")
    parser.add_argument("--seconds-per-step", type=float, default=6.0, help="seconds of each load step")
    args = parser.parse_args()
    if args.seconds_per_step <= 0:
        parser.error("--seconds-per-step must be above 0")

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)  # unwinds through run()'s finally, which stops the children

    signal.signal(signal.SIGTERM, terminate)
    markdown = run(args.seconds_per_step)
    if args.output:
        Path(args.output).write_text(markdown)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
