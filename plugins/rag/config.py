"""The rag plugin's options, validated at load."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from gateway.plugin import PluginConfig
from gateway.rag.inject import PASSAGE_FIELDS, PASSAGE_TEMPLATE, TEMPLATE_FIELDS, InjectAs, check_template
from gateway.rag.search import Mode


class RerankConfig(PluginConfig):
    model_path: str = Field(
        description="Folder of a sentence-transformers cross-encoder, on this machine (nothing is downloaded)."
    )
    candidates: int = Field(20, ge=1, le=200, description="Fused candidates the cross-encoder re-scores.")

    @field_validator("model_path")
    @classmethod
    def _exists(cls, value: str) -> str:
        if not Path(value).is_dir():
            raise ValueError(f"rerank model folder {value!r} does not exist (models cannot be downloaded here)")
        return value


class RagConfig(PluginConfig):
    store: Literal["file", "redis"] = Field("file", description="file: the index folder; redis: shared by replicas.")
    index: str | None = Field(None, description="Index folder written by `gateway rag ingest` (store: file).")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Used when store is redis.")
    redis_index: str | None = Field(None, description="Name the index was published under (store: redis).")
    namespace: str = Field("llmgw", min_length=1, description="Prefix of the Redis keys.")
    redis_timeout_s: float = Field(5.0, gt=0, description="Longest Redis call (a version is a few MB).")
    reload_interval_s: float = Field(5.0, gt=0, description="How often the served version is checked for a new one.")
    top_k: int = Field(3, ge=1, le=50, description="Passages injected (at most).")
    mode: Mode = Field("hybrid", description="hybrid (dense + BM25 fused by RRF), dense, or bm25.")
    candidates: int = Field(20, ge=1, le=500, description="Results taken from each retriever before fusion.")
    rrf_k: int = Field(60, ge=1, description="Reciprocal Rank Fusion constant: score = sum of 1 / (rrf_k + rank).")
    rerank: RerankConfig | None = Field(None, description="Re-score the fused candidates with a cross-encoder.")
    collections: tuple[str, ...] | None = Field(None, description="Collections this model searches (default: all).")
    access: dict[str, tuple[str, ...]] = Field(
        default_factory=dict, description="Per key name (auth.keys[].name): the collections that key may see."
    )
    default_access: tuple[str, ...] | None = Field(
        None, description="Collections for callers not listed in access (default: all; [] for none)."
    )
    filters: dict[str, tuple[str, ...]] = Field(
        default_factory=dict,
        description="Metadata a passage must have: field -> accepted values (kind, source, title, or --meta keys).",
    )
    query_window: int = Field(0, ge=0, le=20, description="Earlier user/assistant turns added to the query.")
    inject_as: InjectAs = Field("system", description="system: a system message; user_prefix: wrap the last turn.")
    template: str | None = Field(
        None, description="Injected text with {context}, {question}, {sources}; default depends on inject_as."
    )
    passage_template: str = Field(
        PASSAGE_TEMPLATE, description="One passage: {n} {id} {source} {title} {section} {heading} {text} {page}."
    )
    max_context_tokens: int = Field(1500, ge=16, description="Token budget of the passages (tiktoken cl100k).")
    min_similarity: float | None = Field(
        None, ge=-1, le=1, description="Drop passages whose query cosine is below this (off: keep the top_k)."
    )
    model_path: str | None = Field(
        None, description="Embedding model folder; must be the one the index was built with (default: MiniLM)."
    )
    max_batch: int = Field(32, ge=1, description="Most queries embedded in one call under load.")
    on_error: Literal["continue", "fail"] = Field(
        "continue", description="Retrieval failed: send the request without passages, or answer 503."
    )

    @field_validator("filters", mode="before")
    @classmethod
    def _listify(cls, value: object) -> object:
        if isinstance(value, dict):
            return {k: (v,) if isinstance(v, str) else v for k, v in value.items()}
        return value

    @field_validator("template")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        return None if value is None else check_template(value, TEMPLATE_FIELDS)

    @field_validator("passage_template")
    @classmethod
    def _passage(cls, value: str) -> str:
        return check_template(value, PASSAGE_FIELDS)

    @model_validator(mode="after")
    def _where(self) -> RagConfig:
        if self.store == "file" and not self.index:
            raise ValueError("store: file needs `index` (the folder `gateway rag ingest --index` wrote)")
        if self.store == "redis" and not self.redis_index:
            raise ValueError("store: redis needs `redis_index` (the name given to `gateway rag publish`)")
        return self

    @property
    def label(self) -> str:
        return self.redis_index if self.store == "redis" and self.redis_index else str(self.index)
