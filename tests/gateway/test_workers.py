"""`gateway serve --workers N`: several processes on one port (SO_REUSEPORT), supervised by the parent.

Which worker answers is the kernel's choice per connection, so the tests use fresh connections and read
each worker's own counters from `/metrics` (every worker has its own registry).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from gateway.workers import listen_socket
from tests.fakes.upstream import FakeUpstream
from tests.gateway_server import free_port

START_TIMEOUT_S = 90.0  # two processes import the stack side by side on a busy 2-core machine
POLICY = """
backends: [{{name: fake, type: openai, base_url: "{url}/v1"}}]
models: [{models}]
telemetry: {{access_log: false, log_level: warning}}
"""


def _policy(url: str, *names: str) -> str:
    models = ", ".join(f"{{name: {n}, targets: [{{backend: fake, model: echo-model}}]}}" for n in names)
    return POLICY.format(url=url, models=models)


def _start(config: Path, port: int, workers: int = 2) -> subprocess.Popen[bytes]:
    args = ["serve", "--config", str(config), "--port", str(port), "--workers", str(workers)]
    return subprocess.Popen([sys.executable, "-m", "gateway.cli", *args], cwd=config.parent)


def _wait_healthy(proc: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        assert proc.poll() is None, f"gateway exited with {proc.returncode}"
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "no /health in time"
        time.sleep(0.1)


def _workers(pid: int) -> list[int]:
    """Child processes serving HTTP (the multiprocessing resource tracker is not one of them)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text(errors="replace")]


@pytest.fixture(scope="module")
def two_workers(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, int]]:
    config = tmp_path_factory.mktemp("workers") / "policy.yaml"
    config.write_text(_policy(upstream.url, "echo"))
    port = free_port()
    proc = _start(config, port)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(proc, url)
        # Both workers must be up, not just the first: every process answers /health once started.
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(_workers(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        yield config, url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _served(url: str) -> int:
    """This worker's count of answered `echo` requests (a fresh connection lands on any worker)."""
    text = httpx.get(url + "/metrics", timeout=5).text
    found = re.search(r'^gateway_requests_total\{[^}]*model="echo"[^}]*status="200"[^}]*\} ([\d.]+)$', text, re.M)
    return int(float(found.group(1))) if found else 0


def test_both_workers_answer_on_one_port(two_workers: tuple[Path, str, int]) -> None:
    _, url, pid = two_workers
    assert len(_workers(pid)) == 2
    sent = 41  # odd: two workers that both served cannot show equal counts
    for i in range(sent):
        with OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as client:  # a new connection each
            answer = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": f"hi {i}"}])
        assert answer.choices[0].message.content
    seen = {_served(url) for _ in range(40)}
    # Two distinct per-worker counts that add up to every request: both workers served, nothing lost.
    assert len(seen) == 2 and 0 not in seen, seen
    assert sum(seen) == sent


def test_sighup_reloads_every_worker(two_workers: tuple[Path, str, int], upstream: FakeUpstream) -> None:
    config, url, pid = two_workers
    config.write_text(_policy(upstream.url, "echo", "echo-two"))
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + 30
    while True:
        listed = [{m["id"] for m in httpx.get(url + "/v1/models", timeout=5).json()["data"]} for _ in range(20)]
        if all("echo-two" in models for models in listed):
            break
        assert time.monotonic() < deadline, listed
        time.sleep(0.2)
    assert len(_workers(pid)) == 2  # reloaded in place, not restarted


def test_sigterm_stops_every_worker(upstream: FakeUpstream, tmp_path: Path) -> None:
    config = tmp_path / "policy.yaml"
    config.write_text(_policy(upstream.url, "echo"))
    port = free_port()
    proc = _start(config, port)
    _wait_healthy(proc, f"http://127.0.0.1:{port}")
    workers = _workers(proc.pid)
    assert workers
    proc.terminate()
    assert proc.wait(timeout=60) == 0
    for worker in workers:
        assert not Path(f"/proc/{worker}").exists()  # exited and reaped by the supervisor


def test_a_port_taken_without_reuseport_stops_the_supervisor(upstream: FakeUpstream, tmp_path: Path) -> None:
    config = tmp_path / "policy.yaml"
    config.write_text(_policy(upstream.url, "echo"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = _start(config, taken.getsockname()[1])
        assert proc.wait(timeout=START_TIMEOUT_S) == 1


def test_reuseport_sockets_bind_the_same_port() -> None:
    first = listen_socket("127.0.0.1", 0)
    try:
        second = listen_socket("127.0.0.1", first.getsockname()[1])
        second.close()
    finally:
        first.close()
