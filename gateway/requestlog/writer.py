"""`RequestLog`: records queued without waiting, written in batches by one background task.

    request ─► submit (put_nowait; full: dropped, counted) ─► queue ─► writer task ─► store.insert(batch)
                                                                        (one worker thread owns the store)
    retention task: every retention_interval_s, delete what is older than retention_days

A request never waits for the log and never fails because of it: a full queue or a failed write drops
records and counts them in `gateway_request_log_dropped_total{reason}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from gateway import metrics
from gateway.plugin import RequestContext
from gateway.requestlog import record
from gateway.requestlog.config import RequestLogConfig
from gateway.requestlog.store import Store

log = logging.getLogger("gateway.requestlog")
T = TypeVar("T")
REOPEN_AFTER_S = 5.0
CLOSE_GRACE_S = 5.0

DROPPED = metrics.counter(
    "gateway_request_log_dropped_total", "Request-log records not written, by reason.", ("reason",)
)
WRITTEN = metrics.counter("gateway_request_log_written_total", "Request-log records written.")


def open_store(config: RequestLogConfig) -> Store:
    dsn = config.dsn()
    if dsn:
        from gateway.requestlog.store_postgres import PostgresStore

        return PostgresStore(dsn, prefix=config.table_prefix)
    from gateway.requestlog.store_sqlite import SqliteStore

    return SqliteStore(config.path)


class RequestLog:
    def __init__(self, config: RequestLogConfig) -> None:
        self.config = config
        self.enabled = config.enabled
        self.capture_content = config.enabled and config.capture_content
        self._queue: asyncio.Queue[dict[str, Any] | asyncio.Future[None]] = asyncio.Queue(config.queue_size)
        self._store: Store | None = None
        self._store_failed_at = -REOPEN_AFTER_S
        self._opening = asyncio.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._accepting = False

    # --- the request path: never waits -----------------------------------------------------------------

    def record(self, ctx: RequestContext) -> None:
        if self.enabled and self._accepting:
            self._submit(record.from_context(ctx, self.capture_content))

    def rejected(self, request_id: str, status: int, error: str | None) -> None:
        if self.enabled and self._accepting:
            self._submit(record.rejected(request_id, status, error))

    def keep_answer(self, ctx: RequestContext, answer: dict[str, Any]) -> None:
        record.keep_answer(ctx, answer, self.capture_content)

    def _submit(self, item: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            DROPPED.labels("queue_full").inc()

    # --- lifecycle ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        if not self.enabled:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="request-log")
        # The store is opened by the first batch, not here: a database that is down delays nothing.
        self._tasks.append(asyncio.create_task(self._write_loop(), name="request-log writer"))
        if self.config.retention_days is not None:
            self._tasks.append(asyncio.create_task(self._retention_loop(), name="request-log retention"))
        self._accepting = True

    async def close(self) -> None:
        if not self.enabled or self._executor is None:
            return
        self._accepting = False
        try:
            await asyncio.wait_for(self.flush(), CLOSE_GRACE_S)
        except TimeoutError:
            log.warning("request log: %d records not written at shutdown", self._queue.qsize())
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._store is not None:
            await self.call(self._store.close)
            self._store = None
        self._executor.shutdown(wait=False)
        self._executor = None

    async def flush(self) -> None:
        """Wait until every record submitted so far has been written (or dropped)."""
        if not self._tasks:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._queue.put(done)
        await done

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a store call on the store's own thread."""
        if self._executor is None:
            raise RuntimeError("the request log is not running")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def store(self) -> Store | None:
        """The open store (reopened if it failed earlier), or None while it is unavailable."""
        async with self._opening:
            if self._store is None and time.monotonic() - self._store_failed_at >= REOPEN_AFTER_S:
                await self._open()
        return self._store

    async def _open(self) -> None:
        try:
            self._store = await self.call(open_store, self.config)
        except Exception as exc:
            self._store_failed_at = time.monotonic()
            log.error("request log: cannot open the store (retrying in %.0f s): %s", REOPEN_AFTER_S, exc)

    # --- background work --------------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        queue, limit = self._queue, self.config.batch_size
        while True:
            batch = [await queue.get()]
            while len(batch) < limit and not queue.empty():
                batch.append(queue.get_nowait())
            records = [item for item in batch if isinstance(item, dict)]
            if records:
                await self._write(records)
            for item in batch:
                if isinstance(item, asyncio.Future) and not item.done():
                    item.set_result(None)

    async def _write(self, records: list[dict[str, Any]]) -> None:
        store = await self.store()
        if store is None:
            DROPPED.labels("store_unavailable").inc(len(records))
            return
        try:
            await self.call(_insert, store, records)
        except Exception as exc:
            log.error("request log: %d records not written: %s", len(records), exc)
            DROPPED.labels("write_failed").inc(len(records))
            await self._reset(store)
            return
        WRITTEN.inc(len(records))

    async def _reset(self, store: Store) -> None:
        """After a failed write, drop the store; the next batch reopens it (after REOPEN_AFTER_S)."""
        self._store, self._store_failed_at = None, time.monotonic()
        with contextlib.suppress(Exception):
            await self.call(store.close)

    async def _retention_loop(self) -> None:
        days = self.config.retention_days or 0
        while True:
            store = await self.store()
            if store is not None:
                try:
                    gone = await self.call(store.purge, time.time() - days * 86400)
                    if gone:
                        log.info("request log: deleted %d records older than %g days", gone, days)
                except Exception as exc:
                    log.warning("request log: retention failed: %s", exc)
            await asyncio.sleep(self.config.retention_interval_s)


def _insert(store: Store, records: list[dict[str, Any]]) -> None:
    store.insert([record.redact(r) for r in records])
