"""Which HTTP client should the gateway use upstream? Same load, same upstream, four clients.

Each client sends `concurrency` parallel request loops to a fixed-answer upstream for `seconds`;
the figure is completed requests per second in one Python process (what a gateway worker pays).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp
import httpx

BODY = b'{"model":"bench","messages":[{"role":"user","content":"hi"}]}'
HEADERS = {"content-type": "application/json"}


async def _drive(send: Callable[[], Awaitable[None]], concurrency: int, seconds: float) -> float:
    done = 0
    stop = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await send()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return done / (time.perf_counter() - started)


async def aiohttp_client(url: str, concurrency: int, seconds: float) -> float:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:

        async def send() -> None:
            async with session.post(url, data=BODY, headers=HEADERS) as resp:
                await resp.read()

        return await _drive(send, concurrency, seconds)


async def httpx_client(url: str, concurrency: int, seconds: float) -> float:
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(limits=limits) as client:

        async def send() -> None:
            (await client.post(url, content=BODY, headers=HEADERS)).read()

        return await _drive(send, concurrency, seconds)


async def httpx_aiohttp_client(url: str, concurrency: int, seconds: float) -> float:
    from httpx_aiohttp import AiohttpTransport

    async with httpx.AsyncClient(transport=AiohttpTransport()) as client:

        async def send() -> None:
            (await client.post(url, content=BODY, headers=HEADERS)).read()

        return await _drive(send, concurrency, seconds)


async def gateway_client(url: str, concurrency: int, seconds: float) -> float:
    """The gateway's own client (`gateway/upstream/h1.py`), as its transports call it."""
    from urllib.parse import urlsplit

    from gateway.upstream.base import read_json
    from gateway.upstream.h1 import Pool

    parts = urlsplit(url)
    pool = Pool(f"{parts.scheme}://{parts.netloc}", 256)

    async def send() -> None:
        resp = await pool.request(
            parts.path, BODY, HEADERS, connect_s=5, total_s=60, first_byte_s=60, idle_s=60, stream=False
        )
        await read_json(resp, "bench")
        resp.release()

    try:
        return await _drive(send, concurrency, seconds)
    finally:
        await pool.close()


CLIENTS = {
    "gateway (h1)": gateway_client,
    "aiohttp": aiohttp_client,
    "httpx": httpx_client,
    "httpx + aiohttp transport": httpx_aiohttp_client,
}


def compare(url: str, concurrency: int = 64, seconds: float = 5.0) -> dict[str, float]:
    import uvloop

    results: dict[str, float] = {}
    for name, client in CLIENTS.items():
        results[name] = uvloop.run(client(url, concurrency, seconds))
    return results
