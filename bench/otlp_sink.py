"""A tiny OTLP/HTTP trace sink: accepts POST /v1/traces (protobuf or JSON) and counts what arrived.

Benchmarks point the gateway's `telemetry.otlp_endpoint` here so span exports really happen (over
HTTP, on the same machine) while load runs. GET /stats answers {"requests": n, "bytes": n}.
"""

from __future__ import annotations

import argparse
import json
import urllib.request

from aiohttp import web


def make_app() -> web.Application:
    stats = {"requests": 0, "bytes": 0}

    async def traces(request: web.Request) -> web.Response:
        body = await request.read()
        stats["requests"] += 1
        stats["bytes"] += len(body)
        # An empty ExportTraceServiceResponse: zero bytes in protobuf, {} in JSON.
        if request.content_type == "application/json":
            return web.json_response({})
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def metrics(request: web.Request) -> web.Response:
        await request.read()  # the gateway's OTLP metrics, every metrics_interval_s: accepted, not counted
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def report(request: web.Request) -> web.Response:
        return web.json_response(stats)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", traces)
    app.router.add_post("/v1/metrics", metrics)
    app.router.add_get("/stats", report)
    app.router.add_get("/", report)
    return app


def stats(url: str) -> dict[str, int]:
    with urllib.request.urlopen(url + "/stats", timeout=5) as resp:
        return dict(json.loads(resp.read()))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(make_app(), host="127.0.0.1", port=args.port, print=None, access_log=None)
