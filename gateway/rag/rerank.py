"""Optional re-scoring of fused candidates with a local sentence-transformers cross-encoder."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from gateway.rag.search import Hit


class RerankerError(Exception):
    pass


class Reranker:
    def __init__(self, model_path: str) -> None:
        if not Path(model_path).is_dir():
            raise RerankerError(f"rerank model folder {model_path!r} does not exist (models cannot be downloaded)")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import CrossEncoder

        try:
            self.model: Any = CrossEncoder(model_path, device="cpu")
        except Exception as exc:
            raise RerankerError(f"cannot load the cross-encoder at {model_path}: {exc}") from exc

    def scores(self, query: str, hits: Sequence[Hit]) -> list[float]:
        if not hits:
            return []
        pairs = [(query, hit.chunk.indexed_text) for hit in hits]
        return [float(s) for s in self.model.predict(pairs, show_progress_bar=False)]

    def rerank(self, query: str, hits: Sequence[Hit], top_k: int) -> list[Hit]:
        """The hits re-ordered by the cross-encoder's score (which becomes their score), best first."""
        scored = sorted(zip(self.scores(query, hits), range(len(hits)), strict=True), key=lambda p: (-p[0], p[1]))
        return [replace(hits[i], score=score) for score, i in scored[:top_k]]
