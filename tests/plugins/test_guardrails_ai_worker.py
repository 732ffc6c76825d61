"""guardrails_ai's worker: no outbound connection, on_error when it is slow, crashes or cannot start, and
validators it refuses. The real worker in `.venv-guardrails`; the custom validators of test_guardrails_ai."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from plugins.guardrails_ai import GuardrailsAi, GuardrailsAiConfig
from plugins.guardrails_ai.client import WorkerClient, WorkerConfigError
from plugins.guardrails_ai.config import DEFAULT_PYTHON
from plugins.guardrails_ai.process import resolve_python, worker_env
from tests.fakes.upstream import FakeUpstream
from tests.gateway_server import GatewayServer
from tests.plugins.test_guardrails_ai import write_validators

# --- no outbound connection ---------------------------------------------------------------------------------


@pytest.mark.parametrize("runner", ["guard", "validator"])
async def test_the_worker_makes_no_outbound_connection(tmp_path: Path, runner: str) -> None:
    """Validators of every kind run, then the worker exits normally (exporters flush at exit): nothing but the
    canary, a validator that deliberately calls home, tried to leave the machine, and that was refused."""
    validators = [
        {"use": "gateway/competitor_check", "args": {"competitors": ["Acme"]}, "on_fail": "fix"},
        {"use": "gateway/deny_pattern", "args": {"pattern": r"forbidden\s+word"}, "on_fail": "exception"},
        {"use": "test/shouting", "args": {}, "on_fail": "noop"},
        {"use": "test/phone_home", "args": {}, "on_fail": "noop"},
    ]
    init = {
        "paths": [str(write_validators(tmp_path))],
        "modules": ["gw_test_validators"],
        "runner": runner,
        "validators": validators,
    }
    client = WorkerClient(resolve_python(DEFAULT_PYTHON), init, start_timeout_s=120, hang_s=60)
    await client.start()
    try:
        texts = ["we use acme", "the forbidden word", "ALL OF THIS LOUD", "nothing to see"]
        results = await client.validate((0, 1, 2), texts, 30)
        assert [r["text"] for r in results] == ["we use [COMPETITOR]", None, None, None]
        assert [[f["index"] for f in r["failures"]] for r in results] == [[0], [1], [2], []]
        assert list(client.outbound) == []

        (canary,) = await client.validate((3,), ["please phone home now"], 30)
        assert canary == {"text": None, "failures": [], "error": None}  # refused at once: the check went on
        assert list(client.outbound) == ["canary.invalid:443"]
    finally:
        await client.close()  # the worker exits: telemetry would be flushed (and reported) here
    assert list(client.outbound) == ["canary.invalid:443"]


def test_the_worker_gets_no_secrets_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    env = worker_env()
    assert "OPENAI_API_KEY" not in env and not any(k.startswith("OTEL_") for k in env)
    assert env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"


# --- validators the worker refuses ------------------------------------------------------------------------------


async def test_an_unknown_validator_fails_the_start_naming_it(tmp_path: Path) -> None:
    cfg = GuardrailsAiConfig.model_validate(
        {"validators": [{"use": "gateway/competitor_check", "args": {"competitors": ["A"]}}, {"use": "nope/x"}]}
    )
    plugin = GuardrailsAi(cfg)
    with pytest.raises(WorkerConfigError) as failure:
        await plugin.start()
    assert "validators[1].use: no validator registered as 'nope/x'" in str(failure.value)
    assert "gateway/deny_pattern" in str(failure.value)  # the known names
    assert not plugin.worker.up


# --- a worker that cannot start (no interpreter) ------------------------------------------------------------


def missing_python_policy(upstream: FakeUpstream, on_error: str) -> str:
    return f"""
backends:
  - {{name: fake, type: openai, base_url: "{upstream.url}/v1"}}
models:
  - name: guarded
    targets: [{{backend: fake, model: echo-model}}]
    plugins:
      - use: guardrails_ai
        python: /nonexistent/venv/bin/python
        on_error: {on_error}
        validators: [{{use: gateway/deny_pattern, args: {{pattern: 'forbidden'}}}}]
  - name: answers-only
    targets: [{{backend: fake, model: echo-model}}]
    plugins:
      - use: guardrails_ai
        python: /nonexistent/venv/bin/python
        on_error: {on_error}
        apply_to: [output]
        validators: [{{use: gateway/deny_pattern, args: {{pattern: 'forbidden'}}}}]
"""


def mark() -> str:
    return f"m{uuid.uuid4().hex[:10]}"


def upstream_bodies(upstream: FakeUpstream, marker: str) -> list[Any]:
    return [r.body for r in list(upstream.requests) if marker in json.dumps(r.body, ensure_ascii=False)]


def ask(gw: GatewayServer, prompt: str, *, stream: bool = False, model: str = "guarded") -> Any:
    sdk = OpenAI(base_url=gw.base_url, api_key="sk-unused", max_retries=0, timeout=30)
    messages: Any = [{"role": "user", "content": prompt}]
    if stream:
        parts = sdk.chat.completions.create(model=model, messages=messages, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
    return sdk.chat.completions.create(model=model, messages=messages).choices[0].message.content


def test_no_worker_with_on_error_allow_passes_texts_and_is_degraded(make_gateway: Any, upstream: FakeUpstream) -> None:
    gw = make_gateway(missing_python_policy(upstream, "allow"))
    marker = mark()
    assert ask(gw, f"{marker} forbidden") == f"echo: {marker} forbidden"
    assert ask(gw, "forbidden too", stream=True) == "echo: forbidden too"
    assert len(upstream_bodies(upstream, marker)) == 1
    ready = httpx.get(f"{gw.url}/ready", timeout=5)
    assert ready.status_code == 200
    check = ready.json()["checks"]["guardrails_ai"]
    assert check["degraded"] is True and "texts pass unchecked" in check["detail"]
    assert "/nonexistent/venv/bin/python" in check["detail"]


def test_no_worker_with_on_error_block_blocks_and_is_not_ready(make_gateway: Any, upstream: FakeUpstream) -> None:
    gw = make_gateway(missing_python_policy(upstream, "block"))
    marker = mark()
    with pytest.raises(openai.BadRequestError) as info:
        ask(gw, f"{marker} a clean question")
    assert info.value.response.json()["error"]["code"] == "content_policy_violation"
    assert upstream_bodies(upstream, marker) == []
    assert httpx.get(f"{gw.url}/ready", timeout=5).status_code == 503
    sdk = OpenAI(base_url=gw.base_url, api_key="sk-unused", max_retries=0, timeout=30)
    messages: Any = [{"role": "user", "content": "a clean question"}]
    plain = sdk.chat.completions.create(model="answers-only", messages=messages).choices[0]
    assert (plain.message.content, plain.finish_reason) == ("", "content_filter")
    stream = sdk.chat.completions.create(model="answers-only", messages=messages, stream=True)
    streamed = [c.choices[0] for c in stream if c.choices]
    assert "".join(c.delta.content or "" for c in streamed) == ""  # the first sentence could not be checked
    assert streamed[-1].finish_reason == "content_filter"


# --- a slow and a crashing worker (on_error: allow) -------------------------------------------------------


@pytest.fixture(scope="module")
def fragile(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    folder = write_validators(tmp_path_factory.mktemp("validators"))
    path = tmp_path_factory.mktemp("policy") / "policy.yaml"
    path.write_text(rf"""
backends:
  - name: fake
    type: openai
    base_url: "{upstream.url}/v1"
    timeouts: {{connect_s: 2, first_byte_s: 10, idle_s: 10, total_s: 30}}
models:
  - name: guarded
    targets: [{{backend: fake, model: echo-model}}]
    plugins:
      - use: guardrails_ai
        paths: ["{folder}"]
        modules: [gw_test_validators]
        on_error: allow
        timeout_s: 1.5
        apply_to: [input]
        runner: guard
        validators:
          - {{use: test/sleepy, on_fail: noop}}
          - {{use: test/crash, on_fail: exception}}
          - {{use: gateway/deny_pattern, args: {{pattern: 'forbidden\s+word'}}, on_fail: exception}}
""")
    with GatewayServer(path) as server:
        yield server


def worker_of(gw: GatewayServer) -> WorkerClient:
    (plugin,) = [p for p in gw.holder.current.plugins if isinstance(p, GuardrailsAi)]
    return plugin.worker


def blocks_again(gw: GatewayServer, within_s: float) -> None:
    """Wait until the worker checks again: the forbidden word is blocked."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            ask(gw, "the forbidden word")
        except openai.BadRequestError:
            return
        assert time.monotonic() < deadline, f"the worker did not come back: {worker_of(gw).last_error}"
        time.sleep(0.3)


def test_a_slow_worker_lets_the_text_through_with_on_error_allow(
    fragile: GatewayServer, upstream: FakeUpstream
) -> None:
    blocks_again(fragile, 60)
    pid = worker_of(fragile).pid
    marker = mark()
    started = time.monotonic()
    assert (
        ask(fragile, f"{marker} slowpoke and the forbidden word") == f"echo: {marker} slowpoke and the forbidden word"
    )
    assert time.monotonic() - started < 3.2  # the 1.5 s timeout, not the validator's 3.5 s sleep
    assert len(upstream_bodies(upstream, marker)) == 1
    blocks_again(fragile, 30)
    assert worker_of(fragile).pid == pid  # slow, not hung: it was not restarted


def test_a_crashing_worker_lets_the_text_through_and_is_restarted(
    fragile: GatewayServer, upstream: FakeUpstream
) -> None:
    blocks_again(fragile, 60)
    pid = worker_of(fragile).pid
    marker = mark()
    assert ask(fragile, f"{marker} crash now, forbidden word") == f"echo: {marker} crash now, forbidden word"
    assert len(upstream_bodies(upstream, marker)) == 1
    blocks_again(fragile, 90)
    assert worker_of(fragile).pid not in (None, pid)
