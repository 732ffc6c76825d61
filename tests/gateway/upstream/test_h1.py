"""gateway.upstream.h1 against a real TCP server on 127.0.0.1 whose every byte (and when it goes) each test scripts.

`ScriptedServer` runs one script per accepted connection and records the connections (`peers`), what each
received (`requests`) and whether the client closed it (`client_gone`), so reuse is counted on the wire.
"""

from __future__ import annotations

import asyncio
import datetime
import gc
import gzip
import os
import socket
import ssl
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.upstream.h1 import (
    READ_HIGH_WATER,
    ConnectFailed,
    ConnectTimeout,
    Disconnected,
    H1Error,
    InvalidResponse,
    Pool,
    Response,
)


class Peer:
    """The server's side of one accepted connection."""

    def __init__(self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.index = index  # 0 for the server's first connection, 1 for its second...
        self.reader = reader
        self.writer = writer
        self.requests: list[bytes] = []  # each request's head and body, as received
        self.client_gone = asyncio.Event()  # set once the server reads the end of the stream (or a reset)

    async def read_request(self) -> bytes | None:
        """The next request (head and body), or None when the client closed the connection."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            self.client_gone.set()
            return None
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        request = head + await self.reader.readexactly(length)
        self.requests.append(request)
        return request

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()

    def abort(self) -> None:
        self.writer.transport.abort()


Script = Callable[[Peer], Awaitable[None]]


class ScriptedServer:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.peers: list[Peer] = []
        self.port = 0
        self.scheme = "http"
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    async def start(self, *, sock: socket.socket | None = None, tls: ssl.SSLContext | None = None) -> None:
        if sock is not None:
            self._server = await asyncio.start_server(self._serve, sock=sock, ssl=tls)
        else:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=tls)
        self.port = self._server.sockets[0].getsockname()[1]
        self.scheme = "https" if tls is not None else "http"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = Peer(len(self.peers), reader, writer)
        self.peers.append(peer)
        try:
            await self.script(peer)
            while await reader.read(65536):  # the script is done: wait for the client to go
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # cancelled: the test is over (not re-raised, or asyncio logs the server's task as failed)
        finally:
            peer.client_gone.set()
            writer.transport.abort()
            self._tasks.discard(task)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for peer in self.peers:
            peer.writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()


class Harness:
    """Servers and pools a test starts; all stopped and closed when it ends."""

    def __init__(self) -> None:
        self.servers: list[ScriptedServer] = []
        self.pools: list[Pool] = []

    async def serve(
        self, script: Script, *, sock: socket.socket | None = None, tls: ssl.SSLContext | None = None
    ) -> ScriptedServer:
        server = ScriptedServer(script)
        self.servers.append(server)
        await server.start(sock=sock, tls=tls)
        return server

    def pool(self, base_url: str, max_connections: int = 4) -> Pool:
        pool = Pool(base_url, max_connections)
        self.pools.append(pool)
        return pool

    async def aclose(self) -> None:
        for pool in self.pools:
            await pool.close()
        for server in self.servers:
            await server.stop()


@pytest.fixture
async def net() -> AsyncIterator[Harness]:
    harness = Harness()
    yield harness
    await harness.aclose()


def ok(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    """A response with a Content-Length."""
    head = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 {status}\r\ncontent-length: {len(body)}\r\n{head}\r\n".encode() + body


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"


def answering(*responses: bytes) -> Script:
    """A keep-alive server: on each connection, the n-th request gets responses[n] (the last one repeated)."""

    async def script(peer: Peer) -> None:
        n = 0
        while await peer.read_request() is not None:
            await peer.send(responses[min(n, len(responses) - 1)])
            n += 1

    return script


def answering_then_closing(data: bytes) -> Script:
    """A server that answers its first request with `data` and closes the connection (FIN) at once."""

    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(data)
        await peer.close()

    return script


async def request(
    pool: Pool,
    path: str = "/v1/chat",
    body: bytes = b"{}",
    headers: dict[str, str] | None = None,
    *,
    stream: bool = True,
    connect_s: float = 1.0,
    total_s: float = 3.0,
    first_byte_s: float = 1.0,
    idle_s: float = 1.0,
) -> Response:
    return await pool.request(
        path,
        body,
        headers or {},
        connect_s=connect_s,
        total_s=total_s,
        first_byte_s=first_byte_s,
        idle_s=idle_s,
        stream=stream,
    )


async def read_all(resp: Response) -> bytes:
    parts: list[bytes] = []
    while part := await resp.readany():
        parts.append(part)
    return b"".join(parts)


async def fetch(pool: Pool, **kwargs: Any) -> tuple[int, bytes]:
    """A whole call: status and body, the response released."""
    resp = await request(pool, **kwargs)
    try:
        return resp.status, await read_all(resp)
    finally:
        resp.release()


async def gone(peer: Peer) -> bool:
    """Whether the client closes this connection within a second."""
    try:
        await asyncio.wait_for(peer.client_gone.wait(), 1.0)
    except TimeoutError:
        return False
    return True


def elapsed_since(start: float) -> float:
    return asyncio.get_running_loop().time() - start


# --- bodies ---


async def test_content_length_body(net: Harness) -> None:
    server = await net.serve(answering(ok(b'{"a": 1}', "content-type: application/json", "X-Twice: a", "x-twice: b")))
    resp = await request(net.pool(server.url))
    assert resp.status == 200
    assert resp.content_length == 8
    assert resp.headers["content-type"] == "application/json"
    assert resp.headers["x-twice"] == "a, b"
    assert await read_all(resp) == b'{"a": 1}'
    assert resp.at_eof()
    assert await resp.readany() == b""
    resp.release()


async def test_chunked_body_is_read_as_the_chunks_arrive(net: Harness) -> None:
    first_read = asyncio.Event()

    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(CHUNKED_HEAD + chunk(b"hello"))
        await first_read.wait()  # the second chunk is sent only once the client has read the first
        await peer.send(chunk(b" wide"))
        await asyncio.sleep(0.02)
        await peer.send(chunk(b" world") + LAST_CHUNK)

    server = await net.serve(script)
    resp = await request(net.pool(server.url))
    assert resp.status == 200 and resp.content_length is None
    assert await resp.readany() == b"hello"
    assert not resp.at_eof()
    first_read.set()
    assert await resp.readany() == b" wide"
    assert await read_all(resp) == b" world"
    assert resp.at_eof()
    resp.release()


async def test_body_delimited_by_the_connection_end(net: Harness) -> None:
    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\npart one, ")
        await asyncio.sleep(0.02)
        await peer.send(b"part two")
        await peer.close()

    server = await net.serve(script)
    pool = net.pool(server.url)
    resp = await request(pool)
    assert resp.status == 200 and resp.content_length is None
    assert await read_all(resp) == b"part one, part two"
    assert resp.at_eof()
    resp.release()
    assert await fetch(pool) == (200, b"part one, part two")  # on a new connection: the first ended with its body
    assert len(server.peers) == 2


async def test_204_has_no_body_and_keeps_the_connection(net: Harness) -> None:
    server = await net.serve(answering(b"HTTP/1.1 204 No Content\r\n\r\n", ok(b"next")))
    pool = net.pool(server.url)
    resp = await request(pool)
    assert resp.status == 204
    assert await asyncio.wait_for(resp.readany(), 0.5) == b""
    assert resp.at_eof()
    resp.release()
    assert await fetch(pool) == (200, b"next")
    assert len(server.peers) == 1


# --- keep-alive ---


async def test_released_responses_reuse_one_connection(net: Harness) -> None:
    server = await net.serve(answering(ok(b"one"), CHUNKED_HEAD + chunk(b"two") + LAST_CHUNK, ok(b"three")))
    pool = net.pool(server.url)
    assert await fetch(pool) == (200, b"one")
    assert await fetch(pool) == (200, b"two")
    assert await fetch(pool) == (200, b"three")
    assert len(server.peers) == 1
    assert len(server.peers[0].requests) == 3


async def test_connection_close_response_is_not_reused(net: Harness) -> None:
    server = await net.serve(answering(ok(b"bye", "connection: close")))
    pool = net.pool(server.url)
    assert await fetch(pool) == (200, b"bye")
    assert await gone(server.peers[0])
    assert await fetch(pool) == (200, b"bye")
    assert len(server.peers) == 2


async def test_response_released_before_its_body_closes_the_connection(net: Harness) -> None:
    async def script(peer: Peer) -> None:
        await answering(CHUNKED_HEAD + chunk(b"some") if peer.index == 0 else ok(b"fine"))(peer)

    server = await net.serve(script)
    pool = net.pool(server.url)
    resp = await request(pool)
    assert await resp.readany() == b"some"  # the body has not ended
    resp.release()
    assert await gone(server.peers[0])
    assert await fetch(pool) == (200, b"fine")
    assert len(server.peers) == 2


async def test_closed_response_closes_the_connection(net: Harness) -> None:
    server = await net.serve(answering(ok(b"whole")))
    pool = net.pool(server.url)
    resp = await request(pool)
    assert await read_all(resp) == b"whole"
    resp.close()
    resp.release()  # after close: nothing more happens
    assert await gone(server.peers[0])
    assert await fetch(pool) == (200, b"whole")
    assert len(server.peers) == 2


async def test_a_response_dropped_unreleased_frees_its_connection(net: Harness) -> None:
    # A caller that loses its response without release() or close() (a code path that forgot it) must not
    # hold a pool slot forever: once the response is collected, its connection closes and the slot is free.
    async def script(peer: Peer) -> None:
        await answering(CHUNKED_HEAD + chunk(b"unfinished") if peer.index == 0 else ok(b"next"))(peer)

    server = await net.serve(script)
    pool = net.pool(server.url, max_connections=1)
    resp = await request(pool)
    assert await resp.readany() == b"unfinished"
    del resp
    gc.collect()
    assert await gone(server.peers[0])
    assert await fetch(pool, connect_s=0.5) == (200, b"next")
    assert len(server.peers) == 2


# --- the pool's limit ---


async def test_a_caller_beyond_the_limit_waits_for_a_released_connection(net: Harness) -> None:
    server = await net.serve(answering(ok(b"first"), ok(b"second")))
    pool = net.pool(server.url, max_connections=1)
    held = await request(pool)
    waiting = asyncio.create_task(fetch(pool))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    assert len(server.peers) == 1 and len(server.peers[0].requests) == 1
    assert await read_all(held) == b"first"
    held.release()
    assert await asyncio.wait_for(waiting, 1.0) == (200, b"second")
    assert len(server.peers) == 1


async def test_a_caller_beyond_the_limit_gets_connect_timeout(net: Harness) -> None:
    server = await net.serve(answering(ok(b"held")))
    pool = net.pool(server.url, max_connections=1)
    held = await request(pool)
    start = asyncio.get_running_loop().time()
    with pytest.raises(ConnectTimeout):
        await request(pool, connect_s=0.2)
    assert 0.15 <= elapsed_since(start) < 0.8
    assert len(server.peers) == 1
    held.close()


async def test_a_waiter_cancelled_as_it_is_woken_passes_the_connection_on(net: Harness) -> None:
    # A caller waiting for a free connection is cancelled (its client went away) just as a release wakes it.
    # The connection it was woken for must go to the next waiter, not sit idle until that one times out.
    server = await net.serve(answering(ok(b"x")))
    pool = net.pool(server.url, max_connections=1)
    held = await request(pool)
    assert await read_all(held) == b"x"
    first = asyncio.create_task(fetch(pool))
    second = asyncio.create_task(fetch(pool, connect_s=0.5))
    await asyncio.sleep(0.05)
    assert not first.done() and not second.done()
    held.release()  # wakes `first`...
    first.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await second == (200, b"x")


async def test_connect_refused_then_the_count_recovers(net: Harness) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # bound, not listening: connections to it are refused
    port = sock.getsockname()[1]
    pool = net.pool(f"http://127.0.0.1:{port}", max_connections=1)
    for _ in range(3):
        with pytest.raises(ConnectFailed) as caught:
            await request(pool, connect_s=0.5)
        assert caught.value.message == "Connection refused"
    sock.listen()
    server = await net.serve(answering(ok(b"up")), sock=sock)
    assert await fetch(pool, connect_s=0.5) == (200, b"up")
    assert len(server.peers) == 1


# --- timeouts ---


async def never_answer(peer: Peer) -> None:
    await peer.read_request()
    await peer.read_request()  # None once the client closes the connection


async def test_stream_headers_later_than_first_byte_s(net: Harness) -> None:
    server = await net.serve(never_answer)
    start = asyncio.get_running_loop().time()
    with pytest.raises(TimeoutError) as caught:
        await request(net.pool(server.url), first_byte_s=0.2, total_s=3.0)
    assert not isinstance(caught.value, ConnectTimeout)
    assert 0.15 <= elapsed_since(start) < 0.8
    assert await gone(server.peers[0])  # the abandoned connection is closed


async def test_stream_silent_longer_than_idle_s(net: Harness) -> None:
    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(CHUNKED_HEAD + chunk(b"data: 1\n\n"))
        await peer.read_request()

    server = await net.serve(script)
    resp = await request(net.pool(server.url), idle_s=0.2)
    assert await resp.readany() == b"data: 1\n\n"
    start = asyncio.get_running_loop().time()
    with pytest.raises(TimeoutError):
        await resp.readany()
    assert 0.15 <= elapsed_since(start) < 0.8
    resp.close()


def trickle(pieces: int, gap_s: float) -> Script:
    """A chunked body sent a piece at a time, gap_s apart."""

    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(CHUNKED_HEAD)
        for i in range(pieces):
            await asyncio.sleep(gap_s)
            await peer.send(chunk(b"%d;" % i))
        await peer.send(LAST_CHUNK)

    return script


async def test_stream_idle_s_bounds_each_read_not_the_whole_body(net: Harness) -> None:
    server = await net.serve(trickle(6, 0.05))
    resp = await request(net.pool(server.url), idle_s=0.2)
    assert await read_all(resp) == b"0;1;2;3;4;5;"  # 0.3 s in all, no gap as long as idle_s
    resp.release()


async def test_total_s_bounds_a_stream_body(net: Harness) -> None:
    server = await net.serve(trickle(40, 0.05))
    start = asyncio.get_running_loop().time()
    resp = await request(net.pool(server.url), idle_s=1.0, total_s=0.3)
    with pytest.raises(TimeoutError):
        await read_all(resp)
    assert 0.25 <= elapsed_since(start) < 0.9
    resp.close()


async def test_whole_answer_headers_are_bounded_by_total_s_not_first_byte_s(net: Harness) -> None:
    async def late(peer: Peer) -> None:
        await peer.read_request()
        await asyncio.sleep(0.15)
        await peer.send(ok(b"late"))

    server = await net.serve(late)
    pool = net.pool(server.url)
    assert await fetch(pool, stream=False, first_byte_s=0.05, total_s=2.0) == (200, b"late")

    silent = await net.serve(never_answer)
    start = asyncio.get_running_loop().time()
    with pytest.raises(TimeoutError) as caught:
        await request(net.pool(silent.url), stream=False, first_byte_s=2.0, total_s=0.25)
    assert not isinstance(caught.value, ConnectTimeout)
    assert 0.2 <= elapsed_since(start) < 0.9


async def test_whole_answer_body_slower_than_idle_s_in_all(net: Harness) -> None:
    server = await net.serve(trickle(8, 0.05))  # no gap over 0.05 s, but 0.4 s in all
    resp = await request(net.pool(server.url), stream=False, idle_s=0.2)
    start = asyncio.get_running_loop().time()
    with pytest.raises(TimeoutError):
        await read_all(resp)
    assert 0.1 <= elapsed_since(start) < 0.7
    resp.close()


# --- failures ---


async def test_server_closes_before_headers(net: Harness) -> None:
    server = await net.serve(answering_then_closing(b"HTTP/1.1 200 OK\r\ncontent-"))
    with pytest.raises(Disconnected):
        await request(net.pool(server.url))


async def test_server_resets_mid_chunked_body(net: Harness) -> None:
    first_read = asyncio.Event()

    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(CHUNKED_HEAD + chunk(b"partial"))
        await first_read.wait()
        peer.abort()  # RST

    server = await net.serve(script)
    resp = await request(net.pool(server.url))
    assert await resp.readany() == b"partial"
    first_read.set()
    with pytest.raises(Disconnected):
        await resp.readany()
    resp.release()


async def test_server_closes_mid_chunked_body(net: Harness) -> None:
    server = await net.serve(answering_then_closing(CHUNKED_HEAD + chunk(b"one") + chunk(b"two")))  # no last chunk
    resp = await request(net.pool(server.url))
    received = b""
    with pytest.raises(Disconnected):
        while True:
            received += await resp.readany()
    assert received == b"onetwo"
    resp.release()


async def test_content_length_body_cut_short(net: Harness) -> None:
    server = await net.serve(answering_then_closing(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this"))
    resp = await request(net.pool(server.url))
    assert resp.content_length == 100
    with pytest.raises(Disconnected):
        await read_all(resp)
    resp.release()


async def test_garbage_instead_of_a_status_line(net: Harness) -> None:
    server = await net.serve(answering(b"SSH-2.0-OpenSSH_9.6\r\n\r\n"))
    with pytest.raises(InvalidResponse):
        await request(net.pool(server.url))
    assert await gone(server.peers[0])


# --- content encodings ---

TEXT = b'{"choices": [{"text": "' + b"compressible " * 500 + b'"}]}'


async def test_gzip_body_is_decompressed(net: Harness) -> None:
    packed = gzip.compress(TEXT)
    pieces = [packed[i : i + 300] for i in range(0, len(packed), 300)]
    server = await net.serve(
        answering(
            ok(packed, "content-encoding: gzip"),
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-encoding: gzip\r\n\r\n"
            + b"".join(chunk(p) for p in pieces)
            + LAST_CHUNK,
            ok(zlib.compress(TEXT), "content-encoding: deflate"),
        )
    )
    pool = net.pool(server.url)
    assert await fetch(pool) == (200, TEXT)
    assert await fetch(pool) == (200, TEXT)
    assert await fetch(pool) == (200, TEXT)
    assert len(server.peers) == 1
    assert b"accept-encoding: gzip" in server.peers[0].requests[0].lower()


async def test_unsupported_content_encoding(net: Harness) -> None:
    server = await net.serve(answering(ok(b"\x8b\x02\x80hi\x03", "content-encoding: br")))
    with pytest.raises(InvalidResponse):
        await fetch(net.pool(server.url))


async def test_corrupt_gzip(net: Harness) -> None:
    server = await net.serve(answering(ok(b"\x1f\x8b\x08\x00" + b"\xff" * 64, "content-encoding: gzip")))
    with pytest.raises(InvalidResponse):
        await fetch(net.pool(server.url))


async def test_truncated_gzip(net: Harness) -> None:
    # Every byte the server promised arrived, but the gzip stream inside them stops halfway: the body is
    # not whole and must not pass for a shorter answer.
    packed = gzip.compress(os.urandom(4000))
    server = await net.serve(answering(ok(packed[: len(packed) // 2], "content-encoding: gzip")))
    with pytest.raises(InvalidResponse):
        await fetch(net.pool(server.url))


# --- interim responses ---


async def test_interim_responses_are_skipped(net: Harness) -> None:
    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        await asyncio.sleep(0.02)
        await peer.send(b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n")
        await asyncio.sleep(0.02)
        await peer.send(ok(b"real", "x-final: yes"))
        await answering(b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"again"))(peer)

    server = await net.serve(script)
    pool = net.pool(server.url)
    resp = await request(pool)
    assert resp.status == 200
    assert resp.headers.get("x-final") == "yes" and "link" not in resp.headers
    assert await read_all(resp) == b"real"
    resp.release()
    assert await fetch(pool) == (200, b"again")
    assert len(server.peers) == 1


# --- what is sent ---


async def test_request_line_and_headers(net: Harness) -> None:
    server = await net.serve(answering(ok(b"")))
    pool = net.pool(server.url + "/v1/")
    body = b'{"model": "m"}'
    resp = await request(pool, "/chat/completions", body, {"Authorization": "Bearer k", "x-trace": "t1"})
    resp.release()
    head, _, received_body = server.peers[0].requests[0].partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v1/chat/completions HTTP/1.1"
    fields = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    assert fields["host"] == f"127.0.0.1:{server.port}"
    assert fields["content-length"] == str(len(body))
    assert fields["authorization"] == "Bearer k"
    assert fields["x-trace"] == "t1"
    assert received_body == body


async def test_large_request_body_arrives_whole(net: Harness) -> None:
    server = await net.serve(answering(ok(b"got it")))
    body = os.urandom(200_000)
    assert await fetch(net.pool(server.url), body=body) == (200, b"got it")
    assert server.peers[0].requests[0].endswith(b"\r\n\r\n" + body)


@pytest.mark.parametrize(
    "headers",
    [{"x-evil": "a\r\nx-injected: 1"}, {"x-evil": "a\nb"}, {"x-evil\r\nx-injected": "1"}, {"x:y": "1"}],
)
async def test_header_injection_is_refused_and_nothing_sent(net: Harness, headers: dict[str, str]) -> None:
    server = await net.serve(answering(ok(b"ok")))
    pool = net.pool(server.url)
    assert await fetch(pool) == (200, b"ok")
    with pytest.raises(H1Error):
        await request(pool, headers=headers)
    assert await fetch(pool) == (200, b"ok")  # the connection was clean: nothing of the refused request went
    assert len(server.peers) == 1
    requests = server.peers[0].requests
    assert len(requests) == 2
    assert all(b"injected" not in r and b"x-evil" not in r for r in requests)


# --- idle connections ---


async def test_idle_connection_closed_by_the_server_is_not_reused(net: Harness) -> None:
    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(ok(b"once"))
        if peer.index == 0:
            await peer.close()  # keep-alive promised, then closed while idle
        else:
            await answering(ok(b"once"))(peer)

    server = await net.serve(script)
    pool = net.pool(server.url, max_connections=1)
    assert await fetch(pool) == (200, b"once")
    await asyncio.sleep(0.05)  # the client's loop sees the end of the idle connection
    assert await fetch(pool) == (200, b"once")
    assert len(server.peers) == 2


async def test_unsolicited_bytes_on_an_idle_connection_drop_it(net: Harness) -> None:
    released = asyncio.Event()

    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(ok(b"asked"))
        if peer.index == 0:
            await released.wait()
            await peer.send(ok(b"nobody asked"))
        await answering(ok(b"asked"))(peer)

    server = await net.serve(script)
    pool = net.pool(server.url)
    assert await fetch(pool) == (200, b"asked")
    released.set()
    assert await gone(server.peers[0])
    assert await fetch(pool) == (200, b"asked")
    assert len(server.peers) == 2


async def test_unsolicited_response_right_behind_the_answer_is_not_taken_as_body(net: Harness) -> None:
    # The same bytes as above, only sooner: in the same write as the answer, before the caller released it.
    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(ok(b"asked") + ok(b"EVIL"))
        await answering(ok(b"asked"))(peer)

    server = await net.serve(script)
    pool = net.pool(server.url)
    assert await fetch(pool) == (200, b"asked")
    assert await fetch(pool) == (200, b"asked")
    assert len(server.peers) == 2


# --- backpressure ---


async def test_reading_pauses_while_the_caller_does_not_read(net: Harness) -> None:
    size = 32 * READ_HIGH_WATER
    body = os.urandom(size)
    sent = asyncio.Event()
    buffered: list[int] = []

    async def script(peer: Peer) -> None:
        await peer.read_request()
        peer.writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size + body)
        await asyncio.sleep(0.3)  # plenty for 32 MiB over loopback when nobody holds it back
        buffered.append(peer.writer.transport.get_write_buffer_size())
        sent.set()
        await peer.writer.drain()

    server = await net.serve(script)
    resp = await request(net.pool(server.url))
    await sent.wait()
    # Besides the client's READ_HIGH_WATER, only the kernel's socket buffers (tens of MiB at most) hold bytes.
    assert buffered[0] > size // 3
    assert await read_all(resp) == body
    resp.release()


async def test_a_connection_paused_at_its_body_end_resumes_when_reused(net: Harness) -> None:
    # The body's last bytes take the unread total past READ_HIGH_WATER: reading pauses and the body is complete.
    # Released, the connection goes back to the pool; its next response must still be read.
    rest_sent = asyncio.Event()

    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % (READ_HIGH_WATER + 10))
        await peer.send(b"a" * READ_HIGH_WATER)
        await asyncio.sleep(0.1)
        await peer.send(b"b" * 10)
        await asyncio.sleep(0.1)
        rest_sent.set()
        await answering(ok(b"next"))(peer)

    server = await net.serve(script)
    pool = net.pool(server.url)
    resp = await request(pool)
    await rest_sent.wait()
    resp.release()  # the caller wanted only the headers (an error status, say)
    assert await fetch(pool, first_byte_s=0.5) == (200, b"next")


# --- TLS ---


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture
async def tls_server(net: Harness, tmp_path: Path) -> tuple[ScriptedServer, Path]:
    cert_path, key_path = self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return await net.serve(answering(ok(b"secret")), tls=context), cert_path


async def test_untrusted_certificate_is_refused(net: Harness, tls_server: tuple[ScriptedServer, Path]) -> None:
    server, _ = tls_server
    with pytest.raises(ConnectFailed) as caught:
        await request(net.pool(f"https://localhost:{server.port}"))
    assert "certificate verify failed" in caught.value.message.lower()
    assert server.peers == []  # no request was ever sent


async def test_trusted_certificate_works_and_its_name_is_checked(
    net: Harness, tls_server: tuple[ScriptedServer, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The control for the test above: the same server is reached once its certificate is trusted
    # (the system store is read from SSL_CERT_FILE), but not under a name the certificate does not hold.
    server, cert_path = tls_server
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_path))
    assert await fetch(net.pool(f"https://localhost:{server.port}")) == (200, b"secret")
    with pytest.raises(ConnectFailed) as caught:
        await request(net.pool(f"https://127.0.0.1:{server.port}"))
    assert "certificate verify failed" in caught.value.message.lower()
    assert len(server.peers) == 1


# --- closing the pool ---


async def test_closing_the_pool_closes_idle_connections_and_refuses_requests(net: Harness) -> None:
    server = await net.serve(answering(ok(b"idle")))
    pool = net.pool(server.url)
    assert await fetch(pool) == (200, b"idle")
    await pool.close()
    assert await gone(server.peers[0])
    with pytest.raises(H1Error):
        await request(pool)
    assert len(server.peers) == 1


async def test_a_connection_in_use_when_the_pool_closes_is_closed_on_release(net: Harness) -> None:
    server = await net.serve(answering(ok(b"busy")))
    pool = net.pool(server.url)
    busy = await request(pool)
    await pool.close()
    assert await read_all(busy) == b"busy"
    busy.release()  # its whole body was read, yet it is not kept
    assert await gone(server.peers[0])


async def test_closing_the_pool_wakes_its_waiters(net: Harness) -> None:
    server = await net.serve(answering(ok(b"x")))
    pool = net.pool(server.url, max_connections=1)
    held = await request(pool)
    waiting = asyncio.create_task(request(pool, connect_s=2.0))
    await asyncio.sleep(0.05)
    await pool.close()
    with pytest.raises(ConnectFailed):
        await asyncio.wait_for(waiting, 0.5)
    held.close()
