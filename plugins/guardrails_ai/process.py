"""The worker process as the operating system sees it: which interpreter, which environment, how it ends."""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
from pathlib import Path

SERVE = Path(__file__).parent / "worker" / "serve.py"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
HEADER = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024
_PASSED_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "HOME", "XDG_CACHE_HOME", "HF_HOME")
_WORKER_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # litellm (a guardrails dependency) would fetch its price list
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "GUARD_HISTORY_ENABLED": "false",  # guardrails keeps every call's history in memory otherwise
    "PYTHONUNBUFFERED": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
}


def resolve_python(python: str) -> Path:
    path = Path(python)
    if path.is_absolute() or path.exists():
        return path
    return PROJECT_ROOT / path


def worker_env() -> dict[str, str]:
    env = {k: os.environ[k] for k in _PASSED_ENV if k in os.environ}
    return {**env, **_WORKER_ENV}


async def kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    await reap(proc)


async def reap(proc: asyncio.subprocess.Process) -> int:
    """Wait for the exit code. Our end of its stdin is closed first: uvloop's wait() returns only once
    every pipe of the process is closed."""
    if proc.stdin is not None:
        proc.stdin.close()
    return await proc.wait()
