"""The plugin interface: explicit phases, explicit decisions.

A plugin subclasses `Plugin` and overrides only the phases it needs; the chain skips phases a plugin
does not override, so an unused phase costs nothing. Each phase returns a decision:

    on_request(ctx)              -> CONTINUE | Respond      before the upstream call, in policy order
    on_response(ctx, completion) -> CONTINUE | Respond      non-streamed answers, reverse order
    on_stream_chunk(ctx, chunk)  -> CONTINUE | Emit | Respond   each streamed chunk, reverse order
    on_stream_end(ctx)           -> CONTINUE | Emit | Respond   upstream stream finished cleanly
    on_end(ctx)                  -> None                    always, after the client has its answer

A plugin instance is created once per policy load and shared by all requests: per-request state
lives in the `RequestContext` (`ctx.state`), never on `self`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from gateway.policy import ApiKey, ModelRoute, Target

Endpoint = Literal["chat", "completions", "embeddings"]
T = TypeVar("T")


class PluginConfig(BaseModel):
    """Base for a plugin's options: unknown keys are rejected, values frozen after load."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Continue:
    """Go on with the next plugin (the chunk or body as it now stands)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "CONTINUE"


CONTINUE = Continue()


@dataclass(frozen=True, slots=True)
class Respond:
    """Answer the client now with this body (a cache hit, a block). Upstream is not called.

    A 200 chat completion is replayed as an SSE stream when the client asked for `stream: true`.
    """

    body: dict[str, Any]
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Emit:
    """Stream phases only: send these chunks instead of the current one (empty: hold it back)."""

    chunks: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class Readiness:
    """A plugin's dependency as /ready reports it.

    ok=False makes the gateway not ready (503). A dependency the policy lets the plugin work without
    (a fail-open cache whose Redis is down) reports ok=True, degraded=True.
    """

    ok: bool
    detail: str
    degraded: bool = False


RequestDecision = Continue | Respond
StreamDecision = Continue | Emit | Respond


@dataclass(slots=True)
class Caller:
    """Who sent the request: the API key's name, or a hash of the bearer token when auth is off."""

    name: str
    authenticated: bool
    key: ApiKey | None = None  # the virtual key's policy entry (allowed models, limits)


@dataclass(slots=True)
class RequestContext:
    request_id: str
    endpoint: Endpoint
    body: dict[str, Any]
    headers: Mapping[str, str]
    caller: Caller
    route: ModelRoute
    stream: bool
    started: float = field(default_factory=time.perf_counter)
    target: Target | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    status: int = 0
    usage: dict[str, Any] | None = None
    finish_reasons: list[str] = field(default_factory=list)
    error: str | None = None
    # The request's server span (hex), when tracing sampled it: links the request log and feedback to the trace.
    trace_id: str | None = None
    span_id: str | None = None
    upstream_s: float = 0.0  # time spent waiting on upstream calls (retries and backoff included)
    ttft_s: float | None = None  # streams: upstream time to the first chunk of the answering attempt
    state: dict[type[Any], Any] = field(default_factory=dict)
    owned: dict[tuple[int, type[Any]], Any] = field(default_factory=dict)  # see own()
    # Checks a plugin started in on_request that run alongside the upstream call (an LLM judge):
    # each resolves to None (pass) or a Respond; the first Respond cancels the upstream call and
    # is the answer. No answer is released before every veto has passed.
    vetoes: list[asyncio.Future[Respond | None]] = field(default_factory=list)

    def get(self, kind: type[T]) -> T | None:
        """Typed per-request data shared between plugins, keyed by its class."""
        value = self.state.get(kind)
        return value if isinstance(value, kind) else None

    def put(self, value: Any) -> None:
        self.state[type(value)] = value

    def own(self, owner: object, kind: type[T]) -> T:
        """Per-request state of one plugin instance, made on first use: a chain may hold several
        entries of the same plugin (a global one and a model's own), each with its own state."""
        key = (id(owner), kind)
        found = self.owned.get(key)
        if found is None:
            self.owned[key] = found = kind()
        return found

    def owned_by(self, owner: object, kind: type[T], *, remove: bool = False) -> T | None:
        """That state if the instance made it (and forgotten with remove=True), else None."""
        key = (id(owner), kind)
        found = self.owned.pop(key, None) if remove else self.owned.get(key)
        return found if isinstance(found, kind) else None


class Plugin:
    """Pass-through base: every phase continues unchanged."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[PluginConfig]] = PluginConfig

    def __init__(self, config: PluginConfig) -> None:
        self.config = config
        self.services: Any = None  # gateway.services.Services, set by the runtime before start()

    async def start(self) -> None:
        """Open connections, load models. Called once before the policy serves traffic."""

    async def close(self) -> None:
        """Release what start() opened. Called once the policy is replaced and drained."""

    async def ready(self) -> Readiness | None:
        """For /ready: the state of a dependency this plugin needs, or None if it has none."""
        return None

    def prefetch(self, ctx: RequestContext) -> None:
        """Called for every plugin that defines it when the request phase starts, before any `on_request`:
        start slow, side-effect-free work (an embedding) as a task, so it overlaps the plugins that run
        first. Must not block or change the request; `on_request` still decides on the request as it is
        by then (if an earlier plugin changed the text, the prefetched work is simply not used)."""

    async def on_request(self, ctx: RequestContext) -> RequestDecision:
        return CONTINUE

    async def on_response(self, ctx: RequestContext, completion: dict[str, Any]) -> RequestDecision:
        return CONTINUE

    async def on_stream_chunk(self, ctx: RequestContext, chunk: dict[str, Any]) -> StreamDecision:
        return CONTINUE

    async def on_stream_end(self, ctx: RequestContext) -> StreamDecision:
        return CONTINUE

    async def on_end(self, ctx: RequestContext) -> None:
        return None


def overrides(plugin: Plugin, phase: str) -> bool:
    return getattr(type(plugin), phase) is not getattr(Plugin, phase)
