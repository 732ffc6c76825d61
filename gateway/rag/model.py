"""What an index version holds: chunks with their metadata, and the manifest that describes the version."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import msgspec

FORMAT = 1
DEFAULT_MODEL = "all-MiniLM-L6-v2"


class Chunk(msgspec.Struct, frozen=True):
    id: str  # sha256 of source, position and text: stable while the passage is unchanged
    text: str
    source: str  # the path as ingested, relative to the folder (or file) given on the command line
    title: str
    section: str  # heading path within the document, "" when it has none
    position: int  # the chunk's index within its document
    collection: str
    kind: str  # md, txt, html, pdf
    doc_hash: str  # sha256 of the document's bytes
    page: int | None = None
    meta: dict[str, str] = msgspec.field(default_factory=dict)  # `--meta key=value` given at ingest

    @property
    def indexed_text(self) -> str:
        """What is embedded and keyword-indexed: the passage with its title and section."""
        heading = f"{self.title} - {self.section}" if self.section else self.title
        return f"{heading}\n{self.text}"

    def field(self, name: str) -> str | None:
        """A metadata value by name, for filters: the chunk's own fields first, then `meta`."""
        if name in ("source", "title", "section", "collection", "kind", "doc_hash", "id"):
            value: object = getattr(self, name)
            return str(value)
        if name == "page":
            return None if self.page is None else str(self.page)
        return self.meta.get(name)


def chunk_id(source: str, position: int, text: str) -> str:
    return hashlib.sha256(f"{source}\0{position}\0{text}".encode()).hexdigest()[:20]


class DocumentInfo(msgspec.Struct, frozen=True):
    hash: str
    collection: str
    kind: str
    title: str
    chunks: int
    meta: dict[str, str] = msgspec.field(default_factory=dict)


class Manifest(msgspec.Struct, frozen=True):
    id: str  # v0001, v0002, ...
    created: float
    parent: str | None
    model: str  # the embedding model the vectors come from
    dimension: int
    chunk_size: int
    overlap: int
    documents: dict[str, DocumentInfo]
    count: int
    digest: str  # sha256 over the chunk ids: two versions with the same passages share it
    summary: str = ""
    format: int = FORMAT

    @property
    def key(self) -> str:
        """What identifies this version's content in cache keys: id and digest."""
        return f"{self.id}:{self.digest[:16]}"


def digest(ids: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()
