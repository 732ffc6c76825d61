"""Routing and resilience through a real gateway: strategies, retries, fallbacks, circuit breakers,
stream dispatch up to the first chunk and the per-model deadline.

Every test starts its own gateway (`make_gateway`) and, where it needs to tell backends apart by their
metrics or request logs, its own FakeUpstreams. Prometheus metrics are process-wide, so backend names
carry a random suffix: a gauge read here is this test's, not another gateway's.

Nothing sleeps a fixed time to wait for state: loops poll with deadlines (scrapes, cooldowns).
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.upstream import CUT_STREAM_AFTER, FakeUpstream
from tests.gateway_server import GatewayServer

MakeGateway = Callable[[str], GatewayServer]
MESSAGES: list[Any] = [{"role": "user", "content": "hello routing"}]


# --- helpers ------------------------------------------------------------------------------------------


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def closed_port() -> int:
    """A port nothing listens on (bound, then released): connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def sdk(gateway: GatewayServer, timeout: float = 15) -> OpenAI:
    return OpenAI(base_url=gateway.base_url, api_key="sk-unused", max_retries=0, timeout=timeout)


def chat(client: httpx.Client, model: str, **extra: Any) -> httpx.Response:
    return client.post("/v1/chat/completions", json={"model": model, "messages": MESSAGES, **extra})


def backend_of(client: httpx.Client, model: str) -> str:
    resp = chat(client, model)
    assert resp.status_code == 200, resp.text
    return resp.headers["x-gateway-backend"]


def wait_until_routed(
    client: httpx.Client, model: str, expected: str, *, streak: int = 5, timeout: float = 5.0
) -> None:
    """Send requests until `streak` in a row are served by `expected` (the scrape has caught up)."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    run = 0
    while run < streak:
        assert time.monotonic() < deadline, f"never routed {streak} in a row to {expected!r}; saw {seen[-20:]}"
        backend = backend_of(client, model)
        seen.append(backend)
        run = run + 1 if backend == expected else 0
        if run == 0:
            time.sleep(0.02)  # give the next scrape a moment


def gateway_metric(gateway: GatewayServer, name: str, **labels: str) -> float | None:
    """The value of one series on the gateway's /metrics, or None when it is not there."""
    text = httpx.get(gateway.url + "/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def wait_for_metric(gateway: GatewayServer, name: str, value: float, timeout: float = 5.0, **labels: str) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = gateway_metric(gateway, name, **labels)
        if last is not None and abs(last - value) < 1e-9:
            return
        time.sleep(0.02)
    raise AssertionError(f"{name}{labels} stayed {last!r}, expected {value!r}")


def chat_calls(fake: FakeUpstream, model: str | None = None) -> int:
    return sum(
        1
        for r in list(fake.requests)
        if r.path == "/v1/chat/completions"
        and (model is None or (isinstance(r.body, dict) and r.body["model"] == model))
    )


def sse_events(resp: httpx.Response) -> list[str]:
    """The `data:` payloads of an SSE response, in order."""
    return [line[len("data: ") :] for line in resp.iter_lines() if line.startswith("data: ")]


class TimedRequests(list):  # type: ignore[type-arg]
    """A FakeUpstream.requests replacement that also notes when each request arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def append(self, item: Any) -> None:
        self.times.append(time.monotonic())
        super().append(item)

    def clear(self) -> None:
        self.times.clear()
        super().clear()


@pytest.fixture
def fakes() -> Iterator[Callable[[], FakeUpstream]]:
    """Start extra FakeUpstreams (distinct backends with their own metrics and logs); stopped after the test."""
    started: list[FakeUpstream] = []

    def make() -> FakeUpstream:
        fake = FakeUpstream().start()
        started.append(fake)
        return fake

    yield make
    for fake in started:
        fake.stop()


def openai_backend(
    name: str, url: str, timeouts: str = "{connect_s: 2, first_byte_s: 5, idle_s: 5, total_s: 30}"
) -> str:
    return f'  - {{name: {name}, type: openai, base_url: "{url}/v1", timeouts: {timeouts}}}\n'


def vllm_backend(name: str, url: str, extra: str = "") -> str:
    return f'  - {{name: {name}, type: vllm, base_url: "{url}/v1", scrape_interval_s: 0.05{extra}}}\n'


# --- strategies -----------------------------------------------------------------------------------------


def test_weighted_split_follows_weights(make_gateway: MakeGateway, upstream: FakeUpstream) -> None:
    a, b = uid("heavy"), uid("light")
    gw = make_gateway(
        "backends:\n"
        + openai_backend(a, upstream.url)
        + openai_backend(b, upstream.url)
        + f"""models:
  - name: split
    strategy: weighted
    targets: [{{backend: {a}, model: echo-model, weight: 3}}, {{backend: {b}, model: echo-model, weight: 1}}]
"""
    )
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        served = [backend_of(client, "split") for _ in range(200)]
    heavy = served.count(a)
    assert heavy + served.count(b) == 200
    # Expected 150 (sd ~6.1): +-25 is about 4 standard deviations.
    assert 125 <= heavy <= 175, f"3:1 weights gave {heavy} vs {200 - heavy}"


def test_weight_zero_target_unused_while_the_other_is_healthy(
    make_gateway: MakeGateway, upstream: FakeUpstream
) -> None:
    live, spare = uid("live"), uid("spare")
    gw = make_gateway(
        "backends:\n"
        + openai_backend(live, upstream.url)
        + openai_backend(spare, upstream.url)
        + f"""models:
  - name: zero
    targets: [{{backend: {spare}, model: echo-model, weight: 0}}, {{backend: {live}, model: echo-model, weight: 1}}]
"""
    )
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        served = {backend_of(client, "zero") for _ in range(60)}
    assert served == {live}


def test_least_busy_follows_scraped_queues(make_gateway: MakeGateway, fakes: Callable[[], FakeUpstream]) -> None:
    fake_a, fake_b = fakes(), fakes()
    a, b = uid("vllm-a"), uid("vllm-b")
    fake_a.metrics["vllm:num_requests_waiting"] = 5
    fake_b.metrics["vllm:num_requests_waiting"] = 0
    gw = make_gateway(
        "backends:\n"
        + vllm_backend(a, fake_a.url)
        + vllm_backend(b, fake_b.url)
        + f"""models:
  - name: busy
    strategy: least_busy
    targets: [{{backend: {a}, model: echo-model}}, {{backend: {b}, model: echo-model}}]
"""
    )
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        wait_until_routed(client, "busy", b)
        assert {backend_of(client, "busy") for _ in range(10)} == {b}

        fake_a.metrics["vllm:num_requests_waiting"] = 0
        fake_b.metrics["vllm:num_requests_waiting"] = 5
        wait_until_routed(client, "busy", a)
        assert {backend_of(client, "busy") for _ in range(10)} == {a}
    # The backends saw the requests the headers claim, and were scraped.
    assert chat_calls(fake_a) >= 15 and chat_calls(fake_b) >= 15
    assert any(r.path == "/metrics" for r in list(fake_a.requests))


def test_speculative_aware_prefers_idle_speculative_backend(
    make_gateway: MakeGateway, fakes: Callable[[], FakeUpstream]
) -> None:
    fake_s, fake_p = fakes(), fakes()
    spec, plain = uid("spec"), uid("plain")
    # Spec-decode counters, rendered by the fake (as gauges, which the scraper matches by sample name).
    fake_s.metrics["vllm:spec_decode_num_draft_tokens_total"] = 200
    fake_s.metrics["vllm:spec_decode_num_accepted_tokens_total"] = 150
    gw = make_gateway(
        "backends:\n"
        + vllm_backend(spec, fake_s.url, ", speculative: true")
        + vllm_backend(plain, fake_p.url)
        + f"""models:
  - name: spec-chat
    strategy: speculative_aware
    speculative: {{max_running: 4, max_waiting: 0, max_kv_cache: 0.8}}
    targets: [{{backend: {plain}, model: echo-model}}, {{backend: {spec}, model: echo-model}}]
"""
    )
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        wait_until_routed(client, "spec-chat", spec)  # idle speculative server first
        assert {backend_of(client, "spec-chat") for _ in range(10)} == {spec}

        fake_s.metrics["vllm:num_requests_running"] = 10  # above max_running: drafting now costs
        wait_until_routed(client, "spec-chat", plain)
        assert {backend_of(client, "spec-chat") for _ in range(10)} == {plain}

        fake_s.metrics["vllm:num_requests_running"] = 1
        wait_until_routed(client, "spec-chat", spec)

        fake_s.metrics["vllm:num_requests_waiting"] = 1  # anything queued: no longer lightly loaded
        wait_until_routed(client, "spec-chat", plain)
        assert {backend_of(client, "spec-chat") for _ in range(10)} == {plain}

    wait_for_metric(gw, "gateway_backend_requests_waiting", 1.0, backend=spec)
    wait_for_metric(gw, "gateway_backend_requests_waiting", 0.0, backend=plain)
    wait_for_metric(gw, "gateway_backend_requests_running", 1.0, backend=spec)
    wait_for_metric(gw, "gateway_backend_spec_acceptance_rate", 0.75, backend=spec)
    # No spec-decode counters on the plain server: no acceptance rate for it.
    assert gateway_metric(gw, "gateway_backend_spec_acceptance_rate", backend=plain) is None


def test_latency_prefers_the_fast_target(make_gateway: MakeGateway, upstream: FakeUpstream) -> None:
    slow, fast = uid("slow"), uid("fast")
    gw = make_gateway(
        "backends:\n"
        + openai_backend(slow, upstream.url)
        + openai_backend(fast, upstream.url)
        + f"""models:
  - name: quick
    strategy: latency
    targets: [{{backend: {slow}, model: slow-200}}, {{backend: {fast}, model: echo-model}}]
"""
    )
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        first_two = {backend_of(client, "quick") for _ in range(2)}
        assert first_two == {slow, fast}  # never-measured targets are tried first, to measure them
        assert [backend_of(client, "quick") for _ in range(8)] == [fast] * 8


# --- fallbacks ------------------------------------------------------------------------------------------


def fallback_policy(primary_backend: str, primary_model: str, backup_backend: str, extra: str = "") -> str:
    return f"""models:
  - name: primary
    targets: [{{backend: {primary_backend}, model: {primary_model}}}]
    fallbacks: [backup]
    circuit: {{failures: 1000}}
{extra}  - name: backup
    targets: [{{backend: {backup_backend}, model: echo-model}}]
"""


@pytest.mark.parametrize("fault", ["fail-500", "fail-502", "fail-503", "fail-429", "reset"])
def test_failure_falls_back(
    make_gateway: MakeGateway, fakes: Callable[[], FakeUpstream], upstream: FakeUpstream, fault: str
) -> None:
    prim_fake = fakes()
    prim, back = uid("prim"), uid("back")
    gw = make_gateway(
        "backends:\n"
        + openai_backend(prim, prim_fake.url)
        + openai_backend(back, upstream.url)
        + fallback_policy(prim, fault, back)
    )
    with sdk(gw) as client:
        raw = client.chat.completions.with_raw_response.create(model="primary", messages=MESSAGES)
    assert raw.status_code == 200
    assert raw.headers["x-gateway-backend"] == back
    assert raw.headers["x-gateway-fallback"] == "backup"
    assert raw.parse().choices[0].message.content == "echo: hello routing"
    assert chat_calls(prim_fake, fault) == 1  # retries default to 0: one try on the primary


def test_primary_answering_has_no_fallback_header(make_gateway: MakeGateway, upstream: FakeUpstream) -> None:
    prim, back = uid("prim"), uid("back")
    gw = make_gateway(
        "backends:\n"
        + openai_backend(prim, upstream.url)
        + openai_backend(back, upstream.url)
        + fallback_policy(prim, "echo-model", back)
    )
    with sdk(gw) as client:
        raw = client.chat.completions.with_raw_response.create(model="primary", messages=MESSAGES)
    assert raw.headers["x-gateway-backend"] == prim
    assert "x-gateway-fallback" not in raw.headers


def test_backend_timeout_falls_back(make_gateway: MakeGateway, upstream: FakeUpstream) -> None:
    prim, back = uid("prim"), uid("back")
    gw = make_gateway(
        "backends:\n"
        + openai_backend(prim, upstream.url, "{connect_s: 2, first_byte_s: 5, idle_s: 5, total_s: 0.5}")
        + openai_backend(back, upstream.url)
        + fallback_policy(prim, "slow-2000", back)
    )
    started = time.monotonic()
    with sdk(gw) as client:
        raw = client.chat.completions.with_raw_response.create(model="primary", messages=MESSAGES)
    elapsed = time.monotonic() - started
    assert raw.status_code == 200
    assert raw.headers["x-gateway-backend"] == back
    assert raw.headers["x-gateway-fallback"] == "backup"
    assert elapsed < 1.8, f"the fallback came after {elapsed:.2f}s; total_s is 0.5"


def test_connection_error_falls_back(make_gateway: MakeGateway, upstream: FakeUpstream) -> None:
    prim, back = uid("prim"), uid("back")
    gw = make_gateway(
        "backends:\n"
        + openai_backend(prim, f"http://127.0.0.1:{closed_port()}")
        + openai_backend(back, upstream.url)
        + fallback_policy(prim, "echo-model", back)
    )
    with sdk(gw) as client:
        raw = client.chat.completions.with_raw_response.create(model="primary", messages=MESSAGES)
    assert raw.status_code == 200
    assert raw.headers["x-gateway-backend"] == back
    assert raw.headers["x-gateway-fallback"] == "backup"


def test_retry_on_connection_only_does_not_fall_back_on_500(
    make_gateway: MakeGateway, fakes: Callable[[], FakeUpstream]
) -> None:
    prim_fake, back_fake = fakes(), fakes()
    prim, back = uid("prim"), uid("back")
    gw = make_gateway(
        "backends:\n"
        + openai_backend(prim, prim_fake.url)
        + openai_backend(back, back_fake.url)
        + fallback_policy(prim, "fail-500", back, "    retry_on: [connection]\n")
    )
    with sdk(gw) as client, pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="primary", messages=MESSAGES)
    assert err.value.status_code == 502
    assert err.value.response.headers["x-gateway-backend"] == prim
    assert "x-gateway-fallback" not in err.value.response.headers
    assert chat_calls(prim_fake) == 1
    assert chat_calls(back_fake) == 0


def test_retry_on_connection_still_falls_back_on_connection_error(
    make_gateway: MakeGateway, upstream: FakeUpstream
) -> None:
    prim, back = uid("prim"), uid("back")
    gw = make_gateway(
        "backends:\n"
        + openai_backend(prim, f"http://127.0.0.1:{closed_port()}")
        + openai_backend(back, upstream.url)
        + fallback_policy(prim, "echo-model", back, "    retry_on: [connection]\n")
    )
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        resp = chat(client, "primary")
    assert resp.status_code == 200
    assert resp.headers["x-gateway-fallback"] == "backup"


def test_client_error_never_falls_back(make_gateway: MakeGateway, fakes: Callable[[], FakeUpstream]) -> None:
    prim_fake, back_fake = fakes(), fakes()
    prim, back = uid("prim"), uid("back")
    gw = make_gateway(
        "backends:\n"
        + openai_backend(prim, prim_fake.url)
        + openai_backend(back, back_fake.url)
        + fallback_policy(prim, "fail-400", back, "    retries: 2\n")
    )
    with sdk(gw) as client, pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="primary", messages=MESSAGES)
    assert err.value.status_code == 400
    assert "x-gateway-fallback" not in err.value.response.headers
    assert chat_calls(prim_fake) == 1  # not retried either
    assert chat_calls(back_fake) == 0


def test_fallbacks_are_tried_in_order_when_all_fail(
    make_gateway: MakeGateway, fakes: Callable[[], FakeUpstream]
) -> None:
    fake = fakes()
    one, two = uid("one"), uid("two")
    gw = make_gateway(
        "backends:\n"
        + openai_backend(one, fake.url)
        + openai_backend(two, fake.url)
        + f"""models:
  - name: first
    targets: [{{backend: {one}, model: fail-500}}]
    fallbacks: [second, third]
  - name: second
    targets: [{{backend: {two}, model: fail-502}}]
  - name: third
    targets: [{{backend: {two}, model: echo-model}}]
"""
    )
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        resp = chat(client, "first")
    assert resp.status_code == 200
    assert resp.headers["x-gateway-fallback"] == "third"
    assert [r.body["model"] for r in list(fake.requests) if r.path == "/v1/chat/completions"] == [
        "fail-500",
        "fail-502",
        "echo-model",
    ]


# --- retries --------------------------------------------------------------------------------------------


def test_retry_moves_to_the_other_target(make_gateway: MakeGateway, upstream: FakeUpstream) -> None:
    bad, good = uid("bad"), uid("good")
    gw = make_gateway(
        "backends:\n"
        + openai_backend(bad, upstream.url)
        + openai_backend(good, upstream.url)
        + f"""models:
  - name: pair
    strategy: weighted
    retries: 1
    circuit: {{failures: 1000}}
    targets: [{{backend: {bad}, model: fail-503}}, {{backend: {good}, model: echo-model}}]
"""
    )
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        responses = [chat(client, "pair") for _ in range(16)]
    assert [r.status_code for r in responses] == [200] * 16
    assert {r.headers["x-gateway-backend"] for r in responses} == {good}
    assert all("x-gateway-fallback" not in r.headers for r in responses)


def test_retries_exhausted_gives_the_last_error(make_gateway: MakeGateway, fakes: Callable[[], FakeUpstream]) -> None:
    fake = fakes()
    only = uid("only")
    gw = make_gateway(
        "backends:\n"
        + openai_backend(only, fake.url)
        + f"""models:
  - name: doomed
    retries: 2
    targets: [{{backend: {only}, model: fail-503}}]
"""
    )
    with sdk(gw) as client, pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="doomed", messages=MESSAGES)
    assert err.value.status_code == 503
    assert chat_calls(fake) == 3  # the first try and 2 retries, no more


def test_retry_after_is_honoured(make_gateway: MakeGateway, fakes: Callable[[], FakeUpstream]) -> None:
    fake = fakes()
    timed = TimedRequests()
    fake.requests = timed
    only = uid("limited")
    gw = make_gateway(
        "backends:\n"
        + openai_backend(only, fake.url)
        + f"""models:
  - name: limited
    retries: 1
    targets: [{{backend: {only}, model: fail-429}}]
"""
    )
    with sdk(gw) as client, pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model="limited", messages=MESSAGES)
    assert err.value.response.headers.get("retry-after") == "1"
    times = [t for t, r in zip(timed.times, list(timed), strict=True) if r.path == "/v1/chat/completions"]
    assert len(times) == 2
    gap = times[1] - times[0]
    assert gap >= 0.9, f"the retry came {gap:.3f}s after a 429 with Retry-After: 1"
    assert gap < 3.0


# --- circuit breaker ------------------------------------------------------------------------------------


def test_circuit_opens_skips_and_probes(make_gateway: MakeGateway, fakes: Callable[[], FakeUpstream]) -> None:
    bad_fake, good_fake = fakes(), fakes()
    bad, good = uid("flaky"), uid("steady")
    gw = make_gateway(
        "backends:\n"
        + openai_backend(bad, bad_fake.url)
        + openai_backend(good, good_fake.url)
        + f"""models:
  - name: guarded
    retries: 1
    circuit: {{failures: 2, cooldown_s: 1}}
    targets: [{{backend: {bad}, model: fail-500, weight: 1}}, {{backend: {good}, model: echo-model, weight: 0}}]
"""
    )
    key = f"{bad}/fail-500"
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        # Weight 0 puts the healthy target second: each request tries the failing one first.
        for _ in range(2):
            assert chat(client, "guarded").headers["x-gateway-backend"] == good
        assert chat_calls(bad_fake) == 2
        assert gateway_metric(gw, "gateway_circuit_state", target=key) == 2.0

        opened = time.monotonic()
        for _ in range(5):  # open: skipped without a call
            resp = chat(client, "guarded")
            assert resp.status_code == 200
            assert resp.headers["x-gateway-backend"] == good
        if time.monotonic() - opened < 0.9:  # (only meaningful while still inside the cooldown)
            assert chat_calls(bad_fake) == 2

        # After the cooldown exactly one probe goes to it; it fails and the circuit opens again.
        deadline = time.monotonic() + 5
        while chat_calls(bad_fake) == 2:
            assert time.monotonic() < deadline, "no half-open probe after the cooldown"
            assert chat(client, "guarded").status_code == 200
            time.sleep(0.05)
        assert chat_calls(bad_fake) == 3
        for _ in range(5):
            assert chat(client, "guarded").headers["x-gateway-backend"] == good
        assert chat_calls(bad_fake) == 3
        assert gateway_metric(gw, "gateway_circuit_state", target=key) == 2.0
        assert gateway_metric(gw, "gateway_circuit_state", target=f"{good}/echo-model") == 0.0


def test_circuit_closes_after_a_successful_probe(make_gateway: MakeGateway, upstream: FakeUpstream) -> None:
    port = closed_port()
    down, spare = uid("down"), uid("spare")
    gw = make_gateway(
        "backends:\n"
        + openai_backend(down, f"http://127.0.0.1:{port}")
        + openai_backend(spare, upstream.url)
        + f"""models:
  - name: recovering
    retries: 1
    circuit: {{failures: 2, cooldown_s: 0.5}}
    targets: [{{backend: {down}, model: echo-model, weight: 1}}, {{backend: {spare}, model: echo-model, weight: 0}}]
"""
    )
    key = f"{down}/echo-model"
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        for _ in range(2):
            assert chat(client, "recovering").headers["x-gateway-backend"] == spare
        assert gateway_metric(gw, "gateway_circuit_state", target=key) == 2.0
        with FakeUpstream(port=port):  # the backend comes back on its address
            deadline = time.monotonic() + 5
            while backend_of(client, "recovering") != down:
                assert time.monotonic() < deadline, "the circuit never let a probe through"
                time.sleep(0.05)
            assert gateway_metric(gw, "gateway_circuit_state", target=key) == 0.0
            assert {backend_of(client, "recovering") for _ in range(5)} == {down}


def test_circuit_gauge_shows_half_open_while_the_probe_runs(make_gateway: MakeGateway, upstream: FakeUpstream) -> None:
    """docs/routing.md and the gauge's help: gateway_circuit_state is 0 closed, 1 half-open, 2 open.
    While the single half-open probe is in flight the target is half-open, so the gauge must read 1."""
    port = closed_port()
    down, spare = uid("probed"), uid("spare")
    cooldown = 0.3
    gw = make_gateway(
        "backends:\n"
        + openai_backend(down, f"http://127.0.0.1:{port}")
        + openai_backend(spare, upstream.url)
        + f"""models:
  - name: probing
    retries: 1
    circuit: {{failures: 2, cooldown_s: {cooldown}}}
    targets: [{{backend: {down}, model: slow-1000, weight: 1}}, {{backend: {spare}, model: echo-model, weight: 0}}]
"""
    )
    key = f"{down}/slow-1000"
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        for _ in range(2):
            assert backend_of(client, "probing") == spare
        opened = time.monotonic()
        assert gateway_metric(gw, "gateway_circuit_state", target=key) == 2.0
        with FakeUpstream(port=port) as revived:
            time.sleep(max(0.0, opened + cooldown + 0.05 - time.monotonic()))  # let the cooldown pass
            with ThreadPoolExecutor(1) as pool:
                probe = pool.submit(backend_of, client, "probing")
                assert revived.wait_for(lambda: chat_calls(revived) == 1, timeout=5), "no probe was sent"
                half_open = gateway_metric(gw, "gateway_circuit_state", target=key)
                assert probe.result(timeout=10) == down
        assert half_open == 1.0, f"gateway_circuit_state was {half_open} during the half-open probe"
        assert gateway_metric(gw, "gateway_circuit_state", target=key) == 0.0


# --- streams --------------------------------------------------------------------------------------------


# Long enough that cut-stream really cuts (it drops the connection before content event CUT_STREAM_AFTER + 1).
LONG_MESSAGES: list[Any] = [{"role": "user", "content": "one two three four five six seven"}]
LONG_ECHO = "echo: one two three four five six seven"


def stream_body(model: str, messages: list[Any] = MESSAGES) -> dict[str, Any]:
    return {"model": model, "messages": messages, "stream": True}


def test_stream_break_after_first_chunk_is_not_retried(
    make_gateway: MakeGateway, fakes: Callable[[], FakeUpstream]
) -> None:
    prim_fake, back_fake = fakes(), fakes()
    prim, back = uid("prim"), uid("back")
    gw = make_gateway(
        "backends:\n"
        + openai_backend(prim, prim_fake.url)
        + openai_backend(back, back_fake.url)
        + fallback_policy(prim, "cut-stream", back, "    retries: 2\n")
    )
    with (
        httpx.Client(base_url=gw.url, timeout=10) as client,
        client.stream("POST", "/v1/chat/completions", json=stream_body("primary", LONG_MESSAGES)) as resp,
    ):
        assert resp.status_code == 200
        assert resp.headers["x-gateway-backend"] == prim
        assert "x-gateway-fallback" not in resp.headers
        events = sse_events(resp)
    assert "[DONE]" not in events
    chunks = [json.loads(e) for e in events]
    assert chunks[-1]["error"]["code"] == "stream_interrupted"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1] if c.get("choices"))
    assert text and LONG_ECHO.startswith(text) and text != LONG_ECHO
    assert len([c for c in chunks[:-1] if c.get("choices") and c["choices"][0]["delta"].get("content")]) == (
        CUT_STREAM_AFTER
    )
    assert chat_calls(prim_fake) == 1  # no retry after the first chunk went out
    assert chat_calls(back_fake) == 0  # and no fallback spliced in

    # The SDK sees the partial stream, then the error event as an exception.
    with sdk(gw) as sdk_client:
        got: list[str] = []
        with pytest.raises(openai.APIError):
            for chunk in sdk_client.chat.completions.create(model="primary", messages=LONG_MESSAGES, stream=True):
                if chunk.choices and chunk.choices[0].delta.content:
                    got.append(chunk.choices[0].delta.content)
    assert len(got) == CUT_STREAM_AFTER
    assert chat_calls(back_fake) == 0


@pytest.mark.parametrize(
    ("fault", "timeouts"),
    [
        ("fail-500", "{connect_s: 2, first_byte_s: 5, idle_s: 5, total_s: 30}"),
        ("reset", "{connect_s: 2, first_byte_s: 5, idle_s: 5, total_s: 30}"),
        ("slow-stream-500", "{connect_s: 2, first_byte_s: 5, idle_s: 0.1, total_s: 30}"),
        ("slow-2000", "{connect_s: 2, first_byte_s: 0.2, idle_s: 5, total_s: 30}"),
    ],
)
def test_stream_failing_before_first_chunk_falls_back(
    make_gateway: MakeGateway, fakes: Callable[[], FakeUpstream], upstream: FakeUpstream, fault: str, timeouts: str
) -> None:
    prim_fake = fakes()
    prim, back = uid("prim"), uid("back")
    gw = make_gateway(
        "backends:\n"
        + openai_backend(prim, prim_fake.url, timeouts)
        + openai_backend(back, upstream.url)
        + fallback_policy(prim, fault, back)
    )
    with (
        httpx.Client(base_url=gw.url, timeout=10) as client,
        client.stream("POST", "/v1/chat/completions", json=stream_body("primary")) as resp,
    ):
        assert resp.status_code == 200
        assert resp.headers["x-gateway-backend"] == back
        assert resp.headers["x-gateway-fallback"] == "backup"
        events = sse_events(resp)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert not any("error" in c for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    assert text == "echo: hello routing"
    assert chat_calls(prim_fake, fault) == 1

    # Same through the SDK.
    with (
        sdk(gw) as sdk_client,
        sdk_client.chat.completions.with_streaming_response.create(
            model="primary", messages=MESSAGES, stream=True
        ) as response,
    ):
        assert response.headers["x-gateway-fallback"] == "backup"
        pieces = [c.choices[0].delta.content or "" for c in response.parse() if c.choices]
    assert "".join(pieces) == "echo: hello routing"


def test_stream_idle_timeout_before_first_chunk_counts_as_timeout(
    make_gateway: MakeGateway, fakes: Callable[[], FakeUpstream], upstream: FakeUpstream
) -> None:
    """docs/routing.md: the `timeout` failure kind covers connect, first byte, idle and total timeouts.

    A stream whose first event does not come within idle_s has timed out, so `retry_on: [timeout]`
    must let it fall back (and alone, it must not be reported as a generic 502)."""
    prim_fake = fakes()
    prim, back = uid("prim"), uid("back")
    gw = make_gateway(
        "backends:\n"
        + openai_backend(prim, prim_fake.url, "{connect_s: 2, first_byte_s: 5, idle_s: 0.1, total_s: 30}")
        + openai_backend(back, upstream.url)
        + fallback_policy(prim, "slow-stream-500", back, "    retry_on: [timeout]\n")
    )
    with (
        httpx.Client(base_url=gw.url, timeout=10) as client,
        client.stream("POST", "/v1/chat/completions", json=stream_body("primary")) as resp,
    ):
        resp.read()
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-gateway-fallback"] == "backup"


def test_stream_idle_timeout_before_first_chunk_is_a_504(make_gateway: MakeGateway, upstream: FakeUpstream) -> None:
    """docs/architecture.md: any timeout, idle_s included, is 504 upstream_timeout; before the first chunk
    the client still gets a plain error response, so it should be that one (not 502 stream_interrupted)."""
    only = uid("idle")
    gw = make_gateway(
        "backends:\n"
        + openai_backend(only, upstream.url, "{connect_s: 2, first_byte_s: 5, idle_s: 0.1, total_s: 30}")
        + f"""models:
  - name: idle
    targets: [{{backend: {only}, model: slow-stream-500}}]
"""
    )
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        resp = chat(client, "idle", stream=True)
    assert resp.status_code == 504, resp.text
    assert resp.json()["error"]["code"] == "upstream_timeout"


# --- the per-model deadline -----------------------------------------------------------------------------


def test_model_timeout_gives_504_quickly(make_gateway: MakeGateway, upstream: FakeUpstream) -> None:
    only = uid("lazy")
    gw = make_gateway(
        "backends:\n"
        + openai_backend(only, upstream.url)
        + f"""models:
  - name: deadline
    timeout_s: 0.5
    targets: [{{backend: {only}, model: slow-2000}}]
"""
    )
    started = time.monotonic()
    with sdk(gw) as client, pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="deadline", messages=MESSAGES)
    elapsed = time.monotonic() - started
    assert err.value.status_code == 504
    assert err.value.code == "upstream_timeout"
    assert elapsed < 1.2, f"504 after {elapsed:.2f}s with timeout_s 0.5"


def test_model_timeout_bounds_retries_and_stream_first_chunk(make_gateway: MakeGateway, upstream: FakeUpstream) -> None:
    only = uid("lazy")
    gw = make_gateway(
        "backends:\n"
        + openai_backend(only, upstream.url)
        + f"""models:
  - name: deadline-stream
    timeout_s: 0.5
    retries: 3
    targets: [{{backend: {only}, model: slow-stream-2000}}]
"""
    )
    started = time.monotonic()
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        resp = chat(client, "deadline-stream", stream=True)
    elapsed = time.monotonic() - started
    assert resp.status_code == 504, resp.text
    assert resp.json()["error"]["code"] == "upstream_timeout"
    assert elapsed < 1.2, f"504 after {elapsed:.2f}s with timeout_s 0.5"
