"""The shipped Prometheus config and Grafana dashboard against the real thing: a gateway process serving
traffic, the real Prometheus (Debian package `prometheus`) scraping its /metrics, and every dashboard
query checked by name against the scrape and run through Prometheus' HTTP API."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from openai import OpenAI

from tests.conftest import CLIENT_KEY
from tests.fakes.upstream import FakeUpstream
from tests.gateway_server import free_port
from tests.observability.test_request_log import policy

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "observability" / "grafana" / "gateway-dashboard.json"
SCRAPE_CONFIG = ROOT / "deploy" / "observability" / "prometheus.yml"
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
SYNTHETIC = {"up"}  # written by Prometheus itself for every target


def wait_until(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            found = check()
        except httpx.HTTPError:
            found = None
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def gateway_process(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway as operators run it (`gateway serve` in its own process), after some varied traffic."""
    folder = tmp_path_factory.mktemp("scraped")
    path = folder / "policy.yaml"
    path.write_text(policy(upstream.url, {"path": str(folder / "requests.db")}))
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(path), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(url + "/health").status_code == 200, 60, "the gateway to start")
        sdk = OpenAI(base_url=url + "/v1", api_key=CLIENT_KEY, max_retries=0)
        for model in ("echo", "cached", "cached"):
            sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello"}])
        list(sdk.chat.completions.create(model="echo", messages=[{"role": "user", "content": "s"}], stream=True))
        for model, text in (("broken", "x"), ("ruled", "kaboom")):
            with pytest.raises(Exception, match="Error code"):
                sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": text}])
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def prometheus(gateway_process: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real Prometheus, started from the shipped scrape config aimed at the gateway process."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed: `make system-deps` (apt-get install prometheus)"
    folder = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    job = config["scrape_configs"][0]
    job["static_configs"][0]["targets"] = [gateway_process.removeprefix("http://")]
    job["scrape_interval"] = config["global"]["scrape_interval"] = "1s"
    job["scrape_timeout"] = "1s"
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(url + "/-/ready").status_code == 200, 60, "Prometheus to start")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def query(prometheus: str, expr: str) -> dict[str, Any]:
    answer = httpx.get(prometheus + "/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", (expr, answer)
    result: dict[str, Any] = answer["data"]
    return result


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in doc["panels"] for t in panel.get("targets", [])]
    exprs += [v["definition"] for v in doc["templating"]["list"] if v.get("type") == "query"]
    return exprs


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (not functions, labels, keywords or variables)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)  # label lists
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\$\w+", "", text)  # dashboard variables
    if text.startswith("label_values("):
        return {text.removeprefix("label_values(").split(",")[0].strip()}
    names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*(?!\s*\()\b", text))
    functions = set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(", text))
    return {n for n in names - functions - PROMQL_WORDS if not re.fullmatch(r"[0-9.e]+", n)}


def exposed_names(metrics_text: str) -> set[str]:
    """Every series name a /metrics page can produce, counted from its TYPE lines and samples."""
    names: set[str] = set()
    for line in metrics_text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            base = name.removesuffix("_total")
            names |= {name, base + "_total"} if kind == "counter" else {name}
            if kind in ("histogram", "summary"):
                names |= {name + "_bucket", name + "_sum", name + "_count"}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_metric_names_parser() -> None:
    expr = 'sum by (le, model) (rate(gateway_x_bucket{model=~"$model", a="b(c)"}[$__rate_interval])) / on (x) up'
    assert metric_names(expr) == {"gateway_x_bucket", "up"}
    assert metric_names("label_values(gateway_requests_total, model)") == {"gateway_requests_total"}


def test_dashboard_queries_name_metrics_the_gateway_exposes(gateway_process: str) -> None:
    exposed = exposed_names(httpx.get(gateway_process + "/metrics").text)
    used = set().union(*(metric_names(e) for e in dashboard_exprs()))
    assert {"gateway_requests_total", "gen_ai_client_operation_duration_seconds_bucket"} <= used
    assert used - SYNTHETIC - exposed == set()


def test_prometheus_scrapes_the_gateway(prometheus: str) -> None:
    up = wait_until(lambda: query(prometheus, 'up{job="llm-gateway"} == 1')["result"], 30, "a successful scrape")
    assert up[0]["metric"]["service"] == "llm-gateway"
    series = wait_until(lambda: query(prometheus, "gateway_requests_total")["result"], 30, "gateway series")
    seen = {(s["metric"]["model"], s["metric"]["status"]) for s in series}
    assert {("echo", "200"), ("cached", "200"), ("broken", "502"), ("ruled", "400")} <= seen
    summed = query(prometheus, "sum by (model, status) (gateway_requests_total)")["result"]
    counts = {(s["metric"]["model"], s["metric"]["status"]): float(s["value"][1]) for s in summed}
    assert counts[("echo", "200")] == 2 and counts[("cached", "200")] == 2  # a hit's backend is "-"
    hits = query(prometheus, 'gateway_cache_requests_total{outcome="hit"}')["result"]
    assert [float(h["value"][1]) for h in hits] == [1.0]
    assert query(prometheus, "gen_ai_client_operation_duration_seconds_count")["result"]


def test_every_dashboard_query_runs_in_prometheus(prometheus: str) -> None:
    wait_until(lambda: query(prometheus, "rate(gateway_requests_total[1m])")["result"], 30, "two scrapes")
    empty: list[str] = []
    for expr in dashboard_exprs():
        if expr.startswith("label_values("):
            values = httpx.get(prometheus + "/api/v1/label/model/values").json()["data"]
            assert {"echo", "cached"} <= set(values)
            continue
        concrete = expr.replace("$__rate_interval", "1m").replace("$model", ".*")
        if not query(prometheus, concrete)["result"]:
            empty.append(concrete)
    # Series that only exist once something happens (a circuit, a vLLM backend, a rejection, a drop)
    # may be empty here; the core panels must have data.
    for core in ("gateway_requests_total", "gen_ai_client_operation_duration", "gateway_overhead_seconds"):
        assert not [e for e in empty if core in e], empty
