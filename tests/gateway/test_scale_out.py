"""Scale-out: three `gateway serve` processes sharing one Redis, requests spread round-robin (no sticky routing).

What a load balancer in front of several replicas needs to hold: an exact answer cached by one replica is a hit
on the others, one key's rpm is one counter however its requests are spread, and a semantic entry learnt by one
replica serves paraphrases on every other. The processes share nothing but the policy file and Redis.
Every prompt carries a unique marker, so upstream calls are counted by filtering the fake upstream's log.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI

from tests.fakes.upstream import FakeUpstream
from tests.gateway_server import GatewayProcess, serving
from tests.redis_server import RedisServer

KEY = "sk-scale-out-team-0123456789abcdef"
LIMITED_KEY = "sk-scale-out-limited-0123456789ab"
RPM = 5
REPLICAS = 3
HEALTH_TIMEOUT_S = 90.0  # three processes load the embedding model side by side on two cores
LEARN_TIMEOUT_S = 10.0  # how long a replica may take to learn a semantic entry from the Redis stream


def policy(upstream_url: str, redis_url: str, namespace: str) -> str:
    shared = {"store": "redis", "redis_url": redis_url, "namespace": namespace, "redis_timeout_ms": 500}
    target = [{"backend": "fake", "model": "echo-model"}]
    doc = {
        "backends": [
            {
                "name": "fake",
                "type": "openai",
                "base_url": f"{upstream_url}/v1",
                "timeouts": {"connect_s": 2, "first_byte_s": 5, "idle_s": 5, "total_s": 30},
            }
        ],
        "models": [
            {"name": "echo", "targets": target},
            {"name": "exact", "targets": target, "plugins": [{"use": "exact_cache", **shared}]},
            {"name": "sem", "targets": target, "plugins": [{"use": "semantic_cache", **shared}]},
        ],
        "auth": {
            "keys": [
                {"name": "team", "key": KEY},
                {"name": "limited", "key": LIMITED_KEY, "rpm": RPM},
            ]
        },
        "limits": shared,
        "telemetry": {"access_log": False},
    }
    return json.dumps(doc, indent=1)  # JSON is YAML


@dataclass
class Reply:
    status: int
    cache: str | None
    limit_remaining: str | None
    body: dict[str, Any]

    @property
    def text(self) -> str:
        return str(self.body["choices"][0]["message"]["content"])


class Replica(GatewayProcess):
    def __init__(self, config: Path) -> None:
        super().__init__(config)
        self.clients = {
            key: OpenAI(base_url=self.base_url, api_key=key, max_retries=0, timeout=15) for key in (KEY, LIMITED_KEY)
        }

    def chat(self, model: str, prompt: str, key: str = KEY, headers: dict[str, str] | None = None) -> Reply:
        """One chat completion through the OpenAI SDK; an error status is returned, not raised."""
        messages: Any = [{"role": "user", "content": prompt}]
        try:
            raw = self.clients[key].chat.completions.with_raw_response.create(
                model=model, messages=messages, extra_headers=headers
            )
        except openai.APIStatusError as exc:
            resp = exc.response
            return Reply(resp.status_code, None, resp.headers.get("x-ratelimit-remaining-requests"), resp.json())
        headers_in = raw.headers
        return Reply(
            raw.status_code,
            headers_in.get("x-gateway-cache"),
            headers_in.get("x-ratelimit-remaining-requests"),
            raw.parse().model_dump(),
        )

    def stop(self) -> None:
        for client in self.clients.values():
            client.close()
        super().stop()


def marker() -> str:
    return f"m{uuid.uuid4().hex[:10]}"


def upstream_calls(upstream: FakeUpstream, mark: str) -> int:
    return sum(1 for r in list(upstream.requests) if mark in json.dumps(r.body))


@pytest.fixture(scope="module")
def replicas(
    upstream: FakeUpstream, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Replica]]:
    path = tmp_path_factory.mktemp("scale-out") / "policy.yaml"
    path.write_text(policy(upstream.url, redis_server.url, f"scale{uuid.uuid4().hex[:6]}"))
    with serving(path, REPLICAS, health_timeout_s=HEALTH_TIMEOUT_S, factory=Replica) as started:
        yield started
        for replica in started:
            assert "Traceback" not in replica.output(), replica.output()


def test_exact_cache_hits_on_every_replica_round_robin(replicas: list[Replica], upstream: FakeUpstream) -> None:
    mark = marker()
    prompt = f"the same question asked of every replica {mark}"
    round_robin = itertools.cycle(replicas)
    replies = [next(round_robin).chat("exact", prompt) for _ in range(2 * REPLICAS)]
    assert [(r.status, r.cache) for r in replies] == [(200, "miss")] + [(200, "hit")] * (2 * REPLICAS - 1)
    assert all(r.body == replies[0].body for r in replies)  # the one stored answer, whoever serves it
    assert replies[0].text == f"echo: {prompt}"
    assert upstream_calls(upstream, mark) == 1


def test_rpm_is_one_counter_across_replicas(replicas: list[Replica], upstream: FakeUpstream) -> None:
    if 60 - time.time() % 60 < 8:  # limits count per wall-clock minute: run inside one
        time.sleep(60 - time.time() % 60 + 0.05)
    mark = marker()
    round_robin = itertools.cycle(replicas)
    replies = [next(round_robin).chat("echo", f"req{n} {mark}", key=LIMITED_KEY) for n in range(RPM + REPLICAS)]
    assert [r.status for r in replies] == [200] * RPM + [429] * REPLICAS, [(r.status, r.body) for r in replies]
    assert [r.limit_remaining for r in replies[:RPM]] == [str(RPM - 1 - n) for n in range(RPM)]
    assert all(r.body["error"]["code"] == "rate_limit_exceeded" for r in replies[RPM:])
    assert upstream_calls(upstream, mark) == RPM
    # Another key is not limited by it, on any replica.
    assert [replica.chat("echo", f"free {mark}").status for replica in replicas] == [200] * REPLICAS


def test_semantic_entry_learnt_by_one_replica_serves_paraphrases_on_the_others(
    replicas: list[Replica], upstream: FakeUpstream
) -> None:
    first, *others = replicas
    mark = marker()
    original = f"How do I reset my password on the {mark} portal?"
    miss = first.chat("sem", original)
    assert (miss.status, miss.cache) == (200, "miss")
    assert miss.text == f"echo: {original}"

    paraphrases = [
        f"How can I reset my password on the {mark} portal?",
        f"How could I reset my password on the {mark} portal?",
    ]
    for replica, paraphrase in zip(others, paraphrases, strict=True):
        # Each replica learns the entry by tailing the Redis stream; `no-store` keeps a miss from storing its own.
        deadline = time.monotonic() + LEARN_TIMEOUT_S
        while (reply := replica.chat("sem", paraphrase, headers={"cache-control": "no-store"})).cache != "semantic-hit":
            assert time.monotonic() < deadline, f"replica never served the entry:\n{replica.output()}"
            time.sleep(0.1)
        assert reply.status == 200
        assert reply.body == miss.body  # the first replica's answer to its own wording
    # Once learnt, every replica answers a paraphrase from the cache without the upstream.
    calls = upstream_calls(upstream, mark)
    round_robin = [replica.chat("sem", paraphrases[n % 2]) for n, replica in enumerate(replicas)]
    assert [(r.status, r.cache) for r in round_robin] == [(200, "semantic-hit")] * REPLICAS
    assert upstream_calls(upstream, mark) == calls
