"""The floor: a bare aiohttp pass-through proxy, the fastest a Python proxy gets on this machine.

Streams (text/event-stream) are relayed read by read, so they are a floor for stream delays too.
`--processes N` runs N copies on the same port with SO_REUSEPORT, as `gateway serve --workers N` does: the
floor for multi-core scaling on a machine whose load generator and upstream share the cores.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys

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


def _supervise(args: argparse.Namespace) -> None:
    """N single-process floors on one port; SIGTERM stops them all."""
    one = [sys.executable, "-m", "bench.floor_proxy", "--upstream", args.upstream, "--port", str(args.port)]
    children = [subprocess.Popen([*one, "--reuse-port"]) for _ in range(args.processes)]

    def stop(*_: object) -> None:
        for child in children:
            child.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for child in children:
        child.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--processes", type=int, default=1, help="copies on the same port (SO_REUSEPORT)")
    parser.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.processes > 1:
        _supervise(args)
        sys.exit(0)
    import uvloop

    uvloop.install()
    web.run_app(
        make_app(args.upstream),
        host="127.0.0.1",
        port=args.port,
        print=None,
        access_log=None,
        reuse_port=args.reuse_port or None,
    )
