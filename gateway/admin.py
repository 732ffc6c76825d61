"""The operator's API under /admin: reload the policy, list keys, inspect circuits and caches, flush a cache.

Enabled only when the environment holds an admin key (`GATEWAY_ADMIN_KEY`); without one every /admin
route answers the same 404 as an unknown path, so a scanner cannot tell the API exists. The key is
sent as `Authorization: Bearer <key>` (or `x-admin-key`) and compared in constant time. Every admin
answer carries headers that keep it out of caches and browsers' frames (`SECURITY_HEADERS`).

    GET  /admin/keys                        names and limits of the client keys, never a secret or digest
    POST /admin/reload                      reload the policy file (as SIGHUP does); 409 when it is broken
    GET  /admin/circuits                    every target's breaker state, in-flight count and latencies
    GET  /admin/caches                      every cache plugin: store, namespace, entries, Redis link state
    POST /admin/caches/{namespace}/flush    empty the caches that use that namespace
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Mapping
from typing import Any

from litestar import Request, get, post
from litestar.types import ASGIApp

from gateway import intake
from gateway.caching import CacheConfig
from gateway.errors import AuthenticationFailed, GatewayError, ModelNotFound
from gateway.plugin import Plugin
from gateway.responses import JSONResponse, error_response, json_response
from gateway.runtime import Runtime, RuntimeHolder

log = logging.getLogger("gateway.admin")
ADMIN_KEY_ENV = "GATEWAY_ADMIN_KEY"
SECURITY_HEADERS: dict[str, str] = {
    "cache-control": "no-store",
    "pragma": "no-cache",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
    "referrer-policy": "no-referrer",
}


class AdminConflict(GatewayError):
    status = 409
    type = "invalid_request_error"
    code = "policy_invalid"


def _presented(headers: Mapping[str, str]) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-admin-key")


def authorize(headers: Mapping[str, str], env: Mapping[str, str] = os.environ) -> GatewayError | None:
    """None when the request carries the admin key; else the error to answer with (404 when disabled)."""
    expected = env.get(ADMIN_KEY_ENV, "")
    if not expected:
        return ModelNotFound("Unknown path; this gateway serves the OpenAI API under /v1.", code="not_found")
    given = _presented(headers)
    if given is None:
        return AuthenticationFailed(
            "Missing admin key: send it as 'Authorization: Bearer <key>'.", code="missing_api_key"
        )
    # Digests first, so compare_digest sees equal lengths and the key's length does not leak either.
    same = hmac.compare_digest(
        hashlib.sha256(given.encode("utf-8", "surrogatepass")).digest(),
        hashlib.sha256(expected.encode("utf-8", "surrogatepass")).digest(),
    )
    return None if same else AuthenticationFailed("Invalid admin key.")


def _answer(status: int, payload: Any) -> JSONResponse:
    return json_response(status, payload, SECURITY_HEADERS)


def _refused(request: Request[Any, Any, Any]) -> JSONResponse | None:
    error = authorize(intake.scope_headers(request.scope["headers"]))
    if error is None:
        log.info("admin %s %s", request.method, request.url.path)
        return None
    if error.status == 404:
        error.message = f"Unknown path {request.url.path!r}; this gateway serves the OpenAI API under /v1."
    else:
        log.warning("admin %s %s refused: %s", request.method, request.url.path, error.message)
    return error_response(error, SECURITY_HEADERS)


def _holder(request: Request[Any, Any, Any]) -> RuntimeHolder:
    holder: RuntimeHolder = request.app.state.holder
    return holder


@get("/admin/keys")
async def list_keys(request: Request[Any, Any, Any]) -> ASGIApp:
    if (refused := _refused(request)) is not None:
        return refused
    keys = [
        {
            "name": key.name,
            "source": "key" if key.key is not None else "key_sha256" if key.key_sha256 is not None else "key_env",
            "models": key.models,
            "rpm": key.rpm,
            "tpm": key.tpm,
            "budget_usd": key.budget_usd,
        }
        for key in _holder(request).current.policy.auth.keys
    ]
    return _answer(200, {"object": "list", "data": keys})


@post("/admin/reload", status_code=200)
async def reload_policy(request: Request[Any, Any, Any]) -> ASGIApp:
    if (refused := _refused(request)) is not None:
        return refused
    holder = _holder(request)
    if holder.path is None:
        return error_response(AdminConflict("This gateway was started without a policy file."), SECURITY_HEADERS)
    if not await holder.reload():
        # Policy errors name paths and keys, never values taken from the environment (loader.py).
        message = f"The policy was not reloaded; the previous one keeps serving. {holder.last_error}"
        return error_response(AdminConflict(message), SECURITY_HEADERS)
    runtime = holder.current
    return _answer(
        200,
        {"reloaded": True, "reloads": holder.reloads, "source": runtime.loaded.source, "models": list(runtime.routes)},
    )


@get("/admin/circuits")
async def circuits(request: Request[Any, Any, Any]) -> ASGIApp:
    if (refused := _refused(request)) is not None:
        return refused
    data = {
        target: {
            "state": health.breaker.state,
            "in_flight": health.in_flight,
            "successes": health.successes,
            "failures": health.failures,
            "ewma_ttft_s": health.ewma_ttft_s,
            "ewma_total_s": health.ewma_total_s,
        }
        for target, health in _holder(request).current.router.health.items()
    }
    return _answer(200, {"object": "circuits", "data": data})


def _cache_plugins(runtime: Runtime) -> list[tuple[str | None, Plugin]]:
    """(model name or None for the global chain, plugin) for every cache plugin of the policy."""
    found: list[tuple[str | None, Plugin]] = []
    seen: set[int] = set()
    global_count = len(runtime.policy.plugins)
    for plugin in runtime.plugins[:global_count]:
        if isinstance(plugin.config, CacheConfig):
            found.append((None, plugin))
            seen.add(id(plugin))
    for name, chain in runtime.chains.items():
        for plugin in chain.plugins:
            if isinstance(plugin.config, CacheConfig) and id(plugin) not in seen:
                found.append((name, plugin))
                seen.add(id(plugin))
    return found


def _entries(plugin: Plugin) -> int | None:
    for holder in ("store", "index"):
        with_len = getattr(plugin, holder, None)
        if with_len is not None and hasattr(with_len, "__len__"):
            return len(with_len)
    return None


def _cache_state(model: str | None, plugin: Plugin) -> dict[str, Any]:
    config = plugin.config
    assert isinstance(config, CacheConfig)
    link = getattr(plugin, "link", None)
    return {
        "plugin": plugin.name,
        "model": model,
        "store": config.store,
        "namespace": config.namespace,
        "entries": _entries(plugin),  # in this process; None for a Redis store
        "redis": link.state() if link is not None and hasattr(link, "state") else None,
    }


@get("/admin/caches")
async def caches(request: Request[Any, Any, Any]) -> ASGIApp:
    if (refused := _refused(request)) is not None:
        return refused
    data = [_cache_state(model, plugin) for model, plugin in _cache_plugins(_holder(request).current)]
    return _answer(200, {"object": "list", "data": data})


async def _flush(plugin: Plugin) -> str | None:
    """Empty one cache; None when done, else why it could not be."""
    flush = getattr(plugin, "flush", None)
    store = getattr(plugin, "store", None)
    try:
        if callable(flush):
            await flush()
        elif store is not None and callable(getattr(store, "clear", None)):
            await store.clear()
        else:
            return f"{plugin.name} has no flush() hook"
    except Exception as exc:  # Redis down, most likely: report it, do not fail the other caches
        log.warning("admin: flushing %s failed: %s", plugin.name, exc)
        return f"{type(exc).__name__}: {exc}"
    return None


@post("/admin/caches/{namespace:str}/flush", status_code=200)
async def flush_namespace(request: Request[Any, Any, Any]) -> ASGIApp:
    if (refused := _refused(request)) is not None:
        return refused
    namespace = str(request.path_params["namespace"])
    matching = [(m, p) for m, p in _cache_plugins(_holder(request).current) if _namespace(p) == namespace]
    if not matching:
        error = ModelNotFound(f"No cache uses the namespace {namespace!r}.", param="namespace", code="not_found")
        return error_response(error, SECURITY_HEADERS)
    results = []
    for model, plugin in matching:
        problem = await _flush(plugin)
        results.append({"plugin": plugin.name, "model": model, "flushed": problem is None, "error": problem})
    failed = [f"{r['plugin']} ({r['model'] or 'global'}): {r['error']}" for r in results if not r["flushed"]]
    if failed:
        message = f"Not every cache in {namespace!r} was flushed: " + "; ".join(failed)
        return error_response(GatewayError(message, status=503, code="cache_flush_failed"), SECURITY_HEADERS)
    return _answer(200, {"namespace": namespace, "data": results})


def _namespace(plugin: Plugin) -> str:
    config = plugin.config
    return config.namespace if isinstance(config, CacheConfig) else ""


ROUTES = [list_keys, reload_policy, circuits, caches, flush_namespace]
