"""LiteLLM's proxy on the same fixed-answer upstream, for comparison, when it is installed.

It lives in its own virtual environment (its pins conflict with the gateway's):

    make litellm-venv    # python3.11 -m venv .bench/litellm-venv && pip install 'litellm[proxy]'

`make bench` runs it with one worker if that venv exists (override with BENCH_LITELLM=/path/to/litellm)
and skips it otherwise.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from bench import load
from bench.procs import ROOT, free_port, stop, wait_http

VENV_BIN = ROOT / ".bench" / "litellm-venv" / "bin" / "litellm"


def executable() -> Path | None:
    path = Path(os.environ.get("BENCH_LITELLM", str(VENV_BIN)))
    return path if path.exists() else None


def version() -> str:
    exe = executable()
    if exe is None:
        return "not installed"
    out = subprocess.run([str(exe.parent / "pip"), "show", "litellm"], capture_output=True, text=True).stdout
    return next((line.split()[1] for line in out.splitlines() if line.startswith("Version:")), "unknown")


def measure(workdir: Path, upstream: str, seconds: float) -> load.Result | None:
    exe = executable()
    if exe is None:
        return None
    config = workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: bench\n"
        f"    litellm_params: {{model: openai/bench, api_base: '{upstream}/v1', api_key: sk-bench}}\n"
        "litellm_settings: {telemetry: false, set_verbose: false}\n"
    )
    port = free_port()
    env = {
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no download of the price list at start
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        # No auth, like the gateway rows (1.106 refuses to start without a master key otherwise).
        "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
    }
    with (workdir / "litellm.log").open("ab") as log:
        proc = subprocess.Popen(
            [str(exe), "--config", str(config), "--port", str(port), "--num_workers", "1"],
            env=env,
            stdout=log,
            stderr=log,
            cwd=workdir,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"exited with {proc.returncode} (see {workdir / 'litellm.log'})")
            try:
                wait_http(url + "/", timeout=2)
                break
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
        return load.measure(url, "post.lua", seconds, pid=proc.pid)
    except Exception as exc:  # a comparison row, not ours: report it missing rather than fail the run
        print(f"litellm: {exc}", flush=True)
        return None
    finally:
        stop(proc, timeout=30)
