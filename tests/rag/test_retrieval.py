from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gateway import tokens
from gateway.embeddings import load_model
from gateway.rag.inject import PASSAGE_TEMPLATE, SYSTEM_TEMPLATE, USER_TEMPLATE, inject, numbered, query_text
from gateway.rag.search import Hit, Searcher, rrf, stem
from gateway.rag.store import IndexStore


def embed(text: str) -> np.ndarray:
    return np.asarray(load_model(None).encode([text], normalize_embeddings=True)[0], dtype=np.float32)


@pytest.fixture(scope="module")
def searcher(corpus_index: Path) -> Searcher:
    return IndexStore(corpus_index).load()


def test_rrf_sums_reciprocal_ranks() -> None:
    fused = dict(rrf([[7, 3, 5], [3, 9]], k=60))
    assert fused[3] == pytest.approx(1 / 62 + 1 / 61)
    assert fused[7] == pytest.approx(1 / 61)
    assert fused[9] == pytest.approx(1 / 62)
    assert [item for item, _ in rrf([[7, 3, 5], [3, 9]], k=60)] == [3, 7, 9, 5]
    # a smaller k rewards the top ranks more: item 1 leads one list, item 2 is second in both
    assert rrf([[1, 2], [3, 2]], k=1)[0][0] == 2 and rrf([[1, 2], [3, 2]], k=100)[0][0] == 2


def test_stemming_matches_plural_and_singular() -> None:
    assert stem("days") == stem("day") and stem("policies") == "policy" and stem("booked") == "book"
    assert stem("process") == "process"


def test_each_retriever_and_the_fusion_find_a_paraphrased_question(searcher: Searcher) -> None:
    question = "How many vacation days do full-time staff get each year?"
    vector = embed(question)
    for mode in ("dense", "hybrid"):
        hits = searcher.search(question, vector, top_k=3, mode=mode)
        assert hits[0].chunk.source == "rag_corpus/hr/annual-leave.md", mode
    keyword = searcher.search("annual leave entitlement days", None, top_k=3, mode="bm25")
    assert keyword[0].chunk.source == "rag_corpus/hr/annual-leave.md"
    fused = searcher.search(question, vector, top_k=5)
    assert [h.score for h in fused] == sorted((h.score for h in fused), reverse=True)
    assert all(h.dense is not None or h.bm25 is not None for h in fused)


def test_collections_and_metadata_filters_limit_what_is_searched(searcher: Searcher) -> None:
    question = "How many vacation days do full-time staff get each year?"
    vector = embed(question)
    only_pdf = searcher.select(None, (("kind", ("pdf",)),))
    hits = searcher.search(question, vector, top_k=5, selection=only_pdf)
    assert hits and {h.chunk.kind for h in hits} == {"pdf"}
    nothing = searcher.select(frozenset({"no-such-collection"}))
    assert searcher.search(question, vector, top_k=5, selection=nothing) == []
    everything = searcher.select(frozenset({"default"}))
    assert searcher.search(question, vector, top_k=3, selection=everything)[0].chunk.source.endswith("annual-leave.md")


def test_the_query_is_the_last_user_turn_with_an_optional_window() -> None:
    messages = [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Tell me about parking."},
        {"role": "assistant", "content": "There is a garage."},
        {"role": "user", "content": [{"type": "text", "text": "How much"}, {"type": "text", "text": "does it cost?"}]},
    ]
    assert query_text(messages) == "How much\ndoes it cost?"
    assert query_text(messages, window=2) == "Tell me about parking.\nThere is a garage.\nHow much\ndoes it cost?"
    assert query_text(messages[:-1]) is None  # the last turn is the assistant's
    image = [{"type": "image_url", "image_url": {"url": "data:,"}}]
    assert query_text([{"role": "user", "content": image}]) is None


def test_passages_are_numbered_and_kept_within_the_token_budget(searcher: Searcher) -> None:
    hits = searcher.search("meal allowance abroad", embed("meal allowance abroad"), top_k=6)
    everything = numbered(hits, PASSAGE_TEMPLATE, 10_000)
    assert [p.number for p in everything] == list(range(1, len(hits) + 1))
    assert everything[0].rendered.startswith(f"[1] {hits[0].chunk.title}")
    budget = everything[0].tokens + everything[1].tokens + 1
    capped = numbered(hits, PASSAGE_TEMPLATE, budget)
    assert len(capped) == 2
    assert tokens.count("\n\n".join(p.rendered for p in capped)) <= budget
    tiny = numbered(hits, PASSAGE_TEMPLATE, 30)  # the first passage alone is too long: it is cut
    assert len(tiny) == 1 and tiny[0].rendered.endswith("...") and tokens.count(tiny[0].rendered) <= 30


def test_injection_as_system_merges_or_adds_and_as_user_prefix_wraps_the_question(searcher: Searcher) -> None:
    hits: list[Hit] = searcher.search("parking permit", embed("parking permit"), top_k=2)
    passages = numbered(hits, PASSAGE_TEMPLATE, 1000)
    original = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "parking permit?"}]
    merged = inject(original, passages, inject_as="system", template=SYSTEM_TEMPLATE, question="parking permit?")
    assert merged[0]["content"].startswith("Be brief.\n\nAnswer with the help of the numbered passages")
    assert passages[1].rendered in merged[0]["content"] and merged[1] == original[1]
    assert original[0]["content"] == "Be brief."  # the input is not modified
    added = inject(original[1:], passages, inject_as="system", template="{sources}", question="q")
    assert added[0] == {"role": "system", "content": ", ".join(dict.fromkeys(h.chunk.source for h in hits))}
    wrapped = inject(original, passages, inject_as="user_prefix", template=USER_TEMPLATE, question="parking permit?")
    assert wrapped[0] == original[0]
    assert wrapped[1]["content"].startswith("Passages:\n[1] ")
    assert wrapped[1]["content"].endswith("Question: parking permit?")
