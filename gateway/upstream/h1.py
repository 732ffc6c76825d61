"""The HTTP/1.1 client the backends are called with: asyncio protocols around httptools' parser (llhttp).

The gateway called its backends through aiohttp's client until the streaming benchmark showed what it
cost: on this 2-core machine a raw asyncio relay adds 0.42 ms to a stream's time to first token where the
same relay calling upstream through aiohttp adds 0.74 ms; per call, the client's object model (request and
response objects, trace signals, a timer context per read) was about a third of a plain gateway's CPU per
request, and one process drives 31.7k calls/s through this client against aiohttp's 9.6k
(bench/optimisations.md, section 7). This client does what the transports need and nothing else:

- one `Pool` per backend (one origin): keep-alive connections, most recently used first, at most
  `max_connections` open; a caller beyond that waits for a free one (within connect_s, as aiohttp's did);
  idle connections older than `KEEPALIVE_S`, closed by the server or holding unasked-for bytes are dropped;
- TLS with the system's certificate store and SNI (`ssl.create_default_context`), IPv4/IPv6 and DNS through
  the event loop;
- bodies framed by Content-Length, chunked, or the connection's end; gzip/deflate answers decompressed
  (the request says `accept-encoding: gzip, deflate`, as aiohttp's did);
- timeouts as deadlines on the loop's timers, re-armed per read (no task or context manager per read);
- reading paused while more than `READ_HIGH_WATER` bytes wait unread, so a huge answer is not buffered
  whole faster than it is consumed;
- failures raised as `H1Error` subclasses or `TimeoutError`; `gateway.upstream.base.upstream_errors`
  turns them into the gateway's errors.

Not supported: HTTP/2, proxies from the environment (aiohttp's session ignored them too), redirects,
cookies, `Expect: 100-continue`. Request bodies are bytes, written in one go.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import weakref
import zlib
from collections import deque
from collections.abc import Callable, Mapping
from typing import cast
from urllib.parse import urlsplit

import httptools

KEEPALIVE_S = 30.0  # an idle connection older than this is closed rather than reused (aiohttp's default)
READ_HIGH_WATER = 1 << 20  # unread bytes past which the socket is not read until the caller catches up


class H1Error(Exception):
    """A call failed at the HTTP or socket level."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConnectFailed(H1Error):
    """No connection could be opened (refused, unknown host, TLS handshake or certificate failure)."""


class ConnectTimeout(TimeoutError):
    """No connection was free or could be opened within connect_s."""


class Disconnected(H1Error):
    """The server closed or reset the connection before the response was complete."""


class InvalidResponse(H1Error):
    """The bytes the server sent are not a valid HTTP/1.1 response."""


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Response:
    """One response: status and headers once `Pool.request` returns, then the body through `readany`.

    End it with `release()` (the connection goes back to the pool if the body was read to its end and the
    server keeps connections alive) or `close()` (the connection is closed: the server sees the caller go).
    """

    __slots__ = (
        "__weakref__",
        "_buffer",
        "_conn",
        "_decoder",
        "_done",
        "_eof",
        "_error",
        "_headers_in",
        "_keep_alive",
        "_loop",
        "_paused",
        "_raw_headers",
        "_size",
        "_skip",
        "_until_close",
        "_waiter",
        "content_length",
        "deadline",
        "headers",
        "idle_s",
        "status",
    )

    def __init__(self, conn: Connection, deadline: float, idle_s: float | None) -> None:
        self._done = False  # released or closed (first: the finaliser reads it)
        self.status = 0
        self.headers: dict[str, str] = {}  # names lower-cased; a repeated header's values joined with ", "
        self.content_length: int | None = None
        self.deadline = deadline  # loop time: nothing is waited for past it
        self.idle_s = idle_s  # each wait for body bytes ends within this many seconds (None: only the deadline)
        self._conn = conn
        self._loop = conn.loop
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._buffer: list[bytes] = []
        self._size = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._headers_in = False
        self._eof = False
        self._error: BaseException | None = None
        self._keep_alive = False
        self._until_close = False
        self._decoder: zlib._Decompress | None = None
        self._skip = False  # inside an interim (1xx) response

    # --- the caller's side ---

    async def _wait_headers(self, timeout_at: float) -> None:
        while not self._headers_in:
            if self._error is not None:
                raise self._error
            await self._wait(timeout_at)

    async def readany(self) -> bytes:
        """What has arrived of the body (waiting for something if nothing has); b"" at its end."""
        while not self._buffer:
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            timeout_at = self.deadline
            if self.idle_s is not None:
                timeout_at = min(timeout_at, self._loop.time() + self.idle_s)
            await self._wait(timeout_at)
        buffer = self._buffer
        data = buffer[0] if len(buffer) == 1 else b"".join(buffer)
        self._buffer = []
        self._size = 0
        if self._paused:
            self._paused = False
            self._conn.resume_reading()
        return data

    def at_eof(self) -> bool:
        return self._eof and not self._buffer

    async def _wait(self, timeout_at: float) -> None:
        loop = self._loop
        waiter = self._waiter = loop.create_future()
        timer = loop.call_at(timeout_at, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def release(self) -> None:
        """Done with it: the connection is reused when the whole body has arrived, closed otherwise."""
        if self._done:
            return
        self._done = True
        conn = self._conn
        conn.response = None
        if self._eof and self._keep_alive and self._error is None and not conn.broken:
            if self._paused:  # the end of the body arrived unread and stopped the reading: the next call reads on
                conn.resume_reading()
            conn.pool._put_back(conn)
        else:
            conn.close()

    def __del__(self) -> None:
        if not self._done:  # dropped without release() or close(): nobody will read the rest
            self._done = True
            self._conn.close()

    def close(self) -> None:
        """Done with it, and the connection is closed whatever state the body is in."""
        if self._done:
            return
        self._done = True
        self._conn.response = None
        self._conn.close()

    # --- the connection's side ---

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self._error is None and not self._eof:
            self._error = error
            self._wake()

    def _on_headers(self, status: int) -> None:
        if 100 <= status < 200:  # an interim response (100 Continue, 103 Early Hints): the real one follows
            self._skip = True
            self._raw_headers.clear()
            return
        headers: dict[str, str] = {}
        for raw_name, raw_value in self._raw_headers:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        self._raw_headers.clear()
        self.status = status
        self.headers = headers
        length = headers.get("content-length")
        self.content_length = int(length) if length is not None and length.isdigit() else None
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self._until_close = self.content_length is None and not chunked and status not in (204, 304)
        encoding = headers.get("content-encoding", "").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            self._decoder = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib framing, told by its header
        elif encoding not in ("", "identity"):
            self._error = InvalidResponse(f"unsupported content-encoding {encoding!r}")
        self._headers_in = True
        self._wake()

    def _on_body(self, data: bytes) -> None:
        if self._skip or self._error is not None:
            return
        if self._decoder is not None:
            try:
                data = self._decoder.decompress(data)
            except zlib.error:
                self._fail(InvalidResponse("the compressed body is corrupt"))
                return
            if not data:
                return
        self._buffer.append(data)
        self._size += len(data)
        if self._size > READ_HIGH_WATER and not self._paused:
            self._paused = True
            self._conn.pause_reading()
        self._wake()

    def _on_complete(self, keep_alive: bool) -> None:
        if self._skip:
            self._skip = False
            return
        if self._decoder is not None:
            try:
                rest = self._decoder.flush()
            except zlib.error:
                self._fail(InvalidResponse("the compressed body is corrupt"))
                return
            if not self._decoder.eof:
                self._fail(InvalidResponse("the compressed body ends before its end marker"))
                return
            if rest:
                self._buffer.append(rest)
        self._keep_alive = keep_alive
        self._eof = True
        self._wake()

    def _on_lost(self, exc: Exception | None) -> None:
        if self._eof:
            return
        if self._headers_in and self._until_close and exc is None:
            self._on_complete(keep_alive=False)  # the body was the rest of the connection
            return
        self._fail(Disconnected("the server closed the connection mid-response"))


def _nobody() -> None:
    return None


class Connection(asyncio.Protocol):
    """One keep-alive connection; its parser feeds the response in flight (`response`)."""

    def __init__(self, pool: Pool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self._response: Callable[[], Response | None] = _nobody  # a weak reference to the response in flight
        self.lost = False
        self.broken = False  # the server sent a response nobody asked for: never reused
        self.counted = False  # on the pool's count of open connections (set once `Pool._connect` returns it)
        self.idle_since = 0.0

    @property
    def response(self) -> Response | None:
        """The response in flight, held weakly: one its caller dropped unreleased is collected, and its
        finaliser closes the connection, so a forgotten response cannot hold a pool slot forever."""
        return self._response()

    @response.setter
    def response(self, response: Response | None) -> None:
        self._response = _nobody if response is None else weakref.ref(response)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # bytes nobody asked for: what comes next on this connection cannot be trusted
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            response._fail(InvalidResponse("the server switched protocols"))
            self.close()
        except httptools.HttpParserError as exc:
            response._fail(InvalidResponse(str(exc) or "unparsable response"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if (response := self.response) is not None:
            response._on_lost(exc)
        self.pool._lost(self)

    # httptools' callbacks
    def on_message_begin(self) -> None:
        response = self.response
        if response is not None and response._eof:  # a second response behind the one asked for
            self.broken = True
            raise InvalidResponse("the server sent a response that was not asked for")

    def on_header(self, name: bytes, value: bytes) -> None:
        if (response := self.response) is not None:
            response._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        if (response := self.response) is not None:
            response._on_headers(self.parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        if (response := self.response) is not None:
            response._on_body(body)

    def on_message_complete(self) -> None:
        if (response := self.response) is not None:
            response._on_complete(self.parser.should_keep_alive())

    # flow control of what is read
    def pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def reusable(self, now: float) -> bool:
        transport = self.transport
        return (
            not self.lost
            and not self.broken
            and transport is not None
            and not transport.is_closing()
            and now - self.idle_since < KEEPALIVE_S
        )


def _reason(exc: OSError) -> str:
    """Why a connection could not be opened, in words ("Connection refused", "certificate verify failed: ...")."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, socket.gaierror):
        return exc.strerror or str(exc)
    if exc.errno:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


def _check_header(name: str, value: str) -> None:
    if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
        raise H1Error(f"header {name!r} holds a line break or a colon in its name and cannot be sent")


class Pool:
    """Connections to one origin (scheme, host, port) and the requests sent over them."""

    def __init__(self, base_url: str, max_connections: int) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self.max_connections = max_connections
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if parts.scheme == "https" else None
        host = f"[{self.host}]" if ":" in self.host else self.host
        default_port = parts.port is None or parts.port == (443 if parts.scheme == "https" else 80)
        self._host_header = host if default_port else f"{host}:{self.port}"
        self._idle: list[Connection] = []  # most recently used last
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    async def request(
        self,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        connect_s: float,
        total_s: float,
        first_byte_s: float,
        idle_s: float,
        stream: bool,
    ) -> Response:
        """POST `body` to the pool's base URL + `path`; returns once the status and headers are in.

        Within connect_s a connection is free or opened; within first_byte_s (a stream) or total_s (a whole
        answer) the headers arrive. Afterwards a stream waits at most idle_s for each read, a whole answer
        idle_s for all of its body; total_s bounds everything.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + total_s
        head = self._head(path, headers, len(body))
        conn = await self._acquire(loop, min(deadline, started + connect_s))
        response = Response(conn, deadline, idle_s if stream else None)
        conn.response = response
        assert conn.transport is not None
        conn.transport.writelines((head, body))  # one vectored write, the body not copied into the head
        try:
            await response._wait_headers(min(deadline, loop.time() + first_byte_s) if stream else deadline)
        except BaseException:
            response.close()
            raise
        if not stream:
            response.deadline = min(deadline, loop.time() + idle_s)
        return response

    def _head(self, path: str, headers: Mapping[str, str], length: int) -> bytes:
        lines = [
            f"POST {self.prefix}{path} HTTP/1.1\r\nhost: {self._host_header}\r\ncontent-length: {length}\r\n"
            "accept-encoding: gzip, deflate\r\n"
        ]
        for name, value in headers.items():
            _check_header(name, value)
            lines.append(f"{name}: {value}\r\n")
        lines.append("\r\n")
        return "".join(lines).encode()

    async def _acquire(self, loop: asyncio.AbstractEventLoop, deadline: float) -> Connection:
        while True:
            if self._closed:
                raise ConnectFailed("the transport is closed")
            idle = self._idle
            now = loop.time()
            while idle:
                conn = idle.pop()
                if conn.reusable(now):
                    return conn
                conn.close()  # its connection_lost takes it off the count
            if self._open < self.max_connections:
                self._open += 1
                try:
                    return await self._connect(loop, deadline)
                except BaseException:
                    self._open -= 1
                    self._wake_one()
                    raise
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            timer = loop.call_at(deadline, _expire, waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self._wake_one()  # woken, then cancelled before it ran: the free connection goes to the next
                raise
            except TimeoutError:
                busy = self.max_connections
                raise ConnectTimeout(f"no connection free within the connect timeout ({busy} in use)") from None
            finally:
                timer.cancel()
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> Connection:
        try:
            async with asyncio.timeout_at(deadline):
                _, conn = await loop.create_connection(
                    lambda: Connection(self, loop),
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl is not None else None,
                )
        except TimeoutError:
            raise ConnectTimeout("the connection was not established within the connect timeout") from None
        except OSError as exc:
            raise ConnectFailed(_reason(exc)) from None
        conn.counted = True
        return conn

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _put_back(self, conn: Connection) -> None:
        if self._closed or conn.lost or conn.broken:
            conn.close()
            return
        conn.idle_since = conn.loop.time()
        self._idle.append(conn)
        self._wake_one()

    def _lost(self, conn: Connection) -> None:
        if conn in self._idle:
            self._idle.remove(conn)
        if conn.counted:
            conn.counted = False
            self._open -= 1
            self._wake_one()

    async def close(self) -> None:
        """Close the idle connections now; connections in use close when their response is released."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # woken to find the pool closed
        await asyncio.sleep(0)  # let the transports' connection_lost run
