"""The Litestar application: routes, OpenAI-shaped errors for everything, reload on SIGHUP."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import AsyncIterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
from litestar import Litestar, Request, Response, asgi, get
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.types import ASGIApp, Receive, Scope, Send

from gateway import admin, intake, metrics, openapi
from gateway.cors import CORSMiddleware
from gateway.errors import GatewayError, ModelNotFound, error_body
from gateway.loader import LoadedPolicy
from gateway.plugin import Endpoint
from gateway.proxy import Proxy
from gateway.requestlog.feedback import feedback_route
from gateway.responses import JSONResponse, error_response, json_response
from gateway.runtime import Runtime, RuntimeHolder
from gateway.startup_signals import reload_requested_while_starting

log = logging.getLogger("gateway")
CREATED = int(time.time())
# The collector's young generation: a request allocates a few hundred containers and frees nearly all of them
# itself, so the default threshold (700) ran a young collection every ~5 requests and its cascades into the older
# generations cost ~40 us per request under load (docs/benchmarks.md, Optimisations). 10,000 net allocations
# between young collections is far above one burst of requests, and still a few MB at most.
GC_THRESHOLDS = (10_000, 10, 10)

try:
    VERSION = version("llm-gateway")
except PackageNotFoundError:  # running from a source tree that was not installed
    VERSION = "0.0.0"


def _holder(request: Request[Any, Any, Any]) -> RuntimeHolder:
    holder: RuntimeHolder = request.app.state.holder
    return holder


PROXY_PATHS: dict[str, Endpoint] = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
}


async def _proxy(proxy: Proxy, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
    response = await proxy.handle(endpoint, intake.scope_headers(scope["headers"]), receive)
    await response(scope, receive, send)


def _proxy_route(path: str, endpoint: Endpoint) -> Any:
    """The proxy's routes as Litestar sees them: the 405 for other methods, and a POST that reaches
    Litestar's router anyway (the fast path in `_ProxyPaths` takes the exact paths first)."""

    async def handle(scope: Scope, receive: Receive, send: Send) -> None:
        method = str(scope.get("method", "GET"))
        if method != "POST":
            message = f"Method {method} is not allowed on {path}."
            body = error_body(message, "invalid_request_error", None, "method_not_allowed")
            await JSONResponse(405, msgspec.json.encode(body), {"allow": "POST"})(scope, receive, send)
            return
        await _proxy(scope["app"].state.proxy, endpoint, scope, receive, send)

    return asgi(path, is_mount=False, copy_scope=False)(handle)


class _ProxyPaths:
    """POSTs to the proxy's exact paths go straight to the proxy, past Litestar's router and exception
    middleware (the proxy answers every error itself, OpenAI-shaped); everything else goes to Litestar.
    About 10 us per request on this machine (docs/benchmarks.md, Optimisations)."""

    __slots__ = ("app", "proxy")

    def __init__(self, app: ASGIApp, proxy: Proxy) -> None:
        self.app = app
        self.proxy = proxy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        http = scope["type"] == ScopeType.HTTP and scope.get("method") == "POST"
        endpoint = PROXY_PATHS.get(scope["path"]) if http else None
        if endpoint is None:
            await self.app(scope, receive, send)
        else:
            await _proxy(self.proxy, endpoint, scope, receive, send)


class Entry:
    """What the HTTP server runs: the proxy's POSTs straight to the proxy when no CORS policy applies (the
    default), everything else (lifespan included) to the Litestar app. Three fewer coroutine layers on every
    proxied request than Litestar's entry, the CORS middleware and `_ProxyPaths`, each of which is resumed
    again whenever the request waits (upstream headers, a stream's chunks). `entry(app)` builds it."""

    __slots__ = ("app", "holder", "proxy")

    def __init__(self, app: Litestar) -> None:
        self.app = app
        self.holder: RuntimeHolder = app.state.holder
        self.proxy: Proxy = app.state.proxy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP and scope.get("method") == "POST":
            endpoint = PROXY_PATHS.get(scope["path"])
            if endpoint is not None and not self.holder.current.policy.server.cors.allow_origins:
                response = await self.proxy.handle(endpoint, intake.scope_headers(scope["headers"]), receive)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def entry(app: Litestar) -> Entry:
    return Entry(app)


chat_completions, completions, embeddings = (_proxy_route(path, e) for path, e in PROXY_PATHS.items())


def _model_card(runtime: Runtime, name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": CREATED, "owned_by": runtime.routes[name].owned_by}


@get("/v1/models")
async def list_models(request: Request[Any, Any, Any]) -> ASGIApp:
    runtime = _holder(request).current
    return json_response(200, {"object": "list", "data": [_model_card(runtime, n) for n in runtime.routes]}, {})


@get("/v1/models/{model:path}")
async def get_model(request: Request[Any, Any, Any]) -> ASGIApp:
    runtime = _holder(request).current
    name = str(request.path_params["model"]).lstrip("/")
    if name not in runtime.routes:
        return error_response(ModelNotFound(f"The model {name!r} does not exist.", param="model"), {})
    return json_response(200, _model_card(runtime, name), {})


@get("/health")
async def health() -> ASGIApp:
    return json_response(200, {"status": "ok"}, {})


@get("/ready")
async def ready(request: Request[Any, Any, Any]) -> ASGIApp:
    holder = _holder(request)
    runtime = holder.current
    checks: dict[str, Any] = {}
    ok, degraded = True, False
    for plugin in runtime.plugins:
        result = await plugin.ready()
        if result is not None:
            name = plugin.name if plugin.name not in checks else f"{plugin.name}#{len(checks)}"
            checks[name] = {"ok": result.ok, "degraded": result.degraded, "detail": result.detail}
            ok, degraded = ok and result.ok, degraded or result.degraded
    reachable = await asyncio.gather(*(_reachable(holder, b) for b in runtime.policy.backends))
    body = {
        "status": ("ready" if not degraded else "degraded") if ok else "not_ready",
        "policy": {
            "source": runtime.loaded.source,
            "reloads": holder.reloads,
            "last_reload_error": holder.last_error,
        },
        "checks": checks,
        "backends": {b.name: {"reachable": r} for b, r in zip(runtime.policy.backends, reachable, strict=True)},
    }
    return json_response(200 if ok else 503, body, {})


PROBE_TTL_S = 5.0


async def _reachable(holder: RuntimeHolder, backend: Any) -> bool:
    """Can a TCP connection be opened to the backend? Informational (docs/policy.md#ready), and
    remembered for a few seconds so frequent readiness probes do not open connections each time."""
    url = urlsplit(backend.base_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    key = f"{url.hostname}:{port}"
    now = time.monotonic()
    cached = holder.probes.get(key)
    if cached is not None and now - cached[0] < PROBE_TTL_S:
        return cached[1]
    try:
        async with asyncio.timeout(1.0):
            _, writer = await asyncio.open_connection(url.hostname, port)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        ok = True
    except (OSError, TimeoutError):
        ok = False
    holder.probes[key] = (now, ok)
    return ok


@get("/metrics")
async def prometheus_metrics() -> ASGIApp:
    body, content_type = metrics.exposition()
    return JSONResponse(200, body, {}, content_type=content_type)


@get("/openapi.json")
async def openapi_json() -> ASGIApp:
    return json_response(200, openapi.document(VERSION), {})


def _http_error(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """Litestar's own errors (unknown path, wrong method, ...) in OpenAI's shape."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if status == 404:
        message, code = (
            f"Unknown path {request.url.path!r}; this gateway serves the OpenAI API under /v1.",
            "not_found",
        )
    elif status == 405:
        message, code = f"Method {request.method} is not allowed on {request.url.path}.", "method_not_allowed"
    elif status < 500:
        message, code = str(getattr(exc, "detail", "") or "Bad request."), None
    else:
        log.error("unhandled error on %s", request.url.path, exc_info=exc)
        message, code = "Internal gateway error.", None
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = msgspec.json.encode(error_body(message, kind, None, code))
    return Response(body, status_code=status, media_type="application/json")


def create_app(loaded: LoadedPolicy, policy_path: str | Path | None = None) -> Litestar:
    holder = RuntimeHolder(policy_path, Runtime(loaded))

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        try:
            await holder.current.start()
        except Exception as exc:  # one clear line before uvicorn's traceback (e.g. a model that cannot load)
            log.error("the gateway cannot start: %s", exc)
            raise
        # Everything loaded so far (models, libraries) lives as long as the process: keep it out of
        # the collector's full passes, which otherwise pause the loop for ~100 ms with torch loaded.
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, holder.reload_soon)
        if reload_requested_while_starting():  # the file may have changed while we were starting: read it again
            log.info("SIGHUP received while starting: reloading the policy now")
            holder.reload_soon()
        try:
            yield
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGHUP)
            await holder.close()

    app = Litestar(
        route_handlers=[
            chat_completions,
            completions,
            embeddings,
            list_models,
            get_model,
            health,
            ready,
            openapi_json,
            prometheus_metrics,
            *admin.ROUTES,
            feedback_route,
        ],
        lifespan=[lifespan],
        openapi_config=None,
        exception_handlers={HTTPException: _http_error, GatewayError: _http_error},
        request_max_body_size=None,
        debug=False,
        # The CLI configures logging (plain lines on stderr). Litestar's default would route every record,
        # each access-log line included, through a queue to a listener thread: ~0.3 ms of CPU per request
        # under load, as the two threads pass the GIL back and forth.
        logging_config=None,
    )
    app.state.holder = holder
    app.state.proxy = Proxy(holder)
    # CORS is read per request (a reload changes it); it wraps the fast path too.
    app.asgi_handler = CORSMiddleware(_ProxyPaths(app.asgi_handler, app.state.proxy), holder)
    return app
