"""`POST /v1/feedback {request_id, score, comment}`: feedback stored beside the request's log record.

The request's server span has ended by then, so the feedback becomes a short span of its own, `feedback`,
whose parent is that span (trace and span id from the log record), with one event `gen_ai.feedback`
carrying the score (and the comment only when `telemetry.capture_content` is on).

    401  auth is on and the key is missing or wrong      404  unknown request id (or another caller's)
    400  not JSON, not an object, bad or unknown fields   404  request_log_disabled: no log to link to
    503  the log's database is unreachable
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Mapping
from typing import Any

import msgspec
from litestar import asgi
from litestar.types import Receive, Scope, Send
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from gateway import intake
from gateway.errors import GatewayError, InvalidRequest, error_body
from gateway.responses import JSONResponse, error_response, json_response
from gateway.runtime import Runtime, RuntimeHolder

log_errors = logging.getLogger("gateway.requestlog")
MAX_COMMENT_CHARS = 4000
FLUSH_WAIT_S = 5.0  # a record still queued is written by then, unless the database is struggling
FIELDS = ("request_id", "score", "comment")


class FeedbackNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "request_not_found"


class LogUnavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "request_log_unavailable"


def parse(raw: bytes) -> tuple[str, float, str | None]:
    """(request_id, score, comment) from the body, or InvalidRequest naming the field."""
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        raise InvalidRequest("The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a JSON object {request_id, score, comment}.")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise InvalidRequest(f"Unknown field {unknown[0]!r}; expected request_id, score, comment.", param=unknown[0])
    request_id, score, comment = body.get("request_id"), body.get("score"), body.get("comment")
    if not isinstance(request_id, str) or not intake.REQUEST_ID.fullmatch(request_id):
        raise InvalidRequest("request_id must be the x-request-id of an answered request.", param="request_id")
    if isinstance(score, bool) or not isinstance(score, int | float) or not _finite(score):
        raise InvalidRequest("score must be a finite number.", param="score")
    if comment is not None and (not isinstance(comment, str) or len(comment) > MAX_COMMENT_CHARS or not _text(comment)):
        raise InvalidRequest(
            f"comment must be text of at most {MAX_COMMENT_CHARS} characters (no NUL characters).", param="comment"
        )
    return request_id, float(score), comment


def _finite(score: float) -> bool:
    try:
        return math.isfinite(float(score))
    except OverflowError:  # an integer too large for a float
        return False


def _text(comment: str) -> bool:
    """Storable in both databases: valid UTF-8 (no lone surrogates), no NUL (PostgreSQL refuses it)."""
    try:
        comment.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in comment


async def submit(runtime: Runtime, headers: Mapping[str, str], raw: bytes) -> dict[str, Any]:
    caller = intake.identify(runtime, headers)
    request_id, score, comment = parse(raw)
    log = runtime.request_log
    if not log.enabled:
        raise FeedbackNotFound(
            "Feedback needs the request log, and it is off (telemetry.request_log.enabled).",
            param="request_id",
            code="request_log_disabled",
        )
    store = await log.store()
    if store is None:
        raise LogUnavailable("The request log's database is unavailable; try again later.")
    try:
        found = await log.call(store.find, request_id)
        if found is None:  # maybe still queued: the client can be quicker than the background writer
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(log.flush(), FLUSH_WAIT_S)
            found = await log.call(store.find, request_id)
        if found is None or (caller.authenticated and found.get("caller") != caller.name):
            raise FeedbackNotFound(f"No request with id {request_id!r} in the request log.", param="request_id")
        feedback_id = await log.call(store.add_feedback, request_id, caller.name, score, comment)
    except GatewayError:
        raise
    except Exception as exc:
        log_errors.warning("feedback for %s not stored: %s", request_id, exc)
        raise LogUnavailable("The request log's database is unavailable; try again later.") from None
    _trace(runtime, found, score, comment)
    return {"object": "feedback", "id": f"fb-{feedback_id}", "request_id": request_id, "score": score}


def _trace(runtime: Runtime, found: Mapping[str, Any], score: float, comment: str | None) -> None:
    tracer = runtime.telemetry.tracer
    trace_id, span_id = found.get("trace_id"), found.get("span_id")
    if tracer is None or not trace_id or not span_id:
        return
    parent = SpanContext(
        int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED)
    )
    context = trace.set_span_in_context(NonRecordingSpan(parent))
    attributes: dict[str, Any] = {"gen_ai.feedback.score": score, "gateway.request_id": str(found["request_id"])}
    if comment and runtime.policy.telemetry.capture_content:
        attributes["gen_ai.feedback.comment"] = comment
    with tracer.start_as_current_span("feedback", context=context, kind=SpanKind.INTERNAL) as span:
        span.add_event("gen_ai.feedback", attributes)


@asgi("/v1/feedback", is_mount=False, copy_scope=False)
async def feedback_route(scope: Scope, receive: Receive, send: Send) -> None:
    headers = intake.scope_headers(scope["headers"])
    request_id = intake.request_id(headers)
    out = {"x-request-id": request_id}
    method = str(scope.get("method", "GET"))
    response: JSONResponse
    if method != "POST":
        message = f"Method {method} is not allowed on /v1/feedback."
        body = error_body(message, "invalid_request_error", None, "method_not_allowed")
        response = JSONResponse(405, msgspec.json.encode(body), {**out, "allow": "POST"})
    else:
        holder: RuntimeHolder = scope["app"].state.holder
        runtime = holder.current
        runtime.enter()  # a reload waits for this before closing the request log
        try:
            raw = await intake.read_body(receive, headers, runtime.policy.limits)
            response = json_response(200, await submit(runtime, headers, raw), out)
        except GatewayError as exc:
            response = error_response(exc, out)
        finally:
            runtime.leave()
    await response(scope, receive, send)
