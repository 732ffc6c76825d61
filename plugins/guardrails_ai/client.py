"""The gateway's side of the guardrails-ai worker: one child process, spoken to over its stdin/stdout.

    start()                      launch the worker and wait until it built the validators
    validate(indices, texts, s)  one round trip, at most `s` seconds (WorkerUnavailable otherwise)
    close()                      ask it to exit (its exit handlers run), kill it if it does not

Frames are a 4-byte big-endian length and a JSON object (`worker/serve.py` has the protocol). Calls are
multiplexed by id. A worker that exits is restarted by the next call (after a backoff, so a worker that
crashes at start does not spin); one that answers nothing for `hang_s` while a call waits is killed.
Only what the worker needs is in its environment: no upstream keys, no OTEL_* settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import shutil
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

from gateway import metrics
from plugins.guardrails_ai.process import HEADER, MAX_FRAME, SERVE, kill, reap, worker_env

log = logging.getLogger("gateway.guardrails_ai")
RESTARTS = metrics.counter("gateway_guardrails_worker_starts_total", "guardrails-ai worker processes started.")
OUTBOUND = metrics.counter(
    "gateway_guardrails_outbound_refused_total", "Outbound connections the guardrails-ai worker tried (refused)."
)


class WorkerUnavailable(Exception):
    """The worker is down, starting, restarting, or did not answer in time."""


class WorkerConfigError(Exception):
    """The worker refused the policy's validators (an unknown name, bad arguments, a module that fails)."""


class WorkerClient:
    def __init__(self, python: Path, init: dict[str, Any], *, start_timeout_s: float, hang_s: float) -> None:
        self.python = python
        self.init = {"op": "init", **init}
        self.start_timeout_s = start_timeout_s
        self.hang_s = hang_s
        self.version: str | None = None
        self.last_error: str | None = None
        self.outbound: deque[str] = deque(maxlen=100)  # refused destinations, newest last
        self._proc: asyncio.subprocess.Process | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._starting: asyncio.Task[asyncio.subprocess.Process] | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._last_reply = 0.0
        self._watchdog = False
        self._next_start = 0.0
        self._backoff = 0.5
        self._started_at = 0.0
        self._stderr: deque[str] = deque(maxlen=5)
        self._closed = False

    @property
    def up(self) -> bool:
        return self._proc is not None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> None:
        await self._running(self.start_timeout_s)

    async def validate(self, indices: tuple[int, ...], texts: list[str], wait_s: float) -> list[Any]:
        """The worker's `results` for `texts` (one per text), or WorkerUnavailable."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        try:
            proc = await self._running(wait_s)
        except WorkerConfigError as exc:
            raise WorkerUnavailable(str(exc)) from None
        request_id = next(self._ids)
        future: asyncio.Future[Any] = loop.create_future()
        self._pending[request_id] = future
        sent = time.monotonic()
        try:
            if proc is not self._proc:  # it died between the start and now
                raise ConnectionError("the worker exited")
            self._send(proc, {"id": request_id, "op": "validate", "validators": list(indices), "texts": texts})
            async with asyncio.timeout_at(deadline):
                await proc.stdin.drain()  # type: ignore[union-attr]
                results = await future
        except TimeoutError:
            self._suspect(proc, sent)
            raise WorkerUnavailable(f"no answer from the worker within {wait_s} s") from None
        except (ConnectionError, RuntimeError) as exc:
            raise WorkerUnavailable(f"worker channel broken: {exc!r}") from None
        finally:
            self._pending.pop(request_id, None)
        if not isinstance(results, list) or len(results) != len(texts):
            raise WorkerUnavailable("the worker answered with the wrong number of results")
        return results

    async def close(self) -> None:
        self._closed = True
        if self._starting is not None:
            self._starting.cancel()
            with contextlib.suppress(BaseException):
                await self._starting
        proc = self._proc
        if proc is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                self._send(proc, {"op": "shutdown"})
            try:
                await asyncio.wait_for(reap(proc), 5)
            except TimeoutError:
                await kill(proc)
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 2)
        self._down("closed", proc)

    # --- the process --------------------------------------------------------------------------------------

    async def _running(self, wait_s: float) -> asyncio.subprocess.Process:
        if self._proc is not None:
            return self._proc
        if self._closed:
            raise WorkerUnavailable("the worker is closed")
        if self._starting is None:
            wait = self._next_start - time.monotonic()
            if wait > 0:
                raise WorkerUnavailable(f"worker down ({self.last_error}); next start in {wait:.1f} s")
            self._starting = asyncio.create_task(self._launch())
            self._starting.add_done_callback(self._started)
        try:
            return await asyncio.wait_for(asyncio.shield(self._starting), wait_s)
        except TimeoutError:
            raise WorkerUnavailable("the worker is still starting") from None

    def _started(self, task: asyncio.Task[asyncio.subprocess.Process]) -> None:
        self._starting = None
        if not task.cancelled() and task.exception() is not None:
            self.last_error = str(task.exception())
            self._next_start = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, 30.0)

    async def _launch(self) -> asyncio.subprocess.Process:
        RESTARTS.inc()
        home = tempfile.mkdtemp(prefix="gateway-guardrails-")  # the worker's HOME; removed once it exited
        try:
            proc = await asyncio.create_subprocess_exec(
                str(self.python),
                str(SERVE),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={**worker_env(), "GATEWAY_GUARDRAILS_HOME": home},
            )
        except OSError as exc:
            shutil.rmtree(home, ignore_errors=True)
            raise WorkerUnavailable(f"cannot run {self.python} (make guardrails-venv?): {exc}") from None
        try:
            return await self._handshake(proc)
        except BaseException:
            await kill(proc)
            shutil.rmtree(home, ignore_errors=True)
            raise
        finally:
            if proc.returncode is None:
                self._spawn(self._remove_after_exit(proc, home))

    async def _remove_after_exit(self, proc: asyncio.subprocess.Process, home: str) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await proc.wait()
        shutil.rmtree(home, ignore_errors=True)

    async def _handshake(self, proc: asyncio.subprocess.Process) -> asyncio.subprocess.Process:
        self._spawn(self._drain_stderr(proc))
        try:
            self._send(proc, self.init)
            async with asyncio.timeout(self.start_timeout_s):
                first = await self._next_reply(proc)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            await kill(proc)
            tail = f"; stderr: {self._stderr[-1]}" if self._stderr else ""
            raise WorkerUnavailable(f"worker did not start ({exc!r}){tail}") from None
        if "fatal" in first:
            await kill(proc)
            if first.get("config"):
                raise WorkerConfigError(str(first["fatal"]))
            raise WorkerUnavailable(str(first["fatal"]))
        self.version = str(first.get("version"))
        self._proc, self._started_at, self.last_error = proc, time.monotonic(), None
        self._spawn(self._read_replies(proc))
        log.info("guardrails worker %s started (guardrails %s)", proc.pid, self.version)
        return proc

    async def _next_reply(self, proc: asyncio.subprocess.Process) -> dict[str, Any]:
        """The next frame that is not an event (events are handled on the way)."""
        assert proc.stdout is not None
        while True:
            (size,) = HEADER.unpack(await proc.stdout.readexactly(HEADER.size))
            if size > MAX_FRAME:
                raise ValueError(f"a frame of {size} bytes from the worker")
            message = json.loads(await proc.stdout.readexactly(size))
            if not isinstance(message, dict):
                raise ValueError("a frame that is not an object")
            if message.get("event") == "outbound":
                target = str(message.get("target"))
                OUTBOUND.inc()
                self.outbound.append(target)
                log.warning("guardrails worker tried an outbound connection to %s (refused)", target)
                continue
            return message

    async def _read_replies(self, proc: asyncio.subprocess.Process) -> None:
        reason = "the worker closed its channel"
        try:
            while True:
                message = await self._next_reply(proc)
                self._last_reply = time.monotonic()
                future = self._pending.get(message.get("id", -1))
                if future is not None and not future.done():
                    future.set_result(message.get("results"))
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            if not isinstance(exc, asyncio.IncompleteReadError):
                reason = f"bad frame from the worker: {exc!r}"
                await kill(proc)
        code = await reap(proc)
        tail = f"; stderr: {self._stderr[-1]}" if self._stderr and code else ""
        self._down(f"{reason} (exit code {code}){tail}", proc)

    def _down(self, reason: str, proc: asyncio.subprocess.Process | None) -> None:
        if proc is None or proc is not self._proc:
            return
        self._proc = None
        if not self._closed:
            log.warning("guardrails worker %s down: %s", proc.pid, reason)
            self.last_error = reason
            if time.monotonic() - self._started_at > 60:
                self._backoff = 0.5  # it ran a good while: restart at once
            else:
                self._next_start = time.monotonic() + self._backoff
                self._backoff = min(self._backoff * 2, 30.0)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(WorkerUnavailable(reason))

    def _suspect(self, proc: asyncio.subprocess.Process, sent: float) -> None:
        """A call timed out with no reply since it was sent: kill the worker if it stays silent."""
        if self._watchdog or self._last_reply >= sent:
            return
        self._watchdog = True

        async def watch() -> None:
            try:
                await asyncio.sleep(max(0.0, sent + self.hang_s - time.monotonic()))
                if self._last_reply < sent and proc is self._proc:
                    log.warning("guardrails worker %s silent for %.1f s: killing it", proc.pid, self.hang_s)
                    await kill(proc)
            finally:
                self._watchdog = False

        self._spawn(watch())

    def _send(self, proc: asyncio.subprocess.Process, message: dict[str, Any]) -> None:
        data = json.dumps(message, ensure_ascii=False).encode()
        if proc.stdin is None or proc.stdin.is_closing():
            raise ConnectionError("the worker's stdin is closed")
        proc.stdin.write(HEADER.pack(len(data)) + data)

    async def _drain_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()[:300]
            if line:
                self._stderr.append(line)
                log.info("guardrails worker %s: %s", proc.pid, line)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
