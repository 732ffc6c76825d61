"""The vector index: one exact inner-product faiss index per scope, LRU-bounded across scopes.

A scope is everything that must match exactly before two questions may share an answer (model,
caller, system prompt, earlier turns, tools, parameters), so a search never even sees entries from
another tenant or conversation. Vectors are L2-normalised, so inner product is cosine similarity.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

import faiss
import numpy as np

from gateway.embeddings import Vector


@dataclass(slots=True)
class Entry:
    id: int
    scope: str
    text: str  # the last user turn the answer was given to
    expires: float  # epoch seconds (shared across replicas)
    answer: bytes | None = None  # kept here by the memory store; in Redis by the shared one

    @property
    def size(self) -> int:
        return len(self.text) + (len(self.answer) if self.answer else 0)


class SemanticIndex:
    def __init__(self, dimension: int, max_entries: int, max_bytes: int) -> None:
        self.dimension = dimension
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._scopes: dict[str, faiss.IndexIDMap2] = {}
        self._entries: OrderedDict[int, Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, entry_id: int) -> bool:
        return entry_id in self._entries

    def add(self, entry: Entry, vector: Vector) -> None:
        if entry.id in self._entries or entry.expires <= time.time():
            return
        index = self._scopes.get(entry.scope)
        if index is None:
            index = self._scopes[entry.scope] = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dimension))
        index.add_with_ids(vector.reshape(1, -1), np.array([entry.id], dtype=np.int64))
        self._entries[entry.id] = entry
        self.bytes += entry.size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            self.remove(next(iter(self._entries)))

    def remove(self, entry_id: int) -> None:
        entry = self._entries.pop(entry_id, None)
        if entry is None:
            return
        self.bytes -= entry.size
        index = self._scopes[entry.scope]
        index.remove_ids(np.array([entry_id], dtype=np.int64))  # type: ignore[arg-type]  # the stubs lag faiss
        if index.ntotal == 0:
            del self._scopes[entry.scope]

    def search(self, scope: str, vector: Vector, k: int, threshold: float) -> list[tuple[Entry, float]]:
        """Live entries of `scope` with similarity >= threshold, most similar first."""
        index = self._scopes.get(scope)
        if index is None:
            return []
        scores, ids = index.search(vector.reshape(1, -1), min(k, index.ntotal))
        now = time.time()
        found: list[tuple[Entry, float]] = []
        for score, entry_id in zip(scores[0], ids[0], strict=True):
            entry = self._entries.get(int(entry_id))
            if entry is None or score < threshold:
                continue
            if entry.expires <= now:
                self.remove(entry.id)
                continue
            self._entries.move_to_end(entry.id)
            found.append((entry, float(score)))
        return found
