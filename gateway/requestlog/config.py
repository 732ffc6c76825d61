"""`telemetry.request_log` in the policy (kept free of gateway imports: gateway.policy imports it)."""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator


class RequestLogConfig(BaseModel):
    """One record per request, written in the background to SQLite (default) or PostgreSQL."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(False, description="Write the request log.")
    path: str = Field(
        "gateway-requests.db", min_length=1, description="SQLite file (default store), relative to the working dir."
    )
    postgres_dsn: SecretStr | None = Field(
        None, description="PostgreSQL connection string (use ${ENV_VAR}); when set, PostgreSQL replaces SQLite."
    )
    dsn_env: str | None = Field(None, description="Name of an environment variable holding the PostgreSQL DSN.")
    table_prefix: str = Field(
        "gateway_",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="PostgreSQL table names: PREFIXrequests, PREFIXfeedback.",
    )
    retention_days: float | None = Field(
        30, gt=0, description="Records (and feedback) older than this are deleted; null keeps everything."
    )
    retention_interval_s: float = Field(3600, gt=0, description="How often old records are deleted.")
    capture_content: bool = Field(
        False, description="Also store prompt and answer text, as sent to / received from the upstream (redacted)."
    )
    queue_size: int = Field(10_000, ge=1, description="Records waiting to be written; beyond it, records are dropped.")
    batch_size: int = Field(500, ge=1, description="Most records written in one insert.")

    @field_validator("postgres_dsn", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value  # `${PG_DSN:-}` left empty: SQLite

    @model_validator(mode="after")
    def _one_dsn(self) -> RequestLogConfig:
        if self.postgres_dsn is not None and self.dsn_env is not None:
            raise ValueError("request_log: give postgres_dsn or dsn_env, not both")
        if self.dsn_env is not None and not os.environ.get(self.dsn_env):
            raise ValueError(f"request_log: environment variable {self.dsn_env} is not set")
        return self

    def dsn(self) -> str | None:
        """The PostgreSQL DSN, or None for SQLite."""
        if self.postgres_dsn is not None and self.postgres_dsn.get_secret_value():
            return self.postgres_dsn.get_secret_value()
        return os.environ.get(self.dsn_env) if self.dsn_env else None
