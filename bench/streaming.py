"""Streams: time to first token and per-chunk delay, direct vs the floor vs the gateway.

The upstream (`python -m bench.streaming --port P`) answers every chat request with an SSE stream of
`CHUNKS` chunks, `INTERVAL_S` apart; each chunk's content is the CLOCK_MONOTONIC time (ns) at which it
was written. The client reads the same clock (one machine, system-wide clock) when the chunk arrives, so
arrival - written is the chunk's delay through whatever sits in between; time to first token is from
sending the request to the first chunk's arrival.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import urllib.request
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

CHUNKS = 20
INTERVAL_S = 0.002


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + msgspec.json.encode(payload) + b"\n\n"


async def _stream(request: web.Request) -> web.StreamResponse:
    body = msgspec.json.decode(await request.read())
    request.app[PEERS].add(request.transport.get_extra_info("peername") if request.transport else None)
    resp = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
    await resp.prepare(request)
    base = {"id": "chatcmpl-stream", "object": "chat.completion.chunk", "created": 1, "model": body.get("model")}
    for i in range(CHUNKS):
        if i:
            await asyncio.sleep(INTERVAL_S)
        delta = {"role": "assistant"} if i == 0 else {}
        delta["content"] = str(time.monotonic_ns())  # the moment it is written
        await resp.write(_event({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}))
    await resp.write(_event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
    if (body.get("stream_options") or {}).get("include_usage"):
        usage = {"prompt_tokens": 5, "completion_tokens": CHUNKS, "total_tokens": 5 + CHUNKS}
        await resp.write(_event({**base, "choices": [], "usage": usage}))
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


PEERS = web.AppKey("peers", set[Any])


def make_app() -> web.Application:
    """GET / answers how many distinct connections (client address:port) have sent streams so far."""
    app = web.Application()
    app[PEERS] = set()
    app.router.add_post("/v1/chat/completions", _stream)

    async def connections(request: web.Request) -> web.Response:
        return web.json_response({"connections": len(app[PEERS])})

    app.router.add_get("/", connections)
    return app


def connections(base_url: str) -> int:
    with urllib.request.urlopen(base_url + "/", timeout=5) as resp:
        return int(json.loads(resp.read())["connections"])


async def _one(session: aiohttp.ClientSession, url: str, body: bytes) -> tuple[float, float, list[float]]:
    """(time to first token, to the first chunk's writing upstream, each chunk's delay), in ms."""
    sent = time.monotonic_ns()
    first: float | None = None
    written = 0.0
    delays: list[float] = []
    async with session.post(url, data=body, headers={"content-type": "application/json"}) as resp:
        resp.raise_for_status()
        async for line in resp.content:
            arrived = time.monotonic_ns()
            if not line.startswith(b"data: {"):
                continue
            chunk = msgspec.json.decode(line[6:])
            choices = chunk.get("choices") or []
            content = choices[0].get("delta", {}).get("content") if choices else None
            if content:
                if first is None:
                    first = (arrived - sent) / 1e6
                    written = (int(content) - sent) / 1e6
                delays.append((arrived - int(content)) / 1e6)
    if first is None or len(delays) != CHUNKS:
        raise RuntimeError(f"{url}: got {len(delays)} of {CHUNKS} chunks")
    return first, written, delays


async def _collect(base_url: str, model: str, requests: int) -> tuple[list[float], list[float], list[float]]:
    """(times to first token, to the first chunk's writing, every chunk's delay) of `requests` streams in ms,
    one after another on one connection, after a few that warm the connection pools."""
    url = base_url + "/v1/chat/completions"
    connector = aiohttp.TCPConnector(limit=1)
    ttfts: list[float] = []
    upstream: list[float] = []
    delays: list[float] = []
    async with aiohttp.ClientSession(connector=connector) as session:
        for i in range(requests + 5):
            body = msgspec.json.encode(
                {"model": model, "stream": True, "messages": [{"role": "user", "content": f"stream {i}"}]}
            )
            first, written, chunk_delays = await _one(session, url, body)
            if i >= 5:  # the first few warm the connection pools
                ttfts.append(first)
                upstream.append(written)
                delays.extend(chunk_delays)
    return ttfts, upstream, delays


def _summary(ttfts: list[float], upstream: list[float], delays: list[float]) -> dict[str, float]:
    return {
        "ttft_p50": statistics.median(ttfts),
        "ttft_p99": _pct(ttfts, 0.99),
        "upstream_p50": statistics.median(upstream),
        "chunk_p50": statistics.median(delays),
        "chunk_p99": _pct(delays, 0.99),
        "chunk_max": max(delays),
    }


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(base_url: str, model: str = "bench", requests: int = 60) -> dict[str, float]:
    """The better (lower TTFT p50) of two rounds of `requests // 2`, as for wrk at 1 connection."""
    import uvloop

    rounds = [_summary(*uvloop.run(_collect(base_url, model, max(5, requests // 2)))) for _ in range(2)]
    result = min(rounds, key=lambda r: r["ttft_p50"])
    print("stream", base_url, result, flush=True)
    return result


def compare(targets: dict[str, tuple[str, str]], rounds: int = 6, per_round: int = 20) -> dict[str, dict[str, float]]:
    """Each target (name: (base URL, model)) measured in `rounds` rounds of `per_round` streams, the targets
    taking turns, and summarised over all its streams. Taking turns spreads the drift of a shared machine over
    every target alike, so their differences are not the noise between two moments."""
    import uvloop

    samples: dict[str, tuple[list[float], list[float], list[float]]] = {name: ([], [], []) for name in targets}
    for _ in range(rounds):
        for name, (base_url, model) in targets.items():
            for kept, new in zip(samples[name], uvloop.run(_collect(base_url, model, per_round)), strict=True):
                kept.extend(new)
    results = {name: _summary(*kept) for name, kept in samples.items()}
    for name, result in results.items():
        print("stream", name, result, flush=True)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="The streaming fixed upstream.")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    import uvloop

    uvloop.install()
    web.run_app(make_app(), host="127.0.0.1", port=args.port, print=None, access_log=None)
