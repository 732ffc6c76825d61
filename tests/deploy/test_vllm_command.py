"""`gateway vllm command`: the vLLM launch line rendered from a backend's `launch:` block, through the real CLI."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.loader import PolicyError, load_text

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / "policies/local-vllm.yaml"
NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4, "prompt_lookup_min": 2}


def gateway(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, timeout=60, env=env, cwd=REPO
    )


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_the_speculative_backend_renders_vllm_serve_with_its_speculative_config() -> None:
    out = gateway("vllm", "command", "--backend", "gemma-spec", "--config", str(LOCAL))
    assert out.returncode == 0, out.stderr
    argv = shlex.split(out.stdout)
    assert argv[:3] == ["vllm", "serve", "google/gemma-3-270m-it"]  # ${LOCAL_MODEL_DIR:-...} unset: the HF id
    assert flag(argv, "--port") == "8001"  # from base_url
    assert flag(argv, "--host") == "0.0.0.0"
    assert flag(argv, "--served-model-name") == "gemma-3-270m"  # the targets' model name
    assert json.loads(flag(argv, "--speculative-config")) == NGRAM
    assert flag(argv, "--max-model-len") == "2048"


def test_the_plain_backend_has_no_speculative_config_and_json_gives_the_module_form() -> None:
    out = gateway(
        "vllm", "command", "-b", "gemma", "-c", str(LOCAL), "--python", "/opt/py", "--host", "127.0.0.1", "--json"
    )
    assert out.returncode == 0, out.stderr
    argv = json.loads(out.stdout)
    assert argv[:5] == ["/opt/py", "-m", "vllm.entrypoints.openai.api_server", "--model", "google/gemma-3-270m-it"]
    assert (flag(argv, "--host"), flag(argv, "--port")) == ("127.0.0.1", "8000")
    assert "--speculative-config" not in argv


def test_an_api_key_is_passed_by_reference_never_by_value(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "backends:\n"
        "  - {name: v, type: vllm, base_url: 'http://gpu-1:9000/v1', api_key: '${SECRET_FOR_TEST}',\n"
        "     launch: {model: m, tensor_parallel_size: 2, dtype: bfloat16, extra_args: [--enable-prefix-caching],\n"
        "              env: {VLLM_LOGGING_LEVEL: DEBUG}}}\n"
        "models:\n"
        "  - {name: a, targets: [{backend: v, model: served-a}]}\n"
        "  - {name: b, targets: [{backend: v, model: served-b}]}\n"
    )
    out = gateway(
        "vllm", "command", "--backend", "v", "--config", str(policy), env={"SECRET_FOR_TEST": "sk-very-secret"}
    )
    assert out.returncode == 0, out.stderr
    assert "sk-very-secret" not in out.stdout + out.stderr
    assert out.stdout.startswith("VLLM_LOGGING_LEVEL=DEBUG vllm serve m ")
    assert '--api-key "$VLLM_API_KEY"' in out.stdout
    argv = shlex.split(out.stdout.replace('"$VLLM_API_KEY"', "KEYREF"))
    assert argv[argv.index("--served-model-name") + 1 : argv.index("--served-model-name") + 3] == [
        "served-a",
        "served-b",
    ]
    assert (flag(argv, "--port"), flag(argv, "--tensor-parallel-size"), flag(argv, "--dtype")) == (
        "9000",
        "2",
        "bfloat16",
    )
    assert argv[-1] == "--enable-prefix-caching"


@pytest.mark.parametrize(
    ("backend", "message"),
    [
        ("gema", "no backend 'gema' (did you mean 'gemma'?)"),
        ("openai", "backend 'openai' is type openai, not vllm"),
        ("bare", "backend 'bare' has no launch: block"),
    ],
)
def test_backends_that_cannot_be_rendered_exit_1_naming_why(tmp_path: Path, backend: str, message: str) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "backends:\n"
        "  - {name: gemma, type: vllm, base_url: 'http://h:8000/v1', launch: {model: m}}\n"
        "  - {name: bare, type: vllm, base_url: 'http://h:8002/v1'}\n"
        "  - {name: openai, type: openai, base_url: 'https://api.openai.com/v1'}\n"
    )
    out = gateway("vllm", "command", "--backend", backend, "--config", str(policy))
    assert (out.returncode, out.stdout) == (1, "")
    assert message in out.stderr


@pytest.mark.parametrize(
    "backend",
    [
        "{name: v, type: vllm, base_url: 'http://h:1/v1', speculative: true, launch: {model: m}}",
        "{name: v, type: vllm, base_url: 'http://h:1/v1', launch: {model: m, speculative_config: {method: ngram}}}",
    ],
)
def test_speculative_and_speculative_config_must_agree(backend: str) -> None:
    with pytest.raises(PolicyError, match=r"speculative: true and launch\.speculative_config go together"):
        load_text(f"backends:\n  - {backend}\n")


def test_unknown_launch_keys_are_rejected_with_a_suggestion() -> None:
    with pytest.raises(PolicyError, match="max_model_length"):
        load_text(
            "backends:\n  - {name: v, type: vllm, base_url: 'http://h:1/v1', launch: {model: m, max_model_length: 9}}\n"
        )
