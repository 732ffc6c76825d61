from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gateway.rag.ingest import ingest
from gateway.rag.store import IndexStore

CORPUS = Path(__file__).resolve().parent.parent / "data" / "rag_corpus"
QUESTIONS = Path(__file__).resolve().parent.parent / "data" / "rag_questions.jsonl"


@pytest.fixture(scope="session")
def corpus_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test corpus ingested once (read-only for tests: copy it before changing it)."""
    root = tmp_path_factory.mktemp("rag") / "kb"
    report = ingest(IndexStore(root), [CORPUS], progress=False)
    assert report.version == "v0001" and not report.failed, report
    return root


@pytest.fixture
def index_copy(corpus_index: Path, tmp_path: Path) -> Path:
    """A private copy of the corpus index, for tests that ingest into it or roll it back."""
    target = tmp_path / "kb"
    shutil.copytree(corpus_index, target)
    return target
