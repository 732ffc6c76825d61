"""semantic_cache through the real gateway, with the real MiniLM model and a real Redis."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.gateway_server import GatewayServer
from tests.redis_server import RedisServer

MakeGateway = Callable[[str], GatewayServer]


def policy(upstream: FakeUpstream, options: str = "", auth: str = "") -> str:
    return f"""
backends: [{{name: fake, type: openai, base_url: "{upstream.url}/v1"}}]
models:
  - name: sem
    targets: [{{backend: fake, model: echo-model}}]
    plugins: [{{use: semantic_cache{options}}}]
{auth}
"""


def ask(
    gateway: GatewayServer, text: str, *, system: str | None = None, key: str = "k", **kwargs: Any
) -> tuple[str, str | None]:
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    raw = client.chat.completions.with_raw_response.create(model="sem", messages=messages, **kwargs)  # type: ignore[arg-type]
    return raw.parse().choices[0].message.content or "", raw.headers.get("x-gateway-cache")


def upstream_calls(upstream: FakeUpstream, marker: str) -> int:
    return sum(1 for r in upstream.requests if marker in str(r.body))


@pytest.fixture
def gateway(make_gateway: MakeGateway, upstream: FakeUpstream) -> GatewayServer:
    return make_gateway(policy(upstream))


def test_paraphrase_is_served_from_cache(gateway: GatewayServer, upstream: FakeUpstream) -> None:
    tag = uuid.uuid4().hex[:6]
    first, header = ask(gateway, f"How do I reset my password on the {tag} portal?")
    assert header == "miss"
    second, header = ask(gateway, f"How can I reset my password on the {tag} portal?")
    assert header == "semantic-hit"
    assert second == first  # the cached answer to the first wording
    assert upstream_calls(upstream, tag) == 1


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("Is smoking allowed in the {tag} hotel rooms?", "Is smoking not allowed in the {tag} hotel rooms?"),
        ("What is 15% of 200 in the {tag} report?", "What is 25% of 200 in the {tag} report?"),
        ("How do I upload files to the {tag} server?", "How do I download files from the {tag} server?"),
    ],
)
def test_near_misses_are_not_served(
    gateway: GatewayServer, upstream: FakeUpstream, first: str, second: str
) -> None:
    tag = uuid.uuid4().hex[:6]
    ask(gateway, first.format(tag=tag))
    content, header = ask(gateway, second.format(tag=tag))
    assert header == "miss"
    assert content == "echo: " + second.format(tag=tag)
    assert upstream_calls(upstream, tag) == 2


def test_everything_but_the_last_turn_must_match(gateway: GatewayServer, upstream: FakeUpstream) -> None:
    tag = uuid.uuid4().hex[:6]
    question = f"What are the opening hours of the {tag} library?"
    ask(gateway, question, system="Answer in English.")
    assert ask(gateway, question, system="Answer in French.")[1] == "miss"
    assert ask(gateway, question, system="Answer in English.", max_tokens=5)[1] == "miss"
    assert ask(gateway, question, system="Answer in English.")[1] == "semantic-hit"


def test_callers_do_not_share_answers_unless_shared(make_gateway: MakeGateway, upstream: FakeUpstream) -> None:
    tag = uuid.uuid4().hex[:6]
    private = make_gateway(policy(upstream))
    ask(private, f"Where is the {tag} office?", key="alice")
    assert ask(private, f"Where is the {tag} office?", key="bob")[1] == "miss"
    shared = make_gateway(policy(upstream, ", shared: true"))
    ask(shared, f"Where is the {tag} office located?", key="alice")
    assert ask(shared, f"Where is the {tag} office located?", key="bob")[1] == "semantic-hit"


def test_hit_replayed_as_a_stream(gateway: GatewayServer) -> None:
    tag = uuid.uuid4().hex[:6]
    answer, _ = ask(gateway, f"Explain the {tag} deployment process")
    client = openai.OpenAI(base_url=gateway.base_url, api_key="k", max_retries=0)
    stream = client.chat.completions.create(
        model="sem",
        messages=[{"role": "user", "content": f"Explain the {tag} deployment process, please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer
    assert chunks[-1].usage is not None and chunks[-1].choices == []


def test_sampled_requests_and_non_user_turns_bypass(gateway: GatewayServer) -> None:
    tag = uuid.uuid4().hex[:6]
    assert ask(gateway, f"Tell me a {tag} joke", temperature=0.9)[1] == "bypass"
    client = openai.OpenAI(base_url=gateway.base_url, api_key="k", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="sem",
        messages=[{"role": "user", "content": f"hi {tag}"}, {"role": "assistant", "content": "hello"}],
    )
    assert raw.headers["x-gateway-cache"] == "bypass"


def test_redis_store_is_shared_by_replicas(
    make_gateway: MakeGateway, upstream: FakeUpstream, redis_server: RedisServer
) -> None:
    options = f", store: redis, redis_url: '{redis_server.url}', namespace: sem{uuid.uuid4().hex[:6]}"
    first, second = make_gateway(policy(upstream, options)), make_gateway(policy(upstream, options))
    tag = uuid.uuid4().hex[:6]
    answer, header = ask(first, f"How do I rotate the {tag} API keys?")
    assert header == "miss"
    deadline = time.monotonic() + 5
    while True:  # the second replica learns the entry by tailing the Redis log
        content, header = ask(second, f"How can I rotate the {tag} API keys?")
        if header == "semantic-hit" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert (header, content) == ("semantic-hit", answer)


def test_redis_down_fails_open_and_recovers(
    make_gateway: MakeGateway, upstream: FakeUpstream, redis_server: RedisServer
) -> None:
    options = f", store: redis, redis_url: '{redis_server.url}', retry_after_s: 0.2, namespace: d{uuid.uuid4().hex[:6]}"
    gateway = make_gateway(policy(upstream, options))
    tag = uuid.uuid4().hex[:6]
    ask(gateway, f"What is the {tag} refund policy?")
    redis_server.kill()
    try:
        content, header = ask(gateway, f"What's the {tag} refund policy?")
        assert header == "bypass" and content.startswith("echo: ")
        ready = httpx.get(gateway.url + "/ready").json()
        assert ready["status"] == "degraded" and ready["checks"]["semantic_cache"]["degraded"] is True
    finally:
        redis_server.start()
    time.sleep(0.3)
    ask(gateway, f"Which {tag} plan includes priority support?")
    deadline = time.monotonic() + 5
    header = None
    while header != "semantic-hit" and time.monotonic() < deadline:
        header = ask(gateway, f"Which {tag} plan includes priority support?")[1]
        time.sleep(0.1)
    assert header == "semantic-hit"


async def test_embeddings_are_batched_under_load(gateway: GatewayServer) -> None:
    import asyncio

    plugin = next(p for p in gateway.holder.current.plugins if p.name == "semantic_cache")
    before = plugin.embedder.batches
    client = openai.AsyncOpenAI(base_url=gateway.base_url, api_key="k", max_retries=0)
    tag = uuid.uuid4().hex[:6]
    await asyncio.gather(
        *(
            client.chat.completions.create(model="sem", messages=[{"role": "user", "content": f"{tag} question {i}"}])
            for i in range(24)
        )
    )
    batches = plugin.embedder.batches - before
    assert 1 <= batches < 24  # concurrent requests shared encode calls
