"""llm_judge end to end: a real gateway (uvicorn) in front of the fake upstream, with a second backend that is
a tiny judge server speaking OpenAI chat completions, driven by the OpenAI SDK.

The judge server decides from the prompt it receives (which carries the judged text), so each test steers it
with markers in its own user text: BLOCKME gets a block, judge-sleep-<ms> delays the verdict, judge-fail
answers 500, judge-garbage answers something that is not a verdict, judge-json answers in JSON.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from aiohttp import web
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from gateway.guarding import BLOCK_MESSAGE
from gateway.loader import load_text
from gateway.runtime import Runtime
from plugins.llm_judge import JudgeModelMissing
from tests.fakes.upstream import FakeUpstream
from tests.gateway_server import GatewayServer, free_port

POLICY_TEXT = "Refuse anything that mentions the forbidden word."
NEVER_OPEN = {"failures": 1_000_000}


class JudgeServer:
    """A judge model on its own event loop and thread: ALLOW, or BLOCK when the judged text says BLOCKME."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.forced: str | None = None  # an answer given whatever the text (set by a test, then reset)
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="judge-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> JudgeServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def prompts_with(self, mark: str) -> list[str]:
        return [p for p in (r["messages"][-1]["content"] for r in list(self.requests)) if mark in p]

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._judge)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.2, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _judge(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        prompt = body["messages"][-1]["content"]
        if (sleep := re.search(r"judge-sleep-(\d+)", prompt)) is not None:
            await asyncio.sleep(int(sleep[1]) / 1000)
        if "judge-fail" in prompt:
            error = {"error": {"message": "judge exploded", "type": "server_error", "param": None, "code": None}}
            return web.json_response(error, status=500)
        block = "BLOCKME" in prompt
        if self.forced is not None:
            answer = self.forced
        elif "judge-garbage" in prompt:
            answer = "I would rather not say."
        elif "judge-json" in prompt:
            answer = json.dumps({"verdict": "block" if block else "allow", "reason": "test"})
        else:
            answer = "BLOCK" if block else "ALLOW"
        return web.json_response(
            {
                "id": "judge-1",
                "object": "chat.completion",
                "created": 0,
                "model": body.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )


@pytest.fixture(scope="module")
def judge() -> Iterator[JudgeServer]:
    server = JudgeServer().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _fresh_judge(judge: JudgeServer) -> None:
    judge.forced = None


# --- policies and clients -------------------------------------------------------------------------------


def judged(target: str = "echo-model", *, plugins: tuple[dict[str, Any], ...] = (), **options: Any) -> dict[str, Any]:
    """The model `m`, served by the fake upstream's `target`, with an llm_judge entry of these options."""
    entry = {"use": "llm_judge", "model": "judge", "policy": POLICY_TEXT, **options}
    return {
        "name": "m",
        "targets": [{"backend": "fake", "model": target}],
        "plugins": [entry, *plugins],
        "circuit": NEVER_OPEN,
    }


def policy(upstream: FakeUpstream, judge: JudgeServer, *models: dict[str, Any]) -> str:
    def backend(name: str, url: str) -> dict[str, Any]:
        timeouts = {"connect_s": 2, "first_byte_s": 5, "idle_s": 5, "total_s": 30}
        return {"name": name, "type": "openai", "base_url": f"{url}/v1", "timeouts": timeouts}

    judges = [
        {"name": "judge", "targets": [{"backend": "judge", "model": "judge-model"}], "circuit": NEVER_OPEN},
        {"name": "judge-down", "targets": [{"backend": "nowhere", "model": "judge-model"}], "circuit": NEVER_OPEN},
    ]
    doc = {
        "backends": [
            backend("fake", upstream.url),
            backend("judge", judge.url),
            backend("nowhere", f"http://127.0.0.1:{free_port()}"),  # nothing listens there
        ],
        "models": [*judges, *models],
        "telemetry": {"access_log": False},
    }
    return json.dumps(doc, indent=1)


Serve = Callable[..., OpenAI]


@pytest.fixture
def serve(make_gateway: Callable[[str], GatewayServer], upstream: FakeUpstream, judge: JudgeServer) -> Serve:
    """A client of a fresh gateway whose model `m` is judged with these llm_judge options."""

    def start(target: str = "echo-model", **options: Any) -> OpenAI:
        gateway = make_gateway(policy(upstream, judge, judged(target, **options)))
        return OpenAI(base_url=gateway.base_url, api_key="sk-test", max_retries=0, timeout=10)

    return start


def marker() -> str:
    return f"mark{uuid.uuid4().hex[:10]}"


def ask(client: OpenAI, text: str) -> str:
    completion = client.chat.completions.create(model="m", messages=[{"role": "user", "content": text}])
    return completion.choices[0].message.content or ""


def assert_blocked(client: OpenAI, text: str, *, stream: bool = False) -> None:
    with pytest.raises(openai.BadRequestError) as failure:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": text}], stream=stream)
    assert failure.value.status_code == 400
    error = failure.value.body
    assert isinstance(error, dict)
    assert error["code"] == "content_policy_violation"
    assert error["message"] == BLOCK_MESSAGE  # generic: neither the judge, the policy nor the reason


def stream(client: OpenAI, text: str) -> tuple[str, list[str]]:
    """The streamed text and every finish reason seen."""
    chunks = client.chat.completions.create(model="m", messages=[{"role": "user", "content": text}], stream=True)
    content: list[str] = []
    reasons: list[str] = []
    for chunk in chunks:
        for choice in chunk.choices:
            content.append(choice.delta.content or "")
            if choice.finish_reason:
                reasons.append(choice.finish_reason)
    return "".join(content), reasons


def verdicts(client: OpenAI, stage: str, action: str) -> float:
    """gateway_guard_verdicts_total for llm_judge (the metrics are the process's: compare before and after)."""
    text = httpx.get(str(client.base_url).removesuffix("v1/") + "metrics").text
    labels = {"plugin": "llm_judge", "stage": stage, "action": action}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gateway_guard_verdicts_total" and sample.labels == labels:
                return float(sample.value)
    return 0.0


def upstream_saw(upstream: FakeUpstream, mark: str) -> bool:
    return any(mark in json.dumps(r.body) for r in list(upstream.requests))


# --- the request ----------------------------------------------------------------------------------------


def test_an_allowed_request_passes_and_the_judge_sees_policy_and_text(serve: Serve, judge: JudgeServer) -> None:
    client = serve(apply_to=["input"])
    mark = marker()
    assert ask(client, f"hello {mark}") == f"echo: hello {mark}"
    [prompt] = judge.prompts_with(mark)
    assert POLICY_TEXT in prompt
    assert f"user: hello {mark}" in prompt
    sent = next(r for r in judge.requests if mark in r["messages"][-1]["content"])
    assert sent["model"] == "judge-model" and sent["temperature"] == 0 and sent["stream"] is False


def test_a_blocked_request_gets_a_generic_400_and_is_counted(serve: Serve) -> None:
    client = serve()
    before = verdicts(client, "input", "block")
    assert_blocked(client, f"BLOCKME {marker()}")
    assert verdicts(client, "input", "block") == before + 1


def test_end_mode_blocks_are_counted_as_flags(serve: Serve) -> None:
    client = serve(apply_to=["output"], output_stream_mode="end")
    before = verdicts(client, "output", "flag")
    stream(client, f"BLOCKME {marker()}")
    assert verdicts(client, "output", "flag") == before + 1


def test_a_json_verdict_blocks_too(serve: Serve) -> None:
    assert_blocked(serve(), f"judge-json BLOCKME {marker()}")


def test_a_blocked_streamed_request_gets_the_400_before_any_chunk(serve: Serve) -> None:
    assert_blocked(serve(), f"BLOCKME {marker()}", stream=True)


def test_sequential_mode_blocks_before_the_upstream_call(serve: Serve, upstream: FakeUpstream) -> None:
    client = serve(parallel=False)
    mark = marker()
    assert_blocked(client, f"BLOCKME {mark}")
    allowed = marker()
    assert ask(client, allowed) == f"echo: {allowed}"
    assert upstream_saw(upstream, allowed)
    assert not upstream_saw(upstream, mark)


def test_parallel_block_answers_fast_and_cancels_a_slow_upstream(serve: Serve, upstream: FakeUpstream) -> None:
    client = serve("slow-2000")
    mark = marker()
    started = time.perf_counter()
    assert_blocked(client, f"judge-sleep-100 BLOCKME {mark}")
    elapsed = time.perf_counter() - started
    assert 0.1 <= elapsed < 1.0  # the slow upstream (2 s) was not waited for
    assert upstream_saw(upstream, mark)  # it was called alongside the judge


def test_parallel_block_cancels_a_slow_stream_upstream(serve: Serve, upstream: FakeUpstream) -> None:
    client = serve("slow-stream-2000")
    cancelled = upstream.cancelled_streams
    mark = marker()
    started = time.perf_counter()
    assert_blocked(client, f"judge-sleep-100 BLOCKME {mark}", stream=True)
    assert time.perf_counter() - started < 1.0
    assert upstream_saw(upstream, mark)
    assert upstream.wait_for(lambda: upstream.cancelled_streams > cancelled, timeout=2)  # the upstream saw it end


def test_parallel_mode_releases_no_answer_before_the_verdict(serve: Serve) -> None:
    client = serve()  # the echo upstream answers at once; the judge takes 300 ms
    started = time.perf_counter()
    assert_blocked(client, f"judge-sleep-300 BLOCKME {marker()}")
    assert time.perf_counter() - started >= 0.3
    started = time.perf_counter()
    mark = marker()
    assert ask(client, f"judge-sleep-300 {mark}") == f"echo: judge-sleep-300 {mark}"
    assert time.perf_counter() - started >= 0.3


def test_a_cache_hit_behind_the_judge_still_waits_for_the_verdict(serve: Serve, judge: JudgeServer) -> None:
    # An answer a later plugin gives early (a cache hit) still waits for the vetoes: a block wins.
    client = serve(apply_to=["input"], plugins=({"use": "exact_cache"},))
    text = f"cache me {marker()}"
    assert ask(client, text) == f"echo: {text}"  # allowed, and now cached
    judge.forced = "BLOCK"  # the same text is judged again, and blocked this time
    with pytest.raises(openai.BadRequestError) as failure:
        ask(client, text)
    assert failure.value.response.headers["x-gateway-backend"] == "plugin:exact_cache"
    with pytest.raises(openai.BadRequestError):  # the verdict comes before any replayed stream starts
        stream(client, text)
    judge.forced = None
    hit = client.chat.completions.with_raw_response.create(model="m", messages=[{"role": "user", "content": text}])
    assert hit.headers["x-gateway-cache"] == "hit"
    assert hit.parse().choices[0].message.content == f"echo: {text}"


# --- when the judge fails -------------------------------------------------------------------------------


@pytest.mark.parametrize("parallel", [True, False])
def test_judge_timeout_follows_on_error(serve: Serve, parallel: bool) -> None:
    lenient = serve(timeout_s=0.2, on_error="allow", parallel=parallel)
    text = f"judge-sleep-1500 {marker()}"
    started = time.perf_counter()
    assert ask(lenient, text) == f"echo: {text}"
    assert time.perf_counter() - started < 1.0
    strict = serve(timeout_s=0.2, on_error="block", parallel=parallel)
    assert_blocked(strict, f"judge-sleep-1500 {marker()}")


def test_on_timeout_overrides_on_error_for_timeouts_only(serve: Serve) -> None:
    client = serve(timeout_s=0.2, on_error="allow", on_timeout="block")
    assert_blocked(client, f"judge-sleep-1500 {marker()}")
    text = f"judge-fail {marker()}"
    assert ask(client, text) == f"echo: {text}"


@pytest.mark.parametrize("on_error", ["allow", "block"])
def test_judge_down_follows_on_error(serve: Serve, on_error: str) -> None:
    client = serve(model="judge-down", on_error=on_error)
    text = f"anything {marker()}"
    if on_error == "allow":
        assert ask(client, text) == f"echo: {text}"
    else:
        assert_blocked(client, text)


@pytest.mark.parametrize("fault", ["judge-fail", "judge-garbage"])
def test_judge_error_or_unparseable_answer_follows_on_error(serve: Serve, fault: str) -> None:
    text = f"{fault} {marker()}"
    assert ask(serve(on_error="allow"), text) == f"echo: {text}"
    assert_blocked(serve(on_error="block"), f"{fault} {marker()}")


def test_an_unknown_judge_model_stops_the_policy_from_starting(upstream: FakeUpstream, judge: JudgeServer) -> None:
    loaded = load_text(policy(upstream, judge, judged(model="jugde")))

    async def start() -> None:
        runtime = Runtime(loaded)
        try:
            await runtime.start()
        finally:
            await runtime.drain_and_close(grace_s=0)

    with pytest.raises(JudgeModelMissing) as failure:
        asyncio.run(start())
    assert "'jugde' is not a model of this policy (did you mean 'judge'?)" in str(failure.value)


# --- the answer -----------------------------------------------------------------------------------------


def test_output_judging_empties_a_blocked_answer(serve: Serve, upstream: FakeUpstream) -> None:
    client = serve(apply_to=["output"])
    mark = marker()
    completion = client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"BLOCKME {mark}"}])
    assert upstream_saw(upstream, mark)  # the request itself was not judged
    [choice] = completion.choices
    assert choice.finish_reason == "content_filter"
    assert choice.message.content == ""
    text = f"fine {marker()}"
    assert ask(client, text) == f"echo: {text}"


def test_output_judging_sees_the_answer_not_the_request(serve: Serve, judge: JudgeServer) -> None:
    mark = marker()
    ask(serve(apply_to=["output"]), mark)
    [prompt] = judge.prompts_with(mark)
    assert f"<judged_text>\necho: {mark}\n</judged_text>" in prompt
    assert "assistant answer" in prompt


def test_a_held_stream_that_is_blocked_leaks_nothing(serve: Serve) -> None:
    client = serve(apply_to=["output"], output_stream_mode="hold")
    content, reasons = stream(client, f"BLOCKME and more words {marker()}")
    assert content == ""
    assert reasons == ["content_filter"]


def test_a_held_stream_that_passes_arrives_whole(serve: Serve) -> None:
    client = serve(apply_to=["output"], output_stream_mode="hold")
    text = f"several words in a row {marker()}"
    assert stream(client, text) == (f"echo: {text}", ["stop"])


def test_end_mode_streams_then_flags_a_blocked_answer(serve: Serve) -> None:
    client = serve(apply_to=["output"], output_stream_mode="end")
    text = f"BLOCKME later {marker()}"
    content, reasons = stream(client, text)
    assert content == f"echo: {text}"  # the trade-off: the text was out before the verdict
    assert reasons == ["content_filter"]
    fine = f"fine {marker()}"
    assert stream(client, fine) == (f"echo: {fine}", ["stop"])
