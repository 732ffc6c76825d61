"""The policy: what an operator writes in YAML, validated once at load and frozen.

Top-level keys: backends, models, plugins, auth, limits, telemetry. Every model rejects unknown
keys, so a typo is an error with its path and a "did you mean", never a silently ignored setting.
Strings may use ${VAR} and ${VAR:-default} (interpolated by `gateway.loader` before validation).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator


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
    headers: dict[str, str] = Field(default_factory=dict, description="Extra headers sent on every call.")

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: Any) -> Any:
        return None if value == "" else value


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


class ModelRoute(StrictModel):
    name: str = Field(min_length=1, description="The model name clients send.")
    targets: list[Target] = Field(min_length=1)
    plugins: list[PluginEntry] = Field(default_factory=list, description="Per-model chain, run after the global one.")
    context_window: int | None = Field(
        None, ge=1, description="Tokens the model accepts; longer prompts get a 400 before forwarding."
    )
    owned_by: str = Field("gateway", description="Shown in GET /v1/models.")


class ApiKey(StrictModel):
    name: str = Field(min_length=1, description="Identity of the caller in logs, metrics and cache keys.")
    key: SecretStr = Field(description="The bearer token clients send; use ${ENV_VAR}.")

    @field_validator("key")
    @classmethod
    def _not_empty(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value():
            raise ValueError("an API key must not be empty")
        return value


class Auth(StrictModel):
    keys: list[ApiKey] = Field(default_factory=list, description="Accepted client keys. Empty: the gateway is open.")


class Limits(StrictModel):
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Larger request bodies get a 413.")
    max_messages: int = Field(4096, ge=1, description="Most messages one chat request may carry.")
    body_read_timeout_s: float = Field(30.0, gt=0, description="Slow clients must send their body in time.")


class Telemetry(StrictModel):
    service_name: str = "llm-gateway"
    access_log: bool = Field(True, description="One JSON log line per request (never prompt text).")
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class Policy(StrictModel):
    backends: list[Backend] = Field(default_factory=list)
    models: list[ModelRoute] = Field(default_factory=list)
    plugins: list[PluginEntry] = Field(default_factory=list, description="Global chain, run first.")
    auth: Auth = Auth()
    limits: Limits = Limits()
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
        return self

    def backend(self, name: str) -> OpenAIBackend | VLLMBackend | AnthropicBackend:
        return next(b for b in self.backends if b.name == name)


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
