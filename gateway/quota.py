"""What a virtual key may do: which models (403 otherwise), and how much per minute and in total.

Limits count what goes upstream: they are reserved after the plugins (a cache hit or a block costs
nothing) with an estimate from tiktoken, and settled with the real usage once the answer is done,
plain or streamed. The counters live in memory or in Redis (`limits.store`), where one atomic
script per call keeps them exact across replicas.
"""

from __future__ import annotations

import logging
import math

from gateway import tokens
from gateway.errors import GatewayError, PermissionDenied, RateLimited
from gateway.limits import KeyLimits, LimitExceeded, LimitStoreUnavailable, Price, Reservation, estimate_tokens
from gateway.plugin import Caller, RequestContext
from gateway.policy import ModelRoute
from gateway.router import Attempt
from gateway.runtime import Runtime

log = logging.getLogger("gateway")


class LimitsUnavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "limits_unavailable"


def check_model_allowed(caller: Caller, route: ModelRoute) -> None:
    key = caller.key
    if key is not None and key.models is not None and route.name not in key.models:
        raise PermissionDenied(f"The API key {key.name!r} may not use the model {route.name!r}.", param="model")


async def reserve(runtime: Runtime, ctx: RequestContext, headers: dict[str, str]) -> None:
    key = ctx.caller.key
    if key is None or (key.rpm is None and key.tpm is None and key.budget_usd is None):
        return
    settings = runtime.policy.limits
    prompt = await tokens.count_prompt(ctx.endpoint, ctx.body)
    estimate = estimate_tokens(prompt, ctx.body, settings.default_completion_tokens)
    try:
        reservation = await runtime.limiter.reserve(key.name, KeyLimits(key.rpm, key.tpm, key.budget_usd), estimate)
    except LimitExceeded as exc:
        extra = dict(exc.headers)
        if exc.retry_after_s > 0:
            extra["retry-after"] = str(max(1, math.ceil(exc.retry_after_s)))
        error = RateLimited(exc.message, code=exc.code, headers=extra)
        if exc.kind == "budget":
            error.type = "insufficient_quota"  # as OpenAI types it
        raise error from None
    except LimitStoreUnavailable as exc:
        if settings.fail_open:
            log.warning("request %s: limit store unavailable, serving without limits: %s", ctx.request_id, exc)
            return
        raise LimitsUnavailable("Rate limits cannot be checked right now; try again shortly.") from None
    ctx.put(reservation)
    headers.update(reservation.headers)


def cost(ctx: RequestContext) -> float | None:
    """USD for this request's usage, priced by the model that answered (a fallback may differ)."""
    attempt = ctx.get(Attempt)
    route = attempt.route if attempt is not None else ctx.route
    if route.pricing is None or not ctx.usage or ctx.target is None:
        return None
    price = Price(route.pricing.input_per_mtok, route.pricing.output_per_mtok)
    return price.cost(int(ctx.usage.get("prompt_tokens") or 0), int(ctx.usage.get("completion_tokens") or 0))


async def settle(runtime: Runtime, ctx: RequestContext) -> None:
    reservation = ctx.get(Reservation)
    if reservation is None:
        return
    usage = ctx.usage or {} if ctx.target is not None else {}
    actual = int(usage.get("prompt_tokens") or 0) + int(usage.get("completion_tokens") or 0)
    try:
        await runtime.limiter.settle(reservation, actual, cost(ctx) or 0.0)
    except LimitStoreUnavailable as exc:
        log.warning("request %s: could not settle usage with the limit store: %s", ctx.request_id, exc)
