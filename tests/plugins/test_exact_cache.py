"""exact_cache end to end: a real gateway (uvicorn) in front of the fake upstream, driven by the OpenAI SDK and
httpx; Redis is a private redis-server the tests may kill and restart. A few tests drive the plugin directly
where an interleaving must be exact (coalescing).

Every test uses a unique marker in its prompt, so upstream calls are counted by filtering on it.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
import redis as sync_redis
from openai import AsyncOpenAI, OpenAI
from openai.types.chat import ChatCompletion
from prometheus_client.parser import text_string_to_metric_families

from gateway.chain import Chain
from gateway.plugin import CONTINUE, Caller, Plugin, RequestContext, Respond
from gateway.policy import ModelRoute, Target
from plugins.exact_cache import ExactCache, ExactCacheConfig
from tests.conftest import UPSTREAM_KEY
from tests.fakes.upstream import TOOL_ARGUMENTS, FakeUpstream
from tests.gateway_server import GatewayServer
from tests.redis_server import RedisServer

KEY_A = "sk-cache-team-a-0123456789abcdef"
KEY_B = "sk-cache-team-b-fedcba9876543210"
TOKEN_ONE = "sk-raw-token-one-AAAAAAAAAAAAAAAA"
TOKEN_TWO = "sk-raw-token-two-BBBBBBBBBBBBBBBB"
CACHE = "x-gateway-cache"
BACKEND = "x-gateway-backend"
RETRY_AFTER_S = 0.2
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


# --- policies -------------------------------------------------------------------------------------------


def model(name: str, target: str = "echo-model", backend: str = "fake", **cache: Any) -> dict[str, Any]:
    return {
        "name": name,
        "targets": [{"backend": backend, "model": target}],
        "plugins": [{"use": "exact_cache", **cache}],
    }


def policy(upstream_url: str, models: list[dict[str, Any]], *, auth: bool = True) -> str:
    """JSON is YAML: the policy as a document, so options are rendered exactly."""

    def backend(name: str, total_s: float) -> dict[str, Any]:
        timeouts = {"connect_s": 2, "first_byte_s": min(5, total_s), "idle_s": 5, "total_s": total_s}
        return {
            "name": name,
            "type": "openai",
            "base_url": f"{upstream_url}/v1",
            "api_key": UPSTREAM_KEY,
            "timeouts": timeouts,
        }

    keys = [{"name": "team-a", "key": KEY_A}, {"name": "team-b", "key": KEY_B}] if auth else []
    doc = {
        "backends": [backend("fake", 30), backend("fake-tight", 0.1)],
        "models": models,
        "auth": {"keys": keys},
        "telemetry": {"access_log": False},
    }
    return json.dumps(doc, indent=1)


def redis_models(url: str, **options: Any) -> list[dict[str, Any]]:
    return [model("echo", store="redis", redis_url=url, retry_after_s=RETRY_AFTER_S, **options)]


# --- clients --------------------------------------------------------------------------------------------


def marker() -> str:
    return f"m{uuid.uuid4().hex[:12]}"


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def upstream_calls(upstream: FakeUpstream, mark: str) -> int:
    return sum(1 for r in list(upstream.requests) if mark in json.dumps(r.body))


def sse_events(raw: str) -> list[str]:
    out = []
    for block in raw.split("\n\n"):
        data = [line.removeprefix("data:").lstrip() for line in block.splitlines() if line.startswith("data:")]
        if data:
            out.append("\n".join(data))
    return out


@dataclass
class Reply:
    cache: str | None
    backend: str | None
    completion: ChatCompletion


@dataclass
class StreamReply:
    status: int
    headers: httpx.Headers
    raw: str

    @property
    def cache(self) -> str | None:
        return self.headers.get(CACHE)

    @property
    def chunks(self) -> list[dict[str, Any]]:
        return [json.loads(e) for e in sse_events(self.raw) if e != "[DONE]"]

    def text(self, index: int = 0) -> str:
        return "".join(
            c["choices"][0]["delta"].get("content") or ""
            for c in self.chunks
            if c.get("choices") and c["choices"][0].get("index", 0) == index and "delta" in c["choices"][0]
        )

    @property
    def done(self) -> bool:
        return self.raw.endswith("data: [DONE]\n\n")


class Client:
    def __init__(self, gw: GatewayServer, key: str | None) -> None:
        self.sdk = OpenAI(base_url=gw.base_url, api_key=key or "unused", max_retries=0, timeout=15)
        headers = {"authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=gw.base_url, headers=headers, timeout=15)
        self.key = key

    def chat(self, prompt: str, *, model: str = "echo", headers: dict[str, str] | None = None, **extra: Any) -> Reply:
        if self.key is None:  # no bearer token at all: plain httpx
            resp = self.http.post(
                "/chat/completions", json={"model": model, "messages": user(prompt), **extra}, headers=headers
            )
            assert resp.status_code == 200, resp.text
            return Reply(resp.headers.get(CACHE), resp.headers.get(BACKEND), ChatCompletion.model_validate(resp.json()))
        raw = self.sdk.chat.completions.with_raw_response.create(
            model=model, messages=user(prompt), extra_headers=headers, **extra
        )
        return Reply(raw.headers.get(CACHE), raw.headers.get(BACKEND), raw.parse())

    def stream(self, prompt: str, *, model: str = "echo", include_usage: bool = False, **extra: Any) -> StreamReply:
        body: dict[str, Any] = {"model": model, "messages": user(prompt), "stream": True, **extra}
        if include_usage:
            body["stream_options"] = {"include_usage": True}
        resp = self.http.post("/chat/completions", json=body)
        return StreamReply(resp.status_code, resp.headers, resp.text)

    def close(self) -> None:
        self.sdk.close()
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def metric(gw: GatewayServer, name: str, **labels: str) -> float:
    text = httpx.get(f"{gw.url}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def lookups(gw: GatewayServer, model_name: str) -> dict[str, float]:
    return {
        outcome: metric(gw, "gateway_cache_requests_total", plugin="exact_cache", model=model_name, outcome=outcome)
        for outcome in ("hit", "miss", "bypass", "coalesced")
    }


def redis_client(server: RedisServer) -> sync_redis.Redis:
    return sync_redis.Redis.from_url(server.url, socket_timeout=2)


def ready(gw: GatewayServer) -> httpx.Response:
    return httpx.get(f"{gw.url}/ready", timeout=5)


# --- the shared in-memory gateway -----------------------------------------------------------------------

MEMORY_MODELS = [
    model("echo"),
    model("echo-tools", cache_tool_calls=True),
    model("echo-sampled", cache_sampled=True),
    model("echo-shared", shared=True),
    model("cache-metrics"),
    model("slow-300", "slow-300"),
    model("slow-300-solo", "slow-300", coalesce=False),
    model("slow-300-timeout", "slow-300", backend="fake-tight"),
    # Eight failures in one burst: with the default circuit (open after 5 in a row) the last callers could find
    # it open (503) depending on timing; this model's tests are about coalescing, not the breaker.
    {**model("fail-500", "fail-500"), "circuit": {"failures": 1000}},
    model("cut-stream", "cut-stream"),
    model("no-done", "no-done"),
]


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    path = tmp_path_factory.mktemp("exact-cache") / "policy.yaml"
    path.write_text(policy(upstream.url, MEMORY_MODELS))
    with GatewayServer(path) as server:
        yield server


@pytest.fixture(scope="module")
def a(gw: GatewayServer) -> Iterator[Client]:
    with Client(gw, KEY_A) as client:
        yield client


@pytest.fixture(scope="module")
def b(gw: GatewayServer) -> Iterator[Client]:
    with Client(gw, KEY_B) as client:
        yield client


# --- miss, hit, replay ----------------------------------------------------------------------------------


def test_miss_then_hit(a: Client, upstream: FakeUpstream) -> None:
    mark = marker()
    prompt = f"remember this {mark}"
    first = a.chat(prompt)
    second = a.chat(prompt)

    assert (first.cache, second.cache) == ("miss", "hit")
    assert first.backend == "fake"
    assert second.backend == "plugin:exact_cache"
    assert upstream_calls(upstream, mark) == 1
    assert second.completion.choices[0].message.content == first.completion.choices[0].message.content
    assert first.completion.choices[0].message.content == f"echo: {prompt}"
    assert second.completion.usage == first.completion.usage
    assert first.completion.usage is not None
    assert first.completion.usage.total_tokens > 0
    # the very same answer, not a look-alike
    assert second.completion.model_dump() == first.completion.model_dump()


def test_hit_replayed_as_stream(a: Client, upstream: FakeUpstream) -> None:
    mark = marker()
    prompt = f"a somewhat longer prompt so the replay needs several chunks {mark}"
    first = a.chat(prompt)
    expected = first.completion.choices[0].message.content
    assert first.cache == "miss"

    plain = a.stream(prompt)
    assert plain.status == 200
    assert plain.cache == "hit"
    assert plain.headers[BACKEND] == "plugin:exact_cache"
    assert plain.headers["content-type"].startswith("text/event-stream")
    assert plain.done
    assert sse_events(plain.raw).count("[DONE]") == 1
    assert len(plain.chunks) > 3
    assert plain.text() == expected
    assert '"usage"' not in plain.raw  # the client did not ask for usage
    assert all(c["object"] == "chat.completion.chunk" for c in plain.chunks)
    finishes = [c["choices"][0]["finish_reason"] for c in plain.chunks if c["choices"][0]["finish_reason"]]
    assert finishes == ["stop"]

    with_usage = a.stream(prompt, include_usage=True)
    assert with_usage.cache == "hit"
    assert with_usage.done
    assert with_usage.text() == expected
    *content, last = with_usage.chunks
    assert last["choices"] == []
    assert first.completion.usage is not None
    assert last["usage"] == first.completion.usage.model_dump(exclude_none=True)
    assert all(not c.get("usage") for c in content)

    # and the SDK re-assembles the replay to the same text
    sdk_chunks = list(a.sdk.chat.completions.create(model="echo", messages=user(prompt), stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in sdk_chunks if c.choices) == expected
    assert upstream_calls(upstream, mark) == 1


def test_streamed_miss_is_cached_once_complete(a: Client, upstream: FakeUpstream) -> None:
    mark = marker()
    prompt = f"stream then reuse {mark}"
    streamed = a.stream(prompt, include_usage=True)
    assert streamed.status == 200
    assert streamed.cache == "miss"
    assert streamed.done
    assert streamed.text() == f"echo: {prompt}"
    stream_usage = streamed.chunks[-1]["usage"]

    whole = a.chat(prompt)
    assert whole.cache == "hit"
    assert whole.completion.choices[0].message.content == f"echo: {prompt}"
    assert whole.completion.choices[0].message.role == "assistant"
    assert whole.completion.choices[0].finish_reason == "stop"
    assert whole.completion.usage is not None
    assert whole.completion.usage.model_dump(exclude_none=True) == stream_usage
    assert whole.completion.id == streamed.chunks[0]["id"]
    again = a.stream(prompt)
    assert again.cache == "hit"
    assert again.text() == f"echo: {prompt}"
    assert upstream_calls(upstream, mark) == 1


def test_streamed_miss_without_usage_is_cached_with_usage(a: Client, upstream: FakeUpstream) -> None:
    mark = marker()
    prompt = f"no usage asked {mark}"
    assert a.stream(prompt).cache == "miss"
    whole = a.chat(prompt)
    assert whole.cache == "hit"
    assert whole.completion.usage is not None
    assert whole.completion.usage.completion_tokens == len(f"echo: {prompt}".split())
    assert upstream_calls(upstream, mark) == 1


def test_n2_cached_and_replayed(a: Client, upstream: FakeUpstream) -> None:
    mark = marker()
    prompt = f"two choices {mark}"
    first = a.chat(prompt, n=2)
    second = a.stream(prompt, n=2)
    assert (first.cache, second.cache) == ("miss", "hit")
    assert second.text(0) == second.text(1) == f"echo: {prompt}"
    assert upstream_calls(upstream, mark) == 1


def test_text_completions_cached(a: Client, upstream: FakeUpstream) -> None:
    mark = marker()
    prompt = f"complete me {mark}"
    first = a.http.post("/completions", json={"model": "echo", "prompt": prompt, "stream": True})
    assert first.headers[CACHE] == "miss"
    second = a.http.post("/completions", json={"model": "echo", "prompt": prompt})
    assert second.headers[CACHE] == "hit"
    assert second.json()["object"] == "text_completion"
    assert second.json()["choices"][0]["text"] == f"echo: {prompt}"
    replayed = a.http.post("/completions", json={"model": "echo", "prompt": prompt, "stream": True})
    assert replayed.headers[CACHE] == "hit"
    chunks = [json.loads(e) for e in sse_events(replayed.text) if e != "[DONE]"]
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == f"echo: {prompt}"
    assert replayed.text.endswith("data: [DONE]\n\n")
    assert upstream_calls(upstream, mark) == 1


@pytest.mark.parametrize("fault", ["cut-stream", "no-done"])
def test_broken_streams_are_never_cached(a: Client, upstream: FakeUpstream, fault: str) -> None:
    mark = marker()
    prompt = f"one two three four five six seven {mark}"
    first = a.stream(prompt, model=fault)
    assert first.cache == "miss"
    assert not first.done  # ended with an error event
    assert "error" in first.chunks[-1]
    second = a.stream(prompt, model=fault)
    assert second.cache == "miss"
    assert not second.done
    assert upstream_calls(upstream, mark) == 2


def test_broken_whole_answer_is_not_cached(a: Client, upstream: FakeUpstream) -> None:
    mark = marker()
    for _ in range(2):
        with pytest.raises(openai.APIStatusError) as caught:
            a.chat(f"cut me {mark}", model="cut-stream")
        assert caught.value.response.headers[CACHE] == "miss"
    assert upstream_calls(upstream, mark) == 2


def test_length_finish_is_cached(a: Client, upstream: FakeUpstream) -> None:
    mark = marker()
    prompt = f"this will be cut short {mark}"
    first = a.chat(prompt, max_tokens=2)
    second = a.chat(prompt, max_tokens=2)
    assert first.completion.choices[0].finish_reason == "length"
    assert (first.cache, second.cache) == ("miss", "hit")
    assert second.completion.choices[0].message.content == "echo: this"
    assert upstream_calls(upstream, mark) == 1
    # max_tokens is part of the key
    assert a.chat(prompt, max_tokens=3).cache == "miss"
    assert upstream_calls(upstream, mark) == 2


def test_tool_calls_not_cached_by_default(a: Client, upstream: FakeUpstream) -> None:
    mark = marker()
    prompt = f"please call tool {mark}"
    first = a.chat(prompt, tools=TOOLS)
    second = a.chat(prompt, tools=TOOLS)
    assert first.completion.choices[0].finish_reason == "tool_calls"
    assert (first.cache, second.cache) == ("miss", "miss")
    assert upstream_calls(upstream, mark) == 2


def test_tool_calls_cached_with_cache_tool_calls(a: Client, upstream: FakeUpstream) -> None:
    mark = marker()
    prompt = f"please call tool {mark}"
    first = a.chat(prompt, model="echo-tools", tools=TOOLS)
    second = a.chat(prompt, model="echo-tools", tools=TOOLS)
    assert (first.cache, second.cache) == ("miss", "hit")
    calls = second.completion.choices[0].message.tool_calls
    assert calls is not None
    assert calls[0].function.name == "get_weather"
    assert calls[0].function.arguments == TOOL_ARGUMENTS
    assert second.completion.choices[0].finish_reason == "tool_calls"
    assert second.completion.model_dump() == first.completion.model_dump()
    assert upstream_calls(upstream, mark) == 1


def test_streamed_tool_call_cached_with_cache_tool_calls(a: Client, upstream: FakeUpstream) -> None:
    mark = marker()
    prompt = f"please call tool {mark}"
    streamed = a.stream(prompt, model="echo-tools", tools=TOOLS)
    assert streamed.cache == "miss"
    assert streamed.done
    whole = a.chat(prompt, model="echo-tools", tools=TOOLS)
    assert whole.cache == "hit"
    calls = whole.completion.choices[0].message.tool_calls
    assert calls is not None
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [("call_1", "get_weather", TOOL_ARGUMENTS)]
    assert upstream_calls(upstream, mark) == 1


def test_sampled_requests_bypass(a: Client, upstream: FakeUpstream) -> None:
    mark = marker()
    prompt = f"be creative {mark}"
    first = a.chat(prompt, temperature=0.7)
    second = a.chat(prompt, temperature=0.7)
    assert (first.cache, second.cache) == ("bypass", "bypass")
    assert first.backend == second.backend == "fake"
    assert upstream_calls(upstream, mark) == 2
    # temperature 0 is cacheable
    assert [a.chat(prompt, temperature=0).cache for _ in range(2)] == ["miss", "hit"]
    assert upstream_calls(upstream, mark) == 3


def test_sampled_requests_cached_with_cache_sampled(a: Client, upstream: FakeUpstream) -> None:
    mark = marker()
    prompt = f"be creative {mark}"
    first = a.chat(prompt, model="echo-sampled", temperature=0.7)
    second = a.chat(prompt, model="echo-sampled", temperature=0.7)
    assert (first.cache, second.cache) == ("miss", "hit")
    assert upstream_calls(upstream, mark) == 1


def test_embeddings_bypass(a: Client, upstream: FakeUpstream) -> None:
    mark = marker()
    for _ in range(2):
        resp = a.http.post("/embeddings", json={"model": "echo", "input": f"embed {mark}"})
        assert resp.status_code == 200
        assert resp.headers[CACHE] == "bypass"
    assert upstream_calls(upstream, mark) == 2


# --- Cache-Control --------------------------------------------------------------------------------------


def test_no_cache_refreshes_the_stored_answer(a: Client, upstream: FakeUpstream) -> None:
    mark = marker()
    prompt = f"refresh me {mark}"
    first = a.chat(prompt)
    refreshed = a.chat(prompt, headers={"Cache-Control": "no-cache"})
    after = a.chat(prompt)
    assert (first.cache, refreshed.cache, after.cache) == ("miss", "bypass", "hit")
    assert refreshed.backend == "fake"
    assert upstream_calls(upstream, mark) == 2
    # the hit is the refreshed answer, not the first one
    assert refreshed.completion.id != first.completion.id
    assert after.completion.id == refreshed.completion.id


def test_no_cache_on_an_empty_cache_stores(a: Client, upstream: FakeUpstream) -> None:
    mark = marker()
    prompt = f"fresh {mark}"
    assert a.chat(prompt, headers={"cache-control": "No-Cache"}).cache == "bypass"
    assert a.chat(prompt).cache == "hit"
    assert upstream_calls(upstream, mark) == 1


@pytest.mark.parametrize("value", ["no-store", "no-cache, no-store", "NO-STORE"])
def test_no_store_is_not_stored(a: Client, upstream: FakeUpstream, value: str) -> None:
    mark = marker()
    prompt = f"forget me {mark}"
    first = a.chat(prompt, headers={"Cache-Control": value})
    assert first.cache == ("bypass" if "no-cache" in value else "miss")
    assert first.completion.choices[0].message.content == f"echo: {prompt}"
    assert a.chat(prompt).cache == "miss"
    assert a.chat(prompt).cache == "hit"
    assert upstream_calls(upstream, mark) == 2


def test_no_store_stream_is_not_stored(a: Client, upstream: FakeUpstream) -> None:
    mark = marker()
    prompt = f"forget my stream {mark}"
    body = {"model": "echo", "messages": user(prompt), "stream": True}
    resp = a.http.post("/chat/completions", json=body, headers={"cache-control": "no-store"})
    assert resp.status_code == 200
    assert resp.text.endswith("data: [DONE]\n\n")
    assert a.chat(prompt).cache == "miss"
    assert upstream_calls(upstream, mark) == 2


def test_max_age_is_ignored(a: Client, upstream: FakeUpstream) -> None:
    mark = marker()
    prompt = f"max age {mark}"
    assert a.chat(prompt).cache == "miss"
    assert a.chat(prompt, headers={"Cache-Control": "max-age=0"}).cache == "hit"
    assert upstream_calls(upstream, mark) == 1


# --- who may see whose answers --------------------------------------------------------------------------


def test_callers_are_isolated(a: Client, b: Client, upstream: FakeUpstream) -> None:
    mark = marker()
    prompt = f"team secret {mark}"
    assert a.chat(prompt).cache == "miss"
    assert b.chat(prompt).cache == "miss"
    assert a.chat(prompt).cache == "hit"
    assert b.chat(prompt).cache == "hit"
    assert upstream_calls(upstream, mark) == 2


def test_shared_cache_crosses_callers(a: Client, b: Client, upstream: FakeUpstream) -> None:
    mark = marker()
    prompt = f"public fact {mark}"
    first = a.chat(prompt, model="echo-shared")
    second = b.chat(prompt, model="echo-shared")
    assert (first.cache, second.cache) == ("miss", "hit")
    assert second.completion.model_dump() == first.completion.model_dump()
    assert upstream_calls(upstream, mark) == 1


def test_models_do_not_share_entries(a: Client, upstream: FakeUpstream) -> None:
    mark = marker()
    prompt = f"which model {mark}"
    assert a.chat(prompt, model="echo").cache == "miss"
    assert a.chat(prompt, model="cache-metrics").cache == "miss"
    assert upstream_calls(upstream, mark) == 2


def test_tokens_isolated_without_auth_and_never_in_redis(
    make_gateway: Callable[[str], GatewayServer], upstream: FakeUpstream, redis_server: RedisServer
) -> None:
    redis_server.flush()
    gateway = make_gateway(policy(upstream.url, redis_models(redis_server.url), auth=False))
    mark = marker()
    prompt = f"open gateway {mark}"
    with Client(gateway, TOKEN_ONE) as one, Client(gateway, TOKEN_TWO) as two, Client(gateway, None) as anon:
        assert one.chat(prompt).cache == "miss"
        assert two.chat(prompt).cache == "miss"
        assert anon.chat(prompt).cache == "miss"
        assert one.chat(prompt).cache == "hit"
        assert two.chat(prompt).cache == "hit"
        assert anon.chat(prompt).cache == "hit"
    assert upstream_calls(upstream, mark) == 3
    with redis_client(redis_server) as r:
        keys = [k.decode() for k in r.scan_iter("*")]
        assert len(keys) == 3
        for key in keys:
            assert key.startswith("llmgw:exact:")
            for secret in (TOKEN_ONE, TOKEN_TWO, "sk-raw-token"):
                assert secret not in key
            value = r.get(key)
            assert value is not None
            assert TOKEN_ONE.encode() not in value
            assert TOKEN_TWO.encode() not in value
            assert 3_500_000 < r.pttl(key) <= 3_600_000  # the default ttl_s


# --- coalescing -----------------------------------------------------------------------------------------


async def _eight(gw: GatewayServer, model_name: str, prompt: str, **extra: Any) -> list[Any]:
    async with AsyncOpenAI(base_url=gw.base_url, api_key=KEY_A, max_retries=0, timeout=15) as client:

        async def one() -> Any:
            return await client.chat.completions.with_raw_response.create(
                model=model_name, messages=user(prompt), **extra
            )

        return await asyncio.wait_for(asyncio.gather(*(one() for _ in range(8)), return_exceptions=True), 20)


async def test_coalescing_shares_one_upstream_call(gw: GatewayServer, a: Client, upstream: FakeUpstream) -> None:
    before = await asyncio.to_thread(lookups, gw, "slow-300")
    mark = marker()
    prompt = f"everyone at once {mark}"
    replies = await _eight(gw, "slow-300", prompt)
    assert all(not isinstance(r, BaseException) for r in replies), replies
    assert upstream_calls(upstream, mark) == 1
    assert sorted(r.headers[CACHE] for r in replies) == ["hit"] * 7 + ["miss"]
    completions = [r.parse() for r in replies]
    assert {c.choices[0].message.content for c in completions} == {f"echo: {prompt}"}
    assert len({c.id for c in completions}) == 1
    after = await asyncio.to_thread(lookups, gw, "slow-300")
    assert after["miss"] - before["miss"] == 1
    # waiters count as "coalesced" (one that arrived after the leader finished would be a plain hit)
    coalesced, hits = after["coalesced"] - before["coalesced"], after["hit"] - before["hit"]
    assert coalesced + hits == 7
    assert coalesced >= 1
    # and the answer is stored for later
    later = await asyncio.to_thread(a.chat, prompt, model="slow-300")
    assert later.cache == "hit"
    assert upstream_calls(upstream, mark) == 1


async def test_no_coalescing_when_disabled(gw: GatewayServer, upstream: FakeUpstream) -> None:
    mark = marker()
    prompt = f"everyone for themselves {mark}"
    replies = await _eight(gw, "slow-300-solo", prompt)
    assert all(not isinstance(r, BaseException) for r in replies), replies
    assert upstream_calls(upstream, mark) == 8
    assert [r.headers[CACHE] for r in replies] == ["miss"] * 8
    assert {r.parse().choices[0].message.content for r in replies} == {f"echo: {prompt}"}


async def test_coalescing_leader_fails_fast(gw: GatewayServer, upstream: FakeUpstream) -> None:
    mark = marker()
    replies = await _eight(gw, "fail-500", f"doomed {mark}")
    assert len(replies) == 8
    for reply in replies:
        assert isinstance(reply, openai.APIStatusError), reply
        assert reply.status_code == 502
        assert reply.response.headers[CACHE] == "miss"
    assert upstream_calls(upstream, mark) == 8  # nothing cached, nobody answered with a failure it did not see


async def test_coalescing_leader_times_out_followers_go_upstream(gw: GatewayServer, upstream: FakeUpstream) -> None:
    # slow-300 behind a 0.1 s total timeout: the leader fails while the others wait for it
    mark = marker()
    started = time.monotonic()
    replies = await _eight(gw, "slow-300-timeout", f"too slow {mark}")
    for reply in replies:
        assert isinstance(reply, openai.APIStatusError), reply
        assert reply.status_code == 504
    assert time.monotonic() - started < 10
    assert upstream_calls(upstream, mark) == 8


async def test_coalescing_leader_not_cacheable(gw: GatewayServer, upstream: FakeUpstream) -> None:
    # a tool-call answer is not cached by default: the waiters get their own answers from upstream
    mark = marker()
    replies = await _eight(gw, "slow-300", f"please call tool {mark}", tools=TOOLS)
    assert all(not isinstance(r, BaseException) for r in replies), replies
    assert [r.headers[CACHE] for r in replies] == ["miss"] * 8
    assert all(r.parse().choices[0].finish_reason == "tool_calls" for r in replies)
    assert upstream_calls(upstream, mark) == 8


async def test_coalescing_stream_leader_feeds_waiters(gw: GatewayServer, upstream: FakeUpstream) -> None:
    # the fake delays every stream event of slow-300 by 0.3 s: the leader's stream is long in flight
    mark = marker()
    prompt = mark  # few words, few events
    body = {"model": "slow-300", "messages": user(prompt)}
    auth = {"authorization": f"Bearer {KEY_A}"}
    async with httpx.AsyncClient(base_url=gw.base_url, headers=auth, timeout=15) as http:
        stream_body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        leader = asyncio.ensure_future(http.post("/chat/completions", json=stream_body))
        # the leader is registered before its upstream call starts
        assert await asyncio.to_thread(upstream.wait_for, lambda: upstream_calls(upstream, mark) == 1)
        followers = [http.post("/chat/completions", json=body) for _ in range(3)]
        followers += [http.post("/chat/completions", json={**body, "stream": True}) for _ in range(2)]
        led, *rest = await asyncio.wait_for(asyncio.gather(leader, *followers), 20)
    assert led.headers[CACHE] == "miss"
    leader_chunks = [json.loads(e) for e in sse_events(led.text) if e != "[DONE]"]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in leader_chunks if c["choices"]) == (
        f"echo: {prompt}"
    )
    assert [r.headers[CACHE] for r in rest] == ["hit"] * 5
    for whole in rest[:3]:
        assert whole.json()["choices"][0]["message"]["content"] == f"echo: {prompt}"
        assert whole.json()["usage"] == leader_chunks[-1]["usage"]
    for streamed in rest[3:]:
        chunks = [json.loads(e) for e in sse_events(streamed.text) if e != "[DONE]"]
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == f"echo: {prompt}"
        assert streamed.text.endswith("data: [DONE]\n\n")
    assert upstream_calls(upstream, mark) == 1


async def test_coalescing_leader_client_disconnects(gw: GatewayServer, upstream: FakeUpstream) -> None:
    # the leader's client goes away mid-stream: its waiters must not hang, they go upstream themselves
    mark = marker()
    body = {"model": "slow-300", "messages": user(mark)}
    auth = {"authorization": f"Bearer {KEY_A}"}
    async with httpx.AsyncClient(base_url=gw.base_url, headers=auth, timeout=15) as http:
        async with http.stream("POST", "/chat/completions", json={**body, "stream": True}) as leader:
            assert leader.headers[CACHE] == "miss"
            followers = [asyncio.ensure_future(http.post("/chat/completions", json=body)) for _ in range(3)]
            await asyncio.sleep(0.1)  # let them reach the gateway and wait on the leader (not a timing assert)
            async for _ in leader.aiter_bytes():
                break  # first event, then hang up
        replies = await asyncio.wait_for(asyncio.gather(*followers), 10)
    for reply in replies:
        assert reply.status_code == 200
        assert reply.json()["choices"][0]["message"]["content"] == f"echo: {mark}"
    assert upstream_calls(upstream, mark) >= 2


# --- the plugin itself, where the interleaving must be exact ---------------------------------------------


def plugin_ctx(prompt: str, *, stream: bool = False) -> RequestContext:
    route = ModelRoute(name="echo", targets=[Target(backend="fake", model="echo-model")])
    body = {"model": "echo", "messages": user(prompt), "stream": stream}
    return RequestContext(uuid.uuid4().hex, "chat", body, {}, Caller("team-a", True), route, stream)


def completion(text: str, finish: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "echo-model",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }


async def test_plugin_follower_gets_the_leaders_answer() -> None:
    cache = ExactCache(ExactCacheConfig())
    leader, follower = plugin_ctx("same"), plugin_ctx("same")
    assert await cache.on_request(leader) is CONTINUE
    waiting = asyncio.ensure_future(cache.on_request(follower))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    await cache.on_response(leader, completion("echo: same"))
    decision = await asyncio.wait_for(waiting, 1)
    assert isinstance(decision, Respond)
    assert decision.body["choices"][0]["message"]["content"] == "echo: same"
    assert follower.response_headers[CACHE] == "hit"
    await cache.on_end(leader)
    await cache.on_end(follower)
    assert cache._in_flight == {}
    late = plugin_ctx("same")
    assert isinstance(await cache.on_request(late), Respond)
    assert late.response_headers[CACHE] == "hit"


@pytest.mark.parametrize("ending", ["failure", "not-cacheable"])
async def test_plugin_leader_failure_releases_every_follower(ending: str) -> None:
    cache = ExactCache(ExactCacheConfig())
    leader = plugin_ctx("doomed")
    followers = [plugin_ctx("doomed") for _ in range(5)]
    assert await cache.on_request(leader) is CONTINUE
    waiting = [asyncio.ensure_future(cache.on_request(f)) for f in followers]
    await asyncio.sleep(0.01)
    assert not any(w.done() for w in waiting)
    if ending == "not-cacheable":
        await cache.on_response(leader, completion("cut", finish="content_filter"))
    await cache.on_end(leader)  # always runs, also after a failure
    decisions = await asyncio.wait_for(asyncio.gather(*waiting), 1)
    assert all(d is CONTINUE for d in decisions)
    assert [f.response_headers[CACHE] for f in followers] == ["miss"] * 5
    assert cache._in_flight == {}


async def test_plugin_follower_stops_waiting_after_coalesce_wait_s() -> None:
    cache = ExactCache(ExactCacheConfig(coalesce_wait_s=0.05))
    leader, follower = plugin_ctx("stuck"), plugin_ctx("stuck")
    assert await cache.on_request(leader) is CONTINUE
    assert await asyncio.wait_for(cache.on_request(follower), 2) is CONTINUE
    assert follower.response_headers[CACHE] == "miss"
    await cache.on_end(leader)
    await cache.on_end(follower)
    assert cache._in_flight == {}


class Suffix(Plugin):
    """A response-editing plugin placed before the cache (e.g. a redactor): edits the answer in place."""

    name = "suffix"

    async def on_response(self, ctx: RequestContext, completion: dict[str, Any]) -> Any:
        completion["choices"][0]["message"]["content"] += " [checked]"
        return CONTINUE


async def test_plugin_coalesced_answers_are_independent_copies() -> None:
    """Each waiter must get its own answer: plugins before the cache edit answers in place, once per request."""
    cache = ExactCache(ExactCacheConfig())
    chain = Chain([Suffix(Suffix.Config()), cache])
    leader = plugin_ctx("shared")
    followers = [plugin_ctx("shared") for _ in range(3)]
    assert await chain.request(leader) == (None, 2)
    waiting = [asyncio.ensure_future(chain.request(f)) for f in followers]
    await asyncio.sleep(0.01)
    answer = completion("echo: shared")
    assert await chain.response(leader, answer, 2) is None
    assert answer["choices"][0]["message"]["content"] == "echo: shared [checked]"  # the leader's own client
    for follower, (early, upto) in zip(followers, await asyncio.gather(*waiting), strict=True):
        assert isinstance(early, Respond)
        assert upto == 1
        body = early.body
        await chain.response(follower, body, upto)  # what the proxy does with an early answer
        assert body["choices"][0]["message"]["content"] == "echo: shared [checked]"
    # a later hit is decoded from the store: edited exactly once too
    early, upto = await chain.request(plugin_ctx("shared"))
    assert isinstance(early, Respond)
    await chain.response(plugin_ctx("shared"), early.body, upto)
    assert early.body["choices"][0]["message"]["content"] == "echo: shared [checked]"


# --- Redis: shared between gateways, outages --------------------------------------------------------------


def test_redis_shared_between_two_gateways(
    make_gateway: Callable[[str], GatewayServer], upstream: FakeUpstream, redis_server: RedisServer
) -> None:
    redis_server.flush()
    text = policy(upstream.url, redis_models(redis_server.url))
    gw_a, gw_b = make_gateway(text), make_gateway(text)
    mark = marker()
    prompt = f"across replicas {mark}"
    with Client(gw_a, KEY_A) as on_a, Client(gw_b, KEY_A) as on_b, Client(gw_b, KEY_B) as b_on_b:
        first = on_a.chat(prompt)
        second = on_b.chat(prompt)
        assert (first.cache, second.cache) == ("miss", "hit")
        assert second.backend == "plugin:exact_cache"
        assert second.completion.model_dump() == first.completion.model_dump()
        assert b_on_b.chat(prompt).cache == "miss"  # still per caller
        streamed = on_a.stream(f"stream across {mark}")
        assert streamed.cache == "miss"
        assert on_b.chat(f"stream across {mark}").cache == "hit"
    assert upstream_calls(upstream, mark) == 3
    with redis_client(redis_server) as r:
        keys = [k.decode() for k in r.scan_iter("*")]
    assert len(keys) == 3
    assert all(k.startswith("llmgw:exact:") and KEY_A not in k and KEY_B not in k for k in keys)
    assert ready(gw_a).json()["checks"]["exact_cache"] == {"ok": True, "degraded": False, "detail": "redis reachable"}


def test_redis_down_fail_open_then_recovers(
    make_gateway: Callable[[str], GatewayServer], upstream: FakeUpstream, redis_server: RedisServer
) -> None:
    redis_server.flush()
    gateway = make_gateway(policy(upstream.url, redis_models(redis_server.url)))
    mark = marker()
    prompt = f"through an outage {mark}"
    with Client(gateway, KEY_A) as client:
        assert [client.chat(prompt).cache for _ in range(2)] == ["miss", "hit"]
        redis_server.kill()
        try:
            started = time.monotonic()
            outcomes = []
            for _ in range(20):
                reply = client.chat(prompt)
                assert reply.completion.choices[0].message.content == f"echo: {prompt}"
                outcomes.append(reply.cache)
            assert outcomes == ["bypass"] * 20
            assert time.monotonic() - started < 10
            assert upstream_calls(upstream, mark) == 21

            status = ready(gateway)
            assert status.status_code == 200
            body = status.json()
            assert body["status"] == "degraded"
            check = body["checks"]["exact_cache"]
            assert check["ok"] is True
            assert check["degraded"] is True
            assert "redis unreachable" in check["detail"]
            assert metric(gateway, "gateway_cache_degraded", plugin="exact_cache") == 1
            assert client.stream(prompt).cache == "bypass"  # streams are served too
        finally:
            redis_server.start()
        time.sleep(RETRY_AFTER_S + 0.05)
        fresh = f"after the outage {mark}"
        assert [client.chat(fresh).cache for _ in range(2)] == ["miss", "hit"]
        assert client.chat(prompt).cache == "miss"  # the restarted Redis is empty
        assert upstream_calls(upstream, mark) == 24
    assert metric(gateway, "gateway_cache_degraded", plugin="exact_cache") == 0
    assert ready(gateway).json()["status"] == "ready"


def test_redis_down_fail_closed(
    make_gateway: Callable[[str], GatewayServer], upstream: FakeUpstream, redis_server: RedisServer
) -> None:
    redis_server.flush()
    gateway = make_gateway(policy(upstream.url, redis_models(redis_server.url, fail_open=False)))
    mark = marker()
    with Client(gateway, KEY_A) as client:
        assert client.chat(f"warm {mark}").cache == "miss"
        redis_server.kill()
        try:
            resp = client.http.post("/chat/completions", json={"model": "echo", "messages": user(f"closed {mark}")})
            assert resp.status_code == 503
            assert resp.headers["content-type"].startswith("application/json")
            error = resp.json()["error"]
            assert error["code"] == "cache_unavailable"
            assert error["type"] == "server_error"
            assert isinstance(error["message"], str)
            assert error["message"]
            assert set(error) >= {"message", "type", "param", "code"}
            with pytest.raises(openai.APIStatusError) as caught:
                client.sdk.chat.completions.create(model="echo", messages=user(f"closed sdk {mark}"))
            assert caught.value.status_code == 503
            assert caught.value.code == "cache_unavailable"
            stream = client.stream(f"closed stream {mark}")
            assert stream.status == 503
            status = ready(gateway)
            assert status.status_code == 503
            assert status.json()["status"] == "not_ready"
            assert status.json()["checks"]["exact_cache"]["ok"] is False
        finally:
            redis_server.start()
        assert upstream_calls(upstream, mark) == 1  # nothing went upstream while closed
        time.sleep(RETRY_AFTER_S + 0.05)
        assert client.chat(f"reopened {mark}").cache == "miss"


# --- metrics --------------------------------------------------------------------------------------------


def test_metrics_count_outcomes(gw: GatewayServer, a: Client) -> None:
    before = lookups(gw, "cache-metrics")
    mark = marker()
    prompt = f"count me {mark}"
    a.chat(prompt, model="cache-metrics")  # miss
    a.chat(prompt, model="cache-metrics")  # hit
    a.stream(prompt, model="cache-metrics")  # hit
    a.chat(prompt, model="cache-metrics", temperature=0.9)  # bypass
    a.chat(prompt, model="cache-metrics", headers={"cache-control": "no-cache"})  # bypass
    after = lookups(gw, "cache-metrics")
    assert {k: after[k] - before[k] for k in after} == {"hit": 2, "miss": 1, "bypass": 2, "coalesced": 0}


def test_metrics_exposition_has_help_and_labels(gw: GatewayServer, a: Client) -> None:
    a.chat(f"exposition {marker()}", model="cache-metrics")
    text = httpx.get(f"{gw.url}/metrics", timeout=5).text
    assert "# TYPE gateway_cache_requests_total counter" in text
    assert 'gateway_cache_requests_total{model="cache-metrics",outcome="miss",plugin="exact_cache"}' in text
