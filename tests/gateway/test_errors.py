"""Every error a client can see is OpenAI-shaped, has the right status, is never a 500, and the
gateway keeps serving afterwards: bad input, auth, upstream faults, broken streams, disconnects."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from gateway import tokens
from tests.conftest import ANTHROPIC_KEY, CLIENT_KEY, UPSTREAM_KEY, standard_policy
from tests.fakes.upstream import FakeUpstream
from tests.gateway_server import GatewayServer

CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]
# Long enough that the fake's cut-stream really cuts (it drops the connection after 3 content events).
LONG = [{"role": "user", "content": "one two three four five six seven eight"}]
ERROR_KEYS = {"message", "type", "param", "code"}
# (model prefix, backend name) for the OpenAI-type and the Anthropic-type backend of the fake.
BACKENDS = [pytest.param("", "fake", id="openai"), pytest.param("claude-", "claude", id="anthropic")]


# --- helpers ----------------------------------------------------------------------


@pytest.fixture
def client(gateway: GatewayServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, headers={"authorization": f"Bearer {CLIENT_KEY}"}, timeout=15) as c:
        yield c


@pytest.fixture
def sdk(gateway: GatewayServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=15) as c:
        yield c


def assert_error(
    resp: httpx.Response,
    status: int,
    *,
    code: str | type[Any] | None = Any,
    param: str | type[Any] | None = Any,
    type_: str | type[Any] = Any,
) -> dict[str, Any]:
    """The response is exactly {"error": {"message", "type", "param", "code"}} with `status`."""
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.status_code != 500
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    body = resp.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == ERROR_KEYS, error
    assert isinstance(error["message"], str)
    assert error["message"].strip()
    assert isinstance(error["type"], str)
    assert error["type"]
    assert error["param"] is None or isinstance(error["param"], str)
    assert error["code"] is None or isinstance(error["code"], str)
    if code is not Any:
        assert error["code"] == code, error
    if param is not Any:
        assert error["param"] == param, error
    if type_ is not Any:
        assert error["type"] == type_, error
    return error  # type: ignore[no-any-return]


def chat(client: httpx.Client, model: str, messages: list[dict[str, Any]] = HI, **extra: Any) -> httpx.Response:
    return client.post(CHAT, json={"model": model, "messages": messages, **extra})


def sse_data(text: str) -> list[str]:
    """The data payloads of an SSE body, one per event."""
    events: list[str] = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        lines = [line[len("data:") :].removeprefix(" ") for line in block.split("\n") if line.startswith("data:")]
        if lines:
            events.append("\n".join(lines))
    return events


def assert_still_serving(client: httpx.Client) -> None:
    assert client.get("/health").status_code == 200
    resp = chat(client, "echo", [{"role": "user", "content": "still there?"}])
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == "echo: still there?"


# --- bad input --------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b'{"model": ', b"{model: echo}", b'{"model": "echo",}', b"not json at all", b'{"model": "echo"} trailing'],
)
def test_malformed_json_is_400(client: httpx.Client, raw: bytes) -> None:
    error = assert_error(client.post(CHAT, content=raw), 400, type_="invalid_request_error", param=None)
    assert "JSON" in error["message"]


def test_invalid_utf8_is_400(client: httpx.Client) -> None:
    raw = b'{"model": "echo", "messages": [{"role": "user", "content": "caf\xe9 \xff"}]}'
    error = assert_error(client.post(CHAT, content=raw), 400, type_="invalid_request_error")
    assert "UTF-8" in error["message"]


@pytest.mark.parametrize("raw", [b"[1, 2]", b"[]", b"42", b'"a string"', b"null", b"true"])
def test_json_that_is_not_an_object_is_400(client: httpx.Client, raw: bytes) -> None:
    error = assert_error(client.post(CHAT, content=raw), 400, type_="invalid_request_error")
    assert "object" in error["message"]


@pytest.mark.parametrize("raw", [b"", b"  \n\t "])
def test_empty_body_is_400(client: httpx.Client, raw: bytes) -> None:
    error = assert_error(client.post(CHAT, content=raw), 400, type_="invalid_request_error")
    assert "empty" in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": HI}, "model"),
        ({"model": "echo"}, "messages"),
        ({}, Any),
    ],
)
def test_missing_required_field_is_400_with_param(client: httpx.Client, body: dict[str, Any], param: Any) -> None:
    error = assert_error(client.post(CHAT, json=body), 400, type_="invalid_request_error")
    if param is Any:
        assert error["param"] in ("model", "messages")
    else:
        assert error["param"] == param
        assert param in error["message"]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        pytest.param({"messages": "hello"}, "messages", id="messages-a-string"),
        pytest.param({"messages": []}, "messages", id="messages-empty"),
        pytest.param({"messages": ["hello"]}, "messages[0]", id="message-not-an-object"),
        pytest.param({"temperature": "hot"}, "temperature", id="temperature-hot"),
        pytest.param({"temperature": 7}, "temperature", id="temperature-out-of-range"),
        pytest.param({"n": 0}, "n", id="n-zero"),
        pytest.param({"model": 5}, "model", id="model-a-number"),
        pytest.param({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role", id="role-wizard"),
        pytest.param({"messages": [{"role": "user", "content": None}]}, "messages", id="user-content-null"),
        pytest.param({"messages": [{"role": "user", "content": 42}]}, "messages[0].content", id="content-number"),
        pytest.param({"max_tokens": 0}, "max_tokens", id="max-tokens-zero"),
        # `_param` in gateway/protocol.py drops every location part that starts with "str" (meant for
        # pydantic's union tags), so fields named stream / stream_options lose their param.
        pytest.param({"stream": "maybe"}, "stream", id="stream-not-a-bool"),
        pytest.param({"stream": True, "stream_options": []}, "stream_options", id="stream-options-a-list"),
    ],
)
def test_wrong_types_are_400_with_param(client: httpx.Client, extra: dict[str, Any], param: str) -> None:
    error = assert_error(client.post(CHAT, json={"model": "echo", "messages": HI, **extra}), 400)
    assert error["type"] == "invalid_request_error"
    if param == "messages":  # the content-null check runs on the whole list
        assert error["param"] is not None
        assert error["param"].startswith("messages"), error
    else:
        assert error["param"] == param, error


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param(CHAT, {"model": "small-window", "messages": HI, "max_tokens": "100"}, id="chat-max_tokens"),
        pytest.param(
            CHAT, {"model": "small-window", "messages": HI, "max_completion_tokens": "100"}, id="chat-max_completion"
        ),
        pytest.param(
            "/v1/completions", {"model": "small-window", "prompt": "hi", "max_tokens": "100"}, id="completions"
        ),
    ],
)
def test_numeric_string_token_limit_is_400_not_500(client: httpx.Client, path: str, body: dict[str, Any]) -> None:
    # Pydantic (lax mode) accepts "100" as an int, but the context-window check then adds the raw
    # string to an int. Either a 400 for the type or a context_length_exceeded is right; a 500 is not.
    assert_error(client.post(path, json=body), 400, type_="invalid_request_error")
    assert_still_serving(client)


def test_unknown_model_near_miss_suggests_the_right_one(client: httpx.Client, sdk: openai.OpenAI) -> None:
    error = assert_error(chat(client, "ecko"), 404, code="model_not_found", param="model")
    assert "ecko" in error["message"]
    assert "did you mean 'echo'" in error["message"]

    with pytest.raises(openai.NotFoundError) as caught:
        sdk.chat.completions.create(model="ecko", messages=HI)  # type: ignore[arg-type]
    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found"


def test_unknown_model_far_from_everything_has_no_suggestion(client: httpx.Client) -> None:
    error = assert_error(chat(client, "zzzzzzzz-qqqq"), 404, code="model_not_found", param="model")
    assert "did you mean" not in error["message"]


def test_body_over_the_limit_with_content_length_is_413(client: httpx.Client) -> None:
    body = {"model": "echo", "messages": [{"role": "user", "content": "x" * 70_000}]}
    resp = client.post(CHAT, json=body)
    error = assert_error(resp, 413, code="request_too_large", type_="invalid_request_error")
    assert "65536" in error["message"]
    assert_still_serving(client)


def test_chunked_body_over_the_limit_is_413(client: httpx.Client, upstream: FakeUpstream) -> None:
    before = len(upstream.requests)

    def body() -> Iterator[bytes]:
        yield b'{"model": "echo", "messages": [{"role": "user", "content": "'
        for _ in range(20):
            yield b"y" * 5000
        yield b'"}]}'

    request = client.build_request("POST", CHAT, content=body())
    assert "content-length" not in request.headers
    assert request.headers.get("transfer-encoding") == "chunked"
    error = assert_error(client.send(request), 413, code="request_too_large")
    assert "65536" in error["message"]
    assert len(upstream.requests) == before  # nothing was forwarded
    assert_still_serving(client)


def test_body_just_under_the_limit_is_accepted(client: httpx.Client) -> None:
    prefix = b'{"model": "echo", "messages": [{"role": "user", "content": "'
    suffix = b'"}]}'
    raw = prefix + b"z" * (65536 - len(prefix) - len(suffix)) + suffix
    assert len(raw) == 65536
    assert client.post(CHAT, content=raw).status_code == 200


def test_too_many_messages_is_400(client: httpx.Client, sdk: openai.OpenAI) -> None:
    error = assert_error(chat(client, "echo", HI * 65), 400, param="messages", type_="invalid_request_error")
    assert "65" in error["message"]
    assert "64" in error["message"]
    # 64 is still fine.
    assert chat(client, "echo", HI * 64).status_code == 200


def test_prompt_too_long_for_the_context_window(client: httpx.Client, sdk: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "word " * 100}]
    error = assert_error(
        chat(client, "small-window", messages), 400, code="context_length_exceeded", type_="invalid_request_error"
    )
    assert "40" in error["message"]
    assert error["param"] == "messages"

    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model="small-window", messages=messages)  # type: ignore[arg-type]
    assert caught.value.status_code == 400
    assert caught.value.code == "context_length_exceeded"
    # A short prompt on the same model goes through.
    assert chat(client, "small-window", HI).status_code == 200


def _nested(depth: int, inner: bytes = b"") -> bytes:
    return b"[" * depth + inner + b"]" * depth


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(_nested(30_000), id="whole-body"),
        pytest.param(b'{"model": "echo", "messages": ' + _nested(30_000) + b"}", id="as-messages"),
        pytest.param(
            b'{"model": "echo", "messages": [{"role": "user", "content": "hi"}], "x": ' + _nested(30_000) + b"}",
            id="unknown-field",
        ),
        pytest.param(
            b'{"model": "echo", "messages": [{"role": "user", "content": "hi", "x": ' + _nested(30_000) + b"}]}",
            id="inside-a-message",
        ),
        pytest.param(
            b'{"model": "echo", "messages": [{"role": "user", "content": "hi"}], "x": '
            + b'{"a": ' * 8000
            + b"1"
            + b"}" * 8000
            + b"}",
            id="nested-objects",
        ),
    ],
)
def test_deeply_nested_json_is_400_not_500(client: httpx.Client, raw: bytes) -> None:
    assert len(raw) <= 65536
    assert_error(client.post(CHAT, content=raw), 400, type_="invalid_request_error")
    assert_still_serving(client)


def test_100000_nested_lists_is_400_not_500(
    upstream: FakeUpstream, make_gateway: Callable[[str], GatewayServer]
) -> None:
    policy = standard_policy(upstream.url).replace("max_body_bytes: 65536", "max_body_bytes: 1048576")
    server = make_gateway(policy)
    with httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {CLIENT_KEY}"}, timeout=15) as c:
        for raw in (_nested(100_000), b'{"model": "echo", "messages": ' + _nested(100_000) + b"}"):
            assert_error(c.post(CHAT, content=raw), 400, type_="invalid_request_error")
        assert_still_serving(c)


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/nope"), ("POST", "/v1/nope"), ("GET", "/v1/chat/completion"), ("POST", "/v2/chat/completions")],
)
def test_unknown_path_is_openai_shaped_404(client: httpx.Client, method: str, path: str) -> None:
    resp = client.request(method, path, json={"model": "echo", "messages": HI})
    error = assert_error(resp, 404, type_="invalid_request_error")
    assert path in error["message"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", CHAT),
        ("PUT", CHAT),
        ("DELETE", CHAT),
        ("GET", "/v1/completions"),
        ("GET", "/v1/embeddings"),
        ("POST", "/health"),
    ],
)
def test_wrong_method_is_openai_shaped_405(client: httpx.Client, method: str, path: str) -> None:
    error = assert_error(client.request(method, path), 405, type_="invalid_request_error")
    assert method in error["message"]


# --- auth -------------------------------------------------------------------------


def test_missing_key_is_401(gateway: GatewayServer) -> None:
    resp = httpx.post(gateway.url + CHAT, json={"model": "echo", "messages": HI})
    assert_error(resp, 401, code="missing_api_key", type_="authentication_error")


def test_non_bearer_authorization_is_401(gateway: GatewayServer) -> None:
    resp = httpx.post(gateway.url + CHAT, json={"model": "echo", "messages": HI}, headers={"authorization": "Basic x"})
    error = assert_error(resp, 401, type_="authentication_error")
    assert error["code"] in ("missing_api_key", "invalid_api_key")


def test_wrong_key_is_401_and_never_echoed(gateway: GatewayServer) -> None:
    wrong = "sk-wrong-key-do-not-echo-4242424242"
    resp = httpx.post(
        gateway.url + CHAT, json={"model": "echo", "messages": HI}, headers={"authorization": f"Bearer {wrong}"}
    )
    assert_error(resp, 401, code="invalid_api_key", type_="authentication_error")
    assert wrong not in resp.text
    assert "do-not-echo" not in resp.text
    assert all(wrong not in value for value in resp.headers.values())

    with (
        openai.OpenAI(base_url=gateway.base_url, api_key=wrong, max_retries=0) as sdk,
        pytest.raises(openai.AuthenticationError) as caught,
    ):
        sdk.chat.completions.create(model="echo", messages=HI)  # type: ignore[arg-type]
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    assert wrong not in str(caught.value)


def test_auth_is_checked_before_the_body(gateway: GatewayServer) -> None:
    resp = httpx.post(gateway.url + CHAT, content=b"{{{ not json", headers={"authorization": "Bearer nope"})
    assert_error(resp, 401, code="invalid_api_key")


# --- upstream faults, whole answers -------------------------------------------------


@pytest.mark.parametrize(("prefix", "backend"), BACKENDS)
def test_upstream_500_is_502_with_summary(client: httpx.Client, prefix: str, backend: str) -> None:
    resp = chat(client, prefix + "fail-500")
    error = assert_error(resp, 502, code="upstream_error", type_="upstream_error")
    assert "upstream exploded (fake 500)" in error["message"]
    assert repr(backend) in error["message"]
    assert "500" in error["message"]
    assert resp.headers["x-gateway-backend"] == backend


@pytest.mark.parametrize(("prefix", "backend"), BACKENDS)
def test_upstream_502_is_502(client: httpx.Client, prefix: str, backend: str) -> None:
    error = assert_error(chat(client, prefix + "fail-502"), 502, code="upstream_error", type_="upstream_error")
    assert repr(backend) in error["message"]
    assert "upstream exploded (fake 502)" in error["message"]


@pytest.mark.parametrize(("prefix", "backend"), BACKENDS)
def test_upstream_503_is_503(client: httpx.Client, prefix: str, backend: str) -> None:
    error = assert_error(chat(client, prefix + "fail-503"), 503, code="backend_unavailable", type_="upstream_error")
    assert repr(backend) in error["message"]


@pytest.mark.parametrize(("prefix", "backend"), BACKENDS)
def test_upstream_429_keeps_retry_after(client: httpx.Client, sdk: openai.OpenAI, prefix: str, backend: str) -> None:
    resp = chat(client, prefix + "fail-429")
    error = assert_error(resp, 429, code="rate_limit_exceeded", type_="rate_limit_error")
    assert resp.headers["retry-after"] == "1"
    assert repr(backend) in error["message"]
    assert "rate limit reached (fake 429)" in error["message"]

    with pytest.raises(openai.RateLimitError) as caught:
        sdk.chat.completions.create(model=prefix + "fail-429", messages=HI)  # type: ignore[arg-type]
    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "1"


@pytest.mark.parametrize(
    ("prefix", "param"),
    [pytest.param("", "messages", id="openai"), pytest.param("claude-", None, id="anthropic-has-no-param")],
)
def test_upstream_400_is_400_with_its_param(client: httpx.Client, prefix: str, param: str | None) -> None:
    error = assert_error(chat(client, prefix + "fail-400"), 400, param=param, type_="invalid_request_error")
    assert "invalid messages (fake 400)" in error["message"]


@pytest.mark.parametrize(("prefix", "backend"), BACKENDS)
def test_upstream_401_is_502_not_the_clients_fault(client: httpx.Client, prefix: str, backend: str) -> None:
    resp = chat(client, prefix + "fail-401")
    error = assert_error(resp, 502, type_="upstream_error")
    assert error["code"] != "invalid_api_key"
    assert repr(backend) in error["message"]
    assert "credentials" in error["message"]
    for secret in (UPSTREAM_KEY, ANTHROPIC_KEY, CLIENT_KEY):
        assert secret not in resp.text


@pytest.mark.parametrize("fault", ["non-json", "bad-json", "cut-stream"])
@pytest.mark.parametrize(("prefix", "backend"), BACKENDS)
def test_broken_upstream_answer_is_502(client: httpx.Client, prefix: str, backend: str, fault: str) -> None:
    error = assert_error(chat(client, prefix + fault), 502, code="bad_upstream_response", type_="upstream_error")
    assert repr(backend) in error["message"]


@pytest.mark.parametrize(("prefix", "backend"), BACKENDS)
def test_upstream_reset_is_502_naming_the_backend(client: httpx.Client, prefix: str, backend: str) -> None:
    # The connection is dropped before any response: the code reports it as a broken answer (502).
    error = assert_error(chat(client, prefix + "reset"), 502, code="bad_upstream_response", type_="upstream_error")
    assert repr(backend) in error["message"]
    assert_still_serving(client)


@pytest.mark.parametrize(("prefix", "backend"), BACKENDS)
def test_slow_upstream_is_504(client: httpx.Client, prefix: str, backend: str) -> None:
    # Whole answers are bounded by total_s: the slow-* models use the "-short" backends (total_s 1).
    error = assert_error(chat(client, prefix + "slow-2000"), 504, code="upstream_timeout", type_="upstream_error")
    assert repr(backend + "-short") in error["message"]
    assert "1s" in error["message"]


def test_unreachable_backend_is_503(client: httpx.Client) -> None:
    resp = chat(client, "unreachable")
    error = assert_error(resp, 503, code="backend_unavailable", type_="upstream_error")
    assert "'nowhere'" in error["message"]
    assert resp.headers["x-gateway-backend"] == "nowhere"


@pytest.mark.parametrize(("prefix", "backend"), BACKENDS)
def test_huge_answer_arrives_whole(client: httpx.Client, prefix: str, backend: str) -> None:
    expected = " ".join(["x" * 1023] * 5120)  # the fake's ~5 MB reply
    # Enough max_tokens that the Anthropic backend's default (4096) does not truncate the reply.
    resp = chat(client, prefix + "huge", max_tokens=8192)
    assert resp.status_code == 200, resp.text[:300]
    answer = resp.json()
    assert answer["choices"][0]["message"]["content"] == expected
    assert len(expected) >= 5 * 1024 * 1024 - 1
    assert answer["choices"][0]["finish_reason"] == "stop"


# --- broken streams ---------------------------------------------------------------


def _assert_broken_stream(resp: httpx.Response) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A 200 SSE stream that ends with an OpenAI-shaped error event and no [DONE]."""
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = sse_data(resp.text)
    assert "[DONE]" not in events
    assert "data: [DONE]" not in resp.text
    last = json.loads(events[-1])
    assert set(last) == {"error"}, last
    assert set(last["error"]) == ERROR_KEYS
    assert last["error"]["message"]
    assert last["error"]["type"] == "upstream_error"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all("error" not in c for c in chunks)
    return chunks, last["error"]


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize(("prefix", "backend"), BACKENDS)
def test_cut_stream_ends_with_an_error_event(
    client: httpx.Client, prefix: str, backend: str, include_usage: bool
) -> None:
    extra: dict[str, Any] = {"stream": True}
    if include_usage:
        extra["stream_options"] = {"include_usage": True}
    resp = chat(client, prefix + "cut-stream", LONG, **extra)
    chunks, error = _assert_broken_stream(resp)
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert content.startswith("echo: one")  # some content arrived before the cut
    assert content != "echo: one two three four five six seven eight"
    finish = [ch.get("finish_reason") for c in chunks for ch in c["choices"]]
    assert "stop" not in finish
    assert not any(c.get("usage") for c in chunks)  # no usage chunk for a broken stream
    assert repr(backend) in error["message"]
    assert_still_serving(client)


@pytest.mark.parametrize(("prefix", "backend"), BACKENDS)
def test_cut_stream_raises_in_the_sdk(sdk: openai.OpenAI, prefix: str, backend: str) -> None:
    stream = sdk.chat.completions.create(model=prefix + "cut-stream", messages=LONG, stream=True)  # type: ignore[arg-type]
    received: list[str] = []
    finish_reasons: list[str | None] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            for choice in chunk.choices:
                received.append(choice.delta.content or "")
                finish_reasons.append(choice.finish_reason)
    assert "".join(received).startswith("echo: one")
    assert "stop" not in finish_reasons
    assert backend in caught.value.message


@pytest.mark.parametrize(("prefix", "backend"), BACKENDS)
def test_stream_without_done_ends_with_an_error_event(client: httpx.Client, prefix: str, backend: str) -> None:
    resp = chat(client, prefix + "no-done", LONG, stream=True)
    chunks, error = _assert_broken_stream(resp)
    # The finish_reason chunk arrived, but the stream never properly ended: still an error, no [DONE].
    finish = [ch.get("finish_reason") for c in chunks for ch in c["choices"]]
    assert "stop" in finish
    assert error["code"] == "stream_interrupted"
    assert repr(backend) in error["message"]


@pytest.mark.parametrize(("prefix", "backend"), BACKENDS)
def test_stream_without_done_raises_in_the_sdk(sdk: openai.OpenAI, prefix: str, backend: str) -> None:
    stream = sdk.chat.completions.create(model=prefix + "no-done", messages=LONG, stream=True)  # type: ignore[arg-type]
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass


@pytest.mark.parametrize(
    ("model", "status", "code"),
    [
        ("fail-500", 502, "upstream_error"),
        ("fail-503", 503, "backend_unavailable"),
        ("fail-429", 429, "rate_limit_exceeded"),
        ("fail-400", 400, None),
        ("fail-401", 502, "upstream_error"),
        ("slow-2000", 504, "upstream_timeout"),
        ("reset", 502, "bad_upstream_response"),
        ("non-json", 502, "bad_upstream_response"),
        ("bad-json", 502, "bad_upstream_response"),
        ("unreachable", 503, "backend_unavailable"),
        ("claude-fail-500", 502, "upstream_error"),
        ("claude-fail-429", 429, "rate_limit_exceeded"),
        ("claude-slow-2000", 504, "upstream_timeout"),
        ("claude-reset", 502, "bad_upstream_response"),
        # The Anthropic transport does not check the content type of a stream answer (the OpenAI one
        # does), so these become a 200 stream that fails with an error event instead of a 502.
        ("claude-non-json", 502, "bad_upstream_response"),
        ("claude-bad-json", 502, "bad_upstream_response"),
    ],
)
def test_fault_before_the_first_byte_of_a_stream_is_an_http_error(
    client: httpx.Client, model: str, status: int, code: str | None
) -> None:
    resp = chat(client, model, stream=True, stream_options={"include_usage": True})
    assert_error(resp, status, code=code)
    if status == 429:
        assert resp.headers["retry-after"] == "1"


@pytest.mark.parametrize(
    ("model", "exc"), [("fail-500", openai.InternalServerError), ("slow-2000", openai.APIStatusError)]
)
def test_fault_before_the_first_byte_of_a_stream_in_the_sdk(sdk: openai.OpenAI, model: str, exc: type) -> None:
    with pytest.raises(exc) as caught:
        sdk.chat.completions.create(model=model, messages=HI, stream=True)  # type: ignore[arg-type]
    assert caught.value.status_code in (502, 504)


def test_idle_upstream_before_the_first_chunk_is_an_http_error(
    upstream: FakeUpstream, make_gateway: Callable[[str], GatewayServer]
) -> None:
    policy = (
        standard_policy(upstream.url)
        .replace("idle_s: 5", "idle_s: 0.2")
        .replace(
            "models:\n",
            "models:\n  - {name: slow-stream-3000, targets: [{backend: fake, model: slow-stream-3000}]}\n",
            1,
        )
    )
    server = make_gateway(policy)
    before = upstream.cancelled_streams
    with httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {CLIENT_KEY}"}, timeout=15) as c:
        # slow-stream-3000: headers at once, then 3 s before each event; the gateway gives up after 0.2 s.
        # Nothing reached the client yet, so it is a plain error status (a fallback could have served it).
        resp = chat(c, "slow-stream-3000", stream=True)
        error = assert_error(resp, 504, code="upstream_timeout", type_="upstream_error")
        assert "'fake'" in error["message"]
        assert upstream.wait_for(lambda: upstream.cancelled_streams > before, timeout=5)
        assert_still_serving(c)


def test_streams_and_answers_on_a_reused_connection_outlive_the_idle_timeout(
    upstream: FakeUpstream, make_gateway: Callable[[str], GatewayServer]
) -> None:
    # A stream's idle_s is aiohttp's socket read timeout, re-armed once the headers are in. It must end with
    # the body: a timer left armed would fire on the pooled connection after idle_s and break whichever
    # request uses it next. Streams of every size (some arrive whole with their headers), then a wait longer
    # than idle_s, then more calls over the same pool.
    server = make_gateway(standard_policy(upstream.url).replace("idle_s: 5", "idle_s: 0.3"))
    with httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {CLIENT_KEY}"}, timeout=15) as c:
        for _ in range(2):
            for words in ("hi", "a longer message " * 20):
                resp = chat(c, "echo", [{"role": "user", "content": words}], stream=True)
                assert resp.status_code == 200, resp.text
                assert sse_data(resp.text)[-1] == "[DONE]"
            time.sleep(0.8)
        assert_still_serving(c)
        resp = chat(c, "echo", stream=True)
        assert resp.status_code == 200 and sse_data(resp.text)[-1] == "[DONE]"


# --- client disconnect --------------------------------------------------------------


def test_client_disconnect_cancels_the_upstream(client: httpx.Client, upstream: FakeUpstream) -> None:
    before = upstream.cancelled_streams
    body = {"model": "slow-stream-50", "messages": HI, "stream": True}
    seen = 0
    with client.stream("POST", CHAT, json=body) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data:"):
                seen += 1
                if seen == 2:
                    break
    assert seen == 2
    assert upstream.wait_for(lambda: upstream.cancelled_streams > before, timeout=5)
    assert_still_serving(client)


# --- usage the upstream left out ----------------------------------------------------


@pytest.mark.parametrize(("prefix", "backend"), BACKENDS)
def test_missing_usage_is_counted_by_the_gateway(client: httpx.Client, prefix: str, backend: str) -> None:
    text = "hello there, how are you today?"
    resp = chat(client, prefix + "no-usage", [{"role": "user", "content": text}])
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    content = answer["choices"][0]["message"]["content"]
    usage = answer["usage"]
    assert usage["prompt_tokens"] > 0
    assert usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # tiktoken counts, not the fake's word counts.
    assert usage["completion_tokens"] == tokens.count(content)
    assert usage["prompt_tokens"] >= tokens.count(text)


@pytest.mark.parametrize(("prefix", "backend"), BACKENDS)
def test_missing_usage_in_a_stream_with_include_usage(client: httpx.Client, prefix: str, backend: str) -> None:
    text = "hello there, how are you today?"
    resp = chat(
        client,
        prefix + "no-usage",
        [{"role": "user", "content": text}],
        stream=True,
        stream_options={"include_usage": True},
    )
    assert resp.status_code == 200, resp.text
    events = sse_data(resp.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    final = chunks[-1]
    assert final["choices"] == []
    usage = final["usage"]
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert usage["prompt_tokens"] > 0
    assert usage["completion_tokens"] > 0
    assert usage["completion_tokens"] == tokens.count(content)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert all(not c.get("usage") for c in chunks[:-1])


@pytest.mark.parametrize(("prefix", "backend"), BACKENDS)
def test_missing_usage_in_a_stream_without_include_usage(client: httpx.Client, prefix: str, backend: str) -> None:
    resp = chat(client, prefix + "no-usage", stream=True)
    assert resp.status_code == 200, resp.text
    events = sse_data(resp.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["choices"] for c in chunks)
    assert all(not c.get("usage") for c in chunks)


# --- afterwards ---------------------------------------------------------------------


def test_gateway_serves_normally_after_faults(client: httpx.Client) -> None:
    for model in ("fail-500", "reset", "bad-json", "claude-fail-503", "unreachable", "ecko"):
        resp = chat(client, model)
        assert resp.status_code != 500
        assert resp.status_code >= 400
        assert_error(resp, resp.status_code)
    _assert_broken_stream(chat(client, "cut-stream", LONG, stream=True))
    assert_still_serving(client)
