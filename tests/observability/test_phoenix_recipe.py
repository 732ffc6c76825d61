"""The Arize Phoenix recipe of docs/observability.md, followed for real: Phoenix from its venv on free
ports, a gateway exporting OTLP to it, a chat request, and the request's spans read back through Phoenix's
REST API. Left out of the default run (`make test-phoenix`): the venv is ~850 MB and Phoenix's first
start takes about a minute."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tests.conftest import CLIENT_KEY
from tests.fakes.upstream import FakeUpstream
from tests.gateway_server import GatewayServer, free_port
from tests.observability.test_request_log import policy, rows

pytestmark = pytest.mark.phoenix
PHOENIX = Path(os.environ.get("PHOENIX_VENV", Path.home() / ".cache/llm-gateway/venv-phoenix")) / "bin" / "phoenix"
PROJECT = "llm-gateway-recipe"


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    assert PHOENIX.exists(), "Arize Phoenix is not installed: run `make phoenix-venv` first"
    port = free_port()
    env = {
        **os.environ,
        "PHOENIX_WORKING_DIR": str(tmp_path_factory.mktemp("phoenix")),
        "PHOENIX_PORT": str(port),
        "PHOENIX_GRPC_PORT": str(free_port()),
        "PHOENIX_HOST": "127.0.0.1",
    }
    log = tmp_path_factory.mktemp("phoenix-log") / "phoenix.log"
    with log.open("wb") as out:
        process = subprocess.Popen([str(PHOENIX), "serve"], env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240  # migrations on first start: about a minute on a busy 2-core machine
        while time.monotonic() < deadline:
            assert process.poll() is None, f"Phoenix exited: {log.read_text()[-3000:]}"
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            raise AssertionError(f"Phoenix did not start: {log.read_text()[-3000:]}")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def spans_of(phoenix: str, trace_id: str, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        answer = httpx.get(f"{phoenix}/v1/projects/{PROJECT}/spans", params={"limit": 100}, timeout=10)
        if answer.status_code == 200:
            found = [s for s in answer.json()["data"] if s["context"]["trace_id"] == trace_id]
            if any(s["name"].startswith("chat ") for s in found):
                return found
        time.sleep(0.5)
    raise AssertionError(f"no spans of trace {trace_id} in Phoenix project {PROJECT}: {found}")


def test_gateway_traces_show_up_in_phoenix(
    phoenix: str,
    upstream: FakeUpstream,
    make_gateway: Callable[[str], GatewayServer],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", f"openinference.project.name={PROJECT}")
    telemetry = {"otlp_endpoint": phoenix, "service_name": "llm-gateway", "otlp_metrics": False}
    gw = make_gateway(policy(upstream.url, {"path": str(tmp_path / "requests.db")}, telemetry=telemetry))
    sdk = OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0)
    answer = sdk.chat.completions.with_raw_response.create(
        model="echo", messages=[{"role": "user", "content": "hello phoenix"}]
    )
    request_id = answer.headers["x-request-id"]
    # The request log knows the trace: that is how an operator goes from a log line to Phoenix.
    record = rows(tmp_path / "requests.db", 1)[0]
    assert record["request_id"] == request_id and record["trace_id"]

    spans = spans_of(phoenix, record["trace_id"])
    by_name = {s["name"]: s for s in spans}
    server = by_name["POST /v1/chat/completions"]
    client = by_name["chat echo-model"]
    assert server["context"]["span_id"] == record["span_id"] and server["parent_id"] is None
    assert client["attributes"]["gen_ai.request.model"] == "echo-model"
    assert client["attributes"]["gen_ai.operation.name"] == "chat"
    usage = answer.parse().usage
    assert usage is not None
    assert client["attributes"]["gen_ai.usage.input_tokens"] == usage.prompt_tokens
    assert client["attributes"]["gen_ai.usage.output_tokens"] == usage.completion_tokens
