"""LLM gateway: an OpenAI-compatible async reverse proxy with a plugin chain and YAML policies."""

from gateway.errors import GatewayError
from gateway.loader import LoadedPolicy, PolicyError, load_file, load_text
from gateway.plugin import (
    CONTINUE,
    Caller,
    Continue,
    Emit,
    Plugin,
    PluginConfig,
    Readiness,
    RequestContext,
    RequestDecision,
    Respond,
    StreamDecision,
)
from gateway.policy import Policy

__all__ = [
    "CONTINUE",
    "Caller",
    "Continue",
    "Emit",
    "GatewayError",
    "LoadedPolicy",
    "Plugin",
    "PluginConfig",
    "Policy",
    "PolicyError",
    "Readiness",
    "RequestContext",
    "RequestDecision",
    "Respond",
    "StreamDecision",
    "load_file",
    "load_text",
]
