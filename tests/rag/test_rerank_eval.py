from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from gateway.cli import main
from gateway.embeddings import default_model_path, load_model
from gateway.rag.evaluate import parse_judgement
from gateway.rag.rerank import Reranker, RerankerError
from gateway.rag.store import IndexStore
from plugins.rag import RagConfig
from tests.fakes.upstream import FakeUpstream
from tests.gateway_server import GatewayServer
from tests.rag.conftest import QUESTIONS


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (randomly initialised, small) BERT cross-encoder saved locally: nothing can be downloaded here."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("cross-encoder")
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, num_labels=1,
    )  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_the_reranker_orders_candidates_by_the_cross_encoder_score(
    corpus_index: Path, tiny_cross_encoder: Path
) -> None:
    searcher = IndexStore(corpus_index).load()
    query = "What is the per diem for meals on a business trip abroad?"
    vector = np.asarray(load_model(None).encode([query], normalize_embeddings=True)[0], dtype=np.float32)
    candidates = searcher.search(query, vector, top_k=10)
    reranker = Reranker(str(tiny_cross_encoder))
    scores = reranker.scores(query, candidates)
    reranked = reranker.rerank(query, candidates, 3)
    expected = sorted(range(len(candidates)), key=lambda i: -scores[i])[:3]
    assert [h.chunk.id for h in reranked] == [candidates[i].chunk.id for i in expected]
    assert [h.score for h in reranked] == pytest.approx([scores[i] for i in expected])
    assert RagConfig(index="kb", rerank={"model_path": str(tiny_cross_encoder)}).rerank is not None
    with pytest.raises(RerankerError, match="does not exist"):
        Reranker(str(tiny_cross_encoder / "missing"))


def test_judge_replies_are_parsed_or_counted_as_unparsed() -> None:
    assert parse_judgement('Sure: {"context_relevance": 0.9, "faithfulness": 1, "answer_relevance": null}') == {
        "context_relevance": 0.9,
        "faithfulness": 1.0,
        "answer_relevance": None,
    }
    assert parse_judgement("no idea") == {"unparsed": 1.0}
    assert parse_judgement('{"echo": "x"}') == {"unparsed": 1.0}


def test_eval_asks_a_judge_model_through_the_gateway(
    make_gateway: Callable[[str], GatewayServer],
    upstream: FakeUpstream,
    corpus_index: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    gateway = make_gateway(
        f'backends: [{{name: fake, type: openai, base_url: "{upstream.url}/v1"}}]\n'
        "models: [{name: judge, targets: [{backend: fake, model: echo-model}]}]\n"
    )
    questions = tmp_path / "q.jsonl"
    questions.write_text("\n".join(QUESTIONS.read_text().splitlines()[:2]))
    before = len(upstream.requests)
    args = ["rag", "eval", "--index", str(corpus_index), "--questions", str(questions), "--json"]
    assert main([*args, "--judge-url", gateway.base_url, "--judge-model", "judge"]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])["summary"]
    assert summary["judge_unparsed"] == 2  # the echo model repeats the prompt: not a verdict
    judged = [r.body for r in upstream.requests[before:] if isinstance(r.body, dict)]
    prompts = [b["messages"][0]["content"] for b in judged if b.get("model") == "echo-model"]
    assert len(prompts) == 2 and all("Retrieved passages:\n[1] " in p for p in prompts)
