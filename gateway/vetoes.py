"""Racing the upstream call against checks that may veto it (see RequestContext.vetoes)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any, TypeVar

from gateway.plugin import RequestContext, Respond

T = TypeVar("T")


def with_vetoes(ctx: RequestContext, work: Awaitable[T]) -> Awaitable[T | Respond]:
    """Await it for `work`'s result once every veto passed, or the first veto's Respond (and `work` cancelled).

    Without vetoes it is `work` itself: no coroutine in between to resume each time `work` waits."""
    return _race(ctx, work) if ctx.vetoes else work


async def _race(ctx: RequestContext, work: Awaitable[T]) -> T | Respond:
    task: asyncio.Future[T] = asyncio.ensure_future(work)
    waiting: set[asyncio.Future[Any]] = {task, *ctx.vetoes}
    try:
        while waiting:
            done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            for finished in done:
                if finished is task or finished.cancelled():
                    continue
                verdict = finished.result()
                if isinstance(verdict, Respond):
                    await _discard(task)
                    return verdict
            if task.done() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        return task.result()
    except BaseException:
        await _discard(task)
        raise
    finally:
        for veto in ctx.vetoes:
            veto.cancel()


async def _discard(task: asyncio.Future[Any]) -> None:
    """Cancel the upstream call, or close what it already opened (a stream)."""
    if not task.done():
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        return
    if task.cancelled() or task.exception() is not None:
        return
    result = task.result()
    opened = result[1] if isinstance(result, tuple) and len(result) > 1 else None
    closer = getattr(opened, "aclose", None)
    if closer is not None:  # an opened stream nobody will relay: close it, and it is no longer in flight
        with contextlib.suppress(Exception):
            await closer()
        health = getattr(result[0], "health", None)
        if health is not None:
            health.abandoned()
