"""Security over real HTTP: no SSRF through the body, header size and header time limits (the protocol
`gateway serve` runs), and a secrets sweep: a `gateway serve` process with upstream, client and admin keys
driven through successes, errors and auth failures, then everything it wrote is searched for the keys."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn

from gateway.http_protocol import GuardedHttpToolsProtocol
from gateway.intake import ROUTING_FIELDS
from gateway.loader import load_file
from gateway.server import create_app, entry
from tests.conftest import CLIENT_KEY, standard_policy
from tests.fakes.upstream import FakeUpstream
from tests.gateway.test_errors import assert_error
from tests.gateway_server import GatewayServer, free_port
from tests.redis_server import RedisServer

CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def client(gateway: GatewayServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, headers={"authorization": f"Bearer {CLIENT_KEY}"}, timeout=15) as c:
        yield c


# --- SSRF --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def elsewhere() -> Iterator[FakeUpstream]:
    """A second server a client would like the gateway to call instead of the policy's backend."""
    with FakeUpstream() as server:
        yield server


@pytest.mark.parametrize("field", sorted(ROUTING_FIELDS))
@pytest.mark.parametrize("path", [CHAT, "/v1/completions", "/v1/embeddings"])
def test_a_body_choosing_the_upstream_is_refused(
    client: httpx.Client, upstream: FakeUpstream, elsewhere: FakeUpstream, field: str, path: str
) -> None:
    target = f"{elsewhere.url}/v1"
    value: Any = {"Host": "evil.example", "X-Target": target} if "headers" in field else target
    body: dict[str, Any] = {"model": "echo", field: value}
    body.update({"messages": HI} if path == CHAT else {"prompt": "hi"} if "completions" in path else {"input": "hi"})
    marker = uuid.uuid4().hex
    before_here, before_there = len(upstream.requests), len(elsewhere.requests)
    resp = client.post(path, json=body, headers={"x-request-id": marker})
    error = assert_error(resp, 400, param=field, code="unsupported_parameter", type_="invalid_request_error")
    assert "policy" in error["message"]
    assert target not in error["message"]
    assert len(elsewhere.requests) == before_there
    assert not any(r.headers.get("x-request-id") == marker for r in upstream.requests[before_here:])


def test_client_headers_cannot_redirect_the_upstream_call(
    client: httpx.Client, upstream: FakeUpstream, elsewhere: FakeUpstream
) -> None:
    marker = uuid.uuid4().hex
    before = len(elsewhere.requests)
    resp = client.post(
        CHAT,
        json={"model": "echo", "messages": HI},
        headers={
            "x-request-id": marker,
            "host": elsewhere.url.removeprefix("http://"),
            "x-forwarded-host": "evil.example",
            "forwarded": "host=evil.example",
        },
    )
    assert resp.status_code == 200, resp.text
    assert len(elsewhere.requests) == before
    [seen] = [r for r in upstream.requests if r.headers.get("x-request-id") == marker]
    assert seen.headers["host"] == upstream.url.removeprefix("http://")
    assert not {"x-forwarded-host", "forwarded"} & set(seen.headers)


def test_cookies_an_upstream_sets_are_never_sent_back(upstream: FakeUpstream, make_gateway: Any) -> None:
    # The fake upstream sets a cookie on every answer. A client session that kept it would send one caller's
    # upstream cookie with the next caller's request. The backend is named by host name: HTTP clients keep
    # no cookies for a bare IP address, which would hide the leak.
    by_name = upstream.url.replace("127.0.0.1", "localhost")
    gw = make_gateway(standard_policy(by_name))
    markers = [uuid.uuid4().hex for _ in range(4)]
    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {CLIENT_KEY}"}, timeout=15) as client:
        for number, marker in enumerate(markers):
            body = {"model": "echo", "messages": HI, "stream": number % 2 == 1}
            resp = client.post(CHAT, json=body, headers={"x-request-id": marker})
            assert resp.status_code == 200, resp.text
            assert "set-cookie" not in resp.headers
    seen = [r for r in upstream.requests if r.headers.get("x-request-id") in markers]
    assert len(seen) == len(markers)
    assert all("cookie" not in r.headers for r in seen), [r.headers.get("cookie") for r in seen]


def test_a_url_as_model_name_is_only_a_name(client: httpx.Client, elsewhere: FakeUpstream) -> None:
    before = len(elsewhere.requests)
    assert_error(client.post(CHAT, json={"model": f"{elsewhere.url}/v1", "messages": HI}), 404, code="model_not_found")
    assert len(elsewhere.requests) == before


# --- header size and header time ---------------------------------------------------------------------------


def raw_request(port: int, data: bytes, *, wait_s: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        with contextlib.suppress(BrokenPipeError):  # answered and closed before everything was sent
            sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


class _QuickHeaders(GuardedHttpToolsProtocol):
    header_timeout_s = 0.5


@pytest.fixture(scope="module")
def guarded(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The production app behind the guarded protocol, with a short header timeout for the test."""
    path = tmp_path_factory.mktemp("guarded") / "policy.yaml"
    path.write_text(standard_policy(upstream.url))
    port = free_port()
    config = uvicorn.Config(
        entry(create_app(load_file(path), path)),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http=_QuickHeaders,
        log_level="warning",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    yield port
    server.should_exit = True
    thread.join(timeout=20)


def test_oversized_headers_are_431(guarded: int) -> None:
    limit = GuardedHttpToolsProtocol.max_header_bytes
    one_big = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (limit + 1) + b"\r\n\r\n"
    many = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(limit // 8)) + b"\r\n"
    long_url = b"GET /health?" + b"q" * (limit + 1) + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    for data in (one_big, many, long_url):
        reply = raw_request(guarded, data)
        assert reply.startswith(b"HTTP/1.1 431 "), reply[:200]
        assert b'"code":"headers_too_large"' in reply
    # Just under the limit is fine.
    fine = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Ok: " + b"a" * (limit - 200) + b"\r\n\r\n"
    assert raw_request(guarded, fine).startswith(b"HTTP/1.1 200 ")


def test_a_header_that_never_ends_is_cut_off_early(guarded: int) -> None:
    limit = GuardedHttpToolsProtocol.max_header_bytes
    with socket.create_connection(("127.0.0.1", guarded), timeout=5) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        sent = 0
        with pytest.raises(OSError):  # the server closes the connection; sending more then fails
            for _ in range(1000):
                sock.sendall(b"a" * 8192)
                sent += 8192
                time.sleep(0.002)
        assert sent < limit * 4
        assert sock.recv(200).startswith(b"HTTP/1.1 431 ")


def test_a_client_that_stalls_in_its_headers_gets_408_and_is_closed(guarded: int) -> None:
    started = time.monotonic()
    reply = raw_request(guarded, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Le", wait_s=5)
    assert reply.startswith(b"HTTP/1.1 408 "), reply
    assert b'"code":"request_timeout"' in reply
    assert 0.4 < time.monotonic() - started < 3
    # A connection that sends nothing at all is closed too.
    assert raw_request(guarded, b"", wait_s=5).startswith(b"HTTP/1.1 408 ")


@pytest.mark.parametrize("drip", [False, True], ids=["stalls", "drips-a-byte-every-100ms"])
def test_a_slow_body_gets_408_in_time(upstream: FakeUpstream, make_gateway: Any, drip: bool) -> None:
    policy = standard_policy(upstream.url).replace("max_messages: 64", "max_messages: 64\n  body_read_timeout_s: 0.5")
    gw = make_gateway(policy)
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
        b"authorization: Bearer " + CLIENT_KEY.encode() + b"\r\ncontent-length: 200\r\n\r\n{"
    )
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(head)
        reply = b""
        sock.settimeout(0.1 if drip else 5)
        while not reply and time.monotonic() - started < 5:
            if drip:
                with contextlib.suppress(OSError):
                    sock.sendall(b" ")
            with contextlib.suppress(TimeoutError):
                reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 408 "), reply
    assert b'"code":"request_timeout"' in reply
    assert 0.4 < time.monotonic() - started < 3


def test_keep_alive_and_large_bodies_still_work(guarded: int) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{guarded}", timeout=10) as c:
        for _ in range(3):
            assert c.get("/health").status_code == 200
        time.sleep(0.8)  # idle between requests is the keep-alive timer's business, not the header timer's
        assert c.get("/health").status_code == 200
        big = {"model": "echo", "messages": [{"role": "user", "content": "x" * 60_000}]}
        resp = c.post(CHAT, json=big, headers={"authorization": f"Bearer {CLIENT_KEY}"})
        assert resp.status_code == 200, resp.text


def test_gateway_serve_uses_the_guarded_protocol(upstream: FakeUpstream, tmp_path: Path) -> None:
    with _serve(tmp_path, standard_policy(upstream.url), {}) as (port, _):
        data = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n"
        assert raw_request(port, data).startswith(b"HTTP/1.1 431 ")
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200


def test_the_access_log_is_one_timestamped_json_line_per_request(upstream: FakeUpstream, tmp_path: Path) -> None:
    with _serve(tmp_path, standard_policy(upstream.url), {}) as (port, log):
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=CLIENT_KEY, max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="echo", messages=[{"role": "user", "content": "log me"}]
        )
        request_id = raw.headers["x-request-id"]
        deadline = time.monotonic() + 10
        while request_id not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
    lines = [line for line in log.read_text().splitlines() if " gateway.access " in line]
    assert len(lines) == 1, log.read_text()
    found = re.fullmatch(r"(\S+ \S+) (\S+) (\S+) (\{.*\})", lines[0])
    assert found is not None, lines[0]
    stamp, level, name, record = found.groups()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}", stamp), stamp
    assert (level, name) == ("INFO", "gateway.access")
    fields = json.loads(record)
    assert fields["request_id"] == request_id and fields["status"] == 200 and fields["model"] == "echo"
    assert CLIENT_KEY not in lines[0] and "log me" not in lines[0]


# --- the secrets sweep -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _serve(tmp_path: Path, policy: str, env: dict[str, str]) -> Iterator[tuple[int, Path]]:
    config = tmp_path / "policy.yaml"
    config.write_text(policy)
    log = tmp_path / "gateway.log"
    port = free_port()
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            cwd=tmp_path,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield port, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


S_UPSTREAM = "sk-sweep-upstream-" + "U1" * 12
S_ANTHROPIC = "sk-ant-sweep-" + "A2" * 12
S_CLIENT = "sk-sweep-client-literal-" + "C3" * 10
S_CLIENT_ENV = "sk-sweep-client-env-" + "E4" * 10
S_ADMIN = "adm-sweep-" + "D5" * 12
S_WRONG = "sk-sweep-wrong-presented-" + "W6" * 10


def test_no_secret_in_anything_the_gateway_writes(
    upstream: FakeUpstream, redis_server: RedisServer, tmp_path: Path
) -> None:
    policy = f"""
backends:
  - {{name: fake, type: openai, base_url: "{upstream.url}/v1", api_key: "${{SWEEP_UPSTREAM_KEY}}"}}
  - {{name: claude, type: anthropic, base_url: "{upstream.url}", api_key: "${{SWEEP_ANTHROPIC_KEY}}"}}
models:
  - name: echo
    targets: [{{backend: fake, model: echo-model}}]
    plugins: [{{use: exact_cache, store: redis, redis_url: "{redis_server.url}", namespace: sweep}}]
  - {{name: claude, targets: [{{backend: claude, model: claude-echo}}]}}
  - {{name: fail-500, targets: [{{backend: fake, model: fail-500}}]}}
  - {{name: fail-401, targets: [{{backend: fake, model: fail-401}}]}}
  - {{name: claude-401, targets: [{{backend: claude, model: fail-401}}]}}
  - {{name: cut, targets: [{{backend: fake, model: cut-stream}}]}}
auth:
  keys:
    - {{name: literal, key: "{S_CLIENT}", rpm: 1000}}
    - {{name: from-env, key_env: SWEEP_CLIENT_KEY}}
limits: {{store: redis, redis_url: "{redis_server.url}", namespace: sweeplim}}
telemetry: {{log_level: debug}}
"""
    env = {
        "SWEEP_UPSTREAM_KEY": S_UPSTREAM,
        "SWEEP_ANTHROPIC_KEY": S_ANTHROPIC,
        "SWEEP_CLIENT_KEY": S_CLIENT_ENV,
        "GATEWAY_ADMIN_KEY": S_ADMIN,
    }
    written: list[str] = []  # everything a client or an operator could see

    def keep(resp: httpx.Response) -> None:
        written.append(f"{resp.status_code} {dict(resp.headers)} {resp.text}")

    with _serve(tmp_path, policy, env) as (port, log):
        url = f"http://127.0.0.1:{port}"
        for key in (S_CLIENT, S_CLIENT_ENV):
            with openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=15) as sdk:
                for model in ("echo", "claude"):
                    sdk.chat.completions.create(model=model, messages=HI)  # type: ignore[arg-type]
                    list(sdk.chat.completions.create(model=model, messages=HI, stream=True))  # type: ignore[arg-type]
        with httpx.Client(base_url=url, timeout=15) as c:
            auth = {"authorization": f"Bearer {S_CLIENT}"}
            for model in ("echo", "fail-500", "fail-401", "claude-401", "nope"):
                keep(c.post(CHAT, json={"model": model, "messages": HI}, headers=auth))
            keep(c.post(CHAT, json={"model": "cut", "messages": HI, "stream": True}, headers=auth))
            keep(c.post(CHAT, content=b"{not json", headers=auth))
            keep(c.post(CHAT, json={"model": "echo", "messages": HI, "base_url": "http://x"}, headers=auth))
            for headers in ({"authorization": f"Bearer {S_WRONG}"}, {"x-api-key": S_WRONG}, {"api-key": S_WRONG}, {}):
                keep(c.post(CHAT, json={"model": "echo", "messages": HI}, headers=headers))
            for path in ("/admin/keys", "/admin/caches", "/admin/circuits"):
                keep(c.get(path, headers={"authorization": f"Bearer {S_WRONG}"}))
                keep(c.get(path, headers={"authorization": f"Bearer {S_ADMIN}"}))
            keep(c.post("/admin/reload", headers={"authorization": f"Bearer {S_ADMIN}"}))
            keep(c.get("/ready"))
            keep(c.get("/metrics"))
            keep(c.get("/v1/models", headers=auth))
        time.sleep(0.3)  # the last access log lines
    written.append(log.read_text(errors="replace"))
    written.append(_redis_dump(redis_server))

    everything = "\n".join(written)
    assert "exact_cache" in everything and "gateway_requests_total" in everything  # the sweep saw real output
    assert "sweep:exact:" in everything and "sweeplim" in everything  # and the Redis keys of the cache and limits
    digests = [hashlib.sha256(s.encode()).hexdigest() for s in (S_CLIENT, S_CLIENT_ENV, S_WRONG, S_ADMIN)]
    for secret in (S_UPSTREAM, S_ANTHROPIC, S_CLIENT, S_CLIENT_ENV, S_ADMIN, S_WRONG, *digests):
        for piece in (secret, secret[-16:]):
            assert piece not in everything, f"{piece!r} found:\n" + _around(everything, piece)


def _redis_dump(server: RedisServer) -> str:
    import redis

    r = redis.Redis(host="127.0.0.1", port=server.port)
    out = []
    read: dict[str, Any] = {
        "string": r.get,
        "hash": r.hgetall,
        "list": lambda k: r.lrange(k, 0, -1),
        "set": r.smembers,
        "zset": lambda k: r.zrange(k, 0, -1, withscores=True),
        "stream": r.xrange,
    }
    for key in r.scan_iter("*"):
        raw_kind: Any = r.type(key)
        kind = raw_kind.decode() if isinstance(raw_kind, bytes) else str(raw_kind)
        out.append(f"{key!r} ({kind}) = {read[kind](key)!r}")
    r.close()
    return "\n".join(out)


def _around(text: str, piece: str) -> str:
    at = text.index(piece)
    return text[max(0, at - 300) : at + 300]
