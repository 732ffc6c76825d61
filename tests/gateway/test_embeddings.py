"""The shared Embedder (real all-MiniLM-L6-v2): one text asked for twice at once is embedded once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import numpy as np
import pytest

from gateway.embeddings import Embedder


@pytest.fixture
async def embedder() -> AsyncIterator[Embedder]:
    made = Embedder(None, max_batch=32)
    await made.start()
    yield made
    await made.close()


async def test_the_same_text_at_once_is_encoded_once_and_each_caller_gets_its_own_copy(embedder: Embedder) -> None:
    text = f"a text nobody embedded before {uuid.uuid4().hex}"
    before = embedder.batches
    first, second = await asyncio.gather(embedder.embed(text), embedder.embed(text))
    assert embedder.batches - before == 1
    assert np.array_equal(first, second) and first is not second
    first[:] = 0  # a caller writing to its vector does not change anyone else's
    assert np.array_equal(await embedder.embed(text), second)


async def test_one_caller_giving_up_does_not_cancel_the_vector_for_the_other(embedder: Embedder) -> None:
    text = f"another fresh text {uuid.uuid4().hex}"
    impatient = asyncio.ensure_future(embedder.embed(text))
    patient = asyncio.ensure_future(embedder.embed(text))
    await asyncio.sleep(0)
    impatient.cancel()
    vector = await asyncio.wait_for(patient, 30)
    assert vector.shape == (embedder.dimension,) and abs(float(np.linalg.norm(vector)) - 1.0) < 1e-3
