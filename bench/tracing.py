"""The CPU cost of tracing one request, without the network: every span a plain proxied request
makes (server span, one plugin step, route, client span with GenAI attributes, W3C inject), with
sampling on and the real bounded export queue feeding the export process's OTLP/HTTP exporter, whose
collector is a local sink. Measured as microseconds per request (this thread's CPU: the export
process is not counted) against the same loop with tracing off.

    python -m bench.tracing [--requests 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from typing import Any

from aiohttp import web

from gateway.plugin import Caller, RequestContext
from gateway.policy import ModelRoute, Target
from gateway.policy import Telemetry as TelemetryConfig
from gateway.telemetry import Telemetry, genai
from gateway.telemetry.request import passthrough_headers

HEADERS = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "content-type": "application/json"}
BODY = {"model": "bench", "messages": [{"role": "user", "content": "hello"}], "temperature": 0, "max_tokens": 16}
ANSWER = {"id": "x", "model": "bench", "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]}


def _sink() -> tuple[str, threading.Thread]:
    ready = threading.Event()
    port: list[int] = []

    def serve() -> None:
        async def accept(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(body=b"", content_type="application/x-protobuf")

        async def start() -> None:
            app = web.Application()
            app.router.add_post("/v1/traces", accept)
            app.router.add_post("/v1/metrics", accept)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
            ready.set()
            await asyncio.Event().wait()

        asyncio.run(start())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait(10)
    return f"http://127.0.0.1:{port[0]}", thread


def one_request(telemetry: Telemetry, route: ModelRoute) -> None:
    trace = telemetry.start_request("POST", "/v1/chat/completions", HEADERS) if telemetry.enabled else None
    ctx = RequestContext("req", "chat", dict(BODY), HEADERS, Caller("team", True), route, False)
    attributes = genai.request_attributes("chat", "openai", "http://127.0.0.1:8000/v1", BODY)
    if trace is None:
        passthrough_headers(HEADERS)
        return
    trace.bind(ctx)
    with trace.step("exact_cache", "request"):
        pass
    trace.start_route("bench", "weighted")
    trace.start_client(genai.span_name("chat", "bench"), attributes, "nginx")
    trace.end_route("nginx", 1)
    trace.end_client(genai.response_attributes(ANSWER, {"prompt_tokens": 3, "completion_tokens": 2}, ["stop"]))
    trace.finish(200, {"gateway.backend": "nginx"})


def per_request_us(telemetry: Telemetry, route: ModelRoute, requests: int) -> float:
    rounds: list[float] = []
    for _ in range(5):
        started = time.thread_time()  # CPU time of this thread: what the request path pays, even on a busy machine
        for _ in range(requests // 5):
            one_request(telemetry, route)
        rounds.append((time.thread_time() - started) / (requests // 5) * 1e6)
    return statistics.median(rounds)


def measure(requests: int = 5000) -> dict[str, Any]:
    route = ModelRoute(name="bench", targets=[Target(backend="nginx", model="bench")])
    sink, _ = _sink()
    off = Telemetry(TelemetryConfig())
    on = Telemetry(TelemetryConfig(otlp_endpoint=sink, sample_ratio=1.0))
    per_request_us(on, route, 500)  # warm-up
    baseline = per_request_us(off, route, requests)
    traced = per_request_us(on, route, requests)
    on.flush(10)
    on.shutdown()
    return {"off_us": baseline, "on_us": traced, "added_us": traced - baseline}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5000)
    result = measure(parser.parse_args().requests)
    print(
        f"tracing off: {result['off_us']:.1f} us/request; on (sampled, exported): {result['on_us']:.1f} us/request; "
        f"added {result['added_us'] / 1000:.3f} ms per request (target < 0.2 ms)"
    )


if __name__ == "__main__":
    main()
