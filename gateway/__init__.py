"""LLM gateway: an OpenAI-compatible async reverse proxy with a plugin chain and YAML policies."""

import os

# Embeddings run on a worker thread while the event loop keeps serving. OpenMP's default busy-wait
# makes its threads spin against the loop (and other processes) for the CPU: one short embedding
# took ~500 ms instead of ~15 ms on a busy 2-core machine. It must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
