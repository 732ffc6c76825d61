"""`gateway rag ingest`: read, chunk, embed and write a new index version, re-embedding only what changed.

A document is identified by its source (its path relative to the folder given, or its file name).
It is unchanged when its bytes hash, collection, metadata, the chunking settings and the embedding
model are the same as in the current version: its chunks and vectors are carried over. Documents
under a folder given again that are no longer there are removed; documents ingested from other
paths stay. A file that cannot be read is reported, keeps its previous chunks if it had any, and
the rest is still ingested.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from gateway.rag.chunking import chunk_document
from gateway.rag.documents import DocumentError, kind_of, read_document
from gateway.rag.model import DEFAULT_MODEL, Chunk, DocumentInfo, Manifest, chunk_id, digest
from gateway.rag.store import IndexStore

Encoder = Callable[[list[str]], npt.NDArray[np.float32]]
BATCH = 64
Item = TypeVar("Item")


@dataclass(slots=True)
class IngestReport:
    version: str | None  # the new version's id; None when nothing changed
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # one message per unreadable file or bad path
    chunks: int = 0
    embedded: int = 0

    def summary(self) -> str:
        return (
            f"+{len(self.added)} added, ~{len(self.changed)} changed, ={len(self.unchanged)} unchanged, "
            f"-{len(self.removed)} removed, {len(self.failed)} failed; {self.chunks} chunks ({self.embedded} embedded)"
        )


def discover(paths: Sequence[Path]) -> tuple[dict[str, Path], list[str], list[str]]:
    """(source -> file, folder prefixes given, errors) for the paths named on the command line."""
    found: dict[str, Path] = {}
    prefixes: list[str] = []
    errors: list[str] = []
    for given in paths:
        if given.is_dir():
            base = given.resolve()
            prefixes.append(base.name + "/")
            for path in sorted(base.rglob("*")):
                relative = path.relative_to(base)
                if path.is_file() and kind_of(path) and not any(p.startswith(".") for p in relative.parts):
                    found[f"{base.name}/{relative.as_posix()}"] = path
        elif given.is_file():
            if kind_of(given) is None:
                errors.append(f"{given}: unsupported file type {given.suffix or '(none)'}")
            else:
                found[given.name] = given
        else:
            errors.append(f"{given}: no such file or folder")
    return found, prefixes, errors


def ingest(
    store: IndexStore,
    paths: Sequence[Path],
    *,
    collection: str = "default",
    meta: Mapping[str, str] | None = None,
    chunk_size: int = 800,
    overlap: int = 120,
    model_path: str | None = None,
    keep: int = 10,
    progress: bool = True,
    encoder: Encoder | None = None,
) -> IngestReport:
    meta = dict(meta or {})
    model = model_path or DEFAULT_MODEL
    with store.locked():
        found, prefixes, errors = discover(paths)
        report = IngestReport(None, failed=errors)
        parent = store.current_id()
        old = store.manifest(parent) if parent else None
        reusable = old is not None and (old.model, old.chunk_size, old.overlap) == (model, chunk_size, overlap)
        old_chunks = store.chunks(parent) if old is not None and parent else []
        old_vectors = store.vectors(parent) if old is not None and parent else np.zeros((0, 0), np.float32)
        by_source: dict[str, list[int]] = {}
        for row, chunk in enumerate(old_chunks):
            by_source.setdefault(chunk.source, []).append(row)

        documents: dict[str, DocumentInfo] = dict(old.documents) if old else {}
        kept: dict[str, list[int]] = {s: rows for s, rows in by_source.items()}  # rows of the old version
        fresh: dict[str, list[Chunk]] = {}
        for source, path in _progress(found.items(), progress, "reading"):
            try:
                data = path.read_bytes()
            except OSError as exc:
                report.failed.append(f"{path}: {exc.strerror or exc}")
                continue
            digest_ = hashlib.sha256(data).hexdigest()
            before = documents.get(source)
            same = before is not None and (before.hash, before.collection, before.meta) == (digest_, collection, meta)
            if same and reusable:
                report.unchanged.append(source)
                continue
            read = _read(path, source, digest_, collection, meta, chunk_size, overlap)
            if isinstance(read, str):
                report.failed.append(read)
                continue
            (report.changed if before is not None else report.added).append(source)
            kept.pop(source, None)
            documents[source], fresh[source] = read
        for source in list(documents):
            gone = source not in found and any(source.startswith(prefix) for prefix in prefixes)
            if gone:
                report.removed.append(source)
                documents.pop(source)
                kept.pop(source, None)
        if not reusable and old is not None:  # another model or chunking: old vectors cannot be mixed in
            stale = [s for s in kept if s not in found]
            report.failed.extend(f"{s}: not re-ingested (model or chunking changed); ingest it again" for s in stale)
            for source in kept:
                documents.pop(source, None)
            kept = {}
        if not (report.added or report.changed or report.removed):
            report.chunks = len(old_chunks)
            return report

        encode = encoder or _model_encoder(model_path)
        new_chunks = [c for chunks in fresh.values() for c in chunks]
        new_vectors = _embed(encode, [c.indexed_text for c in new_chunks], progress)
        rows = [(c, new_vectors[i]) for i, c in enumerate(new_chunks)]
        rows += [(old_chunks[r], old_vectors[r]) for rs in kept.values() for r in rs]
        rows.sort(key=lambda pair: (pair[0].source, pair[0].position))
        chunks = [c for c, _ in rows]
        dimension = int(new_vectors.shape[1]) if len(new_vectors) else (old.dimension if old else _dimension(encode))
        vectors = np.stack([v for _, v in rows]).astype(np.float32) if rows else np.zeros((0, dimension), np.float32)
        report.chunks, report.embedded = len(chunks), len(new_chunks)
        manifest = Manifest(
            id=store.next_id(),
            created=time.time(),
            parent=parent,
            model=model,
            dimension=dimension,
            chunk_size=chunk_size,
            overlap=overlap,
            documents=documents,
            count=len(chunks),
            digest=digest(c.id for c in chunks),
            summary=report.summary(),
        )
        store.write(manifest, chunks, vectors)
        store.prune(keep)
        report.version = manifest.id
        return report


def _read(
    path: Path, source: str, hash_: str, collection: str, meta: dict[str, str], size: int, overlap: int
) -> tuple[DocumentInfo, list[Chunk]] | str:
    """A document's info and chunks, or the error message naming the file."""
    try:
        document = read_document(path)
        pieces = chunk_document(document, size, overlap)
    except (DocumentError, ValueError) as exc:
        return str(exc)
    info = DocumentInfo(hash_, collection, document.kind, document.title, len(pieces), meta)
    chunks = [
        Chunk(
            id=chunk_id(source, n, piece.text),
            text=piece.text,
            source=source,
            title=document.title,
            section=piece.heading,
            position=n,
            collection=collection,
            kind=document.kind,
            doc_hash=hash_,
            page=piece.page,
            meta=meta,
        )
        for n, piece in enumerate(pieces)
    ]
    return info, chunks


def _model_encoder(model_path: str | None) -> Encoder:
    from gateway.embeddings import load_model

    model = load_model(model_path)

    def encode(texts: list[str]) -> npt.NDArray[np.float32]:
        vectors = model.encode(texts, normalize_embeddings=True, show_progress_bar=False, convert_to_numpy=True)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    return encode


def _embed(encode: Encoder, texts: list[str], progress: bool) -> npt.NDArray[np.float32]:
    if not texts:
        return np.zeros((0, 0), np.float32)
    batches = [texts[i : i + BATCH] for i in range(0, len(texts), BATCH)]
    parts = [encode(batch) for batch in _progress(batches, progress, "embedding", unit="batch")]
    return np.concatenate(parts).astype(np.float32)


def _dimension(encode: Encoder) -> int:
    return int(encode(["dimension probe"]).shape[1])


def _progress(items: Iterable[Item], enabled: bool, what: str, unit: str = "file") -> Iterable[Item]:
    sequence = list(items)
    if not enabled or len(sequence) < 2:
        return sequence
    from tqdm import tqdm  # type: ignore[import-untyped]

    bar: Iterable[Item] = tqdm(sequence, desc=what, unit=unit, file=sys.stderr, leave=False)
    return bar
