"""How a `type: vllm` backend is started: its `launch:` block, and the vLLM command line rendered from it.

The policy stays the single source of truth: the port comes from `base_url`, the served model names from the
`models[].targets` that use the backend, the speculative config from `launch.speculative_config` (and the
backend must then say `speculative: true`, which the router reads). `gateway vllm command --backend NAME`
prints the line for a GPU host; `deploy/local/` runs the same line on this CPU with a few CPU-only flags.
"""

from __future__ import annotations

import json
import shlex
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from gateway.policy import Policy, VLLMBackend

SERVER_MODULE = "vllm.entrypoints.openai.api_server"


class VLLMLaunch(BaseModel):
    """`backends[].launch` (vllm only): what `gateway vllm command` renders; the gateway itself never starts it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1, description="Hugging Face id or local folder vLLM loads (`vllm serve MODEL`).")
    host: str = Field("0.0.0.0", description="Address vLLM binds; the port always comes from base_url.")
    served_model_names: list[str] | None = Field(
        None, description="--served-model-name; default: every targets[].model that uses this backend."
    )
    speculative_config: dict[str, Any] | None = Field(
        None,
        description="--speculative-config as a mapping, e.g. {method: ngram, num_speculative_tokens: 4}; needs "
        "the backend's speculative: true.",
    )
    max_model_len: int | None = Field(None, ge=1, description="--max-model-len (context length vLLM allocates for).")
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1, description="--gpu-memory-utilization.")
    tensor_parallel_size: int | None = Field(None, ge=1, description="--tensor-parallel-size (GPUs per server).")
    dtype: str | None = Field(None, description="--dtype, e.g. bfloat16.")
    gpus: int = Field(1, ge=0, description="GPUs the server needs (for deployment manifests; 0: CPU).")
    api_key_env: str = Field(
        "VLLM_API_KEY", description='With the backend\'s api_key set: --api-key "$VAR" (the secret is never printed).'
    )
    extra_args: list[str] = Field(default_factory=list, description="Further vLLM arguments, appended as given.")
    env: dict[str, str] = Field(default_factory=dict, description="Environment for the server (VAR=value prefix).")


class LaunchError(ValueError):
    """The backend cannot be rendered: unknown, not vllm, or without a launch block."""


def launch_backend(policy: Policy, name: str) -> VLLMBackend:
    names = [b.name for b in policy.backends]
    if name not in names:
        from gateway.policy import did_you_mean

        raise LaunchError(f"no backend {name!r}{did_you_mean(name, names)}")
    backend = policy.backend(name)
    if backend.type != "vllm":
        raise LaunchError(f"backend {name!r} is type {backend.type}, not vllm")
    if backend.launch is None:
        raise LaunchError(f"backend {name!r} has no launch: block (docs/deploy.md#vllm-launch)")
    return backend


def served_names(policy: Policy, backend: VLLMBackend) -> list[str]:
    assert backend.launch is not None
    if backend.launch.served_model_names:
        return list(backend.launch.served_model_names)
    names = {t.model for m in policy.models for t in m.targets if t.backend == backend.name}
    return sorted(names) or [backend.launch.model]


def port_of(base_url: str) -> int:
    parts = urlsplit(base_url)
    return parts.port or (443 if parts.scheme == "https" else 80)


def vllm_args(policy: Policy, name: str, *, host: str | None = None) -> list[str]:
    """The server's arguments after the model (`vllm serve MODEL <these>`)."""
    backend = launch_backend(policy, name)
    launch = backend.launch
    assert launch is not None
    args = ["--host", host or launch.host, "--port", str(port_of(backend.base_url))]
    args += ["--served-model-name", *served_names(policy, backend)]
    if launch.speculative_config is not None:
        args += ["--speculative-config", json.dumps(launch.speculative_config, separators=(",", ":"))]
    for flag, value in (
        ("--max-model-len", launch.max_model_len),
        ("--gpu-memory-utilization", launch.gpu_memory_utilization),
        ("--tensor-parallel-size", launch.tensor_parallel_size),
        ("--dtype", launch.dtype),
    ):
        if value is not None:
            args += [flag, str(value)]
    if backend.api_key is not None:
        args += ["--api-key", f"${launch.api_key_env}"]
    return args + list(launch.extra_args)


def command(policy: Policy, name: str, *, python: str | None = None, host: str | None = None) -> list[str]:
    """argv: `vllm serve MODEL ...`, or with `python`: `PYTHON -m vllm.entrypoints.openai.api_server --model ...`."""
    launch = launch_backend(policy, name).launch
    assert launch is not None
    head = [python, "-m", SERVER_MODULE, "--model", launch.model] if python else ["vllm", "serve", launch.model]
    return head + vllm_args(policy, name, host=host)


def shell_line(policy: Policy, name: str, *, python: str | None = None, host: str | None = None) -> str:
    """One shell line: `VAR=value ... vllm serve ...`; `$VLLM_API_KEY` stays for the shell to expand."""
    launch = launch_backend(policy, name).launch
    assert launch is not None
    env = [f"{k}={shlex.quote(v)}" for k, v in sorted(launch.env.items())]
    key_ref = f"${launch.api_key_env}"
    words = [f'"{w}"' if w == key_ref else shlex.quote(w) for w in command(policy, name, python=python, host=host)]
    return " ".join(env + words)


def add_parser(sub: Any, default_config: str) -> None:
    """`gateway vllm command --backend NAME [--config FILE] [--python PY] [--host H] [--json]`."""
    vllm = sub.add_parser("vllm", help="vLLM launch lines from the policy", description="vLLM servers of the policy.")
    action = vllm.add_subparsers(dest="vllm_command", metavar="ACTION", required=True)
    cmd = action.add_parser(
        "command",
        help="print the launch command of a vllm backend",
        description="Print the vLLM command line of a `type: vllm` backend with a `launch:` block.",
    )
    cmd.add_argument("--backend", "-b", required=True, help="backend name in the policy")
    cmd.add_argument("--config", "-c", default=default_config, help="policy YAML (default: %(default)s)")
    cmd.add_argument("--python", help="render `PYTHON -m vllm.entrypoints.openai.api_server` instead of `vllm serve`")
    cmd.add_argument("--host", help="override launch.host")
    cmd.add_argument("--json", action="store_true", help="print the argv as a JSON list (no env, no shell quoting)")


def run_cli(args: Any) -> int:
    import sys

    from gateway.loader import PolicyError, load_file

    try:
        policy = load_file(args.config).policy
        if args.json:
            print(json.dumps(command(policy, args.backend, python=args.python, host=args.host)))
        else:
            print(shell_line(policy, args.backend, python=args.python, host=args.host))
    except (PolicyError, LaunchError) as exc:
        print(f"gateway vllm command: {exc}", file=sys.stderr)
        return 1
    return 0
