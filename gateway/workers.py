"""`gateway serve --workers N`: N processes on one port (SO_REUSEPORT), each with its own policy load.

The kernel spreads incoming connections over the workers' sockets. The parent only supervises: it
forwards SIGTERM/SIGINT (graceful stop) and SIGHUP (each worker reloads the policy itself) and restarts
a worker that dies; one that dies within `CRASH_WINDOW_S` of starting (a bad port, a policy that no
longer loads) stops them all instead. Workers share nothing in memory: per-process caches, limits and
metrics stay per worker, so state that must hold across workers goes in Redis (`store: redis`,
`limits.store: redis`) and each worker's `/metrics` is its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import time
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from gateway import logs
from gateway.http_coalesce import CoalescingHttpToolsProtocol
from gateway.startup_signals import remember_reloads_while_starting

UVICORN_OPTIONS: dict[str, Any] = {
    "loop": "uvloop",
    # httptools with header size and header time limits (gateway/http_protocol.py), a response head and
    # body sent in one write (gateway/http_coalesce.py)
    "http": CoalescingHttpToolsProtocol,
    "access_log": False,  # the gateway writes its own access log, without secrets
    "timeout_keep_alive": 30,
    "timeout_graceful_shutdown": 30,
    "server_header": False,
    # The gateway never reads the client address, and X-Forwarded-* from a client must not change the
    # request's scope: no proxy-headers middleware around every request.
    "proxy_headers": False,
}
CRASH_WINDOW_S = 10.0
log = logging.getLogger("gateway")


def listen_socket(host: str, port: int) -> socket.socket:
    """A socket bound with SO_REUSEPORT, so every worker can bind the same port."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[
        0
    ]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    sock.set_inheritable(True)
    return sock


def _die_with_parent() -> None:
    """Linux: SIGTERM this worker if the supervisor dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _worker(config: str, host: str, port: int, level: str) -> None:
    os.setpgrp()  # a terminal's Ctrl-C reaches the supervisor only, which stops the workers once
    remember_reloads_while_starting()  # until the app's own handler is in place
    _die_with_parent()
    logs.configure(level)
    import uvicorn

    from gateway.loader import PolicyError, load_file
    from gateway.server import create_app, entry

    try:
        loaded = load_file(config)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(1) from None
    sock = listen_socket(host, port)
    app = entry(create_app(loaded, config))
    server = uvicorn.Server(uvicorn.Config(app, log_level=level.lower(), **UVICORN_OPTIONS))
    server.run(sockets=[sock])


def serve_workers(config: str, host: str, port: int, level: str, workers: int) -> int:
    context = multiprocessing.get_context("spawn")
    started: dict[int, float] = {}

    def start(slot: int) -> BaseProcess:
        proc = context.Process(target=_worker, args=(config, host, port, level), name=f"gateway-worker-{slot}")
        proc.start()
        started[slot] = time.monotonic()
        return proc

    procs = [start(slot) for slot in range(workers)]
    stopping = False

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if signum != signal.SIGHUP:
            stopping = True
        for proc in procs:
            if proc.pid is not None and proc.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM if signum == signal.SIGINT else signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    status = 0
    while any(proc.is_alive() for proc in procs):
        multiprocessing.connection.wait([proc.sentinel for proc in procs if proc.is_alive()], timeout=1.0)
        for slot, proc in enumerate(procs):
            if stopping or proc.is_alive():
                continue
            if time.monotonic() - started[slot] < CRASH_WINDOW_S:
                log.error("worker %d exited with %s right after starting; stopping", slot, proc.exitcode)
                status = 1
                forward(signal.SIGTERM, None)
                break
            log.error("worker %d exited with %s; starting another", slot, proc.exitcode)
            procs[slot] = start(slot)
    for proc in procs:
        proc.join()
    return status
