"""`gateway logs` as a user runs it (a subprocess), over a log a real gateway wrote."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import openai
import pytest

from gateway.requestlog.cli import parse_since
from tests.fakes.upstream import FakeUpstream
from tests.gateway_server import GatewayServer
from tests.observability.test_request_log import client, policy, rows

Gateway = Callable[[str], GatewayServer]


def logs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "logs", *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def filled(upstream: FakeUpstream, make_gateway: Gateway, tmp_path: Path) -> tuple[GatewayServer, Path]:
    db = tmp_path / "requests.db"
    gw = make_gateway(policy(upstream.url, {"path": str(db)}))
    sdk = client(gw)
    for i in range(3):
        sdk.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": f"m{i}"}], extra_headers={"x-request-id": f"ok-{i}"}
        )
    with pytest.raises(openai.InternalServerError):
        sdk.chat.completions.create(
            model="broken", messages=[{"role": "user", "content": "x"}], extra_headers={"x-request-id": "bad-1"}
        )
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "x"}], extra_headers={"x-request-id": "nf-1"}
        )
    rows(db, 5)
    return gw, db


def test_tail_and_filters(filled: tuple[GatewayServer, Path]) -> None:
    _, db = filled
    shown = logs("--db", str(db))
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert [line.split()[2] for line in lines] == ["ok-0", "ok-1", "ok-2", "bad-1", "nf-1"]  # oldest first
    assert "  200  echo  fake  " in lines[0] and "tokens=" in lines[0] and "$0.0000" in lines[0]
    assert "  502  broken  fake  " in lines[3] and "error=" in lines[3]

    def ids(*args: str) -> list[str]:
        result = logs("--db", str(db), "--json", *args)
        assert result.returncode == 0, result.stderr
        return [json.loads(line)["request_id"] for line in result.stdout.splitlines()]

    assert ids("--model", "echo") == ["ok-0", "ok-1", "ok-2"]
    assert ids("--status", "5xx") == ["bad-1"]
    assert ids("--status", "404") == ["nf-1"]
    assert ids("--status", "2xx", "--limit", "2") == ["ok-1", "ok-2"]  # the newest two
    assert ids("--since", "1h") == ["ok-0", "ok-1", "ok-2", "bad-1", "nf-1"]
    future = (datetime.now() + timedelta(hours=1)).isoformat(timespec="seconds")
    assert ids("--since", future) == []
    record = json.loads(logs("--db", str(db), "--json", "--limit", "1").stdout)
    assert record["request_id"] == "nf-1" and record["status"] == 404 and "ts" in record and "prompt" in record


def test_follow_prints_new_records(filled: tuple[GatewayServer, Path]) -> None:
    gw, db = filled
    follower = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "logs", "--db", str(db), "--follow", "--limit", "1", "--json"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        assert json.loads(follower.stdout.readline())["request_id"] == "nf-1"
        client(gw).chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "late"}], extra_headers={"x-request-id": "late-1"}
        )
        assert json.loads(follower.stdout.readline())["request_id"] == "late-1"
    finally:
        follower.terminate()
        follower.wait(timeout=10)


def test_config_and_errors(filled: tuple[GatewayServer, Path], tmp_path: Path) -> None:
    gw, db = filled
    by_policy = logs("--config", str(gw.policy_path), "--json", "--model", "broken")
    assert by_policy.returncode == 0, by_policy.stderr
    assert [json.loads(line)["request_id"] for line in by_policy.stdout.splitlines()] == ["bad-1"]

    bad_status = logs("--db", str(db), "--status", "fine")
    assert bad_status.returncode == 1 and "status must look like 200 or 5xx" in bad_status.stderr
    bad_since = logs("--db", str(db), "--since", "yesterday")
    assert bad_since.returncode == 1 and "--since must look like" in bad_since.stderr
    missing = logs("--db", str(tmp_path / "none.db"))
    assert missing.returncode == 1 and "no request log at" in missing.stderr
    assert not (tmp_path / "none.db").exists()


def test_parse_since() -> None:
    now = time.time()
    assert parse_since("10m", now) == now - 600
    assert parse_since("2h", now) == now - 7200
    assert parse_since("1.5d", now) == now - 1.5 * 86400
    assert parse_since("2026-01-02T03:04:05+00:00") == datetime.fromisoformat("2026-01-02T03:04:05+00:00").timestamp()
    with pytest.raises(ValueError):
        parse_since("-5m")
