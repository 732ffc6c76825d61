"""The deployment files parse and agree with the code: Compose, the Helm chart, the Dockerfile.

Tools that know the formats (docker compose config, helm lint, hadolint) are not part of `make test`; they run
in `deploy/validate.sh` (docs/deploy.md). These tests hold what can drift silently: the vLLM command lines in
compose.yaml against the policy's launch blocks, paths that must exist, variables that must be documented.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.loader import load_file, load_text
from gateway.vllm_launch import vllm_args

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "deploy/compose"
CHART = REPO / "deploy/helm/llm-gateway"
DEFAULTED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text())
    return doc


def defaults(value: str) -> str:
    """${VAR:-default} as Compose resolves it with nothing set."""
    return DEFAULTED.sub(lambda m: m.group(2) or "", value)


def test_compose_has_the_whole_stack_with_gpu_and_cpu_profiles() -> None:
    services = compose()["services"]
    assert set(services) == {
        *("gateway", "redis", "otel-collector", "jaeger", "prometheus", "grafana"),
        *("vllm", "vllm-spec", "vllm-cpu", "vllm-spec-cpu"),
    }
    for name in ("vllm", "vllm-spec"):
        assert services[name]["profiles"] == ["gpu"]
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    for name in ("vllm-cpu", "vllm-spec-cpu"):
        assert services[name]["profiles"] == ["cpu"]
        assert "deploy" not in services[name]
    assert all("profiles" not in services[s] for s in ("gateway", "redis", "prometheus", "grafana"))


@pytest.mark.parametrize(("service", "backend"), [("vllm", "gemma"), ("vllm-spec", "gemma-spec")])
def test_compose_gpu_commands_are_what_the_policy_renders(service: str, backend: str) -> None:
    policy = load_file(COMPOSE_DIR / "policy.yaml", env={}).policy
    launch = policy.backend(backend).launch  # type: ignore[union-attr]
    assert launch is not None
    command = [defaults(word) for word in compose()["services"][service]["command"]]
    assert command == [launch.model, *vllm_args(policy, backend)]


@pytest.mark.parametrize(("service", "backend"), [("vllm-cpu", "gemma"), ("vllm-spec-cpu", "gemma-spec")])
def test_compose_cpu_services_answer_where_the_policy_looks(service: str, backend: str) -> None:
    policy = load_file(COMPOSE_DIR / "policy.yaml", env={}).policy
    spec = compose()["services"][service]
    rendered = vllm_args(policy, backend)
    command = spec["command"]
    host = policy.backend(backend).base_url.split("//")[1].split(":")[0]
    assert host in spec["networks"]["default"]["aliases"]
    for flag in ("--port", "--served-model-name", "--speculative-config"):
        if flag in rendered:
            assert command[command.index(flag) + 1] == rendered[rendered.index(flag) + 1], flag
        else:
            assert flag not in command


def test_compose_mounts_exist_and_every_variable_is_in_env_example() -> None:
    doc = compose()
    for name, service in doc["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE_DIR / source).exists(), f"{name}: {source} missing"
    used = set(DEFAULTED.findall((COMPOSE_DIR / "compose.yaml").read_text()))
    documented = {line.split("=")[0] for line in (COMPOSE_DIR / ".env.example").read_text().splitlines() if "=" in line}
    assert {var for var, _ in used} <= documented


def test_otel_collector_pipelines_use_declared_components() -> None:
    config = yaml.safe_load((COMPOSE_DIR / "otel-collector.yaml").read_text())
    for pipeline in config["service"]["pipelines"].values():
        assert set(pipeline["receivers"]) <= set(config["receivers"])
        assert set(pipeline["processors"]) <= set(config["processors"])
        assert set(pipeline["exporters"]) <= set(config["exporters"])


def test_the_charts_policy_is_valid_and_its_vllm_servers_are_reachable_by_name() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert (chart["apiVersion"], chart["name"]) == ("v2", "llm-gateway")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    policy = load_text(values["policy"], env={"REDIS_URL": "redis://r:6379/0"}).policy
    launched = [b for b in policy.backends if b.type == "vllm" and b.launch is not None]
    assert {b.name for b in launched} == {"gemma", "gemma-spec"}
    assert [b.name for b in launched if b.speculative] == ["gemma-spec"]
    assert policy.limits.store == "redis"  # replicas share limits


def test_the_chart_templates_carry_probes_reload_and_scaling() -> None:
    templates = {p.name: p.read_text() for p in (CHART / "templates").iterdir()}
    deployment = templates["deployment.yaml"]
    assert "path: /ready" in deployment and "path: /health" in deployment
    assert "checksum/policy: {{ .Values.policy | sha256sum }}" in deployment
    assert "kind: HorizontalPodAutoscaler" in templates["hpa.yaml"]
    assert "name: cpu" in templates["hpa.yaml"] and "gateway_requests_per_second" in templates["hpa.yaml"]
    assert "kind: PodDisruptionBudget" in templates["pdb.yaml"]
    assert "kind: ServiceMonitor" in templates["servicemonitor.yaml"]
    assert "nvidia.com/gpu" in templates["vllm.yaml"] and "--speculative-config" in templates["vllm.yaml"]
    for name, text in templates.items():  # balanced template actions
        assert text.count("{{") == text.count("}}"), name


def test_dockerfile_is_multi_stage_slim_and_non_root() -> None:
    text = (REPO / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+) AS (\w+)", text, re.MULTILINE)
    assert [name for _, name in stages] == ["build", "runtime"]
    assert all("slim" in image for image, _ in stages)
    runtime = text.split(" AS runtime")[1]
    assert "pip install" not in runtime  # only the built venv is copied in
    assert re.search(r"^USER 10001", runtime, re.MULTILINE)
    assert "HEALTHCHECK" in runtime
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert next(line for line in ignore if line and not line.startswith("#")) == "*"  # all out unless listed
    assert "!tests/" not in ignore and "!.venv/" not in ignore
