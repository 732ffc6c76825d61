"""uvicorn's httptools protocol with the two limits it lacks: header size and header time.

Measured on uvicorn 0.54 + httptools: a 1 MiB header or 20,000 headers were accepted, and a client that
sent half a request line and then nothing kept its connection open for ever (uvicorn's keep-alive timer
only runs between requests). `GuardedHttpToolsProtocol` counts the bytes received while the headers are
incomplete, and the request line and headers once parsed, and answers 431 past `max_header_bytes`; a timer
started when a connection opens or a request begins answers 408 and closes if the headers are not complete
within `header_timeout_s`. The body has its own limits (`limits.max_body_bytes`,
`limits.body_read_timeout_s`, in `gateway/intake.py`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.errors import error_body

MAX_HEADER_BYTES = 32 * 1024
HEADER_TIMEOUT_S = 10.0


class _HeadersTooLarge(Exception):
    pass


def _reply(status: int, reason: bytes, message: str, code: str) -> bytes:
    body = msgspec.json.encode(error_body(message, "invalid_request_error", None, code))
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
    return head % (status, reason, len(body)) + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    max_header_bytes = MAX_HEADER_BYTES
    header_timeout_s = HEADER_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._raw_header_bytes = 0  # bytes received while headers were incomplete (one unending header)
        self._awaiting_headers = True
        self._too_large = False
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._awaiting_headers and not self.transport.is_closing():
            # httptools buffers a header until it ends, so on_header alone cannot stop one that never does.
            self._raw_header_bytes += len(data)
            if self._raw_header_bytes > self.max_header_bytes:
                self._too_large = True
                self.send_400_response("")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._awaiting_headers = True
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        self._awaiting_headers = False
        self._raw_header_bytes = 0
        # Counted once here rather than in an on_header override (three Python calls per header on every
        # request); while headers are still arriving, data_received bounds what the parser can have buffered.
        size = len(self.url)
        for name, value in self.headers:
            size += len(name) + len(value) + 4
        if size > self.max_header_bytes:
            self._too_large = True
            raise _HeadersTooLarge  # httptools turns it into HttpParserCallbackError -> send_400_response
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if not self._too_large:
            super().send_400_response(msg)
            return
        message = f"The request line and headers exceed {self.max_header_bytes} bytes."
        self.transport.write(_reply(431, b"Request Header Fields Too Large", message, "headers_too_large"))
        self.transport.close()

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_timed_out)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being served: its headers did arrive
        message = f"The request headers did not arrive within {self.header_timeout_s:g} seconds."
        self.transport.write(_reply(408, b"Request Timeout", message, "request_timeout"))
        self.transport.close()
