"""Index versions in Redis, so several gateway replicas serve the same knowledge base.

`gateway rag ingest ... --redis-url URL --redis-index NAME` (or `gateway rag publish`) copies a
version written on disk into Redis; each replica's rag plugin (`store: redis`) loads the version
`current` names and rebuilds its faiss and BM25 indexes in memory, then follows `current`.

    {namespace}:rag:{name}:current           the served version's id
    {namespace}:rag:{name}:versions          ids published, oldest first (a list)
    {namespace}:rag:{name}:{id}:manifest     the manifest (JSON)
    {namespace}:rag:{name}:{id}:chunks       chunk texts and metadata (JSON)
    {namespace}:rag:{name}:{id}:vectors      float32 embeddings, row-major, in chunk order
"""

from __future__ import annotations

import msgspec
import numpy as np
import redis

from gateway.rag.model import Chunk, Manifest
from gateway.rag.search import Searcher
from gateway.rag.store import IndexStore, IndexStoreError
from gateway.redis_link import RedisLink


def prefix(namespace: str, name: str) -> str:
    return f"{namespace}:rag:{name}"


def publish(store: IndexStore, version_id: str | None, url: str, namespace: str, name: str) -> str:
    """Copy a version (default: CURRENT) into Redis, if not already there, and make it current there."""
    chosen = store.resolve(version_id)
    manifest = store.manifest(chosen)
    base = prefix(namespace, name)
    client = redis.Redis.from_url(url, socket_timeout=30)
    try:
        if not client.exists(f"{base}:{chosen}:manifest"):
            chunks = store.chunks(chosen)
            vectors = store.vectors(chosen)
            pipe = client.pipeline(transaction=True)
            pipe.set(f"{base}:{chosen}:chunks", msgspec.json.encode(chunks))
            pipe.set(f"{base}:{chosen}:vectors", np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
            pipe.set(f"{base}:{chosen}:manifest", msgspec.json.encode(manifest))
            pipe.rpush(f"{base}:versions", chosen)
            pipe.execute()
        client.set(f"{base}:current", chosen)
    finally:
        client.close()
    return chosen


def set_current(url: str, namespace: str, name: str, version_id: str) -> None:
    base = prefix(namespace, name)
    client = redis.Redis.from_url(url, socket_timeout=30)
    try:
        if not client.exists(f"{base}:{version_id}:manifest"):
            raise IndexStoreError(f"redis {name}: no version {version_id!r} published")
        client.set(f"{base}:current", version_id)
    finally:
        client.close()


async def current_id(link: RedisLink, namespace: str, name: str) -> str | None:
    value = await link.run(lambda r: r.get(f"{prefix(namespace, name)}:current"))
    return value.decode() if isinstance(value, bytes) else None


async def fetch(link: RedisLink, namespace: str, name: str, version_id: str) -> tuple[Manifest, list[Chunk], bytes]:
    base = f"{prefix(namespace, name)}:{version_id}"
    raw = await link.run(lambda r: r.mget([f"{base}:manifest", f"{base}:chunks", f"{base}:vectors"]))
    manifest_raw, chunks_raw, vectors = raw
    if not (isinstance(manifest_raw, bytes) and isinstance(chunks_raw, bytes) and isinstance(vectors, bytes)):
        raise IndexStoreError(f"redis {name}: version {version_id!r} is incomplete or missing")
    manifest = msgspec.json.decode(manifest_raw, type=Manifest)
    chunks = msgspec.json.decode(chunks_raw, type=list[Chunk])
    return manifest, chunks, vectors


def build(manifest: Manifest, chunks: list[Chunk], vectors: bytes) -> Searcher:
    """A searcher from a fetched version (CPU work: run it off the event loop)."""
    matrix = np.frombuffer(vectors, dtype=np.float32).reshape(-1, manifest.dimension)
    if len(matrix) != len(chunks):
        raise IndexStoreError(f"version {manifest.id}: {len(matrix)} vectors for {len(chunks)} chunks")
    return Searcher.build(manifest, chunks, matrix)
