"""`make bench`: nginx (fixed answer) vs the bare aiohttp proxy (floor) vs the gateway, same run.

Writes docs/benchmarks.md. Figures are ratios to the floor measured in the same run, because
these machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench import transport

ROOT = Path(__file__).resolve().parent.parent
ANSWER = (
    '{"id":"chatcmpl-bench","object":"chat.completion","created":1,"model":"bench","choices":[{"index":0,'
    '"message":{"role":"assistant","content":"fixed answer"},"finish_reason":"stop"}],'
    '"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}'
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return  # it answers, even if with an error status
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def start_nginx(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    conf = workdir / "nginx.conf"
    conf.write_text(
        f"""daemon off; worker_processes 1; pid {workdir}/nginx.pid; error_log {workdir}/nginx.err;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {workdir}; proxy_temp_path {workdir};
  fastcgi_temp_path {workdir}; uwsgi_temp_path {workdir}; scgi_temp_path {workdir};
  keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port}; default_type application/json;
    location / {{ return 200 '{ANSWER}'; }} }} }}
"""
    )
    return subprocess.Popen([nginx, "-c", str(conf), "-p", str(workdir)])


def wrk(url: str, connections: int, seconds: int, script: str = "post.lua") -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            f"-t{min(connections, 2)}",
            f"-c{connections}",
            f"-d{seconds}s",
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
    lat = {p: _ms(v) for p, v in re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M)}
    return {
        "rps": rps,
        "p50": lat.get("50", 0.0),
        "p99": lat.get("99", 0.0),
        "errors": float(errors.group(1)) if errors else 0.0,
    }


def _ms(value: str) -> float:
    number = float(re.match(r"[\d.]+", value).group(0))  # type: ignore[union-attr]
    if value.endswith("us"):
        return number / 1000
    if value.endswith("ms"):
        return number
    return number * 1000 if value.endswith("s") else number


GATEWAYS = {
    "gateway": "",
    "gateway + exact_cache (hit)": "[{use: exact_cache}]",
    "gateway + semantic_cache (hit)": "[{use: semantic_cache}]",
    "gateway + pii + embedding_guard": "[{use: pii}, {use: embedding_guard, preset: prompt_injection}]",
}


def gateway_policy(upstream: str, plugins: str) -> str:
    return (
        f"backends: [{{name: nginx, type: openai, base_url: '{upstream}/v1'}}]\n"
        f"models: [{{name: bench, targets: [{{backend: nginx, model: bench}}], plugins: {plugins or '[]'}}}]\n"
        "telemetry: {access_log: false, log_level: warning}\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("BENCH_SECONDS", "8")))
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    if not shutil.which("wrk") or not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()):
        print("make bench needs wrk and nginx: apt-get install -y wrk nginx-light", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="gw-bench-"))
    nginx_port, floor_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{nginx_port}"
    procs = [start_nginx(workdir, nginx_port)]
    procs.append(
        subprocess.Popen(
            [sys.executable, "-m", "bench.floor_proxy", "--upstream", upstream, "--port", str(floor_port)], cwd=ROOT
        )
    )
    results: dict[str, dict[str, dict[str, float]]] = {}
    try:
        for name, port in (("nginx", nginx_port), ("floor", floor_port)):
            results[name] = measure(f"http://127.0.0.1:{port}", "post.lua", args.seconds)
        for name, plugins in GATEWAYS.items():
            policy = workdir / f"policy-{len(results)}.yaml"
            policy.write_text(gateway_policy(upstream, plugins))
            port = free_port()
            proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve", "--config", str(policy), "--port", str(port)], cwd=ROOT
            )
            try:
                script = "fixed.lua" if "cache" in plugins else "post.lua"
                results[name] = measure(f"http://127.0.0.1:{port}", script, args.seconds)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=15)
        clients = transport.compare(upstream + "/v1/chat/completions", 64, max(3, args.seconds // 2))
        print("clients", clients, flush=True)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=15)
    precision = semantic_table()
    from bench import routing

    ramp = routing.run(float(os.environ.get("BENCH_RAMP_SECONDS", "6")))
    from bench import injection

    ramp += "\n## Prompt-injection guard (embedding_guard)\n\n" + injection.report()
    Path(args.output).write_text(
        report(results, clients, args.seconds, precision) + "\n## Routing under a load ramp\n\n" + ramp
    )
    print(f"wrote {args.output}")
    return 0


def measure(url: str, script: str, seconds: int) -> dict[str, dict[str, float]]:
    wait_http(url + "/", timeout=120.0)
    wrk(url, 8, 2, script)  # warm-up: connection pools, caches, allocator
    result = {"c1": wrk(url, 1, seconds, script), "c64": wrk(url, 64, seconds, script)}
    print(url, script, result, flush=True)
    return result


def semantic_table() -> str:
    try:
        from bench import semantic_precision
    except ImportError:
        return "(bench/semantic_precision.py is missing)"
    return str(semantic_precision.report(semantic_precision.score()))


def report(
    results: dict[str, dict[str, dict[str, float]]], clients: dict[str, float], seconds: int, precision: str
) -> str:
    nginx, floor, gw = results["nginx"], results["floor"], results["gateway"]

    def added(r: dict[str, dict[str, float]]) -> float:
        return r["c1"]["p50"] - nginx["c1"]["p50"]

    rows = "\n".join(
        f"| {name} | {r['c1']['p50']:.3f} | {r['c1']['p99']:.3f} | {added(r):.3f} | {r['c64']['rps']:,.0f} "
        f"| {r['c64']['p99']:.2f} | {r['c64']['rps'] / floor['c64']['rps']:.2f} "
        f"| {int(r['c1']['errors'] + r['c64']['errors'])} |"
        for name, r in results.items()
    )
    best = max(clients.values())
    client_rows = "\n".join(f"| {n} | {v:,.0f} | {v / best:.2f} |" for n, v in clients.items())
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""# Benchmarks

Measured by `make bench` ({stamp}, {os.cpu_count()} cores, {seconds} s per run, wrk). Upstream: nginx returning
a fixed chat completion. Floor: a bare aiohttp pass-through proxy (`bench/floor_proxy.py`), the fastest a Python
proxy gets here. Gateway rows: `gateway serve`, one process. The plain rows send a unique prompt per request
(`bench/post.lua`), so nothing can be cached; the cache rows repeat one prompt (`bench/fixed.lua`), so after the
first request every answer is a cache hit (for the semantic cache: embedding, vector search and verification on
every request). Ratios are against the floor measured in the same run: these machines are shared and noisy.

## Proxy overhead and cache hits

| target | p50 ms, 1 conn | p99 ms, 1 conn | added p50 vs nginx | req/s, 64 conn | p99 ms, 64 conn | vs floor | errors |
| --- | --- | --- | --- | --- | --- | --- | --- |
{rows}

Gateway added p50 over the floor at 1 connection: {gw["c1"]["p50"] - floor["c1"]["p50"]:.3f} ms.

## Upstream HTTP client (why aiohttp)

The same 64 parallel request loops against nginx, in one Python process (uvloop), per client library:

| client | req/s | relative to best |
| --- | --- | --- |
{client_rows}

The gateway's transports use aiohttp directly (`gateway/upstream/base.py`).

## Semantic cache precision

{precision}
"""


if __name__ == "__main__":
    raise SystemExit(main())
