"""guardrails_ai's options, validated once at policy load (the validators themselves are checked when the
worker starts: it is the only place guardrails-ai is installed)."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.guarding import GuardConfig, Stage

OnFail = Literal["exception", "refrain", "filter", "reask", "fix", "fix_reask", "noop"]
DEFAULT_PYTHON = ".venv-guardrails/bin/python"


class ValidatorSpec(BaseModel):
    """One guardrails validator: a registered name, its constructor arguments and its on_fail action."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    use: str = Field(
        min_length=1,
        description="The name the validator is registered under (`@register_validator(name=...)`), e.g. "
        "gateway/competitor_check, gateway/deny_pattern, or one from a module listed in `modules`.",
    )
    args: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of the validator's constructor (JSON values)."
    )
    on_fail: OnFail = Field(
        "exception",
        description="guardrails' on_fail action, mapped onto the gateway's: exception, refrain, filter, reask -> "
        "block; fix, fix_reask -> redact (the validator's fix replaces the text); noop -> flag.",
    )
    stages: tuple[Stage, ...] = Field(("input", "output"), min_length=1, description="Texts this validator checks.")
    name: str | None = Field(None, description="Named in logs, verdicts and metrics (default: `use`).")

    @field_validator("args")
    @classmethod
    def _json_only(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"arguments must be JSON values: {exc}") from None
        return value

    @property
    def label(self) -> str:
        return self.name or self.use


class GuardrailsAiConfig(GuardConfig):
    validators: tuple[ValidatorSpec, ...] = Field(
        min_length=1, description="Validators run in this order on every checked text (a fix feeds the next)."
    )
    modules: tuple[str, ...] = Field(
        (),
        description="Python modules the worker imports before building the validators: their "
        "@register_validator classes become usable by name.",
    )
    paths: tuple[str, ...] = Field(
        (), description="Folders put first on the worker's sys.path (relative ones: to the gateway's working folder)."
    )
    python: str = Field(
        DEFAULT_PYTHON,
        description="The interpreter of the environment guardrails-ai is installed in (`make guardrails-venv`); "
        "relative to the gateway's working folder, else to the project root.",
    )
    runner: Literal["validator", "guard"] = Field(
        "validator",
        description="validator: call each Validator.validate directly, as guardrails' validator service does "
        "(microseconds); guard: run each validator through Guard.validate, guardrails' whole runner (about "
        "1-3 ms per validator and text on a 2-core CPU).",
    )
    timeout_s: float = Field(
        1.0, gt=0, le=60, description="Longest wait for the worker's verdict on one check; then on_error applies."
    )
    start_timeout_s: float = Field(
        90, gt=0, le=600, description="Longest wait for the worker to import guardrails and build the validators."
    )
    stream_chars: int = Field(
        256,
        ge=16,
        le=65536,
        description="Streamed text is checked a sentence at a time; a sentence longer than this is cut at a space.",
    )

    def stage_validators(self, stage: Stage) -> tuple[int, ...]:
        """Indices of the validators that check `stage`, in policy order."""
        return tuple(i for i, v in enumerate(self.validators) if stage in v.stages)
