"""CORS for browser clients, read from the policy in force (`server.cors`), so a reload changes it.

Off by default: with no `allow_origins` every request passes through untouched and browsers apply the
same-origin rule. With origins listed, a preflight (`OPTIONS` + `Access-Control-Request-Method`) from an
allowed origin is answered here with 204, and answers to allowed origins get `Access-Control-Allow-*`
headers. A disallowed origin gets no CORS headers, so the browser refuses the answer. /admin is never
opened to browsers.
"""

from __future__ import annotations

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from gateway.policy import Cors
from gateway.runtime import RuntimeHolder


def _origin_allowed(cors: Cors, origin: str) -> str | None:
    """The Access-Control-Allow-Origin value for `origin`, or None."""
    if origin in cors.allow_origins:
        return origin
    if "*" in cors.allow_origins:
        return "*"
    return None


class CORSMiddleware:
    __slots__ = ("app", "holder")

    def __init__(self, app: ASGIApp, holder: RuntimeHolder) -> None:
        self.app = app
        self.holder = holder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        cors = self.holder.current.policy.server.cors
        origin = _header(scope, b"origin") if cors.allow_origins else ""
        allowed = _origin_allowed(cors, origin) if origin else None
        if allowed is None or str(scope.get("path", "")).startswith("/admin"):
            await self.app(scope, receive, send)
            return
        base = [(b"access-control-allow-origin", allowed.encode("latin-1")), (b"vary", b"origin")]
        if cors.allow_credentials:
            base.append((b"access-control-allow-credentials", b"true"))
        if scope.get("method") == "OPTIONS" and _header(scope, b"access-control-request-method"):
            headers = [
                *base,
                (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
                (b"access-control-allow-headers", ", ".join(cors.allow_headers).encode("latin-1")),
                (b"access-control-max-age", str(cors.max_age_s).encode()),
                (b"content-length", b"0"),
            ]
            await send({"type": "http.response.start", "status": 204, "headers": headers})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        if cors.expose_headers:
            base.append((b"access-control-expose-headers", ", ".join(cors.expose_headers).encode("latin-1")))

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *base]
            await send(message)

        await self.app(scope, receive, send_with_cors)


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return ""
