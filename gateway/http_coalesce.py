"""One send() per small answer: uvicorn writes a response's status line and headers, then its body, as two
socket writes (two syscalls, two TCP segments, two wake-ups of the client). `CoalescingHttpToolsProtocol`
gives each response cycle a transport that holds the first write (the head) until the second (the body,
sent together with it in one vectored write) or the end of the event-loop iteration, whichever comes first.
An answer whose body follows at once (every JSON answer, and a stream's first event, which the gateway
has already read) leaves in one write; a head with nothing behind it yet is never held past the current
iteration. Profiling under load put the head's separate write at ~20% of the gateway's CPU
(docs/benchmarks.md#optimisations).
"""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.http_protocol import GuardedHttpToolsProtocol

_NOTHING_YET, _HOLDING, _PASSING = 0, 1, 2


class CoalescedHead:
    """The transport one response cycle writes through; everything but `write` and `close` is the real one's."""

    __slots__ = ("_head", "_loop", "_state", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._head = b""
        self._state = _NOTHING_YET

    def write(self, data: bytes) -> None:
        if self._state == _PASSING:
            self._transport.write(data)
        elif self._state == _NOTHING_YET:
            self._head, self._state = data, _HOLDING
            self._loop.call_soon(self.flush)
        else:
            head, self._head, self._state = self._head, b"", _PASSING
            self._transport.writelines((head, data))

    def flush(self) -> None:
        if self._state == _HOLDING:
            head, self._head, self._state = self._head, b"", _PASSING
            if not self._transport.is_closing():
                self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(GuardedHttpToolsProtocol):
    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.transport is self.transport:  # a new cycle (not an upgrade)
            cycle.transport = CoalescedHead(self.transport, self.loop)  # type: ignore[assignment]
