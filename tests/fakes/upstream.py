"""A fake LLM upstream: a real HTTP server speaking the OpenAI API and Anthropic's Messages API.

The gateway's tests and benchmarks point at this instead of a real provider. Behaviour
is picked by the ``model`` field of each request, so tests running side by side against
one server never step on each other's state:

- any ordinary name ("echo-model", "gemma", ...): echo the last user message back.
- ``fail-<status>`` (fail-500, fail-429, ...): an error shaped for the endpoint's protocol.
- ``slow-<ms>``: wait before sending the status line, then echo.
- ``slow-stream-<ms>``: a 50-word reply, every stream event delayed by <ms>.
- ``non-json``, ``bad-json``: a 200 whose body is not (valid) JSON.
- ``cut-stream``: the connection dies mid-body (after 3 content events when streaming).
- ``reset``: the connection is dropped without any response.
- ``no-usage``: echo without any usage data.
- ``huge``: a ~5 MB reply.
- ``no-done``: a stream that ends without its terminating event.
- ``oversize``: a 200 whose JSON body never ends within 65 MiB (over the gateway's 64 MiB bound).

Run standalone with ``python -m tests.fakes.upstream --port 9000``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import hashlib
import itertools
import json
import re
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

from aiohttp import web

Protocol = Literal["openai", "anthropic"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MODEL_IDS: tuple[str, ...] = ("echo-model", "gemma")
TOOL_ARGUMENTS = '{"x": 1}'
TOOL_INPUT: dict[str, Any] = {"x": 1}
CUT_STREAM_AFTER = 3
SLOW_STREAM_WORDS = 50
DEFAULT_METRICS: dict[str, float] = {
    "vllm:num_requests_running": 0.0,
    "vllm:num_requests_waiting": 0.0,
    "vllm:kv_cache_usage_perc": 0.0,
}

_SIMPLE_FAULTS = frozenset({"non-json", "bad-json", "cut-stream", "reset", "no-usage", "huge", "no-done", "oversize"})
OVERSIZE_BYTES = 65 * 1024 * 1024
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
# Gateways may forward large prompts; aiohttp's 1 MiB default would turn them into 413s.
_MAX_REQUEST_BYTES = 64 * 1024 * 1024
# A word is a run of non-space characters plus the whitespace after it, so joining the
# pieces of a reply always reproduces it exactly, whatever whitespace it contains.
_WORD_PIECE = re.compile(r"\S+\s*")


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON, the raw text when it is not JSON, None when empty
    method: str = "POST"


@dataclass(frozen=True)
class _Behaviour:
    kind: str  # "echo", "fail", "slow", "slow-stream" or one of _SIMPLE_FAULTS
    status: int = 200
    delay: float = 0.0  # seconds

    @classmethod
    def from_model(cls, model: object) -> _Behaviour:
        name = model if isinstance(model, str) else ""
        if (match := re.fullmatch(r"fail-([45]\d\d)", name)) is not None:
            return cls("fail", status=int(match[1]))
        if (match := re.fullmatch(r"slow-stream-(\d+)", name)) is not None:
            return cls("slow-stream", delay=int(match[1]) / 1000)
        if (match := re.fullmatch(r"slow-(\d+)", name)) is not None:
            return cls("slow", delay=int(match[1]) / 1000)
        if name in _SIMPLE_FAULTS:
            return cls(name)
        return cls("echo")

    @property
    def usage(self) -> bool:
        return self.kind != "no-usage"

    @property
    def done(self) -> bool:
        """Whether a stream gets its terminating event ([DONE] / message_stop)."""
        return self.kind != "no-done"


@dataclass(frozen=True)
class _Reply:
    text: str | None  # None when the reply is a tool call
    tool_name: str | None = None
    truncated: bool = False

    @property
    def tokens(self) -> int:
        return _count_words([self.text if self.text is not None else TOOL_ARGUMENTS])

    def openai_finish_reason(self) -> str:
        if self.tool_name is not None:
            return "tool_calls"
        return "length" if self.truncated else "stop"

    def anthropic_stop_reason(self) -> str:
        if self.tool_name is not None:
            return "tool_use"
        return "max_tokens" if self.truncated else "end_turn"


@dataclass(frozen=True)
class _Event:
    data: bytes
    content: bool = False  # counts towards the cut-stream budget


# --- text helpers -----------------------------------------------------------------


def _text_of(content: Any) -> str:
    """Text of an OpenAI content value or Anthropic block list; non-text parts have none."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    return ""


def _last_user_text(messages: Any) -> str:
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def _message_texts(messages: Any) -> list[str]:
    if not isinstance(messages, list):
        return []
    return [_text_of(m.get("content")) for m in messages if isinstance(m, dict)]


def _count_words(texts: Iterable[str]) -> int:
    return sum(len(text.split()) for text in texts)


def _pieces(text: str) -> list[str]:
    return _WORD_PIECE.findall(text)


def _truncate(text: str, limit: int | None) -> tuple[str, bool]:
    pieces = _pieces(text)
    if limit is None or len(pieces) <= limit:
        return text, False
    return "".join(pieces[:limit]).rstrip(), True


def _pad_words(text: str, count: int) -> str:
    words = text.split()[:count]
    words += [f"w{i}" for i in range(len(words), count)]
    return " ".join(words)


@functools.cache
def _huge_text() -> str:
    # Many 1 KiB words rather than one giant one, so a huge stream is many normal-sized
    # events and the word-based token counting still means something.
    return " ".join(["x" * 1023] * 5120)


def _int_field(body: dict[str, Any], *names: str) -> int | None:
    for name in names:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _make_reply(
    user_text: str,
    behaviour: _Behaviour,
    *,
    tool_name: str | None,
    json_mode: bool = False,
    limit: int | None = None,
) -> _Reply:
    if tool_name is not None and "call tool" in user_text.lower():
        return _Reply(text=None, tool_name=tool_name)
    if behaviour.kind == "huge":
        text = _huge_text()
    elif json_mode:
        text = json.dumps({"echo": user_text})
    else:
        text = "echo: " + user_text
    if behaviour.kind == "slow-stream":
        text = _pad_words(text, SLOW_STREAM_WORDS)
    text, truncated = _truncate(text, limit)
    return _Reply(text=text, truncated=truncated)


def _embedding(item: Any, dimensions: int) -> list[float]:
    digest = hashlib.shake_256(json.dumps(item).encode()).digest(4 * dimensions)
    raw = [n / 2**32 * 2 - 1 for n in struct.unpack(f"<{dimensions}I", digest)]
    # Round through float32 so the float and base64 encodings carry identical values.
    return list(struct.unpack(f"<{dimensions}f", struct.pack(f"<{dimensions}f", *raw)))


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _openai_sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {data}\n\n".encode()


def _anthropic_sse(payload: dict[str, Any]) -> bytes:
    return f"event: {payload['type']}\ndata: {json.dumps(payload)}\n\n".encode()


# --- errors and connection faults -------------------------------------------------


def _openai_error_body(status: int) -> dict[str, Any]:
    error_type, param, code = "invalid_request_error", None, None
    if status >= 500:
        message, error_type = f"upstream exploded (fake {status})", "server_error"
    elif status == 429:
        message, error_type = "rate limit reached (fake 429)", "rate_limit_error"
        code = "rate_limit_exceeded"
    elif status == 401:
        message, code = "incorrect API key provided (fake 401)", "invalid_api_key"
    elif status == 400:
        message, param = "invalid messages (fake 400)", "messages"
    else:
        message = f"request rejected (fake {status})"
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def _anthropic_error_body(status: int, message: str | None = None) -> dict[str, Any]:
    error_type = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        529: "overloaded_error",
    }.get(status, "api_error" if status >= 500 else "invalid_request_error")
    if message is None:
        message = _openai_error_body(status)["error"]["message"]
    return {"type": "error", "error": {"type": error_type, "message": message}}


def _error_response(protocol: Protocol, status: int) -> web.Response:
    body = _openai_error_body(status) if protocol == "openai" else _anthropic_error_body(status)
    headers = {"Retry-After": "1"} if status == 429 else None
    return web.json_response(body, status=status, headers=headers)


def _bad_request(protocol: Protocol, message: str) -> web.HTTPBadRequest:
    if protocol == "openai":
        body: dict[str, Any] = {
            "error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}
        }
    else:
        body = _anthropic_error_body(400, message)
    return web.HTTPBadRequest(text=json.dumps(body), content_type="application/json")


def _drop_connection(request: web.Request, *, abrupt: bool) -> web.StreamResponse:
    transport = request.transport
    if transport is not None:
        # close() still flushes what was written (so a cut stream really delivers its
        # first events); abort() discards it.
        if abrupt:
            transport.abort()
        else:
            transport.close()
    # aiohttp fails to send this on the dead transport and treats it as a client
    # disconnect, which keeps the server log free of spurious tracebacks.
    return web.Response()


async def _oversize(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    chunk = b"a" * (1024 * 1024)
    try:
        await response.write(b'{"id": "')
        for _ in range(OVERSIZE_BYTES // len(chunk)):
            await response.write(chunk)
        await response.write(b'"}')
    except ConnectionError:
        pass  # the reader gave up, as it should
    return response


async def _json_body(request: web.Request, protocol: Protocol) -> dict[str, Any]:
    try:
        body = json.loads(await request.read())
    except ValueError:
        raise _bad_request(protocol, "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise _bad_request(protocol, "request body must be a JSON object")
    return body


def _parse_recorded_body(raw: bytes) -> Any:
    if not raw:
        return None
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


# --- the server -------------------------------------------------------------------


class FakeUpstream:
    """Runs the aiohttp server on its own event loop in a daemon thread, so both sync and
    async tests can use it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.requests: list[RecordedRequest] = []
        self.cancelled_streams = 0
        self.completed_streams = 0
        self.open_streams = 0  # streams being written right now
        # Read on every scrape, so tests can change the values while the server runs.
        self.metrics: dict[str, float] = dict(DEFAULT_METRICS)
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._startup_error: BaseException | None = None

    # --- lifecycle ---

    @property
    def url(self) -> str:
        if self._thread is None:
            raise RuntimeError("FakeUpstream is not running; call start() first")
        return f"http://{self.host}:{self.port}"

    def start(self) -> FakeUpstream:
        if self._thread is not None:
            raise RuntimeError("FakeUpstream is already running")
        ready = threading.Event()
        self._startup_error = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name="fake-upstream", daemon=True)
        self._thread.start()
        ready.wait()
        if self._startup_error is not None:
            self._thread.join()
            self._thread = None
            raise self._startup_error
        return self

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _serve(self, ready: threading.Event) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._start_server())
        except BaseException as exc:  # handed to the thread that called start()
            self._startup_error = exc
            loop.close()
            ready.set()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._shutdown())
            loop.close()

    async def _start_server(self) -> None:
        app = web.Application(middlewares=[self._record], client_max_size=_MAX_REQUEST_BYTES)
        app.on_response_prepare.append(_set_session_cookie)
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        # handler_cancellation: without it aiohttp lets a handler run on after its client
        # is gone, and a slow stream would only notice at its next write.
        # shutdown_timeout: stop() must not wait a minute for slow streams to drain.
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        current = asyncio.current_task()
        leftovers = [task for task in asyncio.all_tasks() if task is not current]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)

    @property
    def open_connections(self) -> int:
        """TCP connections from clients that are open now (idle keep-alive ones included)."""
        runner = self._runner
        server = runner.server if runner is not None else None
        return len(server.connections) if server is not None else 0

    # --- records ---

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.cancelled_streams = 0
            self.completed_streams = 0

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Poll until predicate() is true; False on timeout.

        Async tests should call it through ``asyncio.to_thread``: blocking their event loop
        would stop it from even finishing the socket closes the server is waiting to see.
        """
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        raw = await request.read()
        recorded = RecordedRequest(
            path=request.path,
            headers={name.lower(): value for name, value in request.headers.items()},
            body=_parse_recorded_body(raw),
            method=request.method,
        )
        with self._lock:
            self.requests.append(recorded)
        response: web.StreamResponse = await handler(request)
        return response

    # --- shared response plumbing ---

    async def _fault_response(
        self, request: web.Request, behaviour: _Behaviour, protocol: Protocol
    ) -> web.StreamResponse | None:
        """The response for faults that replace the normal reply; None to go on normally."""
        if behaviour.kind == "fail":
            return _error_response(protocol, behaviour.status)
        if behaviour.kind == "non-json":
            return web.Response(text="<html>oops</html>", content_type="text/html")
        if behaviour.kind == "bad-json":
            return web.Response(text='{"id": "x", "choices": [', content_type="application/json")
        if behaviour.kind == "reset":
            return _drop_connection(request, abrupt=True)
        if behaviour.kind == "oversize":
            return await _oversize(request)
        if behaviour.kind == "slow":
            await asyncio.sleep(behaviour.delay)
        return None

    async def _send_json(
        self, request: web.Request, behaviour: _Behaviour, payload: dict[str, Any]
    ) -> web.StreamResponse:
        if behaviour.kind == "slow-stream":
            await asyncio.sleep(behaviour.delay)
        if behaviour.kind != "cut-stream":
            return web.json_response(payload)
        data = json.dumps(payload).encode()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(data) + 1024
        await response.prepare(request)
        await response.write(data)
        return _drop_connection(request, abrupt=False)

    async def _stream(
        self, request: web.Request, behaviour: _Behaviour, events: Sequence[_Event]
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers=_SSE_HEADERS)
        if not behaviour.done:
            # The stream still ends cleanly at the HTTP level; only the SSE terminator is missing.
            response.force_close()
        content_sent = 0
        outcome: str | None = "cancelled"  # None: a deliberate cut, counted as neither
        with self._lock:
            self.open_streams += 1
        try:
            await response.prepare(request)
            for event in events:
                if behaviour.kind == "cut-stream" and event.content and content_sent == CUT_STREAM_AFTER:
                    outcome = None
                    return _drop_connection(request, abrupt=False)
                # Yield between events so each one leaves as its own write, like a real model.
                await asyncio.sleep(behaviour.delay)
                await response.write(event.data)
                content_sent += event.content
            await response.write_eof()
            outcome = "completed"
        except ConnectionError:
            return response
        finally:
            # One locked step: a test that sees no open stream also sees every finished one counted.
            with self._lock:
                self.open_streams -= 1
                if outcome == "cancelled":
                    self.cancelled_streams += 1
                elif outcome == "completed":
                    self.completed_streams += 1
        return response

    def _next_id(self) -> int:
        return next(self._ids)

    # --- OpenAI: chat completions ---

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request, "openai")
        behaviour = _Behaviour.from_model(body.get("model"))
        if (fault := await self._fault_response(request, behaviour, "openai")) is not None:
            return fault

        messages = body.get("messages")
        tools = body.get("tools")
        tool_name: str | None = None
        if tools and body.get("tool_choice") != "none":
            tool_name = str(tools[0].get("function", {}).get("name", ""))
        response_format = body.get("response_format")
        reply = _make_reply(
            _last_user_text(messages),
            behaviour,
            tool_name=tool_name,
            json_mode=isinstance(response_format, dict) and response_format.get("type") == "json_object",
            limit=_int_field(body, "max_completion_tokens", "max_tokens"),
        )
        n = _int_field(body, "n") or 1
        usage = _usage(_count_words(_message_texts(messages)), reply.tokens * n)
        base = {
            "id": f"chatcmpl-fake-{self._next_id()}",
            "created": int(time.time()),
            "model": body.get("model"),
            "system_fingerprint": "fake",
        }
        if body.get("stream"):
            stream_options = body.get("stream_options") or {}
            include_usage = bool(stream_options.get("include_usage")) and behaviour.usage
            events = _chat_stream_events(base, reply, n, usage if include_usage else None, behaviour.done)
            return await self._stream(request, behaviour, events)

        message: dict[str, Any] = {"role": "assistant", "content": reply.text}
        if reply.tool_name is not None:
            message["tool_calls"] = [_tool_call(reply.tool_name)]
        payload: dict[str, Any] = {
            **base,
            "object": "chat.completion",
            "choices": [
                {
                    "index": i,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": reply.openai_finish_reason(),
                }
                for i in range(n)
            ],
        }
        if behaviour.usage:
            payload["usage"] = usage
        return await self._send_json(request, behaviour, payload)

    # --- OpenAI: legacy completions ---

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request, "openai")
        behaviour = _Behaviour.from_model(body.get("model"))
        if (fault := await self._fault_response(request, behaviour, "openai")) is not None:
            return fault

        prompts = _prompts(body.get("prompt"))
        n = _int_field(body, "n") or 1
        limit = _int_field(body, "max_tokens")
        # One choice per (prompt, n) pair, prompt-major, as the real API numbers them.
        replies = [_make_reply(prompt, behaviour, tool_name=None, limit=limit) for prompt in prompts for _ in range(n)]
        usage = _usage(_count_words(prompts), sum(reply.tokens for reply in replies))
        base = {
            "id": f"cmpl-fake-{self._next_id()}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": body.get("model"),
            "system_fingerprint": "fake",
        }
        if body.get("stream"):
            stream_options = body.get("stream_options") or {}
            include_usage = bool(stream_options.get("include_usage")) and behaviour.usage
            events = _completion_stream_events(base, replies, usage if include_usage else None, behaviour.done)
            return await self._stream(request, behaviour, events)

        payload: dict[str, Any] = {
            **base,
            "choices": [
                {
                    "text": reply.text,
                    "index": i,
                    "logprobs": None,
                    "finish_reason": reply.openai_finish_reason(),
                }
                for i, reply in enumerate(replies)
            ],
        }
        if behaviour.usage:
            payload["usage"] = usage
        return await self._send_json(request, behaviour, payload)

    # --- OpenAI: embeddings ---

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request, "openai")
        behaviour = _Behaviour.from_model(body.get("model"))
        if (fault := await self._fault_response(request, behaviour, "openai")) is not None:
            return fault

        inputs = _embedding_inputs(body.get("input"))
        dimensions = _int_field(body, "dimensions") or 8
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, item in enumerate(inputs):
            vector = _embedding(item, dimensions)
            encoded: list[float] | str = (
                base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode() if as_base64 else vector
            )
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = sum(len(item) if isinstance(item, list) else len(item.split()) for item in inputs)
        payload: dict[str, Any] = {"object": "list", "data": data, "model": body.get("model")}
        if behaviour.usage:
            payload["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        return await self._send_json(request, behaviour, payload)

    # --- OpenAI: models; vLLM-style metrics ---

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"id": model, "object": "model", "created": 1700000000, "owned_by": "fake"} for model in MODEL_IDS
                ],
            }
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        lines: list[str] = []
        # vLLM labels every series with the served model; routing code must cope with labels.
        for name, value in dict(self.metrics).items():
            lines += [
                f"# HELP {name} Fake vLLM gauge.",
                f"# TYPE {name} gauge",
                f'{name}{{model_name="{MODEL_IDS[0]}"}} {float(value)}',
            ]
        return web.Response(
            body=("\n".join(lines) + "\n").encode(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    # --- Anthropic: messages ---

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        for header in ("x-api-key", "anthropic-version"):
            if header not in request.headers:
                return web.json_response(_anthropic_error_body(401, f"missing {header} header"), status=401)
        body = await _json_body(request, "anthropic")
        behaviour = _Behaviour.from_model(body.get("model"))
        if (fault := await self._fault_response(request, behaviour, "anthropic")) is not None:
            return fault

        messages = body.get("messages")
        tools = body.get("tools")
        tool_choice = body.get("tool_choice")
        tool_name: str | None = None
        if tools and not (isinstance(tool_choice, dict) and tool_choice.get("type") == "none"):
            tool_name = str(tools[0].get("name", ""))
        reply = _make_reply(
            _last_user_text(messages),
            behaviour,
            tool_name=tool_name,
            limit=_int_field(body, "max_tokens"),
        )
        input_tokens = _count_words([_text_of(body.get("system")), *_message_texts(messages)])
        message: dict[str, Any] = {
            "id": f"msg_fake_{self._next_id()}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model"),
        }
        if body.get("stream"):
            events = _anthropic_stream_events(message, reply, input_tokens if behaviour.usage else None, behaviour.done)
            return await self._stream(request, behaviour, events)

        content: dict[str, Any] = (
            {"type": "tool_use", "id": "toolu_1", "name": reply.tool_name, "input": TOOL_INPUT}
            if reply.tool_name is not None
            else {"type": "text", "text": reply.text}
        )
        payload = {
            **message,
            "content": [content],
            "stop_reason": reply.anthropic_stop_reason(),
            "stop_sequence": None,
        }
        if behaviour.usage:
            payload["usage"] = {"input_tokens": input_tokens, "output_tokens": reply.tokens}
        return await self._send_json(request, behaviour, payload)


# --- request parsing and stream builders ------------------------------------------


def _prompts(prompt: Any) -> list[str]:
    """Completions prompts as text; token-id prompts become their ids joined by spaces."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(token, int) for token in prompt):
            return [" ".join(map(str, prompt))]
        return [p if isinstance(p, str) else " ".join(map(str, p)) for p in prompt]
    return [""]


def _embedding_inputs(value: Any) -> list[Any]:
    """Each input as a string or a list of token ids."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(token, int) for token in value):
        return [value]
    if isinstance(value, list):
        return value
    return [""]


def _tool_call(name: str) -> dict[str, Any]:
    return {
        "id": "call_1",
        "type": "function",
        "function": {"name": name, "arguments": TOOL_ARGUMENTS},
    }


async def _set_session_cookie(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer sets a cookie, as the load balancers in front of real providers do (Cloudflare's
    __cf_bm on api.openai.com): a gateway must never send it back on a later call, which may be another caller's."""
    # A header, not response.set_cookie(): aiohttp 3.14 has already rendered its cookies when this signal runs.
    session = hashlib.sha256(str(time.monotonic_ns()).encode()).hexdigest()[:16]
    response.headers.add("Set-Cookie", f"fake-session={session}; Path=/")


def _chat_stream_events(
    base: dict[str, Any],
    reply: _Reply,
    n: int,
    usage: dict[str, int] | None,
    done: bool,
) -> list[_Event]:
    def chunk(index: int, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        payload: dict[str, Any] = {
            **base,
            "object": "chat.completion.chunk",
            "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if usage is not None:
            payload["usage"] = None
        return payload

    # Each step is emitted for every choice before the next step, interleaving the choices.
    steps: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
    if reply.tool_name is not None:
        steps.append({"tool_calls": [{"index": 0, **_tool_call(reply.tool_name)}]})
    else:
        steps += [{"content": piece} for piece in _pieces(reply.text or "")]
    events = [
        _Event(_openai_sse(chunk(index, delta)), content=step > 0)
        for step, delta in enumerate(steps)
        for index in range(n)
    ]
    events += [_Event(_openai_sse(chunk(index, {}, reply.openai_finish_reason()))) for index in range(n)]
    if usage is not None:
        final = {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
        events.append(_Event(_openai_sse(final)))
    if done:
        events.append(_Event(_openai_sse("[DONE]")))
    return events


def _completion_stream_events(
    base: dict[str, Any],
    replies: list[_Reply],
    usage: dict[str, int] | None,
    done: bool,
) -> list[_Event]:
    def chunk(index: int, text: str, finish_reason: str | None = None) -> dict[str, Any]:
        payload: dict[str, Any] = {
            **base,
            "choices": [{"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}],
        }
        if usage is not None:
            payload["usage"] = None
        return payload

    pieces = [_pieces(reply.text or "") for reply in replies]
    events = [
        _Event(_openai_sse(chunk(index, choice_pieces[step])), content=True)
        for step in range(max(map(len, pieces), default=0))
        for index, choice_pieces in enumerate(pieces)
        if step < len(choice_pieces)
    ]
    events += [
        _Event(_openai_sse(chunk(index, "", reply.openai_finish_reason()))) for index, reply in enumerate(replies)
    ]
    if usage is not None:
        events.append(_Event(_openai_sse({**base, "choices": [], "usage": usage})))
    if done:
        events.append(_Event(_openai_sse("[DONE]")))
    return events


def _anthropic_stream_events(
    message: dict[str, Any],
    reply: _Reply,
    input_tokens: int | None,
    done: bool,
) -> list[_Event]:
    start: dict[str, Any] = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
    if input_tokens is not None:
        # Like the real API, message_start carries a provisional output count; the final
        # one arrives in message_delta.
        start["usage"] = {"input_tokens": input_tokens, "output_tokens": 1}
    events = [_Event(_anthropic_sse({"type": "message_start", "message": start}))]

    if reply.tool_name is not None:
        block: dict[str, Any] = {"type": "tool_use", "id": "toolu_1", "name": reply.tool_name, "input": {}}
        deltas: list[dict[str, Any]] = [{"type": "input_json_delta", "partial_json": TOOL_ARGUMENTS}]
    else:
        block = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": piece} for piece in _pieces(reply.text or "")]
    events.append(_Event(_anthropic_sse({"type": "content_block_start", "index": 0, "content_block": block})))
    events.append(_Event(_anthropic_sse({"type": "ping"})))
    events += [
        _Event(_anthropic_sse({"type": "content_block_delta", "index": 0, "delta": delta}), content=True)
        for delta in deltas
    ]
    events.append(_Event(_anthropic_sse({"type": "content_block_stop", "index": 0})))

    message_delta: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": reply.anthropic_stop_reason(), "stop_sequence": None},
    }
    if input_tokens is not None:
        message_delta["usage"] = {"output_tokens": reply.tokens}
    events.append(_Event(_anthropic_sse(message_delta)))
    if done:
        events.append(_Event(_anthropic_sse({"type": "message_stop"})))
    return events


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the fake LLM upstream until killed.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args(argv)
    with FakeUpstream(args.host, args.port) as upstream:
        print(upstream.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
