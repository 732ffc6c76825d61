"""Starting and watching the processes a benchmark drives: nginx, the floor proxy, the gateway, sinks.

RSS is read from /proc (Linux), summed over a process and its descendants so `--workers N` counts
every worker.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ANSWER = (
    '{"id":"chatcmpl-bench","object":"chat.completion","created":1,"model":"bench","choices":[{"index":0,'
    '"message":{"role":"assistant","content":"fixed answer"},"finish_reason":"stop"}],'
    '"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}'
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return  # it answers, even if with an error status
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def start_nginx(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    conf = workdir / "nginx.conf"
    conf.write_text(
        f"""daemon off; worker_processes 1; pid {workdir}/nginx.pid; error_log {workdir}/nginx.err;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {workdir}; proxy_temp_path {workdir};
  fastcgi_temp_path {workdir}; uwsgi_temp_path {workdir}; scgi_temp_path {workdir};
  keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port}; default_type application/json;
    location / {{ return 200 '{ANSWER}'; }} }} }}
"""
    )
    return subprocess.Popen([nginx, "-c", str(conf), "-p", str(workdir)])


def start_module(module: str, *args: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    """`python -m module args...` from the repository root; output to `log` when given."""
    sink = log.open("ab") if log is not None else None
    try:
        return subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, stdout=sink, stderr=sink)
    finally:
        if sink is not None:
            sink.close()


def start_gateway(policy: Path, port: int, workers: int = 1, log: Path | None = None) -> subprocess.Popen[bytes]:
    args = ["serve", "--config", str(policy), "--port", str(port)]
    if workers > 1:
        args += ["--workers", str(workers)]
    return start_module("gateway.cli", *args, log=log)


def stop(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
        except OSError:
            continue
        for child in text.split():
            found.append(int(child))
            found.extend(_children(int(child)))
    return found


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MiB."""
    return sum(_rss_kib(p) for p in [pid, *_children(pid)]) / 1024


def cpu_s(pid: int) -> float:
    """User + system CPU seconds used so far by a process and its live descendants."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / ticks


def worker_count(pid: int) -> int:
    """Processes serving: the process itself, or its children when it supervises workers."""
    return max(1, len(_children(pid)))


class RssSampler:
    """Samples rss_mib(pid) every `every_s` seconds on a thread; `samples` holds (elapsed s, MiB)."""

    def __init__(self, pid: int, every_s: float = 0.25) -> None:
        self.pid = pid
        self.every_s = every_s
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.is_set():
            self.samples.append((time.monotonic() - started, rss_mib(self.pid)))
            self._stop.wait(self.every_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak(self) -> float:
        return max((mib for _, mib in self.samples), default=0.0)
