"""What happens to a request before any plugin sees it: id, caller, body, JSON, schema."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from gateway import protocol
from gateway.errors import AuthenticationFailed, BodyTooLarge, InvalidRequest
from gateway.plugin import Caller
from gateway.policy import Limits
from gateway.runtime import Runtime

REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")  # a client x-request-id kept as given
MAX_MODEL_CHARS = 256
# Fields some SDKs and proxies use to pick where a request goes or what headers it carries. Backends
# come only from the policy, so a body that tries to choose one is refused, not silently forwarded.
ROUTING_FIELDS = frozenset(
    {"base_url", "api_base", "api_url", "api_host", "api_endpoint", "host", "url", "extra_headers", "headers"}
)


def request_id(headers: Mapping[str, str]) -> str:
    """The client's x-request-id when it is sane (so traces join up), else a fresh one."""
    given = headers.get("x-request-id")
    if given and REQUEST_ID.fullmatch(given):
        return given
    return os.urandom(16).hex()  # 128 random bits as 32 hex digits: uuid4().hex's source, a fifth of its cost


def bearer(headers: Mapping[str, str]) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("api-key") or headers.get("x-api-key")  # Azure- and Anthropic-style clients


def identify(runtime: Runtime, headers: Mapping[str, str]) -> Caller:
    token = bearer(headers)
    if not runtime.keys:
        if token is None:
            return Caller("anonymous", authenticated=False)
        # A stable identity for cache keys and logs that does not reveal the token.
        return Caller("token-" + hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()[:16], False)
    if token is None:
        raise AuthenticationFailed("Missing API key: send it as 'Authorization: Bearer <key>'.", code="missing_api_key")
    key = runtime.caller_for(token)
    if key is None:
        raise AuthenticationFailed("Invalid API key.")
    return Caller(key.name, authenticated=True, key=key)


async def read_body(receive: Any, headers: Mapping[str, str], limits: Limits) -> bytes:
    """An ASGI request's body (`receive`: its receive callable), within the size and time limits; ends early
    if the client disconnects. Reads the messages itself: an async generator in between cost a frame
    resumed per message."""
    limit = limits.max_body_bytes
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"The request body is {declared} bytes; the limit is {limit} bytes.")
    parts: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(limits.body_read_timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    break
                part = message.get("body", b"")
                if isinstance(part, bytes) and part:
                    size += len(part)
                    if size > limit:
                        raise BodyTooLarge(f"The request body exceeds the limit of {limit} bytes.")
                    parts.append(part)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        raise InvalidRequest(
            f"The request body did not arrive within {limits.body_read_timeout_s:g} seconds.",
            status=408,
            code="request_timeout",
        ) from None
    return b"".join(parts)


def parse(endpoint: str, raw: bytes, limits: Limits) -> dict[str, Any]:
    if not raw.strip():
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid UTF-8 (byte {exc.start}).") from None
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}.") from None
    except RecursionError:
        raise InvalidRequest("The request body is nested too deeply.") from None
    protocol.check(endpoint, body)
    if len(body["model"]) > MAX_MODEL_CHARS:  # it is echoed in errors and logs, and fuzzy-matched against names
        raise InvalidRequest(
            f"model: the name is {len(body['model'])} characters long; at most {MAX_MODEL_CHARS} are allowed.",
            param="model",
        )
    for field in sorted(ROUTING_FIELDS.intersection(body)):  # the first, alphabetically
        raise InvalidRequest(
            f"{field}: clients cannot choose the upstream or its headers; backends come from the gateway's policy.",
            param=field,
            code="unsupported_parameter",
        )
    if endpoint == "chat" and len(body["messages"]) > limits.max_messages:
        raise InvalidRequest(
            f"Too many messages: {len(body['messages'])}; the limit is {limits.max_messages}.",
            param="messages",
        )
    return body  # type: ignore[no-any-return]


def scope_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """An ASGI scope's headers as a dict with lower-case names (a repeated header: its last value)."""
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw}
