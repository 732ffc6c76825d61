"""guardrails_ai through a real gateway with the OpenAI SDK, the real guardrails-ai worker in
`.venv-guardrails` (`make guardrails-venv`), and validators of two kinds: the shipped examples and custom
ones registered in code (a module this file writes, listed in the policy's `modules`).

The fake upstream echoes "echo: " + the prompt, one word per streamed chunk, so a prompt chooses the answer
the output validators see. A worker takes seconds to import guardrails, so one gateway serves the module.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from plugins.guardrails_ai import GuardrailsAi
from tests.fakes.upstream import FakeUpstream
from tests.gateway_server import GatewayServer

CUSTOM_VALIDATORS = '''
import os
import socket
import time

from guardrails.validators import FailResult, PassResult, Validator, register_validator


@register_validator(name="test/shouting", data_type="string")
class Shouting(Validator):
    def _validate(self, value, metadata):
        loud = [w for w in str(value).split() if len(w) > 2 and w.isupper()]
        return FailResult(error_message=f"{len(loud)} shouted words") if len(loud) >= 3 else PassResult()


@register_validator(name="test/topic", data_type="string")
class Topic(Validator):
    def __init__(self, topic, on_fail=None, **kwargs):
        super().__init__(on_fail=on_fail, topic=topic, **kwargs)
        self.topic = topic

    def _validate(self, value, metadata):
        return FailResult(error_message="off topic") if self.topic in str(value).lower() else PassResult()


@register_validator(name="test/sleepy", data_type="string")
class Sleepy(Validator):
    def _validate(self, value, metadata):
        if "slowpoke" in str(value):
            time.sleep(3.5)
        return PassResult()


@register_validator(name="test/crash", data_type="string")
class Crash(Validator):
    def _validate(self, value, metadata):
        if "crash now" in str(value):
            os._exit(3)
        return PassResult()


@register_validator(name="test/phone_home", data_type="string")
class PhoneHome(Validator):
    """A validator that calls home: the worker must refuse it and report it."""

    def _validate(self, value, metadata):
        if "phone home" in str(value):
            try:
                socket.create_connection(("canary.invalid", 443), timeout=1).close()
            except OSError:
                pass
        return PassResult()
'''


def write_validators(folder: Path) -> Path:
    (folder / "gw_test_validators.py").write_text(CUSTOM_VALIDATORS)
    return folder


def policy(upstream: FakeUpstream, folder: Path) -> str:
    return rf"""
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
        on_error: block
        timeout_s: 10
        validators:
          - {{use: gateway/deny_pattern, name: forbidden, args: {{pattern: 'forbidden\s+word'}}, on_fail: exception}}
          - {{use: gateway/competitor_check, args: {{competitors: [Acme, Globex]}}, on_fail: fix, stages: [input]}}
          - use: gateway/deny_pattern
            args: {{pattern: 'project\s+x', replacement: "[CODENAME]"}}
            on_fail: fix_reask
            stages: [output]
          - {{use: test/shouting, on_fail: noop}}
          - {{use: test/topic, args: {{topic: kaboom}}, on_fail: refrain, stages: [output]}}
"""


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    folder = write_validators(tmp_path_factory.mktemp("validators"))
    path = tmp_path_factory.mktemp("policy") / "policy.yaml"
    path.write_text(policy(upstream, folder))
    with GatewayServer(path) as server:
        yield server


@pytest.fixture
def sdk(gw: GatewayServer) -> OpenAI:
    return OpenAI(base_url=gw.base_url, api_key="sk-unused", max_retries=0, timeout=30)


def guard_of(gw: GatewayServer) -> GuardrailsAi:
    (plugin,) = [p for p in gw.holder.current.plugins if isinstance(p, GuardrailsAi)]
    return plugin


def mark() -> str:
    return f"m{uuid.uuid4().hex[:10]}"


def upstream_bodies(upstream: FakeUpstream, marker: str) -> list[Any]:
    return [r.body for r in list(upstream.requests) if marker in json.dumps(r.body, ensure_ascii=False)]


def ask(sdk: OpenAI, prompt: str, model: str = "guarded") -> Any:
    return sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}])


def raw_stream(sdk: OpenAI, prompt: str) -> bytes:
    with sdk.chat.completions.with_streaming_response.create(
        model="guarded", messages=[{"role": "user", "content": prompt}], stream=True
    ) as resp:
        assert resp.status_code == 200
        return b"".join(resp.iter_bytes())


def chunks(raw: bytes) -> list[dict[str, Any]]:
    lines = [line[len("data: ") :] for line in raw.decode().splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def streamed_text(raw: bytes) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks(raw) if c["choices"])


def verdicts(gw: GatewayServer, stage: str, action: str) -> float:
    text = httpx.get(f"{gw.url}/metrics", timeout=5).text
    labels = {"plugin": "guardrails_ai", "stage": stage, "action": action}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gateway_guard_verdicts_total" and sample.labels == labels:
                return float(sample.value)
    return 0.0


def assert_blocked(info: pytest.ExceptionInfo[openai.BadRequestError]) -> None:
    assert info.value.status_code == 400
    assert info.value.response.json() == {
        "error": {
            "message": "This request was blocked by the gateway's content policy.",
            "type": "invalid_request_error",
            "param": None,
            "code": "content_policy_violation",
        }
    }


# --- requests ---------------------------------------------------------------------------------------------


def test_a_blocked_request_is_a_generic_400_that_never_reaches_upstream(
    gw: GatewayServer, sdk: OpenAI, upstream: FakeUpstream
) -> None:
    marker = mark()
    before = verdicts(gw, "input", "block")
    with pytest.raises(openai.BadRequestError) as info:
        ask(sdk, f"{marker} say the forbidden   word please")
    assert_blocked(info)
    assert "forbidden" not in info.value.response.text  # neither the validator's name nor the match
    assert upstream_bodies(upstream, marker) == []
    assert verdicts(gw, "input", "block") == before + 1


def test_a_blocked_streamed_request_gets_the_400_before_any_chunk(sdk: OpenAI, upstream: FakeUpstream) -> None:
    marker = mark()
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(
            model="guarded", messages=[{"role": "user", "content": f"{marker} forbidden word"}], stream=True
        )
    assert_blocked(info)
    assert upstream_bodies(upstream, marker) == []


def test_a_fix_rewrites_what_upstream_receives(sdk: OpenAI, upstream: FakeUpstream) -> None:
    marker = mark()
    reply = ask(sdk, f"{marker} is acme better than Globex?")
    assert reply.choices[0].message.content == f"echo: {marker} is [COMPETITOR] better than [COMPETITOR]?"
    (body,) = upstream_bodies(upstream, marker)
    assert body["messages"][-1]["content"] == f"{marker} is [COMPETITOR] better than [COMPETITOR]?"


def test_a_custom_noop_validator_flags_and_passes(gw: GatewayServer, sdk: OpenAI, upstream: FakeUpstream) -> None:
    marker = mark()
    before = verdicts(gw, "input", "flag")
    reply = ask(sdk, f"{marker} WHY IS THIS LOUD")
    assert reply.choices[0].message.content == f"echo: {marker} WHY IS THIS LOUD"
    assert reply.choices[0].finish_reason == "stop"
    assert len(upstream_bodies(upstream, marker)) == 1
    assert verdicts(gw, "input", "flag") == before + 1


def test_a_clean_request_passes_unchanged(sdk: OpenAI, upstream: FakeUpstream) -> None:
    marker = mark()
    reply = ask(sdk, f"{marker} what is the capital of France?")
    assert reply.choices[0].message.content == f"echo: {marker} what is the capital of France?"
    (body,) = upstream_bodies(upstream, marker)
    assert body["messages"] == [{"role": "user", "content": f"{marker} what is the capital of France?"}]


# --- answers ----------------------------------------------------------------------------------------------


def test_a_refrained_answer_ends_with_content_filter(gw: GatewayServer, sdk: OpenAI) -> None:
    before = verdicts(gw, "output", "block")
    reply = ask(sdk, "then there was a kaboom")  # the topic validator checks answers only
    assert reply.choices[0].finish_reason == "content_filter"
    assert reply.choices[0].message.content == ""
    assert verdicts(gw, "output", "block") == before + 1


def test_an_answer_is_fixed(sdk: OpenAI) -> None:
    reply = ask(sdk, "tell me about Project X today")
    assert reply.choices[0].message.content == "echo: tell me about [CODENAME] today"
    assert reply.choices[0].finish_reason == "stop"


def test_a_streamed_answer_is_fixed_across_chunks(sdk: OpenAI) -> None:
    raw = raw_stream(sdk, "First part. Then project x appears. And the end")  # "project " and "x " are two chunks
    assert b"project" not in raw.lower()
    assert streamed_text(raw) == "echo: First part. Then [CODENAME] appears. And the end"
    assert chunks(raw)[-1]["choices"][0]["finish_reason"] == "stop"


def test_a_streamed_answer_is_cut_with_content_filter(gw: GatewayServer, sdk: OpenAI) -> None:
    before = verdicts(gw, "output", "block")
    raw = raw_stream(sdk, "All calm here. Then a big kaboom shook the street. More text")
    assert b"kaboom" not in raw
    text = streamed_text(raw)
    assert text == "echo: All calm here. "  # the checked sentence before it went out; nothing after
    reasons = [c["choices"][0]["finish_reason"] for c in chunks(raw) if c["choices"]]
    assert reasons[-1] == "content_filter" and "stop" not in reasons
    assert verdicts(gw, "output", "block") == before + 1


def test_a_streamed_answer_through_the_sdk_iterator(sdk: OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model="guarded", messages=[{"role": "user", "content": "x project   X y"}], stream=True
    )
    parts = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(parts) == "echo: x [CODENAME] y"


def test_ready_reports_the_worker(gw: GatewayServer) -> None:
    body = httpx.get(f"{gw.url}/ready", timeout=5).json()
    check = body["checks"]["guardrails_ai"]
    assert check["ok"] is True and check["degraded"] is False
    assert f"worker {guard_of(gw).worker.pid} up (guardrails 0.11" in check["detail"]


# --- the worker crashes (on_error: block); last, as it restarts the module's worker ---------------------------


def test_a_killed_worker_blocks_with_on_error_block_then_restarts(gw: GatewayServer, sdk: OpenAI) -> None:
    worker = guard_of(gw).worker
    pid = worker.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while worker.pid == pid and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(openai.BadRequestError) as info:
        ask(sdk, "a perfectly clean question")  # the worker is down: on_error block
    assert_blocked(info)
    assert httpx.get(f"{gw.url}/ready", timeout=5).status_code == 503
    deadline = time.monotonic() + 90
    while True:  # the next calls restart it (after a short backoff)
        try:
            reply = ask(sdk, "a perfectly clean question")
            break
        except openai.BadRequestError:
            assert time.monotonic() < deadline, f"the worker did not come back: {worker.last_error}"
            time.sleep(0.5)
    assert reply.choices[0].message.content == "echo: a perfectly clean question"
    assert worker.pid not in (None, pid)
    with pytest.raises(openai.BadRequestError):
        ask(sdk, "the forbidden word again")  # the new worker has the same validators
