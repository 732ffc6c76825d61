"""The policy: what an operator writes in YAML, validated once at load and frozen.

Top-level keys: backends, models, plugins, auth, limits, server, telemetry. Every model rejects unknown
keys, so a typo is an error with its path and a "did you mean", never a silently ignored setting.
Strings may use ${VAR} and ${VAR:-default} (interpolated by `gateway.loader` before validation).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from gateway.requestlog.config import RequestLogConfig
from gateway.vllm_launch import VLLMLaunch

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token
# Headers the upstream client writes itself, for framing and the connection: one given here would be sent
# twice or contradict the body's framing (a request smuggling shape).
_OWN_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection", "upgrade", "te"}
    | {"trailer", "expect", "accept-encoding"}
)


def _breaks_a_header(text: str) -> bool:
    """A line break or NUL: the value would end its header line early (header injection)."""
    return "\r" in text or "\n" in text or "\0" in text


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(StrictModel):
    connect_s: float = Field(5.0, gt=0, description="Seconds to open a TCP/TLS connection to the backend.")
    first_byte_s: float = Field(
        60.0, gt=0, description="Streams: seconds from sending the request until the response headers arrive."
    )
    idle_s: float = Field(
        60.0, gt=0, description="Streams: longest silence between two chunks. Whole answers: time to read the body."
    )
    total_s: float = Field(600.0, gt=0, description="Hard limit on the whole upstream call, stream included.")


class _BackendBase(StrictModel):
    name: str = Field(min_length=1, description="Name that models[].targets[].backend refers to.")
    api_key: SecretStr | None = Field(
        None, description="Key sent upstream; use ${ENV_VAR}. The client's own key is never forwarded."
    )
    timeouts: Timeouts = Timeouts()
    max_connections: int = Field(256, ge=1, description="Connection pool size for this backend.")
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Extra headers sent on every call. Names are HTTP tokens (kept lower-cased); values hold no "
        "line break; framing and connection headers (host, content-length, transfer-encoding, connection, ...) "
        "are the gateway's own.",
    )

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()  # a key read from a file ($(cat key)) often ends in a newline
        return None if value == "" else value

    @field_validator("api_key")
    @classmethod
    def _key_fits_a_header(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and _breaks_a_header(value.get_secret_value()):
            raise ValueError("the key holds a line break or NUL and cannot be sent in a header")  # never the key
        return value

    @field_validator("headers")
    @classmethod
    def _sendable_headers(cls, value: dict[str, str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for name, text in value.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)")
            if _breaks_a_header(text):
                raise ValueError(f"header {name!r}: the value holds a line break or NUL and cannot be sent")
            lower = name.lower()
            if lower in _OWN_HEADERS:
                raise ValueError(f"header {name!r} is set by the gateway itself (framing and connection)")
            if lower in found:
                raise ValueError(f"header {name!r} is given twice (header names ignore case)")
            found[lower] = text
        return found


class OpenAIBackend(_BackendBase):
    """Any OpenAI-compatible server: OpenAI itself, vLLM, llama.cpp, Ollama's /v1, ..."""

    type: Literal["openai"]
    base_url: str = Field(description="URL up to and including /v1, e.g. http://127.0.0.1:8000/v1.")


class VLLMBackend(_BackendBase):
    """A vLLM server: OpenAI-compatible, plus Prometheus metrics the router may scrape."""

    type: Literal["vllm"]
    base_url: str = Field(description="URL up to and including /v1, e.g. http://127.0.0.1:8000/v1.")
    metrics_url: str | None = Field(None, description="Prometheus endpoint; default: base_url root + /metrics.")
    speculative: bool = Field(False, description="True when the server runs with --speculative-config.")
    scrape_interval_s: float = Field(1.0, gt=0, description="How often /metrics is scraped (queue, KV cache).")
    launch: VLLMLaunch | None = Field(
        None, description="How to start this server: `gateway vllm command --backend NAME` (docs/deploy.md)."
    )

    @model_validator(mode="after")
    def _speculative_matches_launch(self) -> VLLMBackend:
        if self.launch is not None and (self.launch.speculative_config is not None) != self.speculative:
            raise ValueError(
                f"backend {self.name!r}: speculative: true and launch.speculative_config go together "
                "(give both or neither)"
            )
        return self


class AnthropicBackend(_BackendBase):
    """Anthropic's Messages API; chat requests, answers and streams are translated both ways."""

    type: Literal["anthropic"]
    base_url: str = "https://api.anthropic.com"
    anthropic_version: str = "2023-06-01"
    default_max_tokens: int = Field(4096, ge=1, description="max_tokens sent when the client gives none.")


Backend = Annotated[OpenAIBackend | VLLMBackend | AnthropicBackend, Field(discriminator="type")]


class PluginEntry(BaseModel):
    """`{use: NAME, ...options}`; the options are validated by the named plugin's own config model."""

    model_config = ConfigDict(extra="allow", frozen=True)
    use: str = Field(min_length=1, description="Plugin name: a built-in from plugins/ or an entry point.")

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Target(StrictModel):
    backend: str = Field(description="Name of a backend in backends.")
    model: str = Field(min_length=1, description="Model name sent to that backend.")
    weight: float = Field(1.0, ge=0, description="Relative share of traffic (weighted random).")


class Circuit(StrictModel):
    failures: int = Field(5, ge=1, description="Consecutive failures that open a target's circuit.")
    cooldown_s: float = Field(30.0, gt=0, description="How long an open circuit skips the target before a probe.")


class SpeculativeLimits(StrictModel):
    """When a speculative-decoding target counts as lightly loaded (from its scraped metrics)."""

    max_running: float = Field(4, ge=0, description="Most requests running on it.")
    max_waiting: float = Field(0, ge=0, description="Most requests queued on it.")
    max_kv_cache: float = Field(0.8, ge=0, le=1, description="Highest KV-cache use (0..1).")


class Pricing(StrictModel):
    input_per_mtok: float = Field(ge=0, description="USD per 1M prompt tokens.")
    output_per_mtok: float = Field(ge=0, description="USD per 1M completion tokens.")


RetryOn = Literal["5xx", "429", "timeout", "connection"]
Strategy = Literal["weighted", "least_busy", "latency", "speculative_aware"]


class ModelRoute(StrictModel):
    name: str = Field(min_length=1, description="The model name clients send.")
    targets: list[Target] = Field(min_length=1)
    strategy: Strategy = Field("weighted", description="How a target is chosen among `targets`.")
    fallbacks: list[str] = Field(
        default_factory=list, description="Other models tried in order when every attempt here failed."
    )
    retries: int = Field(
        0, ge=0, le=10, description="Further attempts on this model's targets after a retryable failure."
    )
    retry_on: tuple[RetryOn, ...] = Field(
        ("5xx", "429", "timeout", "connection"), description="Failures that move on to a retry or a fallback."
    )
    timeout_s: float | None = Field(None, gt=0, description="Deadline for the whole request, retries included.")
    circuit: Circuit = Circuit()
    speculative: SpeculativeLimits = SpeculativeLimits()
    pricing: Pricing | None = Field(None, description="Price per 1M tokens, for budgets and cost in logs.")
    plugins: list[PluginEntry] = Field(default_factory=list, description="Per-model chain, run after the global one.")
    context_window: int | None = Field(
        None, ge=1, description="Tokens the model accepts; longer prompts get a 400 before forwarding."
    )
    owned_by: str = Field("gateway", description="Shown in GET /v1/models.")


class ApiKey(StrictModel):
    """A virtual key: exactly one of key, key_sha256 or key_env says what clients send."""

    name: str = Field(min_length=1, description="Identity of the caller in logs, metrics, limits and cache keys.")
    key: SecretStr | None = Field(None, description="The bearer token clients send; use ${ENV_VAR}.")
    key_sha256: str | None = Field(
        None, pattern=r"^[0-9a-fA-F]{64}$", description="sha256 hex of the token, so the policy holds no secret."
    )
    key_env: str | None = Field(None, description="Name of an environment variable holding the token.")
    models: list[str] | None = Field(None, description="Models this key may use (default: all); others get 403.")
    rpm: int | None = Field(None, ge=1, description="Requests per minute sent upstream.")
    tpm: int | None = Field(None, ge=1, description="Tokens per minute (prompt + completion) sent upstream.")
    budget_usd: float | None = Field(None, ge=0, description="Lifetime spend in USD, priced by models[].pricing.")

    @field_validator("key")
    @classmethod
    def _not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            raise ValueError("an API key must not be empty")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ApiKey:
        given = [k for k in ("key", "key_sha256", "key_env") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"key {self.name!r}: give exactly one of key, key_sha256, key_env")
        if self.key_env is not None and not os.environ.get(self.key_env):
            raise ValueError(f"key {self.name!r}: environment variable {self.key_env} is not set")
        return self

    def digest(self) -> str:
        """sha256 hex of the token (what the gateway keeps and compares)."""
        if self.key_sha256 is not None:
            return self.key_sha256.lower()
        token = self.key.get_secret_value() if self.key is not None else os.environ[self.key_env or ""]
        return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class Auth(StrictModel):
    keys: list[ApiKey] = Field(default_factory=list, description="Accepted client keys. Empty: the gateway is open.")


class Limits(StrictModel):
    store: Literal["memory", "redis"] = Field(
        "memory", description="Where per-key rpm/tpm/budget counters live; redis: shared by every replica."
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Used when store is redis.")
    namespace: str = Field("llmgw", min_length=1, description="Prefix of the Redis keys.")
    redis_timeout_ms: int = Field(50, ge=1, description="A slower Redis call counts as a failure.")
    retry_after_s: float = Field(1.0, gt=0, description="After a Redis failure, wait this long before trying it.")
    fail_open: bool = Field(True, description="Counter store down: serve without limits (true) or answer 503.")
    default_completion_tokens: int = Field(
        256, ge=1, description="Completion tokens reserved when a request sets no max_tokens (settled after)."
    )
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Larger request bodies get a 413.")
    max_messages: int = Field(4096, ge=1, description="Most messages one chat request may carry.")
    body_read_timeout_s: float = Field(30.0, gt=0, description="Slow clients must send their body in time.")


class Cors(StrictModel):
    """Cross-origin access for browser clients; off until allow_origins names an origin (docs/policy.md#server)."""

    allow_origins: list[str] = Field(
        default_factory=list, description="Origins allowed to call the API, e.g. https://app.example.com; '*': any."
    )
    allow_headers: list[str] = Field(
        default_factory=lambda: ["authorization", "content-type", "x-request-id", "api-key", "x-api-key"],
        description="Request headers a browser may send.",
    )
    expose_headers: list[str] = Field(
        default_factory=lambda: ["x-request-id", "x-gateway-backend", "x-gateway-cache", "retry-after"],
        description="Response headers a browser script may read.",
    )
    allow_credentials: bool = Field(False, description="Let browsers send cookies; not allowed with '*'.")
    max_age_s: int = Field(600, ge=0, description="How long a browser may cache a preflight answer.")

    @model_validator(mode="after")
    def _no_wildcard_with_credentials(self) -> Cors:
        if self.allow_credentials and "*" in self.allow_origins:
            raise ValueError("allow_credentials cannot be used with allow_origins '*'")
        return self


class Server(StrictModel):
    cors: Cors = Cors()


class Telemetry(StrictModel):
    service_name: str = Field("llm-gateway", description="service.name of traces and metrics (OTEL_SERVICE_NAME).")
    access_log: bool = Field(True, description="One JSON log line per request (never prompt text).")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    otlp_endpoint: str | None = Field(
        None,
        description="OTLP base URL (like OTEL_EXPORTER_OTLP_ENDPOINT; /v1/traces and /v1/metrics are appended for "
        "http/protobuf). Unset: OTEL_EXPORTER_OTLP_ENDPOINT, else no export at all.",
    )
    otlp_protocol: Literal["http/protobuf", "grpc"] | None = Field(
        None, description="OTLP transport (OTEL_EXPORTER_OTLP_PROTOCOL; default http/protobuf)."
    )
    sample_ratio: float | None = Field(
        None, ge=0, le=1, description="Share of new traces recorded (OTEL_TRACES_SAMPLER_ARG; default 1.0)."
    )
    capture_content: bool = Field(
        False, description="Record prompts and completions on spans (after the pii plugin's redaction)."
    )
    otlp_metrics: bool = Field(
        True, description="Also export the GenAI metrics over OTLP (OTEL_METRICS_EXPORTER=none turns it off)."
    )
    metrics_interval_s: float = Field(30.0, gt=0, description="How often OTLP metrics are exported.")
    span_queue_size: int = Field(4096, ge=16, description="Spans waiting for export; beyond it spans are dropped.")
    export_process: bool = Field(
        True,
        description="Encode and send spans from a helper process, off the gateway's GIL (false: a thread in the "
        "gateway's process).",
    )
    overhead_header: bool = Field(False, description="Add x-gateway-overhead-ms (time outside the upstream call).")
    request_log: RequestLogConfig = Field(
        default_factory=RequestLogConfig, description="A record per request in SQLite or PostgreSQL."
    )


class Policy(StrictModel):
    backends: list[Backend] = Field(default_factory=list)
    models: list[ModelRoute] = Field(default_factory=list)
    plugins: list[PluginEntry] = Field(default_factory=list, description="Global chain, run first.")
    auth: Auth = Auth()
    limits: Limits = Limits()
    server: Server = Server()
    telemetry: Telemetry = Telemetry()

    @model_validator(mode="after")
    def _references(self) -> Policy:
        _unique("backends", [b.name for b in self.backends])
        _unique("models", [m.name for m in self.models])
        _unique("auth.keys", [k.name for k in self.auth.keys])
        names = [b.name for b in self.backends]
        for i, model in enumerate(self.models):
            for j, target in enumerate(model.targets):
                if target.backend not in names:
                    raise ValueError(
                        f"models[{i}].targets[{j}].backend: unknown backend {target.backend!r}"
                        f"{did_you_mean(target.backend, names)}"
                    )
            if sum(t.weight for t in model.targets) <= 0:
                raise ValueError(f"models[{i}].targets: at least one target needs a weight above 0")
            models = [m.name for m in self.models]
            for j, fallback in enumerate(model.fallbacks):
                if fallback not in models or fallback == model.name:
                    raise ValueError(
                        f"models[{i}].fallbacks[{j}]: {fallback!r} is not another model{did_you_mean(fallback, models)}"
                    )
        for i, key in enumerate(self.auth.keys):
            for j, allowed in enumerate(key.models or ()):
                if allowed not in [m.name for m in self.models]:
                    raise ValueError(f"auth.keys[{i}].models[{j}]: unknown model {allowed!r}")
        return self

    def backend(self, name: str) -> OpenAIBackend | VLLMBackend | AnthropicBackend:
        return self._backends_by_name[name]

    @functools.cached_property
    def _backends_by_name(self) -> dict[str, OpenAIBackend | VLLMBackend | AnthropicBackend]:
        return {b.name: b for b in self.backends}  # looked up per upstream call


def _unique(where: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{where}: the name {name!r} is used twice")
        seen.add(name)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    import difflib

    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
