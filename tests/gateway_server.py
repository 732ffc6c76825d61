"""A real gateway for tests: the production app served by uvicorn on a free port, in a thread
(`GatewayServer`), or `gateway serve` as a separate process (`GatewayProcess`, `serving`) where a test needs
several replicas that share nothing but Redis."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from gateway.loader import load_file
from gateway.server import create_app, entry


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class GatewayServer:
    def __init__(self, policy_path: Path) -> None:
        self.policy_path = policy_path
        self.port = free_port()
        self.app = create_app(load_file(policy_path), policy_path)
        config = uvicorn.Config(
            entry(self.app), host="127.0.0.1", port=self.port, loop="uvloop", http="httptools", log_level="warning"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def holder(self) -> Any:
        return self.app.state.holder

    def start(self) -> GatewayServer:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=20)

    def __enter__(self) -> GatewayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class GatewayProcess:
    """One `gateway serve` subprocess on a free port; its output goes to a log file beside the policy."""

    def __init__(self, config: Path, log: Path | None = None) -> None:
        self.config = config
        self.port = free_port()
        self.receiver: Any = None  # a test's OTLP receiver (tests/fakes/otlp.py), when the policy exports there
        self.log = log or config.parent / f"gateway-{self.port}-{uuid.uuid4().hex[:6]}.log"
        with self.log.open("wb") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(self.port)],
                stdout=sink,
                stderr=subprocess.STDOUT,
                cwd=config.parent,
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_healthy(self, deadline: float) -> None:
        """Until /health answers 200; fails with the process's output if it exits or `deadline` passes."""
        while True:
            assert self.proc.poll() is None, f"the gateway exited ({self.proc.returncode}):\n{self.output()}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            assert time.monotonic() < deadline, f"no /health in time:\n{self.output()}"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@contextlib.contextmanager
def serving(
    config: Path, count: int, *, health_timeout_s: float = 30.0, factory: Any = GatewayProcess
) -> Iterator[list[Any]]:
    """`count` gateway processes on the same policy file, started side by side; stopped whatever happens.

    `factory(config)` makes each one (a `GatewayProcess` subclass that adds clients, say).
    """
    started: list[Any] = []
    try:
        for _ in range(count):
            started.append(factory(config))
        deadline = time.monotonic() + health_timeout_s
        for process in started:
            process.wait_healthy(deadline)
        yield started
    finally:
        for process in started:
            process.stop()
