"""A finished upstream stream gives its connection back to the pool; an unfinished one drops it.

A real aiohttp server records which client connection (address:port) each stream came on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from gateway.policy import OpenAIBackend
from gateway.upstream.base import UpstreamCall
from gateway.upstream.openai import OpenAITransport

CHUNK = b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"x"}}]}\n\n'


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[Any]]]:
    peers: list[Any] = []

    async def stream(request: web.Request) -> web.StreamResponse:
        await request.read()
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for _ in range(3):
            await resp.write(CHUNK)
        await resp.write(b"data: [DONE]\n\n")
        await asyncio.sleep(0.01)  # the end of the body comes apart from [DONE], as from a busy server
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", stream)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/v1", peers
    await runner.cleanup()


def _call() -> UpstreamCall:
    return UpstreamCall("chat", {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})


async def test_finished_streams_share_one_connection(server: tuple[str, list[Any]]) -> None:
    url, peers = server
    transport = OpenAITransport(OpenAIBackend(name="up", type="openai", base_url=url))
    await transport.start()
    try:
        for _ in range(3):
            stream = await transport.open_stream(_call())
            assert [c["choices"][0]["delta"]["content"] async for c in stream] == ["x", "x", "x"]
            await stream.aclose()
    finally:
        await transport.close()
    assert len(peers) == 3 and len(set(peers)) == 1


async def test_an_unfinished_stream_drops_its_connection(server: tuple[str, list[Any]]) -> None:
    url, peers = server
    transport = OpenAITransport(OpenAIBackend(name="up", type="openai", base_url=url))
    await transport.start()
    try:
        for _ in range(2):
            stream = await transport.open_stream(_call())
            chunks = aiter(stream)
            await anext(chunks)  # the client went away after one chunk
            await stream.aclose()
    finally:
        await transport.close()
    assert len(peers) == 2 and len(set(peers)) == 2
