"""The request log through the real app: OpenAI SDK -> gateway -> fake upstream, records read back from
the SQLite file the gateway's background writer filled."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from gateway.requestlog.store_sqlite import SqliteStore
from tests.conftest import CLIENT_KEY, UPSTREAM_KEY
from tests.fakes.upstream import FakeUpstream
from tests.gateway_server import GatewayServer

EMAIL = "john.doe@example.com"
PRICING = {"input_per_mtok": 2.0, "output_per_mtok": 8.0}


def policy(
    upstream_url: str,
    request_log: dict[str, Any],
    *,
    telemetry: dict[str, Any] | None = None,
    keys: list[dict[str, str]] | None = None,
) -> str:
    """A policy (JSON is YAML) with the request log configured and one model per feature under test."""

    def model(name: str, upstream_model: str = "echo-model", plugins: list[Any] | None = None) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": name, "targets": [{"backend": "fake", "model": upstream_model}]}
        return {**entry, "pricing": PRICING, "plugins": plugins or []}

    doc = {
        "backends": [
            {"name": "fake", "type": "openai", "base_url": f"{upstream_url}/v1", "api_key": UPSTREAM_KEY},
        ],
        "models": [
            model("echo"),
            model("broken", "fail-500"),
            model("cached", plugins=[{"use": "exact_cache"}]),
            model("ruled", plugins=[{"use": "rules", "rules": [{"name": "boom-word", "keywords": ["kaboom"]}]}]),
            model("pii-in", plugins=[{"use": "pii", "apply_to": ["input"]}]),
            model("pii-out", plugins=[{"use": "pii", "apply_to": ["output"]}]),
        ],
        "auth": {"keys": [{"name": "team-a", "key": CLIENT_KEY}, *(keys or [])]},
        "telemetry": {"access_log": False, **(telemetry or {}), "request_log": {"enabled": True, **request_log}},
    }
    return json.dumps(doc)


def rows(path: Path, expected: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """The log's records, oldest first, once at least `expected` are there (the writer is asynchronous)."""
    deadline = time.monotonic() + timeout_s
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        if path.exists():
            db = sqlite3.connect(path)
            db.row_factory = sqlite3.Row
            try:
                found = [dict(r) for r in db.execute("SELECT * FROM requests ORDER BY id")]
            except sqlite3.OperationalError:  # the table is being created
                found = []
            finally:
                db.close()
            if len(found) >= expected:
                return found
        time.sleep(0.05)
    raise AssertionError(f"expected {expected} records in {path}, found {len(found)}: {found}")


def client(gw: GatewayServer, key: str = CLIENT_KEY) -> OpenAI:
    return OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)


def metric(gw: GatewayServer, name: str, **labels: str) -> float:
    text = httpx.get(gw.url + "/metrics").text
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


Gateway = Callable[[str], GatewayServer]


def test_whole_and_streamed_answers_are_recorded(upstream: FakeUpstream, make_gateway: Gateway, tmp_path: Path) -> None:
    db = tmp_path / "log" / "requests.db"
    gw = make_gateway(policy(upstream.url, {"path": str(db)}))
    sdk = client(gw)
    whole = sdk.chat.completions.with_raw_response.create(
        model="echo",
        messages=[{"role": "user", "content": "hello log"}],
        extra_headers={"x-request-id": "req-whole-1"},
    )
    answer = whole.parse()
    chunks = list(
        sdk.chat.completions.create(
            model="echo",
            messages=[{"role": "user", "content": "stream me please"}],
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-request-id": "req-stream-1"},
        )
    )
    first, second = rows(db, 2)

    assert first["request_id"] == "req-whole-1" == whole.headers["x-request-id"]
    assert (first["caller"], first["model"], first["served_model"], first["backend"]) == (
        "team-a",
        "echo",
        "echo",
        "fake",
    )
    assert (first["endpoint"], first["stream"], first["status"]) == ("chat", 0, 200)
    assert answer.usage is not None
    assert (first["prompt_tokens"], first["completion_tokens"]) == (
        answer.usage.prompt_tokens,
        answer.usage.completion_tokens,
    )
    expected_cost = (answer.usage.prompt_tokens * 2.0 + answer.usage.completion_tokens * 8.0) / 1e6
    assert first["cost_usd"] == pytest.approx(expected_cost)
    assert 0 < first["upstream_ms"] <= first["total_ms"]
    assert first["ttft_ms"] is None and first["finish_reasons"] == "stop"
    assert first["prompt"] is None and first["answer"] is None  # content is opt-in
    assert first["error"] is None and first["cache"] is None and first["guard"] is None

    usage = chunks[-1].usage
    assert usage is not None
    assert (second["request_id"], second["stream"], second["status"]) == ("req-stream-1", 1, 200)
    assert (second["prompt_tokens"], second["completion_tokens"]) == (usage.prompt_tokens, usage.completion_tokens)
    assert second["ttft_ms"] is not None and 0 < second["ttft_ms"] <= second["total_ms"]
    assert second["ts"] >= first["ts"]
    assert CLIENT_KEY.encode() not in db.read_bytes() and UPSTREAM_KEY.encode() not in db.read_bytes()


def test_failures_and_rejections_are_recorded(upstream: FakeUpstream, make_gateway: Gateway, tmp_path: Path) -> None:
    db = tmp_path / "requests.db"
    gw = make_gateway(policy(upstream.url, {"path": str(db)}))
    with pytest.raises(openai.InternalServerError):
        client(gw).chat.completions.create(model="broken", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.AuthenticationError):
        client(gw, "sk-wrong-key-000").chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(openai.NotFoundError):
        client(gw).chat.completions.create(model="ech", messages=[{"role": "user", "content": "x"}])
    broken, bad_key, unknown = rows(db, 3)

    assert (broken["model"], broken["backend"], broken["status"]) == ("broken", "fake", 502)
    assert broken["error"] and broken["cost_usd"] is None
    assert (bad_key["status"], bad_key["model"], bad_key["caller"]) == (401, None, None)
    assert bad_key["error"] == "Invalid API key."
    assert (unknown["status"], unknown["model"]) == (404, None)
    assert "does not exist" in unknown["error"]
    assert b"sk-wrong-key-000" not in db.read_bytes()


def test_cache_and_guard_outcomes(upstream: FakeUpstream, make_gateway: Gateway, tmp_path: Path) -> None:
    db = tmp_path / "requests.db"
    gw = make_gateway(policy(upstream.url, {"path": str(db)}))
    sdk = client(gw)
    for _ in range(2):
        sdk.chat.completions.create(model="cached", messages=[{"role": "user", "content": "cache this"}])
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model="ruled", messages=[{"role": "user", "content": "big kaboom now"}])
    miss, hit, blocked = rows(db, 3)

    assert (miss["cache"], hit["cache"]) == ("miss", "hit")
    assert hit["backend"] is None and hit["status"] == 200 and hit["upstream_ms"] is None
    assert blocked["status"] == 400
    verdict = json.loads(blocked["guard"])
    assert verdict["plugin"] == "rules" and verdict["action"] == "block" and verdict["stage"] == "input"
    assert verdict["rule"] == "boom-word"
    assert "kaboom" not in blocked["guard"]  # the verdict, never the text


def test_content_is_stored_only_when_asked_and_redacted(
    upstream: FakeUpstream, make_gateway: Gateway, tmp_path: Path
) -> None:
    off, on = tmp_path / "off.db", tmp_path / "on.db"
    quiet = make_gateway(policy(upstream.url, {"path": str(off)}))
    client(quiet).chat.completions.create(model="pii-in", messages=[{"role": "user", "content": f"mail {EMAIL}"}])
    assert rows(off, 1)[0]["prompt"] is None

    gw = make_gateway(policy(upstream.url, {"path": str(on), "capture_content": True}))
    sdk = client(gw)
    text = f"Please write to {EMAIL} about the invoice"
    sdk.chat.completions.create(
        model="pii-in",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}],
    )
    said = sdk.chat.completions.create(model="echo", messages=[{"role": "user", "content": "no secrets here"}])
    # Only an output guard: the email goes upstream and comes back; the pii plugin's redactor cleans the log.
    sdk.chat.completions.create(model="pii-out", messages=[{"role": "user", "content": text}])
    redacted_in, plain, redacted_out = rows(on, 3)

    # pii redacted the prompt before it went upstream; the log holds what went upstream and came back.
    assert EMAIL not in redacted_in["prompt"] and EMAIL not in (redacted_in["answer"] or "")
    assert redacted_in["prompt"].startswith("system: Be brief.\nuser: Please write to ")
    assert "about the invoice" in redacted_in["answer"]
    assert plain["prompt"] == "user: no secrets here" and plain["answer"] == said.choices[0].message.content
    assert "no secrets here" in plain["answer"]
    assert EMAIL not in redacted_out["prompt"] and EMAIL not in redacted_out["answer"]
    assert "about the invoice" in redacted_out["prompt"] and "about the invoice" in redacted_out["answer"]
    assert EMAIL.encode() not in on.read_bytes()


def test_retention_deletes_old_records(upstream: FakeUpstream, make_gateway: Gateway, tmp_path: Path) -> None:
    db = tmp_path / "requests.db"
    store = SqliteStore(db)
    old = {"ts": time.time() - 3 * 86400, "request_id": "ancient", "status": 200}
    recent = {"ts": time.time() - 3600, "request_id": "recent", "status": 200}
    store.insert([old, recent])
    store.add_feedback("recent", "team-a", 1.0, None)
    store.close()
    with sqlite3.connect(db) as raw:  # feedback ages by its own time
        raw.execute("INSERT INTO feedback (ts, request_id, score) VALUES (?, 'ancient', 0)", (old["ts"] + 60,))
    gw = make_gateway(policy(upstream.url, {"path": str(db), "retention_days": 1, "retention_interval_s": 0.1}))
    client(gw).chat.completions.create(model="echo", messages=[{"role": "user", "content": "new"}])

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and rows(db, 1)[0]["request_id"] == "ancient":
        time.sleep(0.05)
    kept = [r["request_id"] for r in rows(db, 2)]
    assert kept[:1] == ["recent"] and "ancient" not in kept and len(kept) == 2
    check = SqliteStore(db, create=False)
    assert check.feedback("ancient") == [] and len(check.feedback("recent")) == 1
    check.close()


def test_an_unwritable_log_never_fails_requests(upstream: FakeUpstream, make_gateway: Gateway, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    before = metric_total("gateway_request_log_dropped_total", reason="store_unavailable")
    gw = make_gateway(policy(upstream.url, {"path": str(blocker / "requests.db")}))
    for i in range(3):
        answer = client(gw).chat.completions.create(model="echo", messages=[{"role": "user", "content": f"n{i}"}])
        assert answer.choices[0].message.content == f"echo: n{i}"
    deadline = time.monotonic() + 10
    while (
        time.monotonic() < deadline
        and metric(gw, "gateway_request_log_dropped_total", reason="store_unavailable") < before + 3
    ):
        time.sleep(0.05)
    assert metric(gw, "gateway_request_log_dropped_total", reason="store_unavailable") == before + 3


def metric_total(name: str, **labels: str) -> float:
    """The in-process value (the test gateways run in this process and share the registry)."""
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value(name, labels)
    return value or 0.0


def test_policy_rejects_two_dsns(tmp_path: Path) -> None:
    from gateway.loader import PolicyError, load_file

    path = tmp_path / "p.yaml"
    path.write_text(
        "telemetry: {request_log: {enabled: true, postgres_dsn: 'postgresql://x@y/z', dsn_env: PG_DSN_X}}\n"
    )
    with pytest.raises(PolicyError, match=re.escape("postgres_dsn or dsn_env")):
        load_file(path)


def test_a_full_queue_drops_and_counts(upstream: FakeUpstream, make_gateway: Gateway, tmp_path: Path) -> None:
    db = tmp_path / "requests.db"
    SqliteStore(db).close()
    before = metric_total("gateway_request_log_dropped_total", reason="queue_full")
    gw = make_gateway(policy(upstream.url, {"path": str(db), "queue_size": 2}))
    sdk = client(gw)
    sdk.chat.completions.create(model="echo", messages=[{"role": "user", "content": "warm"}])
    rows(db, 1)
    lock = sqlite3.connect(db, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # the writer's next insert waits (busy timeout 5 s), its queue fills
    try:
        for i in range(6):
            sdk.chat.completions.create(model="echo", messages=[{"role": "user", "content": f"m{i}"}])
        dropped = metric_total("gateway_request_log_dropped_total", reason="queue_full") - before
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert dropped >= 3
    written = rows(db, 1 + 6 - int(dropped))
    assert len(written) == 1 + 6 - dropped
