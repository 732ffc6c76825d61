"""Getting spans off the machine without ever slowing a request.

Finished spans (`spans.Record` tuples) go into a bounded queue; one daemon thread hands them in batches
to a sender. A full queue drops the span (counted). The default sender is a helper process
(`python -P gateway/telemetry/otlp.py`, one per loaded policy) that encodes them to OTLP and sends them
(`otlp.SpanExport`, HTTP/protobuf or gRPC): encoding costs 4-10 us a span (the SDK path ~36 us), and
done in the gateway's process it would hold the GIL the event loop needs. Batches go to the
helper pickled over its stdin; it answers one line per batch (`ok N` / `failed N`) and per flush marker
(`flushed`). `export_process: false` keeps the exporter on the thread instead. Either way a failing or
slow collector only delays export (failures counted); the event loop never waits on it.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import pickle
import subprocess
import sys
import threading
import time
from typing import Protocol

from gateway import metrics
from gateway.telemetry import otlp
from gateway.telemetry.otlp import (
    EXPORT_TIMEOUT_S,
    FRAME,
    SPEC_ENV,
    Endpoint,
    Source,
    SpanExport,
    write_spec,
)
from gateway.telemetry.spans import Record

log = logging.getLogger("gateway.telemetry")

SPANS_DROPPED = metrics.counter(
    "gateway_telemetry_spans_dropped_total", "Spans dropped before export, by reason.", ("reason",)
)
SPANS_EXPORTED = metrics.counter(
    "gateway_telemetry_spans_exported_total", "Spans handed to the OTLP exporter, by result.", ("result",)
)

__all__ = ["BATCH", "ProcessSender", "Sender", "SpanQueue", "ThreadSender"]

BATCH = 512
RESTART_AFTER_S = 1.0  # a helper that died is started again at most this often


class Sender(Protocol):
    def send(self, batch: list[Record]) -> None: ...

    def flush(self, timeout_s: float) -> bool: ...

    def close(self, timeout_s: float) -> None: ...


class ThreadSender:
    """Runs the exporter on the queue's thread, in the gateway's process (`export_process: false`)."""

    def __init__(self, endpoint: Endpoint, source: Source) -> None:
        self._exporter = SpanExport(endpoint, source)

    def send(self, batch: list[Record]) -> None:
        ok = self._exporter.export(batch)
        SPANS_EXPORTED.labels("ok" if ok else "failed").inc(len(batch))

    def flush(self, timeout_s: float) -> bool:
        return True

    def close(self, timeout_s: float) -> None:
        self._exporter.shutdown()


class _Helper:
    """One export process and its flush markers (sent, answered)."""

    __slots__ = ("answered", "proc", "sent")

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.sent = 0
        self.answered = 0

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


class ProcessSender:
    """Hands batches to the export helper process; reads its results on a thread of its own."""

    def __init__(self, endpoint: Endpoint, source: Source) -> None:
        self._spec = write_spec(endpoint, source)
        self._helper: _Helper | None = None
        self._started = 0.0
        self._write = threading.Lock()  # one writer at a time on the helper's stdin
        self._answers = threading.Condition()

    @property
    def pid(self) -> int | None:
        """The current helper's process id (None: not started, or gone)."""
        helper = self._helper
        return helper.proc.pid if helper is not None and helper.alive else None

    def _current(self) -> _Helper | None:
        """The running helper, started (again) if needed; called with the write lock held."""
        helper = self._helper
        if helper is not None and helper.alive:
            return helper
        if helper is not None:
            log.warning("the span export process exited (code %s); starting another", helper.proc.returncode)
            self._helper = None
        if time.monotonic() - self._started < RESTART_AFTER_S:
            return None
        self._started = time.monotonic()
        try:
            proc = subprocess.Popen(  # the spec in its environment, not argv: `ps` shows argv to every user
                [sys.executable, "-P", otlp.__file__],  # -P: not otlp.py's folder first on sys.path
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env={**os.environ, SPEC_ENV: self._spec},
            )
        except OSError as exc:
            log.warning("span export process not started: %s", exc)
            return None
        helper = self._helper = _Helper(proc)
        threading.Thread(target=self._read, args=(helper,), name="otlp-span-answers", daemon=True).start()
        return helper

    def _read(self, helper: _Helper) -> None:
        answers = helper.proc.stdout
        assert answers is not None
        for line in answers:
            word, _, count = line.decode("ascii", "replace").strip().partition(" ")
            if word in ("ok", "failed"):
                SPANS_EXPORTED.labels(word).inc(int(count or 0))
            elif word == "flushed":
                with self._answers:
                    helper.answered += 1
                    self._answers.notify_all()
        answers.close()
        with self._answers:
            self._answers.notify_all()

    @staticmethod
    def _put(helper: _Helper, payload: bytes) -> bool:
        stdin = helper.proc.stdin
        if stdin is None:
            return False
        try:
            stdin.write(FRAME.pack(len(payload)) + payload)
            stdin.flush()
        except (OSError, ValueError):  # BrokenPipe: the helper died; the next batch starts another
            return False
        return True

    def send(self, batch: list[Record]) -> None:
        payload = pickle.dumps(batch, pickle.HIGHEST_PROTOCOL)
        with self._write:
            helper = self._current()
            sent = helper is not None and self._put(helper, payload)
        if not sent:
            SPANS_EXPORTED.labels("failed").inc(len(batch))

    def flush(self, timeout_s: float) -> bool:
        """True once the helper has exported everything sent before this call (False: not within `timeout_s`)."""
        deadline = time.monotonic() + timeout_s
        if not self._write.acquire(timeout=timeout_s):  # a batch is stuck on its way to a helper that stopped reading
            return False
        try:
            helper = self._current()
            if helper is None or not self._put(helper, b""):
                return False
            helper.sent += 1
            target = helper.sent
        finally:
            self._write.release()
        with self._answers:
            while helper.answered < target:
                left = deadline - time.monotonic()
                if left <= 0 or not helper.alive:
                    return False
                self._answers.wait(min(left, 0.5))
        return True

    def close(self, timeout_s: float) -> None:
        """End the helper's input so it exports what it holds and exits; stop it if it takes over `timeout_s`."""
        writable = self._write.acquire(timeout=timeout_s)
        helper, self._helper = self._helper, None
        try:
            if helper is None:
                return
            if not writable:  # a write is stuck: the helper stopped reading
                log.warning("the span export process stopped reading; stopped")
                helper.proc.kill()
            elif helper.proc.stdin is not None:
                with contextlib.suppress(OSError):
                    helper.proc.stdin.close()
        finally:
            if writable:
                self._write.release()
        try:
            helper.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("the span export process did not finish in %.0f s; stopped", timeout_s)
            helper.proc.kill()
            helper.proc.wait()


class SpanQueue:
    """Bounded queue of finished spans; one thread batches them to a sender, never blocking the caller."""

    def __init__(self, sender: Sender, max_queue: int, delay_s: float = 1.0) -> None:
        self.sender = sender
        self._queue: collections.deque[Record] = collections.deque()
        self._max_queue = max_queue
        self._delay_s = delay_s
        self._wake = threading.Event()
        self._drained = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="otlp-span-export", daemon=True)
        self._thread.start()

    def put(self, record: Record) -> None:
        """The tracer's sink: called by `FastSpan.end()` on the request path."""
        if self._stopping:
            SPANS_DROPPED.labels("shutdown").inc()
            return
        queue = self._queue
        if len(queue) >= self._max_queue:
            SPANS_DROPPED.labels("queue_full").inc()
            return
        queue.append(record)  # deque.append is atomic: no lock on the request path
        if len(queue) == BATCH:
            self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(self._delay_s)
            self._wake.clear()
            self._drain()
            with self._drained:
                self._drained.notify_all()
            if self._stopping:
                return

    def _drain(self) -> None:
        queue = self._queue
        while queue:
            batch: list[Record] = []
            while queue and len(batch) < BATCH:
                batch.append(queue.popleft())
            self.sender.send(batch)

    def force_flush(self, timeout_s: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._drained:
            self._wake.set()
            if not self._drained.wait(timeout_s):
                return False
        return self.sender.flush(max(0.0, deadline - time.monotonic()))

    def shutdown(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(EXPORT_TIMEOUT_S * 2)
        self.sender.close(EXPORT_TIMEOUT_S * 2)
