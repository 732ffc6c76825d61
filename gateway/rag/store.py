"""The index on disk: one folder per version, a CURRENT pointer, atomic switches.

    DIR/CURRENT                      the served version's id (replaced atomically)
    DIR/versions/v0003/manifest.json what the version holds (documents, hashes, model, digest)
    DIR/versions/v0003/chunks.json   chunk texts and metadata, in index order
    DIR/versions/v0003/dense.faiss   exact inner-product index over the normalised embeddings
    DIR/versions/v0003/bm25/         bm25s keyword index

A version folder is written under a temporary name and renamed into place before CURRENT points at
it, so a gateway watching CURRENT never sees half a version. Rolling back moves CURRENT only.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import msgspec
import numpy as np
import numpy.typing as npt

from gateway.rag.model import Chunk, Manifest
from gateway.rag.search import Searcher, dense_index, keyword_index

_VERSION = re.compile(r"^v(\d{4,})$")


class IndexStoreError(Exception):
    """An index folder that is missing, empty or damaged; the message says which and what to run."""


class IndexStore:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / "versions"

    def current_id(self) -> str | None:
        try:
            value = (self.root / "CURRENT").read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return value or None

    def set_current(self, version_id: str) -> None:
        if not (self.versions_dir / version_id / "manifest.json").is_file():
            raise IndexStoreError(f"{self.root}: no version {version_id!r} (see `gateway rag versions`)")
        temporary = self.root / f".CURRENT.{os.getpid()}"
        temporary.write_text(version_id + "\n", encoding="utf-8")
        os.replace(temporary, self.root / "CURRENT")

    def version_ids(self) -> list[str]:
        if not self.versions_dir.is_dir():
            return []
        ids = [p.name for p in self.versions_dir.iterdir() if _VERSION.match(p.name) and p.is_dir()]
        return sorted(ids, key=lambda v: int(v[1:]))

    def next_id(self) -> str:
        ids = self.version_ids()
        return f"v{(int(ids[-1][1:]) + 1 if ids else 1):04d}"

    def manifest(self, version_id: str) -> Manifest:
        path = self.versions_dir / version_id / "manifest.json"
        try:
            return msgspec.json.decode(path.read_bytes(), type=Manifest)
        except FileNotFoundError:
            raise IndexStoreError(f"{self.root}: no version {version_id!r} (see `gateway rag versions`)") from None
        except msgspec.DecodeError as exc:
            raise IndexStoreError(f"{path}: damaged manifest ({exc})") from exc

    def resolve(self, version_id: str | None = None) -> str:
        chosen = version_id or self.current_id()
        if chosen is None:
            raise IndexStoreError(f"{self.root}: no index yet; run `gateway rag ingest --index {self.root} PATH...`")
        return chosen

    def chunks(self, version_id: str) -> list[Chunk]:
        path = self.versions_dir / version_id / "chunks.json"
        return msgspec.json.decode(path.read_bytes(), type=list[Chunk])

    def vectors(self, version_id: str) -> npt.NDArray[np.float32]:
        index = faiss.read_index(str(self.versions_dir / version_id / "dense.faiss"))
        if index.ntotal == 0:
            return np.zeros((0, index.d), dtype=np.float32)
        return np.asarray(index.reconstruct_n(0, index.ntotal), dtype=np.float32)

    def load(self, version_id: str | None = None) -> Searcher:
        """The searcher for a version (default: CURRENT), read from its files."""
        chosen = self.resolve(version_id)
        manifest = self.manifest(chosen)
        folder = self.versions_dir / chosen
        try:
            chunks = self.chunks(chosen)
            dense = faiss.read_index(str(folder / "dense.faiss"))
            keyword = _load_bm25(folder / "bm25") if chunks else None
        except (OSError, RuntimeError, ValueError, msgspec.DecodeError) as exc:
            raise IndexStoreError(f"{folder}: damaged index files ({exc.__class__.__name__}: {exc})") from exc
        if dense.ntotal != len(chunks) or dense.d != manifest.dimension:
            raise IndexStoreError(f"{folder}: {dense.ntotal} vectors for {len(chunks)} chunks: the version is damaged")
        return Searcher(manifest, chunks, dense, keyword)

    def write(self, manifest: Manifest, chunks: list[Chunk], vectors: npt.NDArray[np.float32]) -> Path:
        """Write a new version folder and make it CURRENT."""
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        staging = self.versions_dir / f".{manifest.id}.{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        (staging / "chunks.json").write_bytes(msgspec.json.encode(chunks))
        faiss.write_index(dense_index(vectors, manifest.dimension), str(staging / "dense.faiss"))
        keyword = keyword_index(chunks)
        if keyword is not None:
            keyword.save(str(staging / "bm25"), show_progress=False)
        (staging / "manifest.json").write_bytes(msgspec.json.format(msgspec.json.encode(manifest)))
        final = self.versions_dir / manifest.id
        os.replace(staging, final)
        self.set_current(manifest.id)
        return final

    def prune(self, keep: int) -> list[str]:
        """Delete the oldest versions beyond `keep`, never the current one."""
        current = self.current_id()
        ids = self.version_ids()
        doomed = [v for v in ids[: max(0, len(ids) - keep)] if v != current]
        for version_id in doomed:
            shutil.rmtree(self.versions_dir / version_id, ignore_errors=True)
        return doomed

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One writer at a time (two ingests into one index would race for the next id)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _load_bm25(folder: Path) -> Any:
    import bm25s  # type: ignore[import-untyped]

    return bm25s.BM25.load(str(folder), show_progress=False)
