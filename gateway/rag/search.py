"""Hybrid search over one index version: dense (faiss), keyword (BM25, bm25s), fused with RRF.

Everything here is synchronous and CPU-bound; the plugin calls `Searcher.search` on a worker thread.

    tokens(text)                      lower-cased words, English stop words dropped, lightly stemmed
    rrf(rankings, k)                  Reciprocal Rank Fusion: sum of 1 / (k + rank) over the rankings
    Searcher.select(allowed, filters) which chunks a request may see (cached per combination)
    Searcher.search(query, vector, ...)  the top chunks, each with its fused score and both ranks
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import faiss
import numpy as np
import numpy.typing as npt

from gateway.rag.model import Chunk, Manifest

Mode = Literal["hybrid", "dense", "bm25"]
Filters = tuple[tuple[str, tuple[str, ...]], ...]  # (field, accepted values), all must match
_WORD = re.compile(r"\w\w+")
_STOP = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "for",
        "if",
        "in",
        "into",
        "is",
        "it",
        "no",
        "not",
        "of",
        "on",
        "or",
        "such",
        "that",
        "the",
        "their",
        "then",
        "there",
        "these",
        "they",
        "this",
        "to",
        "was",
        "will",
        "with",
        "what",
        "which",
        "who",
        "whom",
        "how",
        "when",
        "where",
        "why",
        "do",
        "does",
        "did",
        "can",
        "could",
        "should",
        "would",
        "i",
        "we",
        "you",
        "our",
        "my",
        "your",
        "me",
        "us",
        "am",
        "has",
        "have",
        "had",
        "been",
        "being",
        "from",
        "about",
    ]
)
_SUFFIXES = ("ies", "ing", "ed", "s")


def stem(word: str) -> str:
    """A light English stemmer (plurals, -ing, -ed): enough to match "days" with "day" for BM25."""
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            return word[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return word


def tokens(text: str) -> list[str]:
    return [stem(w) for w in _WORD.findall(text.lower()) if w not in _STOP]


def rrf(rankings: Sequence[Sequence[int]], k: int = 60) -> list[tuple[int, float]]:
    """Fuse ranked lists of ids: score(d) = sum over lists of 1 / (k + rank of d), ranks from 1."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda pair: (-pair[1], pair[0]))


@dataclass(frozen=True, slots=True)
class Hit:
    chunk: Chunk
    score: float  # the fused RRF score (or the single retriever's score, or the reranker's)
    dense: float | None  # cosine similarity, when the dense search found it
    bm25: float | None  # BM25 score, when the keyword search found it


@dataclass(frozen=True, slots=True)
class Selection:
    """A subset of chunks: a boolean mask and the faiss selector over it (the bitmap kept alive)."""

    mask: npt.NDArray[np.bool_]
    selector: Any
    bits: npt.NDArray[np.uint8]

    @property
    def empty(self) -> bool:
        return not bool(self.mask.any())


class Searcher:
    def __init__(self, manifest: Manifest, chunks: Sequence[Chunk], dense: Any, keyword: Any) -> None:
        self.manifest = manifest
        self.chunks = list(chunks)
        self.dense_index = dense
        self.keyword_index = keyword  # bm25s.BM25, or None for an empty index
        self._selections: dict[tuple[frozenset[str] | None, Filters], Selection | None] = {}
        self._lock = threading.Lock()
        self._rows = {chunk.id: row for row, chunk in enumerate(self.chunks)}

    @classmethod
    def build(cls, manifest: Manifest, chunks: Sequence[Chunk], vectors: npt.NDArray[np.float32]) -> Searcher:
        return cls(manifest, chunks, dense_index(vectors, manifest.dimension), keyword_index(chunks))

    def __len__(self) -> int:
        return len(self.chunks)

    def select(self, allowed: frozenset[str] | None, filters: Filters = ()) -> Selection | None:
        """The chunks in `allowed` collections (None: all) whose metadata match `filters`; None: every chunk."""
        key = (allowed, filters)
        if key not in self._selections:
            with self._lock:
                self._selections[key] = self._selection(allowed, filters)
        return self._selections[key]

    def _selection(self, allowed: frozenset[str] | None, filters: Filters) -> Selection | None:
        if allowed is None and not filters:
            return None
        mask = np.fromiter(
            (
                (allowed is None or c.collection in allowed) and all(c.field(f) in values for f, values in filters)
                for c in self.chunks
            ),
            dtype=np.bool_,
            count=len(self.chunks),
        )
        bits = np.packbits(mask, bitorder="little")
        return Selection(mask, faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits)), bits)

    def dense(self, vector: npt.NDArray[np.float32], k: int, selection: Selection | None) -> list[tuple[int, float]]:
        if not self.chunks or k <= 0:
            return []
        params = None
        if selection is not None:
            params = faiss.SearchParameters()
            params.sel = selection.selector
        scores, ids = self.dense_index.search(vector.reshape(1, -1), min(k, len(self.chunks)), params=params)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]

    def similarity(self, vector: npt.NDArray[np.float32], chunk: Chunk) -> float:
        """Cosine between a query vector and a chunk of this version."""
        return float(np.dot(self.vector(chunk), vector.reshape(-1)))

    def vector(self, chunk: Chunk) -> npt.NDArray[np.float32]:
        """A chunk's stored embedding."""
        return np.asarray(self.dense_index.reconstruct(self._rows[chunk.id]), dtype=np.float32)

    def keyword(self, query: str, k: int, selection: Selection | None) -> list[tuple[int, float]]:
        if self.keyword_index is None or k <= 0:
            return []
        vocab: Mapping[str, int] = self.keyword_index.vocab_dict
        ids = [vocab[t] for t in tokens(query) if t in vocab]
        if not ids:
            return []
        scores = self.keyword_index.get_scores_from_ids(ids)
        if selection is not None:
            scores = np.where(selection.mask, scores, 0.0)
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        ranked = sorted(((int(i), float(scores[i])) for i in top if scores[i] > 0), key=lambda p: (-p[1], p[0]))
        return ranked

    def search(
        self,
        query: str,
        vector: npt.NDArray[np.float32] | None,
        *,
        top_k: int,
        mode: Mode = "hybrid",
        candidates: int = 20,
        rrf_k: int = 60,
        selection: Selection | None = None,
    ) -> list[Hit]:
        if selection is not None and selection.empty:
            return []
        depth = max(candidates, top_k)
        dense = self.dense(vector, depth, selection) if mode != "bm25" and vector is not None else []
        keyword = self.keyword(query, depth, selection) if mode != "dense" else []
        dense_of, bm25_of = dict(dense), dict(keyword)
        if mode == "dense":
            ranked = dense
        elif mode == "bm25":
            ranked = keyword
        else:
            ranked = rrf([[i for i, _ in dense], [i for i, _ in keyword]], rrf_k)
        return [Hit(self.chunks[i], score, dense_of.get(i), bm25_of.get(i)) for i, score in ranked[:top_k]]


def dense_index(vectors: npt.NDArray[np.float32], dimension: int) -> Any:
    """An exact inner-product index (vectors are normalised: cosine). A few thousand chunks take < 1 ms."""
    index = faiss.IndexFlatIP(dimension)
    if len(vectors):
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def keyword_index(chunks: Sequence[Chunk]) -> Any:
    if not chunks:
        return None
    import bm25s  # type: ignore[import-untyped]

    index = bm25s.BM25()
    index.index([tokens(c.indexed_text) or ["\u2205"] for c in chunks], show_progress=False)
    return index
