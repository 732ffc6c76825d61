"""The admin API (/admin/...) and CORS, through a real gateway over HTTP: off without GATEWAY_ADMIN_KEY,
key checked, security headers, keys without secrets, circuits, cache state and flush, reload."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.admin import ADMIN_KEY_ENV, SECURITY_HEADERS
from tests.conftest import UPSTREAM_KEY
from tests.fakes.upstream import FakeUpstream
from tests.gateway.test_errors import assert_error
from tests.gateway_server import GatewayServer
from tests.redis_server import RedisServer

MakeGateway = Callable[[str], GatewayServer]
ADMIN_KEY = "adm-0123456789-secret-admin-key"
CLIENT_KEY = "sk-admin-test-client-key-4242"
KEY_ENV_VALUE = "sk-from-the-environment-7777"
ROUTES = [
    ("GET", "/admin/keys"),
    ("POST", "/admin/reload"),
    ("GET", "/admin/circuits"),
    ("GET", "/admin/caches"),
    ("POST", "/admin/caches/llmgw/flush"),
]


def policy(upstream_url: str, redis_url: str, *, extra_model: str = "", cors: str = "") -> str:
    return f"""
backends:
  - {{name: fake, type: openai, base_url: "{upstream_url}/v1", api_key: "{UPSTREAM_KEY}"}}
models:
  - name: echo
    targets: [{{backend: fake, model: echo-model}}]
    plugins: [{{use: exact_cache}}]
  - name: shared
    targets: [{{backend: fake, model: echo-model}}]
    plugins: [{{use: exact_cache, store: redis, redis_url: "{redis_url}", namespace: adminns}}]
  - name: broken
    targets: [{{backend: fake, model: fail-500}}]
    retry_on: []
    circuit: {{failures: 2, cooldown_s: 60}}
{extra_model}
auth:
  keys:
    - {{name: team-a, key: "{CLIENT_KEY}", rpm: 100, models: [echo, shared, broken]}}
    - {{name: team-env, key_env: ADMIN_TEST_KEY_ENV, tpm: 5000}}
    - {{name: team-hash, key_sha256: "{"ab" * 32}", budget_usd: 2.5}}
{cors}
"""


@pytest.fixture
def gw(
    upstream: FakeUpstream, redis_server: RedisServer, make_gateway: MakeGateway, monkeypatch: pytest.MonkeyPatch
) -> GatewayServer:
    monkeypatch.setenv("ADMIN_TEST_KEY_ENV", KEY_ENV_VALUE)
    monkeypatch.setenv(ADMIN_KEY_ENV, ADMIN_KEY)
    return make_gateway(policy(upstream.url, redis_server.url))


@pytest.fixture
def admin(gw: GatewayServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=15) as c:
        yield c


@pytest.fixture
def client(gw: GatewayServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {CLIENT_KEY}"}, timeout=15) as c:
        yield c


def assert_secure(resp: httpx.Response) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert resp.headers.get(name) == value, (name, resp.headers)


def chat(client: httpx.Client, model: str, text: str) -> httpx.Response:
    return client.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": text}]})


# --- off, auth, headers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_without_an_admin_key_in_the_environment_every_route_is_a_404(
    upstream: FakeUpstream,
    redis_server: RedisServer,
    make_gateway: MakeGateway,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    path: str,
) -> None:
    monkeypatch.setenv("ADMIN_TEST_KEY_ENV", KEY_ENV_VALUE)
    monkeypatch.delenv(ADMIN_KEY_ENV, raising=False)
    gw = make_gateway(policy(upstream.url, redis_server.url))
    for headers in ({}, {"authorization": f"Bearer {ADMIN_KEY}"}, {"authorization": "Basic eDp5"}):
        resp = httpx.request(method, gw.url + path, headers=headers, timeout=10)
        error = assert_error(resp, 404, code="not_found", type_="invalid_request_error")
        assert path in error["message"]
    # Exactly what an unknown path answers, so the API's existence does not show.
    unknown = httpx.get(gw.url + "/nothing-here", timeout=10).json()["error"]
    assert error["message"].replace(path, "P") == unknown["message"].replace("/nothing-here", "P")


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_missing_or_wrong_admin_key_is_401_with_security_headers(gw: GatewayServer, method: str, path: str) -> None:
    missing = httpx.request(method, gw.url + path, timeout=10)
    assert_error(missing, 401, code="missing_api_key", type_="authentication_error")
    assert_secure(missing)
    for wrong in (ADMIN_KEY + "x", ADMIN_KEY[:-1], CLIENT_KEY, "a" * 200):
        resp = httpx.request(method, gw.url + path, headers={"authorization": f"Bearer {wrong}"}, timeout=10)
        assert_error(resp, 401, code="invalid_api_key", type_="authentication_error")
        assert_secure(resp)
        assert wrong not in resp.text
    # The x-admin-key header works as well as a bearer token.
    ok = httpx.request(method, gw.url + path, headers={"x-admin-key": ADMIN_KEY}, timeout=10)
    assert ok.status_code == 200, ok.text
    assert_secure(ok)


def test_client_routes_do_not_accept_the_admin_key_nor_admin_routes_a_client_key(gw: GatewayServer) -> None:
    resp = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert_error(resp, 401, code="invalid_api_key")
    resp = httpx.get(gw.url + "/admin/keys", headers={"authorization": f"Bearer {CLIENT_KEY}"})
    assert_error(resp, 401, code="invalid_api_key")


# --- keys, circuits ----------------------------------------------------------------------------------------


def test_keys_lists_names_and_limits_never_secrets(admin: httpx.Client) -> None:
    resp = admin.get("/admin/keys")
    assert resp.status_code == 200
    assert_secure(resp)
    assert resp.json() == {
        "object": "list",
        "data": [
            {
                "name": "team-a",
                "source": "key",
                "models": ["echo", "shared", "broken"],
                "rpm": 100,
                "tpm": None,
                "budget_usd": None,
            },
            {"name": "team-env", "source": "key_env", "models": None, "rpm": None, "tpm": 5000, "budget_usd": None},
            {"name": "team-hash", "source": "key_sha256", "models": None, "rpm": None, "tpm": None, "budget_usd": 2.5},
        ],
    }
    for secret in (CLIENT_KEY, KEY_ENV_VALUE, "ab" * 32, ADMIN_KEY, "ADMIN_TEST_KEY_ENV"):
        assert secret not in resp.text


def test_circuits_show_a_target_opening(admin: httpx.Client, client: httpx.Client) -> None:
    before = admin.get("/admin/circuits").json()["data"]
    assert before["fake/fail-500"]["state"] == "closed"
    assert before["fake/echo-model"] == {
        "state": "closed",
        "in_flight": 0,
        "successes": 0,
        "failures": 0,
        "ewma_ttft_s": None,
        "ewma_total_s": None,
    }
    for _ in range(2):
        assert chat(client, "broken", "hi").status_code == 502
    assert chat(client, "echo", "hi " + uuid.uuid4().hex).status_code == 200
    after = admin.get("/admin/circuits")
    assert_secure(after)
    data = after.json()["data"]
    assert data["fake/fail-500"]["state"] == "open"
    assert data["fake/fail-500"]["failures"] == 2
    assert data["fake/echo-model"]["successes"] == 1
    assert data["fake/echo-model"]["ewma_total_s"] > 0
    # The open circuit now refuses at once, without calling the upstream.
    assert_error(chat(client, "broken", "hi"), 503, code="backend_unavailable")


# --- caches ------------------------------------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def redis_keys(server: RedisServer, pattern: str) -> list[bytes]:
    with socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock:
        command = f"*2\r\n$4\r\nKEYS\r\n${len(pattern)}\r\n{pattern}\r\n".encode()
        sock.sendall(command)
        time.sleep(0.05)
        reply = sock.recv(65536)
    return [line for line in reply.split(b"\r\n")[1:] if line and not line.startswith(b"$")]


def caches(admin: httpx.Client) -> dict[str | None, dict[str, Any]]:
    resp = admin.get("/admin/caches")
    assert resp.status_code == 200
    assert_secure(resp)
    return {entry["model"]: entry for entry in resp.json()["data"]}


def test_cache_state_and_flush_of_a_memory_namespace(admin: httpx.Client, client: httpx.Client) -> None:
    state = caches(admin)
    assert state["echo"] == {
        "plugin": "exact_cache",
        "model": "echo",
        "store": "memory",
        "namespace": "llmgw",
        "entries": 0,
        "redis": None,
    }
    text = "flush me " + uuid.uuid4().hex
    assert chat(client, "echo", text).headers["x-gateway-cache"] == "miss"
    wait_until(lambda: caches(admin)["echo"]["entries"] == 1)
    assert chat(client, "echo", text).headers["x-gateway-cache"] == "hit"

    resp = admin.post("/admin/caches/llmgw/flush")
    assert resp.status_code == 200, resp.text
    assert_secure(resp)
    assert resp.json() == {
        "namespace": "llmgw",
        "data": [{"plugin": "exact_cache", "model": "echo", "flushed": True, "error": None}],
    }
    assert caches(admin)["echo"]["entries"] == 0
    assert chat(client, "echo", text).headers["x-gateway-cache"] == "miss"


def test_flush_of_a_redis_namespace_deletes_only_its_keys(
    admin: httpx.Client, client: httpx.Client, redis_server: RedisServer
) -> None:
    state = caches(admin)["shared"]
    assert state["store"] == "redis"
    assert state["namespace"] == "adminns"
    assert state["redis"]["up"] is True
    text = "redis flush " + uuid.uuid4().hex
    assert chat(client, "shared", text).headers["x-gateway-cache"] == "miss"
    wait_until(lambda: len(redis_keys(redis_server, "adminns:exact:*")) >= 1)
    other = f"otherns:exact:{uuid.uuid4().hex}"
    with socket.create_connection(("127.0.0.1", redis_server.port), timeout=2) as sock:
        sock.sendall(f"*3\r\n$3\r\nSET\r\n${len(other)}\r\n{other}\r\n$1\r\n1\r\n".encode())
        assert sock.recv(16).startswith(b"+OK")

    resp = admin.post("/admin/caches/adminns/flush")
    assert resp.status_code == 200, resp.text
    assert resp.json()["data"] == [{"plugin": "exact_cache", "model": "shared", "flushed": True, "error": None}]
    assert redis_keys(redis_server, "adminns:exact:*") == []
    assert redis_keys(redis_server, other) == [other.encode()]
    assert chat(client, "shared", text).headers["x-gateway-cache"] == "miss"


def test_flush_of_an_unknown_namespace_is_404(admin: httpx.Client) -> None:
    resp = admin.post("/admin/caches/nope/flush")
    error = assert_error(resp, 404, code="not_found", param="namespace")
    assert "'nope'" in error["message"]
    assert_secure(resp)


# --- reload ------------------------------------------------------------------------------------------------


def test_reload_swaps_the_policy_and_a_broken_file_keeps_the_old_one(
    gw: GatewayServer, admin: httpx.Client, upstream: FakeUpstream, redis_server: RedisServer
) -> None:
    client = httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {KEY_ENV_VALUE}"}, timeout=15)
    path = Path(gw.policy_path)
    extra = "  - {name: added, targets: [{backend: fake, model: echo-model}]}"
    path.write_text(policy(upstream.url, redis_server.url, extra_model=extra))
    resp = admin.post("/admin/reload")
    assert resp.status_code == 200, resp.text
    assert_secure(resp)
    body = resp.json()
    assert body["reloaded"] is True
    assert body["reloads"] == 1
    assert "added" in body["models"]
    assert chat(client, "added", "hi").json()["choices"][0]["message"]["content"] == "echo: hi"

    path.write_text(policy(upstream.url, redis_server.url).replace("targets:", "targetz:", 1))
    resp = admin.post("/admin/reload")
    error = assert_error(resp, 409, code="policy_invalid", type_="invalid_request_error")
    assert "previous one keeps serving" in error["message"]
    assert "models[0].targetz: unknown key (did you mean 'targets'?)" in error["message"]
    assert_secure(resp)
    # The old policy (with "added") still serves, and /ready shows the error.
    assert chat(client, "added", "still").json()["choices"][0]["message"]["content"] == "echo: still"
    ready = httpx.get(gw.url + "/ready").json()["policy"]
    assert ready["reloads"] == 1
    assert "targetz" in ready["last_reload_error"]


# --- CORS --------------------------------------------------------------------------------------------------

ORIGIN = "https://app.example.com"


def preflight(url: str, origin: str = ORIGIN) -> httpx.Response:
    return httpx.options(
        url + "/v1/chat/completions",
        headers={
            "origin": origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type",
        },
    )


def test_cors_is_off_by_default(gw: GatewayServer, client: httpx.Client) -> None:
    resp = preflight(gw.url)
    assert resp.status_code == 405
    assert "access-control-allow-origin" not in resp.headers
    resp = client.post(
        "/v1/chat/completions",
        json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]},
        headers={"origin": ORIGIN},
    )
    assert resp.status_code == 200
    assert not any(name.startswith("access-control-") for name in resp.headers)


def test_cors_allows_the_listed_origins_only(
    upstream: FakeUpstream, redis_server: RedisServer, make_gateway: MakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADMIN_TEST_KEY_ENV", KEY_ENV_VALUE)
    monkeypatch.setenv(ADMIN_KEY_ENV, ADMIN_KEY)
    cors = f"server:\n  cors: {{allow_origins: ['{ORIGIN}'], max_age_s: 120}}"
    gw = make_gateway(policy(upstream.url, redis_server.url, cors=cors))

    resp = preflight(gw.url)
    assert resp.status_code == 204
    assert resp.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in resp.headers["access-control-allow-methods"]
    assert "authorization" in resp.headers["access-control-allow-headers"]
    assert resp.headers["access-control-max-age"] == "120"
    assert "access-control-allow-credentials" not in resp.headers

    resp = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]},
        headers={"origin": ORIGIN, "authorization": f"Bearer {CLIENT_KEY}"},
    )
    assert resp.status_code == 200
    assert resp.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in resp.headers["access-control-expose-headers"]
    assert resp.headers["vary"] == "origin"

    other = preflight(gw.url, "https://evil.example.net")
    assert other.status_code == 405
    assert "access-control-allow-origin" not in other.headers
    # Admin routes are never opened to browsers.
    resp = httpx.get(gw.url + "/admin/keys", headers={"origin": ORIGIN, "authorization": f"Bearer {ADMIN_KEY}"})
    assert resp.status_code == 200
    assert "access-control-allow-origin" not in resp.headers


def test_flush_empties_a_memory_semantic_cache_and_refuses_a_shared_one(
    upstream: FakeUpstream,
    redis_server: RedisServer,
    make_gateway: Callable[[str], GatewayServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ADMIN_KEY_ENV, ADMIN_KEY)
    monkeypatch.setenv("ADMIN_TEST_KEY_ENV", KEY_ENV_VALUE)  # team-env: no model restriction
    semantic = f"""
  - name: semantic
    targets: [{{backend: fake, model: echo-model}}]
    plugins: [{{use: semantic_cache, namespace: sem}}]
  - name: semantic-shared
    targets: [{{backend: fake, model: echo-model}}]
    plugins: [{{use: semantic_cache, namespace: semshared, store: redis, redis_url: "{redis_server.url}"}}]
"""
    gw = make_gateway(policy(upstream.url, redis_server.url, extra_model=semantic))
    headers = {"authorization": f"Bearer {KEY_ENV_VALUE}"}
    with (
        httpx.Client(base_url=gw.url, headers=headers, timeout=30) as client,
        httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30) as admin,
    ):
        question = f"What is the capital city of Freedonia {uuid.uuid4().hex[:6]}?"
        assert chat(client, "semantic", question).headers["x-gateway-cache"] == "miss"
        wait_until(lambda: chat(client, "semantic", question).headers["x-gateway-cache"] == "semantic-hit", 10)

        resp = admin.post("/admin/caches/sem/flush")
        assert resp.status_code == 200, resp.text
        assert resp.json()["data"] == [
            {"plugin": "semantic_cache", "model": "semantic", "flushed": True, "error": None}
        ]
        assert chat(client, "semantic", question).headers["x-gateway-cache"] == "miss"

        refused = admin.post("/admin/caches/semshared/flush")
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "cache_flush_failed"
        assert "not supported" in refused.json()["error"]["message"]
