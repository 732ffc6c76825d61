"""A response's head and body leave in one write (gateway/http_coalesce.py).

`CoalescedHead` is tested against a transport that records what it is asked to send (asyncio's transport
interface, not the gateway's code); the protocol is tested serving the real app to the OpenAI SDK, plain and
streamed answers on one kept-alive connection.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from openai import OpenAI

from gateway.http_coalesce import CoalescedHead, CoalescingHttpToolsProtocol
from gateway.loader import load_file
from gateway.server import create_app, entry
from tests.fakes.upstream import FakeUpstream
from tests.gateway_server import free_port


class RecordingTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.sent.append(("write", data))

    def writelines(self, parts: Any) -> None:
        self.sent.append(("writelines", b"".join(parts)))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


async def test_head_and_body_in_the_same_iteration_leave_in_one_write() -> None:
    transport = RecordingTransport()
    out = CoalescedHead(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
    out.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    assert transport.sent == []
    out.write(b"{}")
    assert transport.sent == [("writelines", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")]
    out.write(b"more")  # later writes pass straight through
    await asyncio.sleep(0)  # the scheduled flush finds nothing held
    assert transport.sent[1:] == [("write", b"more")]


async def test_a_head_alone_is_sent_at_the_end_of_the_iteration() -> None:
    transport = RecordingTransport()
    out = CoalescedHead(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
    out.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    await asyncio.sleep(0)
    assert transport.sent == [("write", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")]
    out.write(b"5\r\nhello\r\n")
    assert transport.sent[1] == ("write", b"5\r\nhello\r\n")


async def test_close_sends_a_held_head_first_and_other_calls_reach_the_transport() -> None:
    transport = RecordingTransport()
    out = CoalescedHead(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
    out.write(b"HTTP/1.1 204 No Content\r\n\r\n")
    out.close()
    assert transport.sent == [("write", b"HTTP/1.1 204 No Content\r\n\r\n")] and transport.closed
    assert out.get_extra_info("peername") == "info:peername"
    await asyncio.sleep(0)
    assert len(transport.sent) == 1  # the scheduled flush does not send it twice


POLICY = """
backends: [{{name: fake, type: openai, base_url: "{url}/v1"}}]
models: [{{name: echo, targets: [{{backend: fake, model: echo-model}}]}}]
telemetry: {{access_log: false}}
"""


@pytest.fixture
def served(upstream: FakeUpstream, tmp_path: Path) -> Iterator[str]:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.format(url=upstream.url))
    port = free_port()
    config = uvicorn.Config(
        entry(create_app(load_file(path), path)),
        port=port,
        loop="uvloop",
        http=CoalescingHttpToolsProtocol,
        log_level="warning",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the gateway did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=20)


def test_plain_and_streamed_answers_on_one_connection(served: str) -> None:
    client = OpenAI(base_url=served + "/v1", api_key="unused", max_retries=0)
    for i in range(3):
        answer = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": f"plain {i}"}])
        assert answer.choices[0].message.content == f"echo: plain {i}"
        stream = client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": f"streamed {i}"}], stream=True
        )
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        assert text == f"echo: streamed {i}"
