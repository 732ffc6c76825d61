"""exact_cache and semantic_cache across REAL gateway processes (`gateway serve` subprocesses, each on its own
port, all reading the same policy file) sharing one private Redis.

The processes know nothing of each other: whatever one of them serves from another's work went through Redis
(exact answers under keys, semantic entries through the Redis stream every replica replays and tails). The last
tests kill Redis and restart it, so they run last.

Every prompt carries a unique marker, so upstream calls are counted by filtering the fake upstream's log on it.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tests.fakes.upstream import FakeUpstream
from tests.gateway_server import GatewayProcess, serving
from tests.redis_server import RedisServer

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="runs gateway processes and redis-server")

KEY = "sk-processes-team-0123456789abcdef"
CACHE = "x-gateway-cache"
BACKEND = "x-gateway-backend"
RETRY_AFTER_S = 0.2
HEALTH_TIMEOUT_S = 60.0  # semantic_cache processes load the embedding model before they listen
LEARN_TIMEOUT_S = 10.0  # how long a replica may take to learn a semantic entry from the Redis stream


# --- the policy -----------------------------------------------------------------------------------------


def policy(upstream_url: str, redis_url: str, namespace: str) -> str:
    """Two models on the fake upstream: `exact` (exact_cache) and `sem` (semantic_cache), both on Redis."""
    shared = {
        "store": "redis",
        "redis_url": redis_url,
        "namespace": namespace,
        "retry_after_s": RETRY_AFTER_S,
        "redis_timeout_ms": 100,
    }
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
            {
                "name": "exact",
                "targets": [{"backend": "fake", "model": "echo-model"}],
                "plugins": [{"use": "exact_cache", **shared}],
            },
            {
                "name": "sem",
                "targets": [{"backend": "fake", "model": "echo-model"}],
                "plugins": [{"use": "semantic_cache", **shared}],
            },
        ],
        "auth": {"keys": [{"name": "team", "key": KEY}]},
        "telemetry": {"access_log": False},
    }
    return json.dumps(doc, indent=1)  # JSON is YAML


# --- gateway processes ----------------------------------------------------------------------------------


class Process(GatewayProcess):
    """One `gateway serve` subprocess and the clients that talk to it."""

    def __init__(self, config: Path) -> None:
        super().__init__(config)
        self.sdk = OpenAI(base_url=f"{self.url}/v1", api_key=KEY, max_retries=0, timeout=15)
        self.http = httpx.Client(base_url=f"{self.url}/v1", headers={"authorization": f"Bearer {KEY}"}, timeout=15)

    def stop(self) -> None:
        self.sdk.close()
        self.http.close()
        super().stop()

    def ready(self) -> dict[str, Any]:
        resp = httpx.get(f"{self.url}/ready", timeout=5)
        body: dict[str, Any] = resp.json()
        return body

    # -- requests

    def chat(self, model: str, prompt: str, headers: dict[str, str] | None = None) -> Reply:
        raw = self.sdk.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": prompt}], extra_headers=headers
        )
        completion = raw.parse()
        return Reply(raw.status_code, raw.headers.get(CACHE), raw.headers.get(BACKEND), completion.model_dump(), None)

    def stream(self, model: str, prompt: str) -> Reply:
        body = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": True}
        resp = self.http.post("/chat/completions", json=body)
        return Reply(resp.status_code, resp.headers.get(CACHE), resp.headers.get(BACKEND), None, resp)

    def send(self, model: str, prompt: str, *, stream: bool) -> Reply:
        return self.stream(model, prompt) if stream else self.chat(model, prompt)


@dataclass
class Reply:
    status: int
    cache: str | None
    backend: str | None
    completion: dict[str, Any] | None  # a whole answer
    streamed: httpx.Response | None  # a stream, read to the end

    @property
    def events(self) -> list[str]:
        assert self.streamed is not None
        out = []
        for block in self.streamed.text.split("\n\n"):
            data = [line.removeprefix("data:").lstrip() for line in block.splitlines() if line.startswith("data:")]
            if data:
                out.append("\n".join(data))
        return out

    @property
    def chunks(self) -> list[dict[str, Any]]:
        return [json.loads(e) for e in self.events if e != "[DONE]"]

    @property
    def is_stream(self) -> bool:
        return self.streamed is not None and self.streamed.headers.get("content-type", "").startswith(
            "text/event-stream"
        )

    @property
    def text(self) -> str:
        if self.completion is not None:
            return str(self.completion["choices"][0]["message"]["content"])
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in self.chunks if c.get("choices"))

    @property
    def complete(self) -> bool:
        """A whole answer that finished, or a stream that ended with one finish_reason and [DONE]."""
        if self.completion is not None:
            return bool(self.completion["choices"][0]["finish_reason"] == "stop")
        finishes = [c["choices"][0]["finish_reason"] for c in self.chunks if c.get("choices")]
        return self.is_stream and self.events[-1:] == ["[DONE]"] and [f for f in finishes if f] == ["stop"]


def marker() -> str:
    return f"m{uuid.uuid4().hex[:10]}"


def upstream_calls(upstream: FakeUpstream, mark: str) -> int:
    return sum(1 for r in list(upstream.requests) if mark in json.dumps(r.body))


def learn(process: Process, prompt: str, seconds: float = LEARN_TIMEOUT_S) -> Reply:
    """Ask `process` for a semantic answer until it is a semantic-hit or `seconds` pass; the last reply either way.

    The polls say `Cache-Control: no-store`, so a miss does not store the process's own answer to the paraphrase
    (which a later poll would then find, hiding whether the entry under test ever arrived).
    """
    deadline = time.monotonic() + seconds
    while True:
        reply = process.chat("sem", prompt, headers={"cache-control": "no-store"})
        if reply.cache == "semantic-hit" or time.monotonic() > deadline:
            return reply
        time.sleep(0.1)


# --- fixtures -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def config(upstream: FakeUpstream, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    redis_server.flush()
    path = tmp_path_factory.mktemp("cache-processes") / "policy.yaml"
    path.write_text(policy(upstream.url, redis_server.url, f"procs{uuid.uuid4().hex[:6]}"))
    return path


@pytest.fixture(scope="module")
def pair(config: Path) -> Iterator[tuple[Process, Process]]:
    with serving(config, 2, health_timeout_s=HEALTH_TIMEOUT_S, factory=Process) as (a, b):
        yield a, b


# --- 1. exact_cache -------------------------------------------------------------------------------------


def test_exact_answer_from_one_process_is_a_hit_on_another(
    pair: tuple[Process, Process], upstream: FakeUpstream
) -> None:
    a, b = pair
    mark = marker()
    prompt = f"a prompt long enough that its replay takes several chunks, across processes {mark}"

    first = a.chat("exact", prompt)
    assert (first.status, first.cache, first.backend) == (200, "miss", "fake")
    assert first.text == f"echo: {prompt}"

    second = b.chat("exact", prompt)
    assert (second.status, second.cache, second.backend) == (200, "hit", "plugin:exact_cache")
    assert second.completion == first.completion  # the very answer A stored, not a look-alike

    streamed = b.stream("exact", prompt)
    assert (streamed.status, streamed.cache) == (200, "hit")
    assert streamed.is_stream
    assert streamed.complete
    assert len(streamed.chunks) > 3  # replayed in pieces, like a real stream
    assert streamed.text == f"echo: {prompt}"
    assert all(c["object"] == "chat.completion.chunk" for c in streamed.chunks)
    assert streamed.chunks[0]["id"] == first.completion["id"]  # type: ignore[index]

    # and the SDK reads the replay as it reads any stream
    sdk_text = "".join(
        c.choices[0].delta.content or ""
        for c in b.sdk.chat.completions.create(
            model="exact", messages=[{"role": "user", "content": prompt}], stream=True
        )
        if c.choices
    )
    assert sdk_text == f"echo: {prompt}"
    assert upstream_calls(upstream, mark) == 1


def test_exact_streamed_miss_on_one_process_is_a_hit_on_another(
    pair: tuple[Process, Process], upstream: FakeUpstream
) -> None:
    a, b = pair
    mark = marker()
    prompt = f"streamed first, then asked elsewhere {mark}"
    streamed = b.stream("exact", prompt)
    assert (streamed.status, streamed.cache) == (200, "miss")
    assert streamed.complete and streamed.text == f"echo: {prompt}"
    whole = a.chat("exact", prompt)
    assert (whole.status, whole.cache) == (200, "hit")
    assert whole.text == f"echo: {prompt}"
    assert upstream_calls(upstream, mark) == 1


# --- 2. semantic_cache ----------------------------------------------------------------------------------


def test_semantic_entry_from_one_process_serves_paraphrases_on_others(
    pair: tuple[Process, Process], config: Path, upstream: FakeUpstream
) -> None:
    a, b = pair
    mark = marker()
    original = f"How do I reset my password on the {mark} portal?"
    paraphrase = f"How can I reset my password on the {mark} portal?"

    first = a.chat("sem", original)
    assert (first.status, first.cache) == (200, "miss")
    assert first.text == f"echo: {original}"

    # B learns the entry by tailing the Redis stream: it may take a moment.
    on_b = learn(b, paraphrase)
    assert (on_b.status, on_b.cache) == (200, "semantic-hit"), f"B never served A's entry:\n{b.output()}"
    assert on_b.text == f"echo: {original}"  # A's answer to A's wording
    assert on_b.completion == first.completion

    calls = upstream_calls(upstream, mark)  # 1, plus any misses B had before it caught up

    # A process started after the entry exists rebuilds its index from Redis when it starts.
    with serving(config, 1, health_timeout_s=HEALTH_TIMEOUT_S, factory=Process) as (c,):
        on_c = c.chat("sem", paraphrase)
        assert (on_c.status, on_c.cache) == (200, "semantic-hit"), f"C did not replay the log:\n{c.output()}"
        assert on_c.completion == first.completion
        streamed = c.stream("sem", f"How could I reset my password on the {mark} portal?")
        assert (streamed.status, streamed.cache) == (200, "semantic-hit")
        assert streamed.is_stream and streamed.complete and streamed.text == f"echo: {original}"
        check = c.ready()["checks"]["semantic_cache"]
        assert check["ok"] is True and check["degraded"] is False
    assert upstream_calls(upstream, mark) == calls  # C answered without the upstream


# --- 3. Redis dies under traffic ------------------------------------------------------------------------


def test_redis_killed_mid_traffic_fails_open_then_caching_resumes(
    pair: tuple[Process, Process], upstream: FakeUpstream, redis_server: RedisServer
) -> None:
    a, b = pair
    mark = marker()
    # Cached before the outage: on both processes, through Redis.
    repeated = [f"repeated question number {n} {mark}" for n in range(3)]
    for prompt in repeated:
        assert a.chat("exact", prompt).cache == "miss"
        assert b.chat("exact", prompt).cache == "hit"
    sem_repeated = f"What is the refund policy of the {mark} store?"
    assert a.chat("sem", sem_repeated).cache == "miss"
    assert learn(b, sem_repeated).cache == "semantic-hit"

    new_questions = iter(
        f"{question} ({mark})"
        for question in (
            "Who maintains the billing service?",
            "Why is the nightly backup job failing?",
            "Where are the TLS certificates stored?",
            "When does the summer sale start?",
        )
    )
    kill_at, readiness_at, restart_at = 10, 20, 30
    outcomes: list[tuple[int, str, str, str | None]] = []  # (step, process, kind of prompt, x-gateway-cache)
    failures: list[str] = []
    readiness: dict[str, dict[str, Any]] = {}
    try:
        for step in range(40):
            if step == kill_at:
                redis_server.kill()
            if step == readiness_at:
                readiness = {"A": a.ready(), "B": b.ready()}
            if step == restart_at:
                redis_server.start()
            name, process = ("A", a) if step % 2 == 0 else ("B", b)
            stream = step % 4 == 1
            if step % 10 == 4:  # a paraphrase of the semantic entry made before the outage
                kind, model, prompt = "sem-repeated", "sem", f"What's the refund policy of the {mark} store?"
                expected = {f"echo: {sem_repeated}", f"echo: {prompt}"}
            elif step % 10 == 9:
                kind, model, prompt = "sem-new", "sem", next(new_questions)
                expected = {f"echo: {prompt}"}
            elif step % 3 == 0:
                kind, model, prompt = "exact-repeated", "exact", repeated[step % len(repeated)]
                expected = {f"echo: {prompt}"}
            else:
                kind, model, prompt = "exact-new", "exact", f"new prompt at step {step} {mark}"
                expected = {f"echo: {prompt}"}
            try:
                reply = process.send(model, prompt, stream=stream)
            except Exception as exc:  # every failure is collected and reported at once
                failures.append(f"step {step} on {name} ({kind}): {type(exc).__name__}: {exc}")
                continue
            if reply.status != 200 or not reply.complete or reply.text not in expected:
                failures.append(f"step {step} on {name} ({kind}): {reply.status} {reply.cache} {reply.text!r}")
            outcomes.append((step, name, kind, reply.cache))
    finally:
        if redis_server.proc is None:
            redis_server.start()

    assert failures == []
    assert len(outcomes) == 40
    before = [o for o in outcomes if o[0] < kill_at]
    assert [
        o for o in before if o[2] in ("exact-repeated", "sem-repeated") and o[3] not in ("hit", "semantic-hit")
    ] == []
    assert [o for o in before if o[2] in ("exact-new", "sem-new") and o[3] != "miss"] == []
    down = [o for o in outcomes if kill_at <= o[0] < restart_at]
    # Every request that had to ask Redis said so (the semantic lookups of brand-new questions: see the end).
    assert [o for o in down if o[2] != "sem-new" and o[3] != "bypass"] == [], down

    for name, body in readiness.items():
        assert body["status"] == "degraded", f"{name}: {body}"
        for plugin in ("exact_cache", "semantic_cache"):
            check = body["checks"][plugin]
            assert check["ok"] is True and check["degraded"] is True, f"{name} {plugin}: {check}"
            assert "redis unreachable" in check["detail"]

    # Redis is back (empty: no persistence). After retry_after_s both processes use it again.
    time.sleep(RETRY_AFTER_S + 0.1)
    fresh = f"after the outage {mark}"
    first, second = a.chat("exact", fresh), b.chat("exact", fresh)
    assert (first.cache, second.cache) == ("miss", "hit")
    assert second.text == f"echo: {fresh}"
    streamed = b.stream("exact", fresh)
    assert (streamed.cache, streamed.text) == ("hit", f"echo: {fresh}")

    sem_fresh = f"How do I rotate the {mark} API keys?"
    assert a.chat("sem", sem_fresh).cache == "miss"
    on_b = learn(b, f"How can I rotate the {mark} API keys?")
    assert on_b.cache == "semantic-hit", f"B's Redis follower did not recover:\n{b.output()}"
    assert on_b.text == f"echo: {sem_fresh}"

    for process in (a, b):
        body = process.ready()
        assert body["status"] == "ready", body
        assert process.proc.poll() is None
        assert "Traceback" not in process.output()

    # A brand-new question while Redis is down cannot be cached either (its answer is not stored: publishing it
    # fails), so it must say "bypass" like every other request then, not "miss".
    assert [o for o in down if o[2] == "sem-new" and o[3] != "bypass"] == []


def test_redis_restarted_between_requests_is_used_again_after_retry_after_s(
    pair: tuple[Process, Process], upstream: FakeUpstream, redis_server: RedisServer
) -> None:
    """Redis blinks (killed and restarted while no request is in flight): once it is back and retry_after_s has
    passed, the very next requests use it again; none of them may pay for the connections the restart broke."""
    a, b = pair
    mark = marker()
    warm = f"before the blink {mark}"
    assert (a.chat("exact", warm).cache, b.chat("exact", warm).cache) == ("miss", "hit")  # both hold a connection
    redis_server.restart()
    time.sleep(RETRY_AFTER_S + 0.1)

    fresh = f"after the blink {mark}"
    first, second = a.chat("exact", fresh), b.chat("exact", fresh)
    assert (first.text, second.text) == (f"echo: {fresh}", f"echo: {fresh}")
    assert (first.cache, second.cache) == ("miss", "hit")
    assert upstream_calls(upstream, fresh) == 1
