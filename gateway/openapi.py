"""The OpenAPI document at /openapi.json, built from the same models that validate requests."""

from __future__ import annotations

from functools import cache
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gateway import protocol

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_ERRORS = {
    str(code): {
        "description": text,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    for code, text in [
        (400, "Invalid request"),
        (401, "Missing or invalid API key"),
        (404, "Unknown model"),
        (413, "Body too large"),
        (429, "Rate limited"),
        (502, "Upstream failed"),
        (503, "Backend unavailable"),
        (504, "Upstream timed out"),
    ]
}
_OBJECT = {"type": "object", "additionalProperties": True}
_FEEDBACK = {  # gateway/requestlog/feedback.py
    "type": "object",
    "required": ["request_id", "score"],
    "additionalProperties": False,
    "properties": {
        "request_id": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$", "description": "x-request-id"},
        "score": {"type": "number", "description": "Any finite number; its scale is the operator's choice."},
        "comment": {"type": ["string", "null"], "maxLength": 4000},
    },
}
_TEXT = {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}


def _post(summary: str, model: str, streams: bool) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": _OBJECT}}
    if streams:
        content["text/event-stream"] = {"schema": {"type": "string"}}
    return {
        "post": {
            "summary": summary,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}},
            },
            "responses": {"200": {"description": "OK", "content": content}, **_ERRORS},
            "security": [{"bearer": []}],
        }
    }


def _get(summary: str, *, parameters: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": _OBJECT}}}},
    }
    if parameters:
        op["parameters"] = parameters
        op["responses"]["404"] = _ERRORS["404"]
    return {"get": op}


@cache
def document(version: str) -> dict[str, Any]:
    models: list[tuple[type[BaseModel], Literal["validation"]]] = [
        (m, "validation") for m in protocol.REQUEST_MODELS.values()
    ]
    _, schemas = models_json_schema(models, ref_template="#/components/schemas/{model}")
    components = dict(schemas.get("$defs", {}))
    components["Error"] = _ERROR
    components["FeedbackRequest"] = _FEEDBACK
    model_param = [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "LLM gateway", "version": version, "description": "OpenAI-compatible API."},
        "paths": {
            "/v1/chat/completions": _post("Create a chat completion", "ChatCompletionRequest", True),
            "/v1/completions": _post("Create a text completion", "CompletionRequest", True),
            "/v1/embeddings": _post("Create embeddings", "EmbeddingRequest", False),
            "/v1/feedback": _post("Rate an answered request (stored in the request log)", "FeedbackRequest", False),
            "/v1/models": _get("List the models this gateway exposes"),
            "/v1/models/{model}": _get("Describe one model", parameters=model_param),
            "/health": _get("Liveness"),
            "/ready": _get("Readiness: policy loaded, dependencies reachable"),
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}
                    },
                }
            },
        },
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
