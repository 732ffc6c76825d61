"""Virtual keys and per-key limits end to end: a real gateway in front of the fake upstream, driven by the OpenAI SDK
(max_retries=0) and httpx.

- keys: `key`, `key_sha256` and `key_env` authenticate; a wrong key is a 401; `models:` gives a 403 elsewhere;
  ambiguous or unresolvable key entries are refused when the policy loads.
- rpm / tpm / budget_usd in memory: what passes, what gets a 429 (and its headers), and that tokens are settled with
  the upstream's real usage, plain or streamed; cache hits cost nothing.
- the Redis store: one rpm shared by two real `gateway serve` processes; Redis down with fail_open true / false.

Token arithmetic: the gateway *reserves* tiktoken's count of the prompt (gateway.tokens) plus max_tokens, and
*settles* with the usage the fake upstream reports: prompt_tokens = words in all messages, completion_tokens = words
in the reply ("echo: " + the last user message). Every prompt here is "<word> <marker>" (2 words), so a request's
real usage is 2 + 3 = 5 tokens, whatever tiktoken makes of the marker.

Limits use fixed wall-clock minutes: every sequence that must stay inside one window first waits out the end of the
current minute if it is too close (`fresh_window`).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from gateway import tokens
from gateway.loader import PolicyError, load_text
from tests.fakes.upstream import FakeUpstream
from tests.gateway_server import GatewayServer, serving
from tests.redis_server import RedisServer

MakeGateway = Callable[[str], GatewayServer]

REAL_USAGE = 5  # a "<word> <marker>" prompt: 2 prompt words + 3 reply words ("echo: <word> <marker>")
RETRY_AFTER_S = 0.2


# --- helpers ---------------------------------------------------------------------------------------------


def marker() -> str:
    return f"m{uuid.uuid4().hex[:10]}"


def token() -> str:
    return f"sk-limits-{uuid.uuid4().hex}"


def policy(
    upstream_url: str,
    keys: list[dict[str, Any]],
    *,
    models: list[dict[str, Any]] | None = None,
    limits: dict[str, Any] | None = None,
) -> str:
    doc: dict[str, Any] = {
        "backends": [
            {
                "name": "fake",
                "type": "openai",
                "base_url": f"{upstream_url}/v1",
                "timeouts": {"connect_s": 2, "first_byte_s": 5, "idle_s": 5, "total_s": 30},
            }
        ],
        "models": models or [{"name": "echo", "targets": [{"backend": "fake", "model": "echo-model"}]}],
        "auth": {"keys": keys},
        "limits": limits or {},
        "telemetry": {"access_log": False},
    }
    return json.dumps(doc, indent=1)  # JSON is YAML


def model(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "targets": [{"backend": "fake", "model": "echo-model"}], **extra}


def sdk(gw: GatewayServer | str, key: str) -> OpenAI:
    base = gw if isinstance(gw, str) else gw.base_url
    return OpenAI(base_url=base, api_key=key, max_retries=0, timeout=15)


@dataclass
class Reply:
    status: int
    headers: httpx.Headers
    body: dict[str, Any]

    @property
    def error(self) -> dict[str, Any]:
        error: dict[str, Any] = self.body["error"]
        return error

    def limit(self, name: str) -> str | None:
        return self.headers.get(f"x-ratelimit-{name}")


def chat(client: OpenAI, prompt: str, model_name: str = "echo", **extra: Any) -> Reply:
    """One chat completion through the SDK; errors are returned, not raised."""
    try:
        raw = client.chat.completions.with_raw_response.create(
            model=model_name, messages=[{"role": "user", "content": prompt}], **extra
        )
    except openai.APIStatusError as exc:
        return Reply(exc.status_code, exc.response.headers, exc.response.json())
    return Reply(raw.status_code, raw.headers, raw.parse().model_dump())


def body_of(prompt: str, max_tokens: int | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "echo", "messages": [{"role": "user", "content": prompt}], **extra}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


def prompt_tokens(body: dict[str, Any]) -> int:
    """What the gateway reserves for the prompt (gateway.tokens.count_prompt, without an event loop)."""
    text, overhead = tokens.prompt_text("chat", body)
    return overhead + tokens.count(text)


def stream(gw: GatewayServer, key: str, body: dict[str, Any]) -> tuple[httpx.Response, list[dict[str, Any]]]:
    """A streamed chat completion through httpx: the response (read to the end) and its JSON events."""
    resp = httpx.post(
        f"{gw.base_url}/chat/completions",
        json={**body, "stream": True},
        headers={"authorization": f"Bearer {key}"},
        timeout=15,
    )
    events = []
    for line in resp.text.splitlines():
        if line.startswith("data:") and line.removeprefix("data:").strip() != "[DONE]":
            events.append(json.loads(line.removeprefix("data:")))
    return resp, events


def upstream_calls(upstream: FakeUpstream, mark: str) -> int:
    return sum(1 for r in list(upstream.requests) if mark in json.dumps(r.body))


def fresh_window(need_s: float = 6.0) -> None:
    """Limits count per wall-clock minute: start a sequence only if it can end inside the current one."""
    left = 60 - time.time() % 60
    if left < need_s:
        time.sleep(left + 0.05)


def settled(gw: GatewayServer, timeout: float = 5.0) -> None:
    """Wait until the gateway has finished its requests' end phase (where usage is settled with the limiter).

    A streamed answer is settled after its last byte is sent, so a client may otherwise race its next request
    against the settlement of the previous one.
    """
    deadline = time.monotonic() + timeout
    while gw.holder.current.in_flight:
        assert time.monotonic() < deadline, "the gateway never finished its requests"
        time.sleep(0.01)


# --- keys ------------------------------------------------------------------------------------------------


def test_key_key_sha256_and_key_env_all_authenticate(
    upstream: FakeUpstream, make_gateway: MakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain, hashed, from_env = token(), token(), token()
    env_var = f"LIMITS_TEST_KEY_{uuid.uuid4().hex[:8].upper()}"
    monkeypatch.setenv(env_var, from_env)  # the policy is loaded in this process, by make_gateway
    digest = hashlib.sha256(hashed.encode()).hexdigest().upper()  # the pattern accepts either case
    gw = make_gateway(
        policy(
            upstream.url,
            [
                {"name": "plain", "key": plain},
                {"name": "hashed", "key_sha256": digest},
                {"name": "env", "key_env": env_var},
            ],
        )
    )
    mark = marker()
    for key in (plain, hashed, from_env):
        reply = chat(sdk(gw, key), f"hello {mark}")
        assert reply.status == 200, reply.body
        assert reply.body["choices"][0]["message"]["content"] == f"echo: hello {mark}"
    assert upstream_calls(upstream, mark) == 3

    # the digest itself, the env var's name, and a near miss are not keys
    for wrong in (digest, digest.lower(), env_var, plain + "x", "sk-nope"):
        reply = chat(sdk(gw, wrong), f"wrong {mark}")
        assert reply.status == 401, wrong
        assert reply.error["type"] == "authentication_error"
        assert reply.error["code"] == "invalid_api_key"
    missing = httpx.post(f"{gw.base_url}/chat/completions", json=body_of(f"none {mark}"), timeout=15)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "missing_api_key"
    assert upstream_calls(upstream, mark) == 3


def test_a_key_limited_to_some_models_gets_403_on_others(upstream: FakeUpstream, make_gateway: MakeGateway) -> None:
    narrow, wide = token(), token()
    gw = make_gateway(
        policy(
            upstream.url,
            [{"name": "narrow", "key": narrow, "models": ["model-a"]}, {"name": "wide", "key": wide}],
            models=[model("model-a"), model("model-b")],
        )
    )
    mark = marker()
    assert chat(sdk(gw, narrow), f"a {mark}", "model-a").status == 200

    client = sdk(gw, narrow)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(model="model-b", messages=[{"role": "user", "content": f"b {mark}"}])
    assert caught.value.status_code == 403
    error = caught.value.response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"], error["param"]) == ("permission_error", "model_not_allowed", "model")
    assert "model-b" in error["message"]

    # refused before anything streams, too
    resp, _ = stream(gw, narrow, {**body_of(f"b {mark}"), "model": "model-b"})
    assert resp.status_code == 403
    assert resp.json()["error"]["code"] == "model_not_allowed"

    assert chat(sdk(gw, wide), f"b {mark}", "model-b").status == 200  # the model itself is fine
    assert upstream_calls(upstream, mark) == 2


def test_ambiguous_or_unresolvable_key_entries_are_rejected_at_load(
    upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = token()
    digest = hashlib.sha256(secret.encode()).hexdigest()
    unset = f"LIMITS_TEST_UNSET_{uuid.uuid4().hex[:8].upper()}"
    monkeypatch.delenv(unset, raising=False)
    monkeypatch.setenv("LIMITS_TEST_EMPTY", "")

    assert load_text(policy(upstream.url, [{"name": "ok", "key_sha256": digest}])).policy.auth.keys[0].name == "ok"
    for entry, says in (
        ({"name": "two", "key": secret, "key_sha256": digest}, "exactly one"),
        ({"name": "three", "key": secret, "key_sha256": digest, "key_env": "HOME"}, "exactly one"),
        ({"name": "none"}, "exactly one"),
        ({"name": "unset", "key_env": unset}, unset),
        ({"name": "empty", "key_env": "LIMITS_TEST_EMPTY"}, "LIMITS_TEST_EMPTY"),
    ):
        with pytest.raises(PolicyError) as caught:
            load_text(policy(upstream.url, [entry]))
        assert says in str(caught.value), (entry, str(caught.value))


# --- rpm -------------------------------------------------------------------------------------------------


def test_rpm_allows_exactly_the_limit_then_429_with_headers(upstream: FakeUpstream, make_gateway: MakeGateway) -> None:
    limited, other = token(), token()
    gw = make_gateway(
        policy(upstream.url, [{"name": "rpm-a", "key": limited, "rpm": 3}, {"name": "rpm-b", "key": other, "rpm": 3}])
    )
    mark = marker()
    client = sdk(gw, limited)
    fresh_window()

    # turned away before the limits: an unknown model, an invalid body (they do not count)
    assert chat(client, f"x {mark}", "no-such-model").status == 404
    bad = httpx.post(
        f"{gw.base_url}/chat/completions",
        json={"model": "echo", "messages": "not a list"},
        headers={"authorization": f"Bearer {limited}"},
        timeout=15,
    )
    assert bad.status_code == 400

    remaining = []
    for n in range(3):
        reply = chat(client, f"req{n} {mark}")
        assert reply.status == 200, reply.body
        assert reply.limit("limit-requests") == "3"
        assert reply.limit("reset-requests")
        assert reply.limit("limit-tokens") is None  # no tpm on this key
        remaining.append(reply.limit("remaining-requests"))
    assert remaining == ["2", "1", "0"]

    refused = chat(client, f"req3 {mark}")
    assert refused.status == 429
    assert refused.error["type"] == "rate_limit_error"
    assert refused.error["code"] == "rate_limit_exceeded"
    assert "requests per minute" in refused.error["message"]
    retry_after = refused.headers.get("retry-after")
    assert retry_after is not None and 1 <= int(retry_after) <= 60
    assert refused.limit("limit-requests") == "3"
    assert refused.limit("remaining-requests") == "0"
    assert refused.limit("reset-requests")

    resp, _ = stream(gw, limited, body_of(f"streamed {mark}"))  # refused before anything streams
    assert resp.status_code == 429
    assert resp.json()["error"]["code"] == "rate_limit_exceeded"
    assert upstream_calls(upstream, mark) == 3

    # another key has its own counter
    other_reply = chat(sdk(gw, other), f"other {mark}")
    assert other_reply.status == 200
    assert (other_reply.limit("limit-requests"), other_reply.limit("remaining-requests")) == ("3", "2")
    assert upstream_calls(upstream, mark) == 4


# --- tpm -------------------------------------------------------------------------------------------------


def test_tpm_reserves_the_estimate_and_settles_with_real_usage(
    upstream: FakeUpstream, make_gateway: MakeGateway
) -> None:
    key = token()
    mark = marker()
    big = 60  # max_tokens: the reservation is prompt + 60, the answer only 3 words
    prompt = prompt_tokens(body_of(f"hello {mark}"))
    estimate = prompt + big
    tpm = estimate + REAL_USAGE + 2  # one settled request and one reservation fit; two reservations do not
    assert 2 * estimate > tpm
    gw = make_gateway(policy(upstream.url, [{"name": "tpm", "key": key, "tpm": tpm}]))
    client = sdk(gw, key)
    fresh_window()

    first = chat(client, f"hello {mark}", max_tokens=big)
    assert first.status == 200, first.body
    assert first.body["usage"]["total_tokens"] == REAL_USAGE
    assert first.limit("limit-tokens") == str(tpm)
    assert first.limit("remaining-tokens") == str(tpm - estimate)  # the whole estimate was reserved
    assert first.limit("limit-requests") is None  # no rpm on this key
    settled(gw)

    # the window now holds the real usage (5): 5 + prompt + 63 is one over
    refused = chat(client, f"hello {mark}", max_tokens=big + 3)
    assert refused.status == 429, refused.body
    assert refused.error["code"] == "rate_limit_exceeded"
    assert "tokens per minute" in refused.error["message"]
    assert refused.limit("remaining-tokens") == str(tpm - REAL_USAGE)
    assert refused.headers.get("retry-after") is not None

    # ... while 5 + prompt + 60 fits: without the settlement (prompt + 60 still held) it would not
    third = chat(client, f"hello {mark}", max_tokens=big)
    assert third.status == 200, third.body
    assert third.limit("remaining-tokens") == str(tpm - REAL_USAGE - estimate)
    settled(gw)

    # two settled requests (10) leave less room than one estimate needs
    fourth = chat(client, f"hello {mark}", max_tokens=big)
    assert fourth.status == 429
    assert fourth.limit("remaining-tokens") == str(tpm - 2 * REAL_USAGE)

    # a request that could never fit says so
    huge = chat(client, f"hello {mark}", max_tokens=10 * tpm)
    assert huge.status == 429
    assert "Request too large" in huge.error["message"]
    assert upstream_calls(upstream, mark) == 2


def test_streamed_usage_is_settled_like_plain_usage(upstream: FakeUpstream, make_gateway: MakeGateway) -> None:
    key = token()
    mark = marker()
    tpm, big = 2000, 100
    estimate = prompt_tokens(body_of(f"hello {mark}")) + big
    gw = make_gateway(policy(upstream.url, [{"name": "tpm-stream", "key": key, "tpm": tpm}]))
    client = sdk(gw, key)
    fresh_window()

    # 1. streamed, the client did not ask for usage: none is sent, but the gateway still settles it
    resp, events = stream(gw, key, body_of(f"hello {mark}", big))
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.headers["x-ratelimit-remaining-tokens"] == str(tpm - estimate)
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"]) == (
        f"echo: hello {mark}"
    )
    assert not any(e.get("usage") for e in events)
    settled(gw)

    # 2. plain: the stream counted its real 5 tokens, not its estimate
    plain = chat(client, f"hello {mark}", max_tokens=big)
    assert plain.status == 200
    assert plain.limit("remaining-tokens") == str(tpm - REAL_USAGE - estimate)
    settled(gw)

    # 3. streamed with include_usage: the client gets the usage, and it is what is counted
    resp, events = stream(gw, key, body_of(f"hello {mark}", big, stream_options={"include_usage": True}))
    assert resp.status_code == 200
    assert resp.headers["x-ratelimit-remaining-tokens"] == str(tpm - 2 * REAL_USAGE - estimate)
    usage = [e["usage"] for e in events if e.get("usage")]
    assert usage == [{"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": REAL_USAGE}]
    settled(gw)

    # 4. the same through the SDK's own stream
    chunks = list(
        client.chat.completions.create(
            model="echo",
            messages=[{"role": "user", "content": f"hello {mark}"}],
            max_tokens=big,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == REAL_USAGE
    settled(gw)

    last = chat(client, f"hello {mark}", max_tokens=big)
    assert last.limit("remaining-tokens") == str(tpm - 4 * REAL_USAGE - estimate)
    assert upstream_calls(upstream, mark) == 5


def test_a_stream_the_client_abandons_still_counts_its_tokens_and_cost(
    upstream: FakeUpstream, make_gateway: MakeGateway
) -> None:
    """The upstream was called (its prompt read, some of the answer generated) and the provider bills for it: a
    client that hangs up before the final usage chunk must not get the request for free. (Otherwise disconnecting
    just before the end of every stream defeats tpm and budget_usd alike.)"""
    key = token()
    mark = marker()
    slow = {
        "name": "slow",
        "targets": [{"backend": "fake", "model": "slow-stream-20"}],  # 50 words, one event every 20 ms
        "pricing": {"input_per_mtok": 1_000_000, "output_per_mtok": 1_000_000},  # 1 token = $1
    }
    tpm = 5000
    gw = make_gateway(
        policy(
            upstream.url, [{"name": "abandon", "key": key, "tpm": tpm, "budget_usd": 1}], models=[model("echo"), slow]
        )
    )
    body = {**body_of(f"hello {mark}", 100), "model": "slow", "stream": True}
    fresh_window()
    with httpx.stream(
        "POST", f"{gw.base_url}/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=15
    ) as resp:
        assert resp.status_code == 200
        content = 0
        for line in resp.iter_lines():
            if line.startswith("data:") and '"content"' in line:
                content += 1
                if content == 5:
                    break  # hang up mid-answer
    assert upstream_calls(upstream, mark) == 1
    settled(gw)

    # The abandoned stream counted at least its prompt (the upstream never reported usage: tiktoken's count) ...
    after = chat(sdk(gw, key), f"next {mark}", max_tokens=100)
    remaining = after.limit("remaining-tokens")  # sent on a 429 too: the window's count before this request
    assert remaining is not None, (after.status, after.headers)
    reserved_now = prompt_tokens(body_of(f"next {mark}")) + 100 if after.status == 200 else 0
    counted = tpm - int(remaining) - reserved_now
    assert counted >= prompt_tokens(body), f"the abandoned stream counted {counted} tokens"
    # ... and was priced: at $1 a token, its prompt alone spent the whole $1 budget.
    assert after.status == 429, f"the abandoned stream cost nothing: {after.status} {after.body}"
    assert after.error["code"] == "insufficient_quota"


# --- budget ----------------------------------------------------------------------------------------------


def test_budget_refuses_once_spend_reaches_it(upstream: FakeUpstream, make_gateway: MakeGateway) -> None:
    key, other = token(), token()
    priced = model("priced", pricing={"input_per_mtok": 1_000_000, "output_per_mtok": 1_000_000})  # 1 token = $1
    gw = make_gateway(
        policy(
            upstream.url,
            [
                {"name": "budget", "key": key, "budget_usd": 10},
                {"name": "budget-other", "key": other, "budget_usd": 10},
            ],
            models=[priced],
        )
    )
    client = sdk(gw, key)
    mark = marker()
    # "<marker>": 1 prompt word + 2 reply words ("echo: <marker>") = $3 a request: 0, 3, 6, 9 are below 10
    for n in range(4):
        reply = chat(client, mark, "priced")
        assert reply.status == 200, (n, reply.body)
        assert reply.body["usage"]["total_tokens"] == 3
        assert reply.limit("limit-requests") is None and reply.limit("limit-tokens") is None
        settled(gw)

    refused = chat(client, mark, "priced")
    assert refused.status == 429
    assert refused.error["code"] == "insufficient_quota"
    assert "12.00" in refused.error["message"] and "10.00" in refused.error["message"]  # the real spend
    assert refused.headers.get("retry-after") is None  # waiting does not help
    resp, _ = stream(gw, key, {**body_of(mark), "model": "priced"})
    assert resp.status_code == 429
    assert resp.json()["error"]["code"] == "insufficient_quota"
    assert upstream_calls(upstream, mark) == 4

    assert chat(sdk(gw, other), mark, "priced").status == 200  # spend is per key
    assert upstream_calls(upstream, mark) == 5


# --- cache hits ------------------------------------------------------------------------------------------


def test_cache_hits_are_served_beyond_the_rpm(upstream: FakeUpstream, make_gateway: MakeGateway) -> None:
    key = token()
    gw = make_gateway(
        policy(
            upstream.url,
            [{"name": "cached-rpm", "key": key, "rpm": 2}],
            models=[model("cached", plugins=[{"use": "exact_cache"}])],
        )
    )
    client = sdk(gw, key)
    mark = marker()
    fresh_window()

    first = chat(client, f"repeated {mark}", "cached")
    assert first.status == 200
    assert (first.headers.get("x-gateway-cache"), first.limit("remaining-requests")) == ("miss", "1")
    for _ in range(5):
        hit = chat(client, f"repeated {mark}", "cached")
        assert (hit.status, hit.headers.get("x-gateway-cache")) == (200, "hit")
        assert hit.body == first.body

    second = chat(client, f"new {mark}", "cached")  # the second upstream call of the minute: still allowed
    assert (second.status, second.headers.get("x-gateway-cache")) == (200, "miss")
    assert second.limit("remaining-requests") == "0"

    refused = chat(client, f"another {mark}", "cached")
    assert refused.status == 429
    assert refused.error["code"] == "rate_limit_exceeded"

    # over the limit, hits are still served: plain and streamed
    assert chat(client, f"repeated {mark}", "cached").status == 200
    resp, events = stream(gw, key, {**body_of(f"new {mark}"), "model": "cached"})
    assert (resp.status_code, resp.headers.get("x-gateway-cache")) == (200, "hit")
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"]) == f"echo: new {mark}"
    assert upstream_calls(upstream, mark) == 2


# --- Redis: two real gateway processes --------------------------------------------------------------------


def test_redis_rpm_is_shared_by_two_gateway_processes(
    upstream: FakeUpstream, redis_server: RedisServer, tmp_path: Path
) -> None:
    key = token()
    namespace = f"kl{uuid.uuid4().hex[:8]}"
    config = tmp_path / "policy.yaml"
    config.write_text(
        policy(
            upstream.url,
            [{"name": "shared-rpm", "key": key, "rpm": 4}],
            limits={"store": "redis", "redis_url": redis_server.url, "namespace": namespace, "redis_timeout_ms": 500},
        )
    )
    mark = marker()
    with serving(config, 2) as (a, b):
        clients = [sdk(f"{a.url}/v1", key), sdk(f"{b.url}/v1", key)]
        fresh_window(8.0)
        replies = [chat(clients[n % 2], f"req{n} {mark}") for n in range(8)]
        statuses = [r.status for r in replies]
        assert statuses == [200] * 4 + [429] * 4, [(r.status, r.body) for r in replies]
        assert [r.limit("remaining-requests") for r in replies[:4]] == ["3", "2", "1", "0"]  # one counter for both
        assert all(r.error["code"] == "rate_limit_exceeded" for r in replies[4:])
        assert all(r.headers.get("retry-after") for r in replies[4:])
        assert upstream_calls(upstream, mark) == 4
        for process in (a, b):
            assert "Traceback" not in process.output(), process.output()


# --- Redis down ------------------------------------------------------------------------------------------


def test_redis_down_fails_open_or_closed_then_limits_apply_again(
    upstream: FakeUpstream, make_gateway: MakeGateway, redis_server: RedisServer
) -> None:
    open_key, closed_key = token(), token()

    def redis_policy(name: str, key: str, fail_open: bool) -> str:
        return policy(
            upstream.url,
            [{"name": name, "key": key, "rpm": 2}],
            limits={
                "store": "redis",
                "redis_url": redis_server.url,
                "namespace": f"kl{uuid.uuid4().hex[:8]}",
                "redis_timeout_ms": 500,
                "retry_after_s": RETRY_AFTER_S,
                "fail_open": fail_open,
            },
        )

    gw_open = make_gateway(redis_policy("down-open", open_key, True))
    gw_closed = make_gateway(redis_policy("down-closed", closed_key, False))
    open_client, closed_client = sdk(gw_open, open_key), sdk(gw_closed, closed_key)
    mark = marker()
    fresh_window(8.0)

    # Redis up: limited, with headers (both gateways hold a pooled connection now)
    for client in (open_client, closed_client):
        reply = chat(client, f"before {mark}")
        assert (reply.status, reply.limit("remaining-requests")) == (200, "1")
    assert upstream_calls(upstream, mark) == 2

    try:
        redis_server.kill()
        # fail_open: served, without limits (more requests than the rpm), and without limit headers
        for n in range(3):
            reply = chat(open_client, f"open{n} {mark}")
            assert reply.status == 200, reply.body
            assert not [h for h in reply.headers if h.startswith("x-ratelimit-")]
        # fail closed: 503, and nothing goes upstream
        for n in range(2):
            reply = chat(closed_client, f"closed{n} {mark}")
            assert reply.status == 503, reply.body
            assert reply.error["type"] == "server_error"
            assert reply.error["code"] == "limits_unavailable"
        assert upstream_calls(upstream, mark) == 5
    finally:
        if redis_server.proc is None:
            redis_server.start()

    # Redis is back (empty: no persistence); after retry_after_s both gateways count again
    time.sleep(RETRY_AFTER_S + 0.1)
    fresh_window()
    for client, name in ((open_client, "open"), (closed_client, "closed")):
        replies = [chat(client, f"after-{name}{n} {mark}") for n in range(3)]
        assert [r.status for r in replies] == [200, 200, 429], [(r.status, r.body) for r in replies]
        assert [r.limit("remaining-requests") for r in replies[:2]] == ["1", "0"]
        assert replies[2].error["code"] == "rate_limit_exceeded"
    assert upstream_calls(upstream, mark) == 9
