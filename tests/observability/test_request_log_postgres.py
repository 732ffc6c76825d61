"""The request log in a real PostgreSQL (127.0.0.1:5432, database `test`; TEST_POSTGRES_DSN to change),
written by a real gateway, read back with psycopg and with `gateway logs --dsn`."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from gateway.requestlog.store_postgres import PostgresStore
from tests.conftest import CLIENT_KEY
from tests.fakes.upstream import FakeUpstream
from tests.gateway_server import GatewayServer, free_port
from tests.observability.test_request_log import client, policy

MACHINE_DSN = "postgresql://postgres@127.0.0.1:5432/test"
Gateway = Callable[[str], GatewayServer]
DSN = ""  # set by the `postgres` fixture


def _answers(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


@pytest.fixture(scope="module", autouse=True)
def postgres() -> Iterator[str]:
    """TEST_POSTGRES_DSN, else the machine's PostgreSQL on 5432, else a private server (Debian's postgresql
    package: initdb + pg_ctl in a temporary folder, trust auth, run as the `postgres` user when root)."""
    global DSN
    DSN = os.environ.get("TEST_POSTGRES_DSN") or MACHINE_DSN
    if os.environ.get("TEST_POSTGRES_DSN") or _answers(DSN):
        yield DSN
        return
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    initdb = bins[-1] if bins else shutil.which("initdb")
    assert initdb, "PostgreSQL is needed: apt-get install postgresql (make system-deps), or set TEST_POSTGRES_DSN"
    folder = Path(tempfile.mkdtemp(prefix="gateway-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(folder, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port, bindir, data = free_port(), Path(initdb).parent, folder / "data"
    subprocess.run(
        [*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "postgres"], check=True, capture_output=True
    )
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    start = [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-w", "-l", str(folder / "log"), "start"]
    subprocess.run(start, check=True, capture_output=True)
    try:
        subprocess.run(
            [*as_user, str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "test"],
            check=True,
        )
        DSN = f"postgresql://postgres@127.0.0.1:{port}/test"
        yield DSN
    finally:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True
        )
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def prefix(postgres: str) -> Iterator[str]:
    """Tables of this test only; dropped afterwards."""
    name = f"t{uuid.uuid4().hex[:10]}_"
    yield name
    with psycopg.connect(postgres, autocommit=True) as db:
        db.execute(f"DROP TABLE IF EXISTS {name}requests, {name}feedback")


def pg_rows(prefix: str, expected: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    found: list[dict[str, Any]] = []
    with psycopg.connect(DSN, autocommit=True, row_factory=dict_row) as db:
        while time.monotonic() < deadline:
            try:
                found = db.execute(f"SELECT * FROM {prefix}requests ORDER BY id").fetchall()
            except psycopg.errors.UndefinedTable:
                found = []
            if len(found) >= expected:
                return found
            time.sleep(0.05)
    raise AssertionError(f"expected {expected} records, found {len(found)}")


def test_records_and_feedback_in_postgres(upstream: FakeUpstream, make_gateway: Gateway, prefix: str) -> None:
    gw = make_gateway(policy(upstream.url, {"postgres_dsn": DSN, "table_prefix": prefix, "path": "/nonexistent/x.db"}))
    sdk = client(gw)
    answer = sdk.chat.completions.with_raw_response.create(
        model="echo", messages=[{"role": "user", "content": "to postgres"}], extra_headers={"x-request-id": "pg-1"}
    )
    list(sdk.chat.completions.create(model="echo", messages=[{"role": "user", "content": "s"}], stream=True))
    first, second = pg_rows(prefix, 2)
    usage = answer.parse().usage
    assert usage is not None
    assert (first["request_id"], first["caller"], first["model"], first["status"]) == ("pg-1", "team-a", "echo", 200)
    assert (first["stream"], second["stream"]) == (0, 1)
    assert first["prompt_tokens"] == usage.prompt_tokens and first["cost_usd"] > 0
    assert second["ttft_ms"] is not None and first["upstream_ms"] > 0

    response = httpx.post(
        gw.base_url + "/feedback",
        json={"request_id": "pg-1", "score": 4, "comment": "good"},
        headers={"authorization": f"Bearer {CLIENT_KEY}"},
    )
    assert response.status_code == 200, response.text
    with psycopg.connect(DSN, row_factory=dict_row) as db:
        stored = db.execute(f"SELECT * FROM {prefix}feedback").fetchall()
    assert [(f["request_id"], f["score"], f["comment"], f["caller"]) for f in stored] == [
        ("pg-1", 4.0, "good", "team-a")
    ]


def test_dsn_from_the_environment_and_retention(
    upstream: FakeUpstream, make_gateway: Gateway, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = PostgresStore(DSN, prefix=prefix)
    store.insert([{"ts": time.time() - 10 * 86400, "request_id": "old", "status": 200}])
    store.close()
    monkeypatch.setenv("REQUEST_LOG_PG", DSN)
    log = {"dsn_env": "REQUEST_LOG_PG", "table_prefix": prefix, "retention_days": 2, "retention_interval_s": 0.1}
    gw = make_gateway(policy(upstream.url, log))
    client(gw).chat.completions.create(model="echo", messages=[{"role": "user", "content": "fresh"}])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "old" in [r["request_id"] for r in pg_rows(prefix, 1)]:
        time.sleep(0.05)
    assert [r["request_id"] for r in pg_rows(prefix, 1)] != ["old"]
    assert "old" not in [r["request_id"] for r in pg_rows(prefix, 1)]


def test_gateway_logs_reads_postgres(upstream: FakeUpstream, make_gateway: Gateway, prefix: str) -> None:
    gw = make_gateway(policy(upstream.url, {"postgres_dsn": DSN, "table_prefix": prefix}))
    sdk = client(gw)
    sdk.chat.completions.create(model="echo", messages=[{"role": "user", "content": "a"}])
    with pytest.raises(Exception, match="Error code: 502"):
        sdk.chat.completions.create(model="broken", messages=[{"role": "user", "content": "b"}])
    pg_rows(prefix, 2)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "logs",
            "--dsn",
            DSN,
            "--table-prefix",
            prefix,
            "--status",
            "5xx",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(r["model"], r["status"]) for r in lines] == [("broken", 502)]


def test_a_database_that_does_not_answer_never_slows_requests(
    upstream: FakeUpstream, make_gateway: Gateway, tmp_path: Path
) -> None:
    import socket

    from prometheus_client import REGISTRY

    def dropped() -> float:
        total = 0.0
        for reason in ("queue_full", "store_unavailable", "write_failed"):
            total += REGISTRY.get_sample_value("gateway_request_log_dropped_total", {"reason": reason}) or 0.0
        return total

    silent = socket.socket()  # accepts connections (the kernel does) but never says a word
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    try:
        dsn = f"postgresql://postgres@127.0.0.1:{silent.getsockname()[1]}/test"
        before = dropped()
        gw = make_gateway(policy(upstream.url, {"postgres_dsn": dsn, "queue_size": 2}))
        sdk = client(gw)
        for i in range(6):
            started = time.monotonic()
            sdk.chat.completions.create(model="echo", messages=[{"role": "user", "content": f"q{i}"}])
            assert time.monotonic() - started < 2.0  # the store's connect timeout is 5 s: nobody waited for it
        assert dropped() - before >= 3  # queue of 2 behind a writer stuck connecting
    finally:
        silent.close()
