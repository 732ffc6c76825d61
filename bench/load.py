"""Load generation with wrk, and what one target measures: latency at 1 connection, throughput and p99
at 64, resident memory at idle and under load, and the gateway's own overhead metric when it has one."""

from __future__ import annotations

import re
import subprocess
import urllib.request
from typing import Any

from bench.procs import ROOT, RssSampler, cpu_s, rss_mib, wait_http

Result = dict[str, Any]


def wrk(url: str, connections: int, seconds: float, script: str = "post.lua") -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            f"-t{min(connections, 2)}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "-s",
            str(ROOT / "bench" / script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    lat = {p: _ms(v) for p, v in re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M)}
    requests = re.search(r"(\d+) requests in", out)
    return {
        "rps": rps,
        "requests": float(requests.group(1)) if requests else 0.0,
        "p50": lat.get("50", 0.0),
        "p99": lat.get("99", 0.0),
        "errors": float(errors.group(1)) if errors else 0.0,
        "socket_errors": float(sum(int(g) for g in socket_errors.groups())) if socket_errors else 0.0,
    }


def _ms(value: str) -> float:
    number = float(re.match(r"[\d.]+", value).group(0))  # type: ignore[union-attr]
    if value.endswith("us"):
        return number / 1000
    if value.endswith("ms"):
        return number
    return number * 1000 if value.endswith("s") else number


def overhead_ms(url: str) -> float | None:
    """Mean of the gateway's `gateway_overhead_seconds` histogram (time outside the upstream call), if exposed."""
    try:
        text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    except OSError:
        return None
    total = re.search(r"^gateway_overhead_seconds_sum(?:\{[^}]*\})? ([\d.e+-]+)$", text, re.M)
    count = re.search(r"^gateway_overhead_seconds_count(?:\{[^}]*\})? ([\d.e+-]+)$", text, re.M)
    if not total or not count or float(count.group(1)) == 0:
        return None
    return float(total.group(1)) / float(count.group(1)) * 1000


def overhead_header(url: str, requests: int = 200) -> dict[str, float] | None:
    """p50/p99 of the gateway's own `x-gateway-overhead-ms` over sequential requests on one connection."""
    import http.client
    import statistics

    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    values: list[float] = []
    try:
        for i in range(requests):
            body = f'{{"model":"bench","messages":[{{"role":"user","content":"overhead {i}"}}],"max_tokens":16}}'
            conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            header = resp.getheader("x-gateway-overhead-ms")
            if header is None:
                return None
            values.append(float(header))
    finally:
        conn.close()
    values.sort()
    return {"p50": statistics.median(values), "p99": values[min(len(values) - 1, int(0.99 * len(values)))]}


def measure(url: str, script: str, seconds: float, pid: int | None = None, warm_s: float = 2) -> Result:
    """1 connection (latency), then 64 (throughput); RSS idle = after start-up, before any request."""
    wait_http(url + "/", timeout=180.0)
    result: Result = {"rss_idle": rss_mib(pid) if pid else None}
    wrk(url, 8, warm_s, script)  # warm-up: connection pools, caches, allocator
    # 1 connection: the better of two half-length runs, as a neighbour's burst on a shared machine can triple
    # one run's p50 (every target, the floor included, is measured the same way).
    result["c1"] = min((wrk(url, 1, seconds / 2, script) for _ in range(2)), key=lambda run: run["p50"])
    if pid:
        cpu = cpu_s(pid)
        with RssSampler(pid) as sampler:
            result["c64"] = wrk(url, 64, seconds, script)
        result["rss_load"] = sampler.peak
        # CPU per request: steadier than req/s on a shared machine (what others run slows us, not this).
        result["cpu_us"] = (cpu_s(pid) - cpu) / max(result["c64"]["requests"], 1) * 1e6
    else:
        result["c64"] = wrk(url, 64, seconds, script)
        result["rss_load"] = None
        result["cpu_us"] = None
    result["overhead_ms"] = overhead_ms(url) if pid else None
    result["overhead_header"] = overhead_header(url) if pid and script == "post.lua" else None
    print(url, script, result, flush=True)
    return result
