"""Everything one loaded policy needs to serve: transports, plugin chains, routers, keys.

A `Runtime` is built from a policy, started, then swapped in atomically by `RuntimeHolder`.
Requests hold the runtime they started with, so a reload never changes a request mid-flight;
the old runtime closes its connections once its last request is done.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Callable
from pathlib import Path

from gateway import registry
from gateway.chain import Chain
from gateway.limits import Limiter, MemoryLimiter, RedisLimiter
from gateway.loader import LoadedPolicy, load_file
from gateway.plugin import Plugin
from gateway.policy import AnthropicBackend, ApiKey, Limits, ModelRoute, PluginEntry
from gateway.redis_link import RedisLink
from gateway.requestlog.writer import RequestLog
from gateway.router import Router
from gateway.services import Services
from gateway.telemetry import Telemetry
from gateway.upstream.anthropic import AnthropicTransport
from gateway.upstream.base import Transport
from gateway.upstream.openai import OpenAITransport

log = logging.getLogger("gateway")
DRAIN_TIMEOUT_S = 600.0


def key_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class Runtime:
    def __init__(self, loaded: LoadedPolicy) -> None:
        self.loaded = loaded
        self.policy = loaded.policy
        self.transports: dict[str, Transport] = {}
        for backend in self.policy.backends:
            self.transports[backend.name] = (
                AnthropicTransport(backend) if isinstance(backend, AnthropicBackend) else OpenAITransport(backend)
            )
        global_plugins = [self._instantiate(e) for e in self.policy.plugins]
        self.plugins: list[Plugin] = list(global_plugins)
        self.routes: dict[str, ModelRoute] = {}
        self.chains: dict[str, Chain] = {}
        self.router = Router(self.policy)
        self.limiter = _limiter(self.policy.limits)
        self.request_log = RequestLog(self.policy.telemetry.request_log)
        self.telemetry = Telemetry(self.policy.telemetry, _version())
        for route in self.policy.models:
            own = [self._instantiate(e) for e in route.plugins]
            self.plugins += own
            self.routes[route.name] = route
            self.chains[route.name] = Chain(global_plugins + own)
        # Digests, so the keys themselves are not kept in a lookup table or compared by ==.
        self.keys: dict[str, ApiKey] = {k.digest(): k for k in self.policy.auth.keys}
        self.in_flight = 0
        self._closing: asyncio.Future[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    def _instantiate(self, entry: PluginEntry) -> Plugin:
        plugin = registry.get(entry.use)(self.loaded.config_for(entry))
        plugin.services = Services(self)
        return plugin

    def caller_for(self, token: str) -> ApiKey | None:
        digest = key_digest(token)
        found = None
        for known, key in self.keys.items():  # every entry compared in constant time: no early exit
            if hmac.compare_digest(known, digest):
                found = key
        return found

    async def start(self) -> None:
        started: list[Plugin] = []
        try:
            for transport in self.transports.values():
                await transport.start()
            await self.router.start()
            await self.request_log.start()
            for plugin in self.plugins:
                await plugin.start()
                started.append(plugin)
        except BaseException:
            await self._close(started)
            raise

    def enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def drain_and_close(self, grace_s: float = DRAIN_TIMEOUT_S) -> None:
        try:
            await asyncio.wait_for(self._idle.wait(), grace_s)
        except TimeoutError:
            log.warning("closing the previous policy with %d requests still running", self.in_flight)
        await self._close(self.plugins)

    async def _close(self, plugins: list[Plugin]) -> None:
        # Closing runs to the end even if the caller is cancelled; a second caller waits for it.
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close_all(plugins))
        await asyncio.shield(self._closing)

    async def _close_all(self, plugins: list[Plugin]) -> None:
        for plugin in plugins:
            try:
                await plugin.close()
            except Exception:
                log.exception("plugin %s failed to close", plugin.name)
        await self.router.close()
        await self.limiter.close()
        await self.request_log.close()  # writes what is queued (bounded wait)
        for transport in self.transports.values():
            await transport.close()
        await asyncio.to_thread(self.telemetry.shutdown)  # flushes what is queued (bounded wait)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llm-gateway")
    except PackageNotFoundError:
        return "0.0.0"


def _limiter(limits: Limits) -> Limiter:
    if limits.store == "redis":
        link = RedisLink(limits.redis_url, timeout_s=limits.redis_timeout_ms / 1000, retry_after_s=limits.retry_after_s)
        return RedisLimiter(link, limits.namespace)
    return MemoryLimiter()


class RuntimeHolder:
    """The runtime in force, and reloading it from the policy file."""

    def __init__(self, path: str | Path | None, runtime: Runtime) -> None:
        self.path = path
        self.current = runtime
        self._lock = asyncio.Lock()
        self._retired: dict[asyncio.Task[None], Runtime] = {}
        self._reloading: set[asyncio.Task[bool]] = set()
        self.reloads = 0
        self.last_error: str | None = None
        self.on_swap: list[Callable[[Runtime], None]] = []
        self.probes: dict[str, tuple[float, bool]] = {}  # host:port -> (when, reachable), for /ready

    def reload_soon(self) -> None:
        """Schedule a reload (from a signal handler); the task is kept until it finishes."""
        task = asyncio.get_running_loop().create_task(self.reload())
        self._reloading.add(task)
        task.add_done_callback(self._reloading.discard)

    async def reload(self) -> bool:
        """Load, start and swap in the policy file; on any problem keep the current one."""
        if self.path is None:
            return False
        async with self._lock:
            try:
                loaded = await asyncio.to_thread(load_file, self.path)
                fresh = Runtime(loaded)
                await fresh.start()
            except Exception as exc:
                self.last_error = str(exc)
                log.error("policy reload failed; the previous policy keeps serving: %s", exc)
                return False
            old, self.current = self.current, fresh
            self.reloads += 1
            self.last_error = None
            for callback in self.on_swap:
                callback(fresh)
            task = asyncio.get_running_loop().create_task(old.drain_and_close())
            self._retired[task] = old
            task.add_done_callback(lambda done: self._retired.pop(done, None))
            log.info("policy reloaded from %s", self.path)
            return True

    async def close(self) -> None:
        """Shutdown: give every runtime, retired ones included, a short drain, then close it."""
        runtimes = [self.current, *self._retired.values()]
        for task in list(self._retired):
            task.cancel()
        await asyncio.gather(*(r.drain_and_close(grace_s=5) for r in runtimes))
