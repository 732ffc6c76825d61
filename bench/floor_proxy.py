"""The floor: a bare aiohttp pass-through proxy, the fastest a Python proxy gets on this machine.

Streams (text/event-stream) are relayed read by read, so they are a floor for stream delays too.
"""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web


def make_app(upstream: str) -> web.Application:
    session: dict[str, aiohttp.ClientSession] = {}

    async def startup(app: web.Application) -> None:
        session["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))

    async def cleanup(app: web.Application) -> None:
        await session["s"].close()

    async def proxy(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with session["s"].post(
            upstream + request.path, data=body, headers={"content-type": "application/json"}
        ) as resp:
            if resp.content_type == "text/event-stream":  # relayed as it arrives, never buffered
                out = web.StreamResponse(status=resp.status, headers={"content-type": "text/event-stream"})
                await out.prepare(request)
                async for part in resp.content.iter_any():
                    await out.write(part)
                await out.write_eof()
                return out
            data = await resp.read()
            return web.Response(body=data, status=resp.status, content_type="application/json")

    app = web.Application()
    app.router.add_post("/{tail:.*}", proxy)
    app.on_startup.append(startup)
    app.on_cleanup.append(cleanup)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    import uvloop

    uvloop.install()
    web.run_app(make_app(args.upstream), host="127.0.0.1", port=args.port, print=None, access_log=None)
