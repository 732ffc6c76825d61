"""Errors the gateway returns to clients, always in OpenAI's shape.

    GatewayError              500     -> {"error": {"message", "type", "param", "code"}}
    ├── InvalidRequest        400     bad JSON, bad UTF-8, schema violations, context too long;
    │                                 also an upstream 4xx the client caused (its status kept), 408 slow body
    ├── AuthenticationFailed  401
    ├── PermissionDenied      403     the key may not use this model
    ├── ModelNotFound         404
    ├── BodyTooLarge          413
    ├── RateLimited           429     upstream 429 (Retry-After kept); a key over its rpm/tpm/budget
    └── UpstreamError         502     upstream 5xx; upstream 401/403/404 (the policy is wrong, not the client)
        ├── UpstreamUnavailable   503  connection refused / DNS failure; upstream 503
        ├── UpstreamTimeout       504  connect, first byte, idle or total timeout
        └── BadUpstreamResponse   502  non-JSON, truncated, reset mid-answer, or otherwise broken

Internal detail (tracebacks, upstream bodies) goes to logs; the client gets a summary.
`retry_kind` says which `models[].retry_on` entry, if any, lets the router try elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec


class GatewayError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None
    retry_kind: str | None = None  # "5xx" | "429" | "timeout" | "connection"; None: not worth retrying

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        retry_kind: str | None = None,
    ) -> None:
        super().__init__(message)
        if retry_kind is not None:
            self.retry_kind = retry_kind
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"
    code = "model_not_allowed"


class ModelNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class BodyTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    retry_kind = "429"


class UpstreamError(GatewayError):
    status = 502
    type = "upstream_error"
    code = "upstream_error"
    retry_kind = "5xx"


class UpstreamUnavailable(UpstreamError):
    status = 503
    code = "backend_unavailable"
    retry_kind = "connection"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"
    retry_kind = "timeout"


class BadUpstreamResponse(UpstreamError):
    status = 502
    code = "bad_upstream_response"


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_json(message: str, type_: str, param: str | None = None, code: str | None = None) -> bytes:
    return msgspec.json.encode(error_body(message, type_, param, code))


def summarise_upstream_error(body: Any, limit: int = 300) -> str:
    """A short, human message from whatever an upstream sent as an error body."""
    message: Any = None
    if isinstance(body, Mapping):
        err = body.get("error")
        if isinstance(err, Mapping):
            message = err.get("message")
        elif isinstance(err, str):
            message = err
        message = message or body.get("message") or body.get("detail")
    elif isinstance(body, str | bytes):
        message = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = " ".join(str(message).split()) if message else "no error message"
    return text if len(text) <= limit else text[: limit - 1] + "…"
