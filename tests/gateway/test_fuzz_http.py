"""Bad input over real HTTP: Schemathesis generates requests (valid and invalid) from the gateway's own
/openapi.json, and a catalogue of hostile bodies is sent by hand. Never a 5xx, never a crash, every
error OpenAI-shaped; the gateway keeps serving."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode

from gateway import openapi
from gateway.server import VERSION
from tests.fakes.upstream import FakeUpstream
from tests.gateway.test_errors import assert_error
from tests.gateway_server import GatewayServer

KEY = "sk-fuzz-client-key-0123456789"
CHAT = "/v1/chat/completions"
ERROR_KEYS = {"message", "type", "param", "code"}
CASES: dict[str, int] = {}  # operation -> cases sent, for docs/reliability.md


def policy(upstream_url: str) -> str:
    return f"""
backends:
  - {{name: fake, type: openai, base_url: "{upstream_url}/v1", timeouts: {{total_s: 10}}}}
models:
  - {{name: echo, targets: [{{backend: fake, model: echo-model}}]}}
  - {{name: gpt-4o-mini, targets: [{{backend: fake, model: echo-model}}], context_window: 4096}}
auth:
  keys: [{{name: fuzz, key: "{KEY}"}}]
limits: {{max_body_bytes: 262144, max_messages: 256}}
"""


@pytest.fixture(scope="module")
def fuzz_gateway(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    path: Path = tmp_path_factory.mktemp("fuzz") / "policy.yaml"
    path.write_text(policy(upstream.url))
    with GatewayServer(path) as server:
        yield server


# The document /openapi.json serves (checked equal below), loaded at import so each operation is its own test.
schema = schemathesis.openapi.from_dict(openapi.document(VERSION))
# Valid requests and deliberately invalid ones (wrong types, missing fields, out-of-range values).
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])


def test_the_fuzzed_document_is_the_one_served(fuzz_gateway: GatewayServer) -> None:
    assert httpx.get(fuzz_gateway.url + "/openapi.json").json() == json.loads(json.dumps(schema.raw_schema))


@pytest.fixture(scope="module", autouse=True)
def _report_counts() -> Iterator[None]:
    yield
    print(f"\nschemathesis cases per operation: {CASES} (total {sum(CASES.values())})")


def assert_openai_error(status: int, text: str, where: str) -> None:
    body = json.loads(text)
    assert set(body) == {"error"}, (where, status, text[:500])
    error = body["error"]
    assert set(error) == ERROR_KEYS, (where, status, text[:500])
    assert isinstance(error["message"], str) and error["message"].strip(), (where, text[:500])
    assert isinstance(error["type"], str) and error["type"], (where, text[:500])


@schema.parametrize()
@settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "100")), deadline=None, suppress_health_check=list(HealthCheck)
)
def test_schemathesis_no_5xx_and_every_error_openai_shaped(case: Any, fuzz_gateway: GatewayServer) -> None:
    response = case.call(base_url=fuzz_gateway.url, headers={"authorization": f"Bearer {KEY}"}, timeout=15)
    where = f"{case.method} {case.path} {case.body!r}"[:500]
    CASES[case.operation.label] = CASES.get(case.operation.label, 0) + 1
    assert response.status_code < 500, (where, response.status_code, response.text[:500])
    if response.status_code >= 400:
        assert response.headers["content-type"][0].startswith("application/json"), where
        assert_openai_error(response.status_code, response.text, where)


# --- a catalogue of hostile bodies -------------------------------------------------------------------------

M = b'"messages": [{"role": "user", "content": "hi"}]'


def _body(*fields: bytes) -> bytes:
    return b"{" + b", ".join(fields) + b"}"


HOSTILE: list[Any] = [
    # invalid UTF-8 and odd encodings
    pytest.param(_body(b'"model": "ec\xffho"', M), 400, "UTF-8", id="utf8-invalid-in-model"),
    pytest.param(_body(b'"model": "echo"', M, b'"k\xc3": 1'), 400, "UTF-8", id="utf8-truncated-in-a-key"),
    pytest.param(_body(b'"model": "echo"', M.replace(b"hi", b"\xc0\xaf")), 400, "UTF-8", id="utf8-overlong"),
    pytest.param(_body(b'"model": "echo"', M.replace(b"hi", b"\xed\xa0\x80")), 400, "UTF-8", id="utf8-raw-surrogate"),
    pytest.param(_body(b'"model": "echo"', M.replace(b"hi", b"a\\ud800b")), 400, "JSON", id="json-lone-surrogate"),
    pytest.param(_body(b'"model": "echo"', M).decode().encode("utf-16"), 400, None, id="utf16-body"),
    pytest.param(b"\xef\xbb\xbf" + _body(b'"model": "echo"', M), 400, "JSON", id="byte-order-mark"),
    pytest.param(_body(b'"model": "echo"', M.replace(b"hi", b"\\ud83d\\ude00")), 200, None, id="json-surrogate-pair"),
    pytest.param(_body(b'"model": "echo"', M.replace(b"hi", b"a\\u0000b")), 200, None, id="nul-in-content"),
    # numbers
    pytest.param(_body(b'"model": "echo"', M, b'"temperature": NaN'), 400, "JSON", id="nan"),
    pytest.param(_body(b'"model": "echo"', M, b'"temperature": 1e400'), 400, "JSON", id="float-overflow"),
    pytest.param(_body(b'"model": "echo"', M, b'"n": 99999999999999999999999999'), 400, "n", id="n-bigint"),
    pytest.param(_body(b'"model": "echo"', M, b'"max_tokens": 1e308'), 400, "max_tokens", id="max-tokens-float"),
    pytest.param(_body(b'"model": "echo"', M, b'"max_tokens": -1'), 400, "max_tokens", id="max-tokens-negative"),
    pytest.param(_body(b'"model": "echo"', M, b'"seed": 99999999999999999999999999'), 200, None, id="unknown-bigint"),
    pytest.param(
        _body(b'"model": "gpt-4o-mini"', M, b'"max_tokens": 9223372036854775807'), 400, "context", id="max-tokens-huge"
    ),
    # enormous strings, many items, deep structures
    pytest.param(_body(b'"model": "' + b"e" * 200_000 + b'"', M), 400, "model", id="model-name-200k"),
    pytest.param(
        _body(b'"model": "gpt-4o-mini"', b'"messages": [{"role": "user", "content": "' + b"word " * 50_000 + b'"}]'),
        400,
        "context",
        id="content-250k-over-the-window",
    ),
    pytest.param(
        _body(b'"model": "echo"', b'"messages": [{"role": "user", "content": "' + b"x" * 250_000 + b'"}]'),
        200,
        None,
        id="content-250k",
    ),
    pytest.param(
        _body(
            b'"model": "echo"',
            b'"messages": [{"role": "user", "content": [' + b",".join([b'{"type":"text","text":"a"}'] * 8000) + b"]}]",
        ),
        200,
        None,
        id="8000-content-parts",
    ),
    pytest.param(
        _body(b'"model": "echo"', b'"messages": [' + b",".join([b'{"role":"user","content":"a"}'] * 257) + b"]"),
        400,
        "messages",
        id="257-messages",
    ),
    pytest.param(
        _body(b'"model": "echo"', M, b'"metadata": ' + b'{"a":' * 400 + b"1" + b"}" * 400), 200, None, id="deep-400"
    ),
    pytest.param(
        _body(b'"model": "echo"', M, b'"metadata": ' + b"[" * 50_000 + b"]" * 50_000), 400, None, id="deep-50k"
    ),
    # roles, empty things, wrong types
    pytest.param(_body(b'"model": "echo"', M.replace(b"user", b"root")), 400, "role", id="role-root"),
    pytest.param(_body(b'"model": "echo"', M.replace(b"user", b"")), 400, "role", id="role-empty"),
    pytest.param(_body(b'"model": "echo"', M.replace(b'"user"', b"null")), 400, "role", id="role-null"),
    pytest.param(_body(b'"model": "echo"', M.replace(b'"user"', b'["user"]')), 400, "role", id="role-list"),
    pytest.param(_body(b'"model": "echo"', b'"messages": []'), 400, "messages", id="messages-empty"),
    pytest.param(_body(b'"model": "echo"', b'"messages": [{}]'), 400, "messages", id="message-empty-object"),
    pytest.param(_body(b'"model": "echo"', b'"messages": [{"role": "user"}]'), 400, "content", id="content-missing"),
    pytest.param(_body(b'"model": "echo"', b'"messages": {"role": "user"}'), 400, "messages", id="messages-object"),
    pytest.param(_body(b'"model": ""', M), 400, "model", id="model-empty"),
    pytest.param(_body(b'"model": null', M), 400, "model", id="model-null"),
    pytest.param(_body(b'"model": ["echo"]', M), 400, "model", id="model-list"),
    pytest.param(_body(b'"model": "echo"', M, b'"stream": 1'), 400, "stream", id="stream-int"),
    pytest.param(_body(b'"model": "echo"', M, b'"tools": [{"type": "function"}]'), 400, "tools", id="tool-no-function"),
    pytest.param(_body(b'"model": "echo"', M, b'"tools": {}'), 400, "tools", id="tools-object"),
    pytest.param(_body(b'"model": "echo"', M, b'"stop": [1, 2]'), 400, "stop", id="stop-ints"),
    pytest.param(_body(b'"model": "echo"', M, b'"base_url": "http://169.254.169.254/"'), 400, "base_url", id="ssrf"),
]


@pytest.fixture(scope="module")
def big_gateway(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    path: Path = tmp_path_factory.mktemp("hostile") / "policy.yaml"
    path.write_text(policy(upstream.url).replace("max_body_bytes: 262144", "max_body_bytes: 1048576"))
    with GatewayServer(path) as server:
        yield server


@pytest.mark.parametrize(("raw", "status", "mentions"), HOSTILE)
def test_hostile_bodies_get_a_clear_answer(
    big_gateway: GatewayServer, raw: bytes, status: int, mentions: str | None
) -> None:
    with httpx.Client(base_url=big_gateway.url, headers={"authorization": f"Bearer {KEY}"}, timeout=30) as c:
        resp = c.post(CHAT, content=raw, headers={"content-type": "application/json"})
        if status == 200:
            assert resp.status_code == 200, resp.text[:500]
        else:
            error = assert_error(resp, status, type_="invalid_request_error")
            assert len(resp.content) < 2000  # nothing of the body is echoed back at length
            if mentions is not None:
                assert mentions in f"{error['param']} {error['message']}", error
        ok = c.post(CHAT, json={"model": "echo", "messages": [{"role": "user", "content": "alive?"}]})
        assert ok.json()["choices"][0]["message"]["content"] == "echo: alive?"
