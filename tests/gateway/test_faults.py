"""Faults with real processes and sockets: clients hanging up mid-stream (nothing leaks), Redis killed under
concurrent traffic (fail-open: no request fails, features resume), an embedding model that cannot load
(a clear start-up error; a reload that needs it keeps the old policy)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.conftest import CLIENT_KEY, standard_policy
from tests.fakes.upstream import FakeUpstream
from tests.gateway_server import GatewayServer, free_port
from tests.redis_server import RedisServer

MakeGateway = Callable[[str], GatewayServer]
CHAT = "/v1/chat/completions"
AUTH = {"authorization": f"Bearer {CLIENT_KEY}"}


def wait_until(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# --- client disconnects ------------------------------------------------------------------------------------


def _gateway_loop(gw: GatewayServer) -> asyncio.AbstractEventLoop:
    return gw._server.servers[0].get_loop()


def _gateway_tasks(gw: GatewayServer) -> int:
    async def count() -> int:
        await asyncio.sleep(0.05)  # let cancelled tasks finish unwinding
        return len(asyncio.all_tasks())

    return asyncio.run_coroutine_threadsafe(count(), _gateway_loop(gw)).result(5)


def _hang_up_mid_stream(url: str, model: str, *, events: int = 2) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "tell me"}], "stream": True}
    with httpx.Client(base_url=url, headers=AUTH, timeout=10) as c, c.stream("POST", CHAT, json=body) as resp:
        assert resp.status_code == 200
        seen = 0
        for line in resp.iter_lines():
            seen += line.startswith("data:")
            if seen == events:
                break  # leaving both blocks closes the socket mid-stream


def test_hanging_up_mid_stream_cancels_upstream_and_leaks_nothing(
    upstream: FakeUpstream, make_gateway: MakeGateway
) -> None:
    gw = make_gateway(standard_policy(upstream.url))
    _hang_up_mid_stream(gw.url, "slow-stream-50")  # warm-up: connection pools, lazily created tasks
    assert wait_until(lambda: upstream.open_streams == 0)
    tasks_before = _gateway_tasks(gw)
    cancelled_before = upstream.cancelled_streams
    # Other tests' gateways (session fixtures) may hold pooled connections to the same fake upstream.
    connections_before = upstream.open_connections

    rounds = 12
    for _ in range(rounds):
        _hang_up_mid_stream(gw.url, "slow-stream-50")
    # Concurrently as well: hung up while the others are still streaming.
    threads = [threading.Thread(target=_hang_up_mid_stream, args=(gw.url, "slow-stream-50")) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert wait_until(lambda: upstream.cancelled_streams - cancelled_before == rounds + 8), (
        upstream.cancelled_streams - cancelled_before
    )
    assert wait_until(lambda: upstream.open_streams == 0), upstream.open_streams
    # A cancelled stream's connection cannot be reused: it is closed, not left in the pool.
    assert wait_until(lambda: upstream.open_connections <= connections_before + 1), (
        upstream.open_connections,
        connections_before,
    )
    assert wait_until(lambda: _gateway_tasks(gw) <= tasks_before), (_gateway_tasks(gw), tasks_before)
    assert gw.holder.current.in_flight == 0
    health = gw.holder.current.router.health["fake/slow-stream-50"]
    assert health.in_flight == 0
    with httpx.Client(base_url=gw.url, headers=AUTH, timeout=10) as c:
        resp = c.post(CHAT, json={"model": "echo", "messages": [{"role": "user", "content": "after"}]})
        assert resp.json()["choices"][0]["message"]["content"] == "echo: after"


def test_hanging_up_before_the_first_byte_cancels_the_upstream_call(
    upstream: FakeUpstream, make_gateway: MakeGateway
) -> None:
    """The client gives up while the gateway still waits for the upstream's headers (slow first byte)."""
    policy = standard_policy(upstream.url).replace("first_byte_s: 1.0", "first_byte_s: 10", 1)
    policy = policy.replace(
        "models:\n", "models:\n  - {name: slow-1500, targets: [{backend: fake, model: slow-1500}]}\n", 1
    )
    gw = make_gateway(policy)
    connections_before = upstream.open_connections
    body = {"model": "slow-1500", "messages": [{"role": "user", "content": "x"}], "stream": True}
    with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=gw.url, headers=AUTH, timeout=0.3) as c:
        c.post(CHAT, json=body)
    assert wait_until(lambda: gw.holder.current.in_flight == 0, 5), gw.holder.current.in_flight
    assert wait_until(lambda: upstream.open_connections <= connections_before, 5)
    assert gw.holder.current.router.health["fake/slow-1500"].in_flight == 0


# --- an answer over the 64 MiB bound ------------------------------------------------------------------------


def test_an_answer_over_64_mib_is_a_502_and_the_gateway_keeps_serving(
    upstream: FakeUpstream, make_gateway: MakeGateway
) -> None:
    policy = standard_policy(upstream.url).replace(
        "models:\n", "models:\n  - {name: oversize, targets: [{backend: fake, model: oversize}], retry_on: []}\n", 1
    )
    gw = make_gateway(policy)
    with httpx.Client(base_url=gw.url, headers=AUTH, timeout=60) as c:
        resp = c.post(CHAT, json={"model": "oversize", "messages": [{"role": "user", "content": "x"}]})
        assert resp.status_code == 502, resp.text[:300]
        error = resp.json()["error"]
        assert error["code"] == "bad_upstream_response"
        assert f"over {64 * 1024 * 1024} bytes" in error["message"]
        ok = c.post(CHAT, json={"model": "echo", "messages": [{"role": "user", "content": "fine"}]})
        assert ok.json()["choices"][0]["message"]["content"] == "echo: fine"


# --- Redis killed under concurrent traffic -----------------------------------------------------------------


def test_redis_killed_under_traffic_fails_no_request_and_everything_resumes(
    upstream: FakeUpstream, redis_server: RedisServer, make_gateway: MakeGateway
) -> None:
    mark = uuid.uuid4().hex[:8]
    namespace = f"kill{mark}"
    policy = f"""
backends:
  - {{name: fake, type: openai, base_url: "{upstream.url}/v1"}}
models:
  - name: cached
    targets: [{{backend: fake, model: echo-model}}]
    plugins: [{{use: exact_cache, store: redis, redis_url: "{redis_server.url}", namespace: {namespace},
                retry_after_s: 0.2, fail_open: true}}]
auth:
  keys: [{{name: team-a, key: "{CLIENT_KEY}", rpm: 100000, tpm: 100000000}}]
limits: {{store: redis, redis_url: "{redis_server.url}", namespace: {namespace}lim, retry_after_s: 0.2,
          fail_open: true}}
"""
    gw = make_gateway(policy)
    failures: list[str] = []
    served = 0
    stop = threading.Event()
    lock = threading.Lock()

    def drive(worker: int) -> None:
        nonlocal served
        with httpx.Client(base_url=gw.url, headers=AUTH, timeout=10) as c:
            step = 0
            while not stop.is_set():
                prompt = f"q{step % 5} {mark}" if worker % 2 else f"new {worker} {step} {mark}"
                stream = step % 3 == 0
                try:
                    resp = c.post(
                        CHAT,
                        json={"model": "cached", "stream": stream, "messages": [{"role": "user", "content": prompt}]},
                    )
                    ok = resp.status_code == 200 and (
                        f"echo: {prompt}" in resp.text if not stream else "[DONE]" in resp.text
                    )
                    if not ok:
                        failures.append(f"{resp.status_code} {resp.text[:200]}")
                except httpx.HTTPError as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
                with lock:
                    served += 1
                step += 1

    threads = [threading.Thread(target=drive, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        redis_server.kill()
        at_kill = served
        time.sleep(1.5)
        while_down = served - at_kill
        redis_server.start()
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        if redis_server.proc is None:
            redis_server.start()
    print(f"\nredis kill: {served} requests, {while_down} while Redis was down, {len(failures)} failed")
    assert failures == []
    assert while_down > 10, while_down
    assert served > 40, served

    # Resumed: counters are written to the new Redis again and answers are cached and served again.
    r = redis.Redis(host="127.0.0.1", port=redis_server.port)
    with httpx.Client(base_url=gw.url, headers=AUTH, timeout=10) as c:
        fresh = {"model": "cached", "messages": [{"role": "user", "content": f"after {mark}"}]}
        assert c.post(CHAT, json=fresh).headers["x-gateway-cache"] == "miss"
        assert wait_until(lambda: c.post(CHAT, json=fresh).headers["x-gateway-cache"] == "hit")
    assert list(r.scan_iter(f"{namespace}:exact:*"))
    assert list(r.scan_iter(f"{namespace}lim*"))
    r.close()
    ready = httpx.get(gw.url + "/ready").json()
    assert ready["status"] == "ready", ready


# --- an embedding model that cannot load -------------------------------------------------------------------

MISSING_MODEL = "/nonexistent/embedding-model"


def _semantic_policy(upstream_url: str, model_path: str | None) -> str:
    path = f", model_path: {model_path}" if model_path else ""
    return f"""
backends:
  - {{name: fake, type: openai, base_url: "{upstream_url}/v1"}}
models:
  - name: sem
    targets: [{{backend: fake, model: echo-model}}]
    plugins: [{{use: semantic_cache{path}}}]
  - {{name: echo, targets: [{{backend: fake, model: echo-model}}]}}
"""


@pytest.mark.parametrize("plugin", ["semantic_cache", "embedding_guard"])
def test_an_embedding_model_that_cannot_load_stops_start_up_with_a_clear_error(
    upstream: FakeUpstream, tmp_path: Path, plugin: str
) -> None:
    config = tmp_path / "policy.yaml"
    options = "embedding_guard, preset: prompt_injection" if plugin == "embedding_guard" else plugin
    config.write_text(_semantic_policy(upstream.url, MISSING_MODEL).replace("semantic_cache", options))
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert f"the gateway cannot start: cannot load the embedding model {MISSING_MODEL}" in output, output[-3000:]
    assert "Application startup failed" in output


def test_a_reload_whose_plugin_cannot_start_keeps_the_old_policy(
    upstream: FakeUpstream, make_gateway: MakeGateway
) -> None:
    gw = make_gateway(_semantic_policy(upstream.url, None).replace("plugins: [{use: semantic_cache}]", "plugins: []"))
    Path(gw.policy_path).write_text(_semantic_policy(upstream.url, MISSING_MODEL))
    ok = asyncio.run_coroutine_threadsafe(gw.holder.reload(), _gateway_loop(gw)).result(120)
    assert ok is False
    assert f"cannot load the embedding model {MISSING_MODEL}" in gw.holder.last_error
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        resp = c.post(CHAT, json={"model": "sem", "messages": [{"role": "user", "content": "still?"}]})
        assert resp.status_code == 200
        assert resp.headers.get("x-gateway-cache") is None  # the old policy: no cache on this model
        ready = c.get("/ready").json()["policy"]
        assert ready["reloads"] == 0
        assert MISSING_MODEL in ready["last_reload_error"]


def test_reloading_a_broken_file_under_traffic_fails_no_request(
    upstream: FakeUpstream, make_gateway: MakeGateway
) -> None:
    gw = make_gateway(standard_policy(upstream.url))
    path = Path(gw.policy_path)
    good = path.read_text()
    broken = [good.replace("targets:", "targetz:", 1), "models: [", "backends: 7\n", good + "\nunknown_top: 1\n"]
    failures: list[Any] = []
    stop = threading.Event()

    def drive() -> None:
        with httpx.Client(base_url=gw.url, headers=AUTH, timeout=10) as c:
            while not stop.is_set():
                resp = c.post(CHAT, json={"model": "echo", "messages": [{"role": "user", "content": "x"}]})
                if resp.status_code != 200:
                    failures.append((resp.status_code, resp.text))

    thread = threading.Thread(target=drive)
    thread.start()
    try:
        for text in broken:
            path.write_text(text)
            ok = asyncio.run_coroutine_threadsafe(gw.holder.reload(), _gateway_loop(gw)).result(30)
            assert ok is False
            assert gw.holder.last_error
    finally:
        stop.set()
        thread.join(10)
    assert failures == []
    assert gw.holder.reloads == 0
