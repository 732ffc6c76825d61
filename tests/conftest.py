from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fakes.upstream import FakeUpstream
from tests.gateway_server import GatewayServer
from tests.redis_server import RedisServer

CLIENT_KEY = "sk-client-test-key-0123456789"
UPSTREAM_KEY = "sk-upstream-secret-9876543210"
ANTHROPIC_KEY = "sk-ant-upstream-secret-5555"

FAULTS = [
    "fail-500",
    "fail-502",
    "fail-503",
    "fail-429",
    "fail-400",
    "fail-401",
    "non-json",
    "bad-json",
    "cut-stream",
    "reset",
    "no-usage",
    "no-done",
    "slow-stream-50",
    "slow-2000",
    "huge",
]


def standard_policy(upstream_url: str) -> str:
    """Every model name a test needs, all pointing at the fake upstream."""

    def backends(fault: str) -> tuple[str, str]:
        # Whole answers are bounded by total_s (first_byte_s only bounds streams): slow faults get 1 s.
        short = fault.startswith("slow-") and not fault.startswith("slow-stream")
        return ("fake-short", "claude-short") if short else ("fake", "claude")

    # The fault models fail on purpose, again and again: their circuits must not open between tests.
    never_open = "circuit: {failures: 1000000}"
    fault_models = "\n".join(
        f"  - {{name: {f}, targets: [{{backend: {backends(f)[0]}, model: {f}}}], {never_open}}}\n"
        f"  - {{name: claude-{f}, targets: [{{backend: {backends(f)[1]}, model: {f}}}], {never_open}}}"
        for f in FAULTS
    )
    return f"""
backends:
  - name: fake
    type: openai
    base_url: "{upstream_url}/v1"
    api_key: "${{TEST_UPSTREAM_KEY:-{UPSTREAM_KEY}}}"
    timeouts: {{connect_s: 2, first_byte_s: 1.0, idle_s: 5, total_s: 30}}
  - name: claude
    type: anthropic
    base_url: "{upstream_url}"
    api_key: "{ANTHROPIC_KEY}"
    timeouts: {{connect_s: 2, first_byte_s: 1.0, idle_s: 5, total_s: 30}}
  - name: fake-short
    type: openai
    base_url: "{upstream_url}/v1"
    api_key: "{UPSTREAM_KEY}"
    timeouts: {{connect_s: 2, first_byte_s: 1.0, idle_s: 5, total_s: 1.0}}
  - name: claude-short
    type: anthropic
    base_url: "{upstream_url}"
    api_key: "{ANTHROPIC_KEY}"
    timeouts: {{connect_s: 2, first_byte_s: 1.0, idle_s: 5, total_s: 1.0}}
  - name: nowhere
    type: openai
    base_url: "http://127.0.0.1:9/v1"
    timeouts: {{connect_s: 1}}
models:
  - name: echo
    targets: [{{backend: fake, model: echo-model}}]
  - name: claude
    targets: [{{backend: claude, model: claude-echo}}]
  - name: decorated
    targets: [{{backend: fake, model: echo-model}}]
    plugins: [{{use: prompt_decorator, system: "Be brief."}}]
  - name: small-window
    targets: [{{backend: fake, model: echo-model}}]
    context_window: 40
  - name: unreachable
    targets: [{{backend: nowhere, model: anything}}]
{fault_models}
auth:
  keys:
    - {{name: team-a, key: "{CLIENT_KEY}"}}
limits:
  max_body_bytes: 65536
  max_messages: 64
"""


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


@pytest.fixture(scope="session")
def gateway(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    path = tmp_path_factory.mktemp("policy") / "policy.yaml"
    path.write_text(standard_policy(upstream.url))
    with GatewayServer(path) as server:
        yield server


@pytest.fixture
def make_gateway(tmp_path: Path) -> Iterator[Callable[[str], GatewayServer]]:
    """Start a gateway with a policy of the test's own; stopped at the end of the test."""
    started: list[GatewayServer] = []

    def make(policy: str) -> GatewayServer:
        path = tmp_path / f"policy-{len(started)}.yaml"
        path.write_text(policy)
        server = GatewayServer(path).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private Redis (not the machine's shared one), so tests may kill and restart it."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.kill()


def pytest_collection_finish(session: pytest.Session) -> None:
    # As the server does after start-up: long-lived objects out of full GC passes, so a pass does not
    # stall a test's 50 ms Redis timeout (torch and friends make a full pass take ~100 ms).
    import gc

    gc.collect()
    gc.freeze()
