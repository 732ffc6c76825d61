"""The served index version: loaded at start, swapped when a new version appears (file or Redis).

The searcher is replaced whole, so a request that took a reference keeps a consistent version.
Loading happens on a worker thread; a failed reload keeps the old version and is reported by ready().
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from gateway.rag import shared
from gateway.rag.model import DEFAULT_MODEL
from gateway.rag.search import Searcher
from gateway.rag.store import IndexStore, IndexStoreError
from gateway.redis_link import RedisLink, RedisUnavailable
from plugins.rag.config import RagConfig

log = logging.getLogger("gateway.rag")


class LiveIndex:
    def __init__(self, config: RagConfig, dimension: int) -> None:
        self.config = config
        self.dimension = dimension
        self.model = config.model_path or DEFAULT_MODEL
        self.searcher: Searcher | None = None
        self.last_error: str | None = None
        self.store = IndexStore(Path(config.index)) if config.store == "file" and config.index else None
        self.link: RedisLink | None = None
        if config.store == "redis":
            self.link = RedisLink(config.redis_url, timeout_s=config.redis_timeout_s, retry_after_s=1.0)
        self._watcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        version = await self._current_id()
        if version is None:
            where = f"index folder {self.config.index}" if self.store else f"redis index {self.config.redis_index}"
            raise IndexStoreError(f"rag: {where} has no version yet; run `gateway rag ingest` first")
        self.searcher = await self._load(version)
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        if self.link is not None:
            await self.link.close()

    async def _current_id(self) -> str | None:
        if self.store is not None:
            return await asyncio.to_thread(self.store.current_id)
        assert self.link is not None and self.config.redis_index is not None
        return await shared.current_id(self.link, self.config.namespace, self.config.redis_index)

    async def _load(self, version: str) -> Searcher:
        if self.store is not None:
            searcher = await asyncio.to_thread(self.store.load, version)
        else:
            assert self.link is not None and self.config.redis_index is not None
            manifest, chunks, vectors = await shared.fetch(
                self.link, self.config.namespace, self.config.redis_index, version
            )
            searcher = await asyncio.to_thread(shared.build, manifest, chunks, vectors)
        manifest = searcher.manifest
        if manifest.model != self.model or manifest.dimension != self.dimension:
            raise IndexStoreError(
                f"rag: index {self.config.label} version {version} was embedded with {manifest.model} "
                f"({manifest.dimension} dimensions), not {self.model} ({self.dimension}); re-ingest it"
            )
        return searcher

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.config.reload_interval_s)
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep serving the version loaded; ready() says why
                self.last_error = f"{exc.__class__.__name__}: {exc}"
                log.warning("rag: index %s: reload failed: %s", self.config.label, self.last_error)

    async def refresh(self) -> bool:
        """Load the current version if it is not the one served; True when it swapped."""
        try:
            version = await self._current_id()
        except RedisUnavailable as exc:
            self.last_error = f"redis unreachable: {exc}"
            return False
        if version is None or (self.searcher is not None and self.searcher.manifest.id == version):
            self.last_error = None
            return False
        self.searcher = await self._load(version)
        self.last_error = None
        log.info("rag: index %s now serves version %s", self.config.label, version)
        return True
