"""Start, check and stop the local vLLM servers of policies/local-vllm.yaml on this CPU.

    python deploy/local/local_models.py up      # prepare (cached), start what is not healthy, wait for both
    python deploy/local/local_models.py down    # stop the servers this script started
    python deploy/local/local_models.py status

Run with the gateway's python (`make local-models` does): each server's command line is rendered from its
backend's `launch:` block by `gateway.vllm_launch`, plus CPU-only flags. The servers run detached, in their
own session, with pid files and logs under $LLM_GATEWAY_CACHE (default ~/.cache/llm-gateway).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.loader import load_file
from gateway.policy import Policy, VLLMBackend
from gateway.vllm_launch import command, port_of

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CACHE = Path(os.environ.get("LLM_GATEWAY_CACHE", Path.home() / ".cache" / "llm-gateway"))
POLICY = Path(os.environ.get("LOCAL_POLICY", REPO / "policies" / "local-vllm.yaml"))
VENV_PYTHON = CACHE / "vllm-venv" / "bin" / "python"
MODEL_DIR = CACHE / "gemma-3-270m"
RUN = CACHE / "run"
TIMEOUT_S = float(os.environ.get("LOCAL_MODELS_TIMEOUT", "900"))
# CPU-only: a small KV cache (GiB) keeps each server near 3-4 GB; the machine is shared.
CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"), "OMP_WAIT_POLICY": "PASSIVE"}
CPU_ARGS = ["--max-num-seqs", "8", "--disable-uvicorn-access-log"]
# Eager mode skips torch.compile's warm-up (minutes on two busy cores) for somewhat slower tokens; LOCAL_VLLM_EAGER=0
# compiles instead.
if os.environ.get("LOCAL_VLLM_EAGER", "1") != "0":
    CPU_ARGS.append("--enforce-eager")


def say(message: str) -> None:
    print(f"[local-models] {message}", file=sys.stderr, flush=True)


def fail(message: str) -> None:
    say(f"error: {message}")
    raise SystemExit(1)


def policy() -> Policy:
    return load_file(POLICY, env={**os.environ, "LOCAL_MODEL_DIR": str(MODEL_DIR)}).policy


def servers(pol: Policy) -> list[VLLMBackend]:
    return [b for b in pol.backends if isinstance(b, VLLMBackend) and b.launch is not None]


def root_url(backend: VLLMBackend) -> str:
    return backend.base_url.removesuffix("/").removesuffix("/v1")


def healthy(backend: VLLMBackend) -> bool:
    """The server lists a model: it is up and answering."""
    try:
        with urllib.request.urlopen(root_url(backend) + "/v1/models", timeout=2) as resp:
            return resp.status == 200 and bool(json.load(resp).get("data"))
    except (OSError, ValueError, urllib.error.URLError):
        return False


def port_taken(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def pid_of(name: str) -> int | None:
    """The pid this script started for `name`, if that process still runs vLLM."""
    path = RUN / f"{name}.pid"
    with contextlib.suppress(OSError, ValueError):
        pid = int(path.read_text())
        if "vllm" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
            return pid
    return None


def log_tail(name: str, lines: int = 25) -> str:
    path = RUN / f"{name}.log"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def cpu_binding(index: int, count: int) -> str:
    """Cores for server `index` of `count`: an even share each (vLLM's own choice puts every server on core 0)."""
    cores = os.cpu_count() or 1
    if cores < count:
        return "nobind"
    share = cores // count
    first = index * share
    return str(first) if share == 1 else f"{first}-{first + share - 1}"


def start(pol: Policy, backend: VLLMBackend, index: int, count: int) -> None:
    argv = command(pol, backend.name, python=str(VENV_PYTHON), host="127.0.0.1") + CPU_ARGS
    env = {**os.environ, **CPU_ENV}
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_binding(index, count))
    log = RUN / f"{backend.name}.log"
    say(
        f"starting {backend.name} on :{port_of(backend.base_url)}, cores {env['VLLM_CPU_OMP_THREADS_BIND']} (log {log})"
    )
    with log.open("wb") as sink:  # this start's output only: its tail is what a failure shows
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # survives `make` ending; stopped as a group by `down`
        )
    (RUN / f"{backend.name}.pid").write_text(str(proc.pid))
    # Until exec, the child's command line is still ours, and pid_of() would not recognise it.
    deadline = time.monotonic() + 10
    while proc.poll() is None and pid_of(backend.name) is None and time.monotonic() < deadline:
        time.sleep(0.05)


def up() -> int:
    started = time.monotonic()
    prepare = subprocess.run(["bash", str(HERE / "prepare.sh")], check=False)
    if prepare.returncode != 0:
        fail("preparation failed (see above); delete ~/.cache/llm-gateway/vllm-venv to start it over")
    RUN.mkdir(parents=True, exist_ok=True)
    pol = policy()
    waiting = []
    wanted = servers(pol)
    for index, backend in enumerate(wanted):
        port = port_of(backend.base_url)
        if healthy(backend):
            say(f"{backend.name} already answers on :{port}; left alone")
            continue
        if pid_of(backend.name) is None:
            if port_taken(port):
                fail(f"port {port} is taken by something that is not a healthy vLLM; free it or set the base_url")
            start(pol, backend, index, len(wanted))
        else:
            say(f"{backend.name} is starting already (pid {pid_of(backend.name)})")
        waiting.append(backend)
    last_report = 0.0
    while waiting:
        elapsed = time.monotonic() - started
        for backend in list(waiting):
            if healthy(backend):
                say(f"{backend.name} answers on :{port_of(backend.base_url)} after {elapsed:.0f} s")
                waiting.remove(backend)
            elif pid_of(backend.name) is None:
                fail(f"{backend.name} exited while starting; last lines of its log:\n{log_tail(backend.name)}")
        if waiting and elapsed > TIMEOUT_S:
            tails = "\n".join(f"--- {b.name}:\n{log_tail(b.name)}" for b in waiting)
            fail(f"not answering after {TIMEOUT_S:.0f} s (LOCAL_MODELS_TIMEOUT): {[b.name for b in waiting]}\n{tails}")
        if waiting and elapsed - last_report >= 15:
            last_report = elapsed
            line = log_tail(waiting[0].name, 1)[:140]
            say(f"waiting for {', '.join(b.name for b in waiting)} ({elapsed:.0f} s; first start takes minutes): {line}")
        time.sleep(1)
    say(f"ready in {time.monotonic() - started:.0f} s: policy {POLICY.relative_to(REPO)}")
    return 0


def down() -> int:
    pol = policy()
    for backend in servers(pol):
        pid = pid_of(backend.name)
        if pid is None:
            say(
                f"{backend.name}: not started by this script" + (" (but something answers)" if healthy(backend) else "")
            )
            continue
        say(f"stopping {backend.name} (pid {pid})")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)  # its own session: the API server and its engine process
        deadline = time.monotonic() + 30
        while pid_of(backend.name) is not None and time.monotonic() < deadline:
            time.sleep(0.5)
        if pid_of(backend.name) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        (RUN / f"{backend.name}.pid").unlink(missing_ok=True)
    return 0


def status() -> int:
    pol = policy()
    ok = True
    for backend in servers(pol):
        up_now = healthy(backend)
        ok &= up_now
        print(
            f"{backend.name:12} :{port_of(backend.base_url)}  {'up' if up_now else 'down'}  pid {pid_of(backend.name)}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    actions = {"up": up, "down": down, "status": status}
    if len(sys.argv) != 2 or sys.argv[1] not in actions:
        raise SystemExit(f"usage: {sys.argv[0]} up|down|status")
    raise SystemExit(actions[sys.argv[1]]())
