"""End to end: the OpenAI SDK -> `gateway serve` (policies/local-vllm.yaml) -> two REAL vLLM servers (Gemma 3 270M
on this CPU, one with ngram speculative decoding). Run by `make e2e`, which starts them first (`make local-models`);
left out of `make test` by the `e2e` marker. The fixture also runs `local_models.py up`, which returns at once when
both servers answer, so `pytest -m e2e tests/e2e` works by itself too.

What is real here: generated text (not an echo), usage counted by vLLM, the choice of server (`speculative_aware`
over scraped /metrics), vLLM's own speculative-decoding counters, the gateway's access log and its
OpenTelemetry trace (exported to a real OTLP receiver).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from openai import OpenAI

from tests.fakes.otlp import OtlpReceiver
from tests.gateway_server import GatewayProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[2]
PLAIN = "http://127.0.0.1:8000"
SPEC = "http://127.0.0.1:8001"
SERVERS = {"gemma": PLAIN, "gemma-spec": SPEC}
ACCEPTED = "vllm:spec_decode_num_accepted_tokens_total"
SUCCESS = "vllm:request_success_total"
# Repetitive text the ngram drafter can copy from: drafts get accepted.
REPETITIVE = (
    "Copy this list exactly, then stop: red apple, green pear, red apple, green pear, red apple, green pear, "
    "red apple, green pear, red apple, green pear."
)


def metric(base: str, name: str) -> float:
    """Sum of a counter's samples at a vLLM server's /metrics."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as resp:
        page = resp.read().decode()
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? ([0-9.eE+-]+)$", re.MULTILINE)
    values = [float(v) for v in pattern.findall(page)]
    assert values, f"{name} not at {base}/metrics"
    return sum(values)


def scraped_gauges(gw: GatewayProcess) -> dict[tuple[str, str], float]:
    """The gateway's gauges of scraped vLLM stats, by (name, backend)."""
    with urllib.request.urlopen(f"{gw.url}/metrics", timeout=5) as resp:
        page = resp.read().decode()
    found = re.findall(r'^(gateway_backend_[a-z_]+)\{backend="([^"]+)"\} ([0-9.eE+-]+)$', page, re.MULTILINE)
    return {(name, backend): float(value) for name, backend, value in found}


def direct(backend: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    """The same request sent straight to the vLLM server the gateway chose: what the model itself answers."""
    body = {
        "model": "gemma-3-270m",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    request = urllib.request.Request(
        f"{SERVERS[backend]}/v1/chat/completions", json.dumps(body).encode(), {"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as resp:
        answer: dict[str, Any] = json.load(resp)
    return answer


def access_record(gw: GatewayProcess, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """The gateway's access-log line for one request (written after the answer is sent)."""
    deadline = time.monotonic() + timeout
    while True:
        for line in gw.output().splitlines():
            start = line.find('{"request_id"')
            if start >= 0 and f'"{request_id}"' in line:
                record: dict[str, Any] = json.loads(line[start:])
                return record
        assert time.monotonic() < deadline, f"no access-log line for {request_id}:\n{gw.output()[-3000:]}"
        time.sleep(0.1)


def assert_traced(gw: GatewayProcess, request_id: str, backend: str, usage: dict[str, int]) -> None:
    """The call's access-log record and its OpenTelemetry trace (exported over OTLP to a real receiver) carry
    the backend and the usage."""
    record = access_record(gw, request_id)
    assert (record["status"], record["model"], record["backend"]) == (200, "local", backend)
    assert (record["prompt_tokens"], record["completion_tokens"]) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert gw.receiver is not None
    spans = gw.receiver.trace_of(request_id)
    server = next(s for s in spans if s.kind == "SERVER")
    assert server.attributes["gateway.backend"] == backend
    assert receiver_waits_for_client_span(gw.receiver, server.trace_id)
    calls = [s for s in gw.receiver.trace_of(request_id) if s.kind == "CLIENT"]
    assert len(calls) == 1 and calls[0].attributes["gateway.backend"] == backend
    call = calls[0].attributes
    assert call["gen_ai.provider.name"] == "vllm" and call["gen_ai.operation.name"] == "chat"
    assert (call["gen_ai.usage.input_tokens"], call["gen_ai.usage.output_tokens"]) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert (server.attributes["gen_ai.usage.input_tokens"], server.attributes["gen_ai.usage.output_tokens"]) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )


def receiver_waits_for_client_span(receiver: OtlpReceiver, trace_id: str) -> bool:
    return receiver.wait_for(lambda: any(s.trace_id == trace_id and s.kind == "CLIENT" for s in receiver.spans))


@pytest.fixture(scope="module")
def local_models() -> None:
    up = subprocess.run([sys.executable, str(REPO / "deploy/local/local_models.py"), "up"], timeout=1100, check=False)
    assert up.returncode == 0, "the local vLLM servers did not start (output above; `make local-models` to retry)"


@pytest.fixture(scope="module")
def gateway(local_models: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    config = tmp_path_factory.mktemp("e2e") / "local-vllm.yaml"
    policy = yaml.safe_load((REPO / "policies/local-vllm.yaml").read_text())
    with OtlpReceiver() as receiver:
        policy.setdefault("telemetry", {}).update(otlp_endpoint=receiver.http_url, metrics_interval_s=1)
        config.write_text(yaml.safe_dump(policy))
        gw = GatewayProcess(config)
        gw.receiver = receiver
        try:
            gw.wait_healthy(time.monotonic() + 60)
            yield gw
        finally:
            gw.stop()
    assert "Traceback" not in gw.output(), gw.output()


@pytest.fixture(scope="module")
def client(gateway: GatewayProcess) -> Iterator[OpenAI]:
    with OpenAI(base_url=gateway.base_url, api_key="e2e", max_retries=0, timeout=120) as sdk:
        yield sdk


def test_plain_chat_is_generated_by_a_real_model(gateway: GatewayProcess, client: OpenAI) -> None:
    prompt = "Once upon a time, there was a little"
    raw = client.chat.completions.with_raw_response.create(
        model="local", messages=[{"role": "user", "content": prompt}], max_tokens=40, temperature=0
    )
    completion = raw.parse()
    text = completion.choices[0].message.content or ""
    assert len(re.findall(r"[A-Za-z]{3,}", text)) >= 5, text  # words, not an empty or garbled answer
    assert not text.startswith("echo:")  # not the fake upstream
    assert completion.choices[0].finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage is not None
    assert 5 < usage.prompt_tokens < 60  # Gemma's tokenizer plus the chat template, counted by vLLM
    assert 0 < usage.completion_tokens <= 40
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    backend = raw.headers["x-gateway-backend"]
    assert backend in SERVERS
    # Greedy decoding: the server asked directly writes the very same answer with the same usage.
    itself = direct(backend, prompt, 40)
    assert text == itself["choices"][0]["message"]["content"]
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        itself["usage"]["prompt_tokens"],
        itself["usage"]["completion_tokens"],
    )
    assert_traced(gateway, raw.headers["x-request-id"], backend, usage.model_dump())


def test_streamed_chat_relays_chunks_and_usage(gateway: GatewayProcess, client: OpenAI) -> None:
    prompt = "Write a short story about a robot who learns to paint."
    with client.chat.completions.with_streaming_response.create(
        model="local",
        messages=[{"role": "user", "content": prompt}],
        max_tokens=48,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    ) as resp:
        headers = resp.headers
        chunks = list(resp.parse())
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    text = "".join(deltas)
    assert len([d for d in deltas if d]) > 3, chunks  # streamed in pieces, as generated
    assert len(re.findall(r"[A-Za-z]{3,}", text)) >= 5, text
    usage = chunks[-1].usage
    assert usage is not None and not chunks[-1].choices  # the usage chunk comes last
    assert 0 < usage.completion_tokens <= 48
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    backend = headers["x-gateway-backend"]
    itself = direct(backend, prompt, 48)
    assert text == itself["choices"][0]["message"]["content"]  # every piece relayed, in order
    assert usage.completion_tokens == itself["usage"]["completion_tokens"]
    assert_traced(gateway, headers["x-request-id"], backend, usage.model_dump())


def test_idle_traffic_goes_to_the_speculative_server_and_its_drafts_are_accepted(
    gateway: GatewayProcess, client: OpenAI
) -> None:
    accepted_before = metric(SPEC, ACCEPTED)
    backends = []
    for _ in range(3):
        raw = client.chat.completions.with_raw_response.create(
            model="local", messages=[{"role": "user", "content": REPETITIVE}], max_tokens=40, temperature=0
        )
        backends.append(raw.headers["x-gateway-backend"])
        assert raw.parse().choices[0].message.content
    assert backends == ["gemma-spec"] * 3  # lightly loaded: speculative_aware prefers it
    accepted = metric(SPEC, ACCEPTED)
    assert accepted > accepted_before  # vLLM itself says draft tokens were accepted
    # The gateway scrapes both servers (what speculative_aware decides on) and shows the acceptance rate.
    rate = accepted / metric(SPEC, "vllm:spec_decode_num_draft_tokens_total")
    deadline = time.monotonic() + 10
    while True:
        scraped = scraped_gauges(gateway)
        seen = scraped.get(("gateway_backend_spec_acceptance_rate", "gemma-spec"))
        if (seen is not None and abs(seen - rate) < 0.05) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert seen is not None and abs(seen - rate) < 0.05, (scraped, rate)
    assert {("gateway_backend_kv_cache_usage", b) for b in SERVERS} <= set(scraped)


def test_the_plain_server_answers_its_own_model(gateway: GatewayProcess, client: OpenAI) -> None:
    before = metric(PLAIN, SUCCESS)
    raw = client.chat.completions.with_raw_response.create(
        model="gemma-3-270m", messages=[{"role": "user", "content": "Say hello."}], max_tokens=16, temperature=0
    )
    assert raw.headers["x-gateway-backend"] == "gemma"
    assert raw.parse().choices[0].message.content
    assert metric(PLAIN, SUCCESS) == before + 1
