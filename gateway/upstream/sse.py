"""Incremental Server-Sent Events decoding and encoding (the subset LLM APIs use)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

_encode = msgspec.json.encode


@dataclass(frozen=True, slots=True)
class SSEEvent:
    data: str
    event: str = "message"


class SSEDecodeError(ValueError):
    pass


class SSEDecoder:
    """Feed raw bytes as they arrive; get back every event completed by them.

    Lines may end in \\n, \\r\\n or \\r; an event ends at a blank line; `:` lines are comments.
    `max_event_bytes` bounds what one event may buffer, so a broken upstream cannot exhaust memory.
    """

    __slots__ = ("_buffer", "_data", "_event", "_max", "_size", "_skip_lf")

    def __init__(self, max_event_bytes: int = 16 * 1024 * 1024) -> None:
        self._buffer = b""
        self._data: list[str] = []
        self._event = ""
        self._max = max_event_bytes
        self._size = 0
        self._skip_lf = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if not chunk:
            return []
        if self._skip_lf and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the \n of a \r\n split across two reads
        self._skip_lf = chunk.endswith(b"\r")
        buffer = self._buffer + chunk if self._buffer else chunk
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *lines, rest = buffer.split(b"\n")
        self._buffer = rest
        if len(rest) + self._size > self._max:
            raise SSEDecodeError("an upstream stream event exceeded the size limit")
        events: list[SSEEvent] = []
        for raw in lines:
            event = self._line(raw)
            if event is not None:
                events.append(event)
        return events

    def _line(self, raw: bytes) -> SSEEvent | None:
        if not raw:
            if not self._data:
                self._event = ""  # an event with no data is not dispatched (per the SSE spec)
                return None
            event = SSEEvent("\n".join(self._data), self._event or "message")
            self._data, self._event, self._size = [], "", 0
            return event
        if raw.startswith(b":"):
            return None
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SSEDecodeError("an upstream stream sent invalid UTF-8") from None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
            self._size += len(raw)
            if self._size > self._max:
                raise SSEDecodeError("an upstream stream event exceeded the size limit")
        elif name == "event":
            self._event = value
        return None


def encode_data(payload: dict[str, Any]) -> bytes:
    return b"data: " + _encode(payload) + b"\n\n"


DONE = b"data: [DONE]\n\n"
